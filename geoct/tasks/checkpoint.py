"""Load a geoct checkpoint for inference, without the training machinery."""

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, GeoctError
from ..metadata import CHECKPOINT_KEY, ModelSpec
from .segmentation import network_from_hparams


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelSpec]:
    """Load the segmentation network and its input contract from a checkpoint.

    The network is rebuilt from the checkpoint's hyperparameters with
    ``pretrained=False`` (no download) and only its weights are loaded: projection
    heads are dropped and never run. The returned module is in eval mode and maps
    a normalised (B, C, H, W) float tensor to logits (B, K, H, W). Any H and W work:
    inputs are padded (bottom/right, zeros) to a multiple of the backbone's largest
    stride (``module.pad_multiple``) and the logits cropped back; windows that are
    already a multiple (e.g. the training patch size) are not padded.

    Args:
        path: A checkpoint written by
            :class:`~geoct.tasks.ContrastiveSemanticSegmentationTask`.
        map_location: Device for the weights.

    Returns:
        The network and its :class:`~geoct.metadata.ModelSpec`.

    Raises:
        CheckpointError: If the file is missing, unreadable, not a geoct checkpoint
            or its weights do not fit the network it describes.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(path, f"not a readable checkpoint ({type(e).__name__})") from None
    keys = (CHECKPOINT_KEY, "state_dict", "hyper_parameters")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in keys):
        raise CheckpointError(path, "not a geoct checkpoint (no model spec, weights or hparams)")
    try:
        spec = ModelSpec.from_dict(ckpt[CHECKPOINT_KEY])
        model = network_from_hparams(ckpt["hyper_parameters"], pretrained=False)
    except (GeoctError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(path, f"cannot rebuild the model ({e})") from None
    state = {k[6:]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(path, f"weights do not fit the model ({e})") from None
    return model.to(map_location).eval(), spec
