"""Pretrained backbone weights from a local file or a TorchGeo weights enum.

``backbone_weights`` names either a local file or a TorchGeo weights enum member:

* A file holding a timm state dict: the ``state_dict()`` of
  ``timm.create_model(backbone)``, saved with :func:`torch.save` (``.pth``, ``.pt``,
  ``.bin``) or as ``.safetensors``, as on the Hugging Face hub. A checkpoint dict
  with the weights under ``state_dict`` or ``model`` works too, and DDP/compile
  prefixes (``module.``, ``_orig_mod.``) are dropped. Nothing is downloaded.
* A TorchGeo enum member, e.g. ``ViTSmall16_Weights.SENTINEL2_ALL_MOCO``, whose
  ``meta["model"]`` is the backbone's timm name. Loading it downloads the file into
  the torch hub cache (online machines only; offline, download it once elsewhere
  and pass the file). torchvision Swin V2 weights (Satlas, e.g.
  ``Swin_V2_B_Weights.NAIP_RGB_SI_SATLAS``) are renamed for timm's Swin V2 of the
  same size (``swinv2_base_window8_256``).

Every backbone tensor must be in the weights with the same shape; the classifier
and stages the backbone does not return are ignored. When the weights have another
number of input channels than the model, the first layer is adapted as
:func:`timm.models.adapt_input_conv` does (:func:`adapt_first_layer`): its kernels
are repeated over the input channels in order (RGB weights for R, G, B, IR, height:
R, G, B, R, G) and scaled by ``weights_channels / model_channels``, so that a pixel
with the same value in every band gives the same first-layer response; a
single-channel model gets the sum of the kernels.
"""

import hashlib
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import clean_state_dict, get_pretrained_cfg
from torch import Tensor, nn
from torchvision.models._api import WeightsEnum

from ..errors import ConfigError, InputError

#: Pattern of a TorchGeo weights enum member name.
ENUM_NAME = re.compile(r"^(?:torchgeo\.models\.)?(\w+_Weights)\.(\w+)$")

#: Keys of checkpoint dicts that hold the state dict, in order of preference.
STATE_DICT_KEYS = ("state_dict", "model")

#: torchvision Swin V2 models of TorchGeo weights (Satlas) -> timm Swin V2 family.
TORCHVISION_SWIN_V2 = {"swin_v2_t": "swinv2_tiny", "swin_v2_b": "swinv2_base"}


@dataclass(frozen=True)
class WeightsRecord:
    """Which pretrained weights a backbone was initialised from.

    Attributes:
        source: The weights file (absolute path) or the enum member name.
        kind: ``"file"`` or ``"torchgeo"``.
        sha256: SHA-256 of the weights file (for an enum, of the downloaded file).
        in_channels: Input channels of the weights' first layer.
        adapted: Whether the first layer was adapted to another channel count.
        url: Download address of an enum's weights, else None.
    """

    source: str
    kind: str
    sha256: str | None
    in_channels: int
    adapted: bool
    url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON/YAML-serialisable form (stored in hparams and checkpoints)."""
        return asdict(self)


def is_enum_name(source: str) -> bool:
    """Whether *source* reads as a TorchGeo weights enum member rather than a path."""
    return ENUM_NAME.match(source) is not None and not Path(source).exists()


def resolve_enum(name: str) -> WeightsEnum:
    """Return the TorchGeo weights enum member called *name* (no download).

    Args:
        name: E.g. ``ViTSmall16_Weights.SENTINEL2_ALL_MOCO`` (a ``torchgeo.models.``
            prefix is allowed).

    Raises:
        ConfigError: If TorchGeo has no such weights.
    """
    from torchgeo.models import get_weight

    match = ENUM_NAME.match(name)
    if match is None:
        raise ConfigError(f"backbone_weights {name!r}: not a TorchGeo weights name")
    try:
        return get_weight(f"{match[1]}.{match[2]}")
    except ValueError:
        raise ConfigError(
            f"backbone_weights {name!r}: no such TorchGeo weights and no such file "
            "(expected e.g. ViTSmall16_Weights.SENTINEL2_ALL_MOCO or a .pth/.safetensors path)"
        ) from None


def check_enum_fits(weights: WeightsEnum, backbone: str) -> None:
    """Require TorchGeo *weights* made for the timm model *backbone*.

    Weights of torchvision's Swin V2 (``meta["model"]`` ``swin_v2_t``/``swin_v2_b``,
    e.g. Satlas ``Swin_V2_B_Weights.NAIP_RGB_SI_SATLAS``) fit timm's Swin V2 of
    the same size (``swinv2_tiny_window8_256``/``swinv2_base_window8_256``, or
    another window) and are converted by :func:`torchvision_swin_v2_to_timm`.

    Raises:
        ConfigError: If the weights belong to another architecture.
    """
    model = weights.meta.get("model")
    family = TORCHVISION_SWIN_V2.get(model)
    if model == backbone or (family and re.fullmatch(rf"{family}_window\d+_\d+", backbone)):
        return
    if family:
        hint = f"use backbone: {family}_window8_256 (timm's Swin V2 of that size)"
    elif isinstance(model, str) and timm.is_model(model):
        hint = f"use backbone: {model}"
    else:
        hint = "not a timm model, so geoct cannot use them"
    raise ConfigError(
        f"backbone_weights {weights}: weights of {model!r}, not of backbone {backbone!r}; {hint}"
    )


def torchvision_swin_v2_to_timm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchvision Swin V2 state dict to timm's ``SwinTransformerV2`` names.

    torchvision's ``features`` list alternates stages (odd indexes) and patch
    merging (even indexes from 2); timm nests them as ``layers.i.blocks`` and
    ``layers.i.downsample``. torchvision's attention has one ``qkv`` bias whose key
    part it zeroes; timm keeps ``q_bias`` and ``v_bias``. The relative position
    tables are recomputed buffers and are dropped. Both merge 2x2 neighbourhoods in
    the same channel order, so the networks compute the same features.

    Args:
        state: State dict of ``torchvision.models.swin_v2_t``/``swin_v2_b``.

    Returns:
        The same tensors under timm's names.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(("relative_coords_table", "relative_position_index")):
            continue
        stem = re.fullmatch(r"features\.0\.([02])\.(\w+)", key)
        block = re.fullmatch(r"features\.(\d+)\.(\d+)\.(.+)", key)
        merge = re.fullmatch(r"features\.(\d+)\.((?:reduction|norm)\.\w+)", key)
        if stem:
            out[f"patch_embed.{'proj' if stem[1] == '0' else 'norm'}.{stem[2]}"] = value
        elif block and int(block[1]) % 2:
            name = f"layers.{int(block[1]) // 2}.blocks.{block[2]}."
            rest = re.sub(r"^mlp\.0\.", "mlp.fc1.", re.sub(r"^mlp\.3\.", "mlp.fc2.", block[3]))
            if rest == "attn.qkv.bias":
                q, _, v = value.chunk(3)
                out[name + "attn.q_bias"], out[name + "attn.v_bias"] = q, v
            else:
                out[name + rest] = value
        elif merge:
            out[f"layers.{int(merge[1]) // 2}.downsample.{merge[2]}"] = value
        else:
            out[key.replace("head.", "head.fc.")] = value
    return out


def sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from a ``.safetensors`` or :func:`torch.save` file.

    Args:
        path: The weights file.

    Returns:
        Tensors by parameter name, without DDP/compile prefixes.

    Raises:
        InputError: If the file is missing, unreadable or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "backbone weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(path, device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(
            path,
            f"not a readable weights file ({type(e).__name__}); expected a "
            "torch.save'd state dict or .safetensors",
        ) from None
    if isinstance(data, Mapping):
        data = next((data[k] for k in STATE_DICT_KEYS if isinstance(data.get(k), Mapping)), data)
    tensors = (
        {k: v for k, v in data.items() if isinstance(v, Tensor)}
        if isinstance(data, Mapping)
        else {}
    )
    if not tensors:
        raise InputError(path, "holds no state dict (no tensors by parameter name)")
    return clean_state_dict(tensors)


def adapt_first_layer(weight: Tensor, channels: int) -> Tensor:
    """Adapt first-layer kernels ``(O, I, kh, kw)`` to *channels* input bands.

    The rule of :func:`timm.models.adapt_input_conv`, for any source band count
    ``I``: kernels repeated over the bands in order and scaled by ``I / channels``;
    for one band, their sum.

    Args:
        weight: The pretrained convolution weight.
        channels: Input bands of the model.

    Returns:
        Weight of shape ``(O, channels, kh, kw)``, in the dtype of *weight*.
    """
    source = weight.shape[1]
    if channels == source:
        return weight
    w = weight.float()
    if channels == 1:
        return w.sum(dim=1, keepdim=True).to(weight.dtype)
    repeats = -(-channels // source)
    return (w.repeat(1, repeats, 1, 1)[:, :channels] * (source / channels)).to(weight.dtype)


def _source_keys(key: str) -> list[str]:
    """Names a feature-extractor tensor has in the full timm model's state dict.

    timm's ``features_only`` wrappers either keep the model under ``model.``
    (``FeatureGetterNet``) or flatten top-level sequentials (``layers.0`` becomes
    ``layers_0``).
    """
    head, _, rest = key.partition(".")
    flat = head.rpartition("_")
    unflattened = f"{flat[0]}.{flat[2]}.{rest}" if flat[0] and flat[2].isdigit() else None
    return list(dict.fromkeys(k for k in (key, key.removeprefix("model."), unflattened) if k))


def _first_conv_keys(backbone: str) -> set[str]:
    cfg = get_pretrained_cfg(backbone)
    first = getattr(cfg, "first_conv", None) if cfg is not None else None
    names = [first] if isinstance(first, str) else list(first or ())
    return {f"{name}.weight" for name in names}


def fit_state_dict(
    net: nn.Module, backbone: str, state: Mapping[str, Tensor], label: str
) -> tuple[dict[str, Tensor], int, bool]:
    """Map a full timm state dict onto a ``features_only`` network's tensors.

    Args:
        net: The timm feature extractor (``Backbone.net``).
        backbone: Its timm model name.
        state: The pretrained state dict of the full model.
        label: How to name the weights in errors.

    Returns:
        The state dict for *net*, the input channels of the weights' first layer
        and whether that layer was adapted to the model's channels.

    Raises:
        ConfigError: If a tensor of *net* is missing from *state* or has another shape.
    """
    first_keys = _first_conv_keys(backbone)
    fitted: dict[str, Tensor] = {}
    missing: list[str] = []
    mismatched: list[str] = []
    in_channels, adapted = 0, False
    for key, target in net.state_dict().items():
        source = next((k for k in _source_keys(key) if k in state), None)
        if source is None:
            missing.append(_source_keys(key)[-1])
            continue
        value = state[source]
        if source in first_keys and value.ndim == 4:
            in_channels = value.shape[1]
            if value.shape[1] != target.shape[1]:
                value = adapt_first_layer(value, target.shape[1])
                adapted = True
        if value.shape != target.shape:
            mismatched.append(f"{source} {tuple(value.shape)} vs {tuple(target.shape)}")
            continue
        fitted[key] = value
    if missing or mismatched:
        total = len(fitted) + len(missing) + len(mismatched)
        problems = []
        if missing:
            problems.append(f"{len(missing)} of {total} tensors missing, e.g. {missing[0]}")
        if mismatched:
            problems.append(f"{len(mismatched)} of another shape, e.g. {mismatched[0]}")
        raise ConfigError(
            f"backbone_weights {label}: do not fit backbone {backbone!r} "
            f"({'; '.join(problems)}); are they the weights of another architecture or size?"
        )
    return fitted, in_channels, adapted


def _enum_state_dict(weights: WeightsEnum) -> tuple[dict[str, Tensor], str | None]:
    """Download (or take from the hub cache) an enum's state dict and its file's SHA-256."""
    state = clean_state_dict(
        dict(weights.get_state_dict(progress=True, check_hash=True, weights_only=True))
    )
    if weights.meta.get("model") in TORCHVISION_SWIN_V2:
        state = torchvision_swin_v2_to_timm(state)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    return state, sha256(cached) if cached.is_file() else None


def load_backbone_weights(net: nn.Module, backbone: str, source: str) -> WeightsRecord:
    """Initialise a timm feature extractor from a weights file or TorchGeo enum.

    Args:
        net: The timm ``features_only`` network (``Backbone.net``).
        backbone: Its timm model name.
        source: A path to a state dict file or a TorchGeo enum member name.

    Returns:
        What was loaded, for the checkpoint.

    Raises:
        ConfigError: For an unknown enum, one made for another model, or weights
            that do not fit the backbone.
        InputError: If the file is missing or unreadable.
    """
    url, label = None, repr(source)
    if is_enum_name(source):
        weights = resolve_enum(source)
        check_enum_fits(weights, backbone)
        state, digest = _enum_state_dict(weights)
        kind, url = "torchgeo", weights.url
    else:
        path = Path(source).expanduser()
        state, digest, kind = read_state_dict(path), sha256(path), "file"
        source = str(path.resolve())
    fitted, in_channels, adapted = fit_state_dict(net, backbone, state, label)
    net.load_state_dict(fitted)
    return WeightsRecord(source, kind, digest, in_channels, adapted, url)
