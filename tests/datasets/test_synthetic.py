from itertools import combinations

import numpy as np
import pytest

from geoct.classes import POTSDAM
from geoct.datasets.synthetic import (
    BUILDING,
    CAR,
    CLUTTER,
    CRS,
    GSD,
    IMPERVIOUS,
    LOW_VEGETATION,
    TREE,
    SyntheticTile,
    generate_tile,
    tile_transform,
)


@pytest.fixture(scope="module")
def tiles() -> list[SyntheticTile]:
    return [generate_tile(f"{2 + seed}_{10 + seed}", 256, seed) for seed in range(3)]


def fractions(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels.ravel(), minlength=POTSDAM.num_classes) / labels.size


def test_shapes_and_dtypes() -> None:
    tile = generate_tile("2_10", 128)
    assert tile.tile_id == "2_10"
    assert tile.rgbir.shape == (4, 128, 128) and tile.rgbir.dtype == np.uint8
    for array in (tile.dsm, tile.ndsm):
        assert array.shape == (128, 128) and array.dtype == np.float32
    assert tile.labels.shape == (128, 128) and tile.labels.dtype == np.uint8
    assert tile.labels.max() < POTSDAM.num_classes
    assert tile.crs == CRS == "EPSG:32633"


def test_class_ids_follow_potsdam() -> None:
    ids = (IMPERVIOUS, BUILDING, LOW_VEGETATION, TREE, CAR, CLUTTER)
    assert [POTSDAM.names[i] for i in ids] == list(POTSDAM.names)


def test_deterministic() -> None:
    a, b = generate_tile("2_10", 128, seed=1), generate_tile("2_10", 128, seed=1)
    for name in ("rgbir", "dsm", "ndsm", "labels"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.transform == b.transform


@pytest.mark.parametrize(("tile_id", "seed"), [("2_10", 2), ("2_11", 1)])
def test_seed_and_id_change_the_scene(tile_id: str, seed: int) -> None:
    a, b = generate_tile("2_10", 128, seed=1), generate_tile(tile_id, 128, seed=seed)
    assert not np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.rgbir, b.rgbir)


def test_class_balance_256(tiles: list[SyntheticTile]) -> None:
    for tile in tiles:
        f = fractions(tile.labels)
        assert (f > 0).all(), f
        assert f.max() < 0.6, f


def test_class_balance_512() -> None:
    f = fractions(generate_tile("4_12", 512, seed=5).labels)
    assert (f > 0).all(), f
    assert f.max() < 0.6, f
    for cls in (IMPERVIOUS, BUILDING, LOW_VEGETATION, TREE):
        assert f[cls] >= 0.05, f


def test_small_tile_has_several_classes() -> None:
    assert np.count_nonzero(fractions(generate_tile("2_10", 128).labels)) >= 4


def test_heights(tiles: list[SyntheticTile]) -> None:
    for tile in tiles:
        ndsm, labels = tile.ndsm, tile.labels
        assert (ndsm >= 0).all()
        terrain = tile.dsm - ndsm
        assert terrain.min() >= 30 - 1e-3 and terrain.max() <= 40 + 1e-3
        assert np.abs(np.diff(terrain, axis=0)).max() < 0.05
        assert np.abs(np.diff(terrain, axis=1)).max() < 0.05
        building, tree = ndsm[labels == BUILDING], ndsm[labels == TREE]
        assert building.min() >= 6 and building.max() <= 20.5
        assert tree.max() <= 20.5 and np.median(tree) >= 5
        assert ndsm[labels == LOW_VEGETATION].max() <= 0.5
        assert ndsm[labels == IMPERVIOUS].max() <= 0.1
        car = ndsm[labels == CAR]
        assert car.min() >= 0.5 and car.max() <= 2.0


def test_roof_colours_overlap_pavement(tiles: list[SyntheticTile]) -> None:
    for tile in tiles:
        grey = tile.rgbir[:3].astype(np.float32).mean(axis=0)
        lo, hi = np.percentile(grey[tile.labels == IMPERVIOUS], [5, 95])
        roofs = grey[tile.labels == BUILDING]
        assert ((roofs >= lo) & (roofs <= hi)).mean() > 0.5


def test_infrared_brighter_on_vegetation(tiles: list[SyntheticTile]) -> None:
    for tile in tiles:
        red, ir = tile.rgbir[[0, 3]].astype(np.float32)
        ndvi = (ir - red) / (ir + red + 1)
        vegetation = np.isin(tile.labels, (LOW_VEGETATION, TREE))
        impervious = tile.labels == IMPERVIOUS
        assert ir[vegetation].mean() > ir[impervious].mean() + 10
        assert ndvi[vegetation].mean() > ndvi[impervious].mean() + 0.2


def test_transform_north_up_5cm() -> None:
    tile = generate_tile("2_10", 64)
    t = tile.transform
    assert (t.a, t.b, t.d, t.e) == (GSD, 0.0, 0.0, -GSD)
    assert 300_000 < t.c < 500_000 and 5_700_000 < t.f < 5_900_000


@pytest.mark.parametrize("size", [64, 6000, 8000])
def test_tiles_do_not_overlap(size: int) -> None:
    ids = ["2_10", "2_11", "3_10", "3_11", "10_2", "area_a", "area_b"]
    bounds = []
    for tile_id in ids:
        t = tile_transform(tile_id, size)
        bounds.append((t.c, t.f - size * GSD, t.c + size * GSD, t.f))
    for (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) in combinations(bounds, 2):
        assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0


@pytest.mark.parametrize(("size", "seed"), [(16, 0), (64, -1)])
def test_invalid_arguments(size: int, seed: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        generate_tile("2_10", size, seed)
