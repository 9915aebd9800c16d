"""What a trained model needs to know about its input: the self-describing part of a checkpoint."""

from dataclasses import asdict, dataclass
from typing import Any

from .classes import ClassTable

#: Key under which :class:`ModelSpec` is stored in a Lightning checkpoint.
CHECKPOINT_KEY = "geoct"

#: Name of the height band (DSM or nDSM) when it is stacked after the optical bands.
HEIGHT_BAND = "height"


@dataclass(frozen=True)
class ModelSpec:
    """Input contract of a model, written into every geoct checkpoint.

    Attributes:
        bands: Band names in model input order, e.g. ``("R", "G", "B", "IR", "height")``.
            A height band, if present, is last.
        mean: Per-band normalisation mean, in raster units.
        std: Per-band normalisation standard deviation, in raster units.
        gsd: Ground sample distance the model was trained at, in CRS units (metres).
        patch_size: Side of the training patches and default prediction window, in pixels.
        classes: Class ids, names and colours.
        height_source: ``"dsm"``, ``"ndsm"`` or ``None`` when there is no height band.
        dtype: Data type of the training imagery (``"uint8"``, ``"float32"``...), or
            ``None`` when unknown (checkpoints from before it was recorded).
        value_range: Per-band ``(min, max)`` of the training pixels, in raster units,
            or ``None`` when unknown.
    """

    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    gsd: float
    patch_size: int
    classes: ClassTable
    height_source: str | None = None
    dtype: str | None = None
    value_range: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        """Check that statistics match the bands."""
        if not len(self.bands) == len(self.mean) == len(self.std):
            raise ValueError("bands, mean and std must have the same length")
        if self.value_range is not None and len(self.value_range) != len(self.bands):
            raise ValueError("value_range must have one (min, max) pair per band")

    @property
    def in_channels(self) -> int:
        """Number of model input channels."""
        return len(self.bands)

    @property
    def optical_bands(self) -> tuple[str, ...]:
        """Bands read from the orthophoto (all but the height band)."""
        return tuple(b for b in self.bands if b != HEIGHT_BAND)

    @property
    def needs_height(self) -> bool:
        """Whether the model expects a height channel from a DSM/nDSM."""
        return HEIGHT_BAND in self.bands

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON/YAML-serialisable form."""
        d = asdict(self)
        d["bands"] = list(self.bands)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["classes"] = self.classes.to_dict()
        if self.value_range is not None:
            d["value_range"] = [list(r) for r in self.value_range]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        """Inverse of :meth:`to_dict`."""
        return cls(
            bands=tuple(d["bands"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            gsd=float(d["gsd"]),
            patch_size=int(d["patch_size"]),
            classes=ClassTable.from_dict(d["classes"]),
            height_source=d.get("height_source"),
            dtype=d.get("dtype"),
            value_range=tuple((float(lo), float(hi)) for lo, hi in d["value_range"])
            if d.get("value_range") is not None
            else None,
        )
