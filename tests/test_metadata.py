import pytest

from geoct.classes import POTSDAM
from geoct.metadata import ModelSpec


def make_spec(**kwargs: object) -> ModelSpec:
    args: dict[str, object] = {
        "bands": ("R", "G", "B", "IR", "height"),
        "mean": (1.0, 2.0, 3.0, 4.0, 5.0),
        "std": (1.0, 1.0, 1.0, 1.0, 2.0),
        "gsd": 0.05,
        "patch_size": 256,
        "classes": POTSDAM,
        "height_source": "ndsm",
    }
    return ModelSpec(**(args | kwargs))  # type: ignore[arg-type]


def test_round_trip() -> None:
    spec = make_spec()
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_height_band_properties() -> None:
    spec = make_spec()
    assert spec.in_channels == 5
    assert spec.needs_height
    assert spec.optical_bands == ("R", "G", "B", "IR")
    rgb = make_spec(bands=("R", "G", "B"), mean=(0.0,) * 3, std=(1.0,) * 3, height_source=None)
    assert not rgb.needs_height


def test_statistics_must_match_bands() -> None:
    with pytest.raises(ValueError, match="same length"):
        make_spec(mean=(1.0,))
