"""ONNX models for QGIS: the network of a checkpoint with the metadata of the Deepness plugin.

The graph maps a normalised float32 batch ``(N, C, T, T)`` (``(x - mean) / std`` per
band, with the checkpoint's mean and std in raster units, as for
:func:`~geoct.tasks.load_model`) to softmax probabilities ``(N, K, T, T)``. The
batch size is free; the tile side ``T`` is fixed, because Deepness takes its tile
size from the input shape.

Normalisation stays outside the graph and is written in Deepness's terms. Deepness
reads the raw band values, divides them by 255 and then standardises with
``standardization_mean``/``standardization_std``; these are the checkpoint's
mean and std divided by 255, so that Deepness computes
``(x / 255 - mean / 255) / (std / 255) = (x - mean) / std``, the input geoct gives
the network, for uint8 orthophotos and any other raster units (a float height band
included). Deepness keeps the class of highest probability; ``seg_thresh`` 0 and
``seg_small_segment`` 0 (the defaults) leave that argmax as geoct's.

Metadata keys and encodings (JSON strings in ``metadata_props``) are those read by
Deepness's ``ModelBase`` (``model_type``, ``class_names``, ``resolution`` in cm/px,
``tile_size``, ``tiles_overlap`` in percent, ``standardization_mean``,
``standardization_std``, ``seg_thresh``, ``seg_small_segment``); ``tiles_size``,
the spelling of its documentation and metadata script, is written too. The whole
:class:`~geoct.metadata.ModelSpec` is stored under ``geoct_model_spec`` for other
consumers.
"""

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import __version__
from ..errors import ConfigError
from ..metadata import ModelSpec
from ..raster_io import atomic_output, check_output
from ..tasks import load_model

#: Deepness model type of a segmentation network.
MODEL_TYPE = "Segmentor"

#: Name of the graph's input and output.
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"

#: Largest difference of probabilities between ONNX Runtime and PyTorch accepted.
TOLERANCE = 1e-4

#: Default overlap of neighbouring tiles, in percent of the tile (as ``geoct predict``).
DEFAULT_OVERLAP = 25


class Probabilities(nn.Module):
    """A segmentation network followed by a softmax over classes."""

    def __init__(self, network: nn.Module) -> None:
        """Initialise a new Probabilities around *network* (logits out)."""
        super().__init__()
        self.network = network

    def forward(self, x: Tensor) -> Tensor:
        """Class probabilities (N, K, H, W) of a normalised batch (N, C, H, W)."""
        return self.network(x).softmax(dim=1)


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: The ONNX file.
        spec: The checkpoint's input contract.
        tile_size: Side of the fixed input tiles, in pixels.
        max_difference: Largest probability difference between ONNX Runtime and
            PyTorch on a generated batch.
        metadata: The ``metadata_props`` written.
    """

    path: Path
    spec: ModelSpec
    tile_size: int
    max_difference: float
    metadata: dict[str, str]


def deepness_metadata(
    spec: ModelSpec,
    tile_size: int,
    overlap: int = DEFAULT_OVERLAP,
    threshold: float = 0.0,
    small_segment: int = 0,
) -> dict[str, str]:
    """Return the Deepness metadata of a model, JSON-encoded as the plugin reads it.

    Args:
        spec: The model's input contract.
        tile_size: Side of the input tiles, in pixels.
        overlap: Overlap of neighbouring tiles, in percent of the tile.
        threshold: Deepness ``seg_thresh``: probabilities below it are dropped before
            the argmax (0: plain argmax, as geoct).
        small_segment: Deepness ``seg_small_segment``: median filter size removing
            small segments (0: off, as geoct).

    Returns:
        ``metadata_props`` keys and values.
    """
    deepness: dict[str, Any] = {
        "model_type": MODEL_TYPE,
        "class_names": {str(i): name for i, name in enumerate(spec.classes.names)},
        "resolution": round(spec.gsd * 100, 6),
        "tile_size": tile_size,
        "tiles_size": tile_size,
        "tiles_overlap": overlap,
        "standardization_mean": [m / 255 for m in spec.mean],
        "standardization_std": [s / 255 for s in spec.std],
        "seg_thresh": threshold,
        "seg_small_segment": small_segment,
        "geoct_model_spec": spec.to_dict(),
        "geoct_input": "normalised bands (x - mean) / std, mean and std of geoct_model_spec",
        "geoct_version": __version__,
    }
    return {key: json.dumps(value) for key, value in deepness.items()}


def require_onnx() -> None:
    """Import the ONNX packages, or say how to install them.

    Raises:
        ConfigError: If ``onnx``, ``onnxscript`` or ``onnxruntime`` is missing.
    """
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"ONNX export needs the onnx extra ({e.name} is missing): pip install 'geoct[onnx]'"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def to_onnx(network: nn.Module, channels: int, tile_size: int, opset: int | None = None) -> Any:
    """Trace *network* plus softmax to an ONNX ``ModelProto`` with a free batch size.

    Args:
        network: Maps normalised (N, C, H, W) inputs to logits.
        channels: Input channels C.
        tile_size: Fixed input side H = W.
        opset: ONNX opset (default: the exporter's).

    Returns:
        The ONNX model.

    Raises:
        ConfigError: If the exporter cannot convert the network.
    """
    model = Probabilities(network).eval()
    example = torch.zeros(2, channels, tile_size, tile_size)
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
            torch.no_grad(),
        ):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
    except Exception as e:
        raise ConfigError(f"this model cannot be exported to ONNX ({_first_line(e)})") from None
    return program.model_proto


def max_difference(path: Path, network: nn.Module, channels: int, tile_size: int) -> float:
    """Largest probability difference between ONNX Runtime on *path* and PyTorch.

    Compared on a generated batch of two normalised windows (standard normal noise).
    """
    import onnxruntime

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, tile_size, tile_size, generator=generator)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (onnx_probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    with torch.no_grad():
        reference = Probabilities(network).eval()(x).numpy()
    return float(np.abs(onnx_probabilities - reference).max())


def export_onnx(
    checkpoint: str | Path,
    output: str | Path,
    tile_size: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    threshold: float = 0.0,
    small_segment: int = 0,
    opset: int | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Write the network of a geoct checkpoint as an ONNX model for QGIS Deepness.

    The file is checked with ONNX Runtime against PyTorch before it is put in place.

    Args:
        checkpoint: A checkpoint written by ``geoct fit``.
        output: The ``.onnx`` file.
        tile_size: Input tile side (default: the training patch size).
        overlap: Tile overlap for Deepness, in percent.
        threshold: Deepness ``seg_thresh`` (see :func:`deepness_metadata`).
        small_segment: Deepness ``seg_small_segment``.
        opset: ONNX opset (default: the exporter's).
        overwrite: Replace an existing *output*.

    Returns:
        What was written.

    Raises:
        OutputExistsError: If *output* exists and *overwrite* is false.
        CheckpointError: If *checkpoint* is not a usable geoct checkpoint.
        ConfigError: If the ONNX packages are missing, the options are out of
            range, the model cannot be exported or ONNX Runtime disagrees with
            PyTorch by more than :data:`TOLERANCE`.
    """
    check_output(output, overwrite)
    require_onnx()
    import onnx

    if tile_size is not None and tile_size < 1:
        raise ConfigError(f"--tile-size {tile_size}: must be at least 1")
    if not 0 <= overlap < 100:
        raise ConfigError(f"--overlap {overlap}: must be a percentage from 0 to 99")
    network, spec = load_model(checkpoint)
    tile = tile_size or spec.patch_size
    proto = to_onnx(network, spec.in_channels, tile, opset)
    metadata = deepness_metadata(spec, tile, overlap, threshold, small_segment)
    onnx.helper.set_model_props(proto, metadata)
    proto.doc_string = (
        f"geoct segmentation model: {spec.in_channels} bands ({', '.join(spec.bands)}) "
        f"normalised (x - mean) / std in, {spec.classes.num_classes} class probabilities out"
    )
    with atomic_output(output, overwrite) as tmp:
        onnx.save_model(proto, tmp)
        difference = max_difference(tmp, network, spec.in_channels, tile)
        if not difference <= TOLERANCE:
            raise ConfigError(
                f"ONNX Runtime differs from PyTorch by {difference:.2g} (> {TOLERANCE:g}) "
                "in probabilities; not writing the model"
            )
    return ExportReport(Path(output), spec, tile, difference, metadata)
