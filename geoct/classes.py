"""Class tables: ids, names and colours of land-cover classes."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ClassTable:
    """Ordered land-cover classes; a class id is its position in :attr:`names`.

    Attributes:
        names: Class names, indexed by class id.
        colors: RGB colour of each class, as in the colour-coded label rasters.
        ignore_index: Label value of unlabelled or boundary pixels; never a class id.
        ignore_color: Colour of ignored pixels in colour-coded labels, if any.
    """

    names: tuple[str, ...]
    colors: tuple[RGB, ...]
    ignore_index: int = 255
    ignore_color: RGB | None = None

    def __post_init__(self) -> None:
        """Check that names and colours pair up and ids fit in uint8."""
        if len(self.names) != len(self.colors):
            raise ValueError("names and colors must have the same length")
        if not 0 < len(self.names) < 255:
            raise ValueError("a class table holds 1 to 254 classes")
        if 0 <= self.ignore_index < len(self.names):
            raise ValueError("ignore_index must not be a class id")

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable form (see :meth:`from_dict`)."""
        return {
            "names": list(self.names),
            "colors": [list(c) for c in self.colors],
            "ignore_index": self.ignore_index,
            "ignore_color": list(self.ignore_color) if self.ignore_color else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClassTable":
        """Build a table from :meth:`to_dict` output or a ``classes.json`` file.

        ``classes.json`` may also be a list of ``{"name", "color"}`` objects.
        """
        if isinstance(d, list):
            d = {"names": [c["name"] for c in d], "colors": [c["color"] for c in d]}
        ignore_color = d.get("ignore_color")
        return cls(
            names=tuple(d["names"]),
            colors=tuple(tuple(int(v) for v in c) for c in d["colors"]),
            ignore_index=int(d.get("ignore_index", 255)),
            ignore_color=tuple(ignore_color) if ignore_color else None,
        )

    @classmethod
    def from_json(cls, path: str | Path) -> "ClassTable":
        """Read a class table from a JSON file."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise InputError(path, "class table not found") from None
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(path, f"not a valid class table ({e})") from None


#: ISPRS Potsdam classes in geoct's fixed order (ids 0..5); boundary pixels
#: (black in the eroded labels) get :attr:`ClassTable.ignore_index`.
POTSDAM = ClassTable(
    names=(
        "impervious_surfaces",
        "building",
        "low_vegetation",
        "tree",
        "car",
        "clutter",
    ),
    colors=(
        (255, 255, 255),
        (0, 0, 255),
        (0, 255, 255),
        (0, 255, 0),
        (255, 255, 0),
        (255, 0, 0),
    ),
    ignore_index=255,
    ignore_color=(0, 0, 0),
)
