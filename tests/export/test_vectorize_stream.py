"""Streaming vectorisation: block rows joined exactly, memory bounded, mosaics (issue 12)."""

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin
from scipy import ndimage

from geoct.classes import ClassTable
from geoct.cli import main as geoct_main
from geoct.export import polygonize, vector_layers
from geoct.export.polygonize import VectorizeStats
from geoct.export.vectorize import vectorize_raster

CLASSES = ClassTable(("bare", "field", "water"), ((200, 50, 50), (40, 200, 40), (30, 30, 220)))
ORIGIN = (500_000.0, 5_800_000.0)
PIXEL = 0.5


def blobs(height: int, width: int, cell: int, seed: int = 0, nodata: float = 0.0) -> np.ndarray:
    """Random 3-class blobs of *cell*-pixel squares, with a fraction of nodata squares."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 3, (height // cell + 1, width // cell + 1)).astype(np.uint8)
    cells[rng.random(cells.shape) < nodata] = 255
    return np.kron(cells, np.ones((cell, cell), np.uint8))[:height, :width]


def read_layer(path: Path) -> gpd.GeoDataFrame:
    return gpd.read_file(path, layer=path.stem if path.suffix == ".gpkg" else None)


def canonical(layer: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """The layer's rows sorted by normalised geometry, for order-free comparison."""
    layer = layer.copy()
    layer["wkb"] = [shapely.to_wkb(shapely.normalize(g)) for g in layer.geometry.values]
    return layer.sort_values("wkb").reset_index(drop=True)


def assert_same_layers(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame, exact: bool = True) -> None:
    a, b = canonical(a), canonical(b)
    assert len(a) == len(b)
    assert (a.wkb == b.wkb).all()
    assert (a.class_id == b.class_id).all() and (a.class_name == b.class_name).all()
    for column in ("area_m2", "perimeter_m"):
        np.testing.assert_allclose(a[column], b[column], rtol=1e-12)
    if "mean_confidence" in a:
        if exact:  # integer confidence sums: identical whatever the blocks
            assert a.mean_confidence.equals(b.mean_confidence)
        else:
            np.testing.assert_allclose(a.mean_confidence, b.mean_confidence, rtol=1e-12)


def component_count(data: np.ndarray) -> int:
    """4-connected regions of one class (nodata aside)."""
    return sum(ndimage.label(data == c)[1] for c in range(3))


def test_blocks_join_exactly_like_one_block(tmp_path: Path, raster_writer) -> None:
    data = blobs(300, 410, cell=3, seed=1, nodata=0.05)
    data[20:280, 200:210] = 1  # a long field crossing every block row
    raster = raster_writer(tmp_path / "b.tif", data, classes=CLASSES)
    rng = np.random.default_rng(2)
    confidence = raster_writer(
        tmp_path / "c.tif", rng.integers(1, 256, data.shape).astype(np.uint8), nodata=0
    )

    def layer(block: int, name: str) -> gpd.GeoDataFrame:
        out = tmp_path / f"{name}.gpkg"
        vectorize_raster(raster, out, confidence_path=confidence, block_size=block)
        return read_layer(out)

    whole = layer(512, "whole")  # one block: no seams, plain GDAL polygons
    assert len(whole) == component_count(data)
    for block in (32, 45, 100):
        assert_same_layers(layer(block, f"b{block}"), whole)


def expected_open_and_held(data: np.ndarray, block: int) -> tuple[int, int, int]:
    """Peak open polygons, peak held polygons and total pieces, counted on the pixels.

    After block row k the open polygons are the regions of ``data[:bottom]`` that
    reach its last line; while row k is joined, those open after row k - 1 are held
    with the pieces (regions of single blocks) of row k.
    """
    height, width = data.shape
    peak_open = peak_held = total = open_above = 0
    for top in range(0, height, block):
        bottom = min(top + block, height)
        pieces = sum(
            component_count(data[top:bottom, left : left + block])
            for left in range(0, width, block)
        )
        total += pieces
        peak_held = max(peak_held, open_above + pieces)
        open_above = 0
        if bottom < height:
            for c in range(3):
                labels, _ = ndimage.label(data[:bottom] == c)
                open_above += np.count_nonzero(np.unique(labels[-1]))
        peak_open = max(peak_open, open_above)
    return peak_open, peak_held, total


def test_memory_is_bounded_by_one_block_row(tmp_path: Path, raster_writer) -> None:
    data = blobs(2048, 512, cell=4, seed=3)
    raster = raster_writer(tmp_path / "big.tif", data, classes=CLASSES)
    stats = VectorizeStats()
    out = vectorize_raster(raster, tmp_path / "big.gpkg", block_size=256, stats=stats)
    peak_open, peak_held, total = expected_open_and_held(data, 256)
    assert stats.block_rows == 8
    assert stats.pieces == total
    assert stats.peak_open == peak_open
    assert stats.peak_held == peak_held
    assert stats.polygons == component_count(data) == len(read_layer(out))
    # the old approach held every piece (~25k) until the end
    assert stats.peak_open < total / 100
    assert stats.peak_held < total / 5


def test_open_polygons_are_held_in_row_parts(tmp_path: Path, raster_writer) -> None:
    """A background spanning the raster stays open to the end, one part per block row."""
    rng = np.random.default_rng(4)
    squares = np.kron(rng.random((86, 43)) < 0.5, np.pad(np.ones((3, 3), bool), ((1, 2), (1, 2))))
    data = squares[:512, :256].astype(np.uint8)  # isolated fields: the background is connected
    raster = raster_writer(tmp_path / "bg.tif", data, classes=CLASSES)
    merger = polygonize.RowMerger()
    with rasterio.open(raster) as src:
        for row, finished in enumerate(polygonize.polygonize_rows(src, None, 64, merger)):
            if row < 7:
                background = merger.open.geoms[np.argmax(shapely.area(merger.open.geoms))]
                assert shapely.get_num_geometries(background) == row + 1
                assert (finished.class_ids != 0).any()
    assert len(merger.open) == 0
    background = finished.geoms[np.argmax(shapely.area(finished.geoms))]
    assert background.geom_type == "Polygon"
    assert len(background.interiors) > 100
    layer = read_layer(vectorize_raster(raster, tmp_path / "bg.gpkg", block_size=64))
    whole = read_layer(vectorize_raster(raster, tmp_path / "whole.gpkg", block_size=512))
    assert_same_layers(layer, whole)
    assert layer.area.sum() == pytest.approx(512 * 256 * PIXEL**2)


def test_batches_are_appended(tmp_path: Path, raster_writer, monkeypatch) -> None:
    data = blobs(200, 300, cell=5, seed=5, nodata=0.1)
    raster = raster_writer(tmp_path / "a.tif", data, classes=CLASSES)
    gpkg = read_layer(vectorize_raster(raster, tmp_path / "one.gpkg", block_size=64))
    monkeypatch.setattr(vector_layers, "WRITE_BATCH", 50)
    stats = VectorizeStats()
    out = vectorize_raster(raster, tmp_path / "many.gpkg", block_size=32, stats=stats)
    assert stats.writes >= 5 and stats.polygons == len(gpkg)
    with closing(sqlite3.connect(out)) as db:  # created once, as GeoPackage 1.2, then appended
        assert db.execute("PRAGMA user_version").fetchone()[0] == 10200
        assert db.execute("SELECT count(*) FROM layer_styles").fetchone()[0] == 1
    assert_same_layers(read_layer(out), gpkg)
    geojson = vectorize_raster(raster, tmp_path / "many.geojson", block_size=32)
    doc = json.loads(geojson.read_text(encoding="utf-8"))
    assert doc["type"] == "FeatureCollection" and doc["name"] == "many" and "crs" not in doc
    assert len(doc["features"]) == len(gpkg)
    from_json = gpd.read_file(geojson).to_crs(gpkg.crs)
    assert from_json.area.sum() == pytest.approx(gpkg.area.sum(), rel=1e-4)  # 7 decimals
    assert sorted(from_json.class_id) == sorted(gpkg.class_id)
    assert all(shapely.is_ccw(g.exterior) for g in gpd.read_file(geojson).geometry)  # RFC 7946


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_failure_mid_stream_leaves_nothing(
    tmp_path: Path, raster_writer, monkeypatch, suffix: str
) -> None:
    raster = raster_writer(tmp_path / "a.tif", blobs(200, 100, cell=5), classes=CLASSES)
    polygonize_row = polygonize.polygonize_row
    rows = []

    def fail_at_third_row(*args, **kwargs):
        rows.append(1)
        if len(rows) == 3:
            raise KeyboardInterrupt
        return polygonize_row(*args, **kwargs)

    monkeypatch.setattr(polygonize, "polygonize_row", fail_at_third_row)
    monkeypatch.setattr(vector_layers, "WRITE_BATCH", 10)  # rows 1 and 2 were appended
    with pytest.raises(KeyboardInterrupt):
        vectorize_raster(raster, tmp_path / f"out{suffix}", block_size=32)
    assert {p.name for p in tmp_path.iterdir()} == {"a.tif"}


def test_confidence_means_are_exact(tmp_path: Path, raster_writer) -> None:
    data = np.zeros((120, 130), np.uint8)
    data[10:110, 20:125] = 1
    confidence = np.where(data == 1, 204, 101).astype(np.uint8)
    confidence[50:60, 0:60] = 0  # nodata: not counted
    raster = raster_writer(tmp_path / "c.tif", data, classes=CLASSES)
    conf = raster_writer(tmp_path / "conf.tif", confidence, nodata=0)
    for block in (16, 33, 200):
        out = vectorize_raster(
            raster, tmp_path / f"c{block}.gpkg", confidence_path=conf, block_size=block
        )
        layer = read_layer(out).set_index("class_id")
        assert layer.loc[1, "mean_confidence"] == 204 / 255
        assert layer.loc[0, "mean_confidence"] == 101 / 255


def test_simplified_stream_keeps_a_coverage(tmp_path: Path, raster_writer) -> None:
    rng = np.random.default_rng(6)
    rows, cols = np.mgrid[:400, :360]
    data = np.zeros((400, 360), np.uint8)
    for _ in range(60):
        row, col, radius = rng.integers(0, 400), rng.integers(0, 360), rng.integers(6, 40)
        data[(rows - row) ** 2 + (cols - col) ** 2 < radius**2] = rng.integers(1, 3)
    full = raster_writer(tmp_path / "full.tif", data, classes=CLASSES)
    holed = data.copy()
    holed[:30, :200] = 255
    holed[150:190, 100:140] = 255
    gappy = raster_writer(tmp_path / "gappy.tif", holed, classes=CLASSES)
    for raster in (full, gappy):
        exact = read_layer(vectorize_raster(raster, tmp_path / f"{raster.stem}.e.gpkg"))
        whole = read_layer(
            vectorize_raster(raster, tmp_path / f"{raster.stem}.w.gpkg", simplify=2.0)
        )
        simple = read_layer(
            vectorize_raster(
                raster, tmp_path / f"{raster.stem}.s.gpkg", simplify=2.0, block_size=64
            )
        )
        geoms = simple.geometry.values
        assert shapely.is_valid(geoms).all()
        assert shapely.coverage_is_valid(geoms)  # neighbours share their edges exactly
        union = shapely.union_all(geoms)
        assert shapely.area(geoms).sum() == pytest.approx(union.area, rel=1e-12)  # no overlaps
        assert len(simple) == len(exact)
        vertices = shapely.get_num_coordinates(geoms).sum()
        assert vertices < 0.3 * shapely.get_num_coordinates(exact.geometry.values).sum()
        assert vertices < 1.15 * shapely.get_num_coordinates(whole.geometry.values).sum()
    assert union.area == pytest.approx((holed != 255).sum() * PIXEL**2, rel=0.01)
    full_union = shapely.union_all(read_layer(tmp_path / "full.s.gpkg").geometry.values)
    assert full_union.area == pytest.approx(400 * 360 * PIXEL**2, rel=1e-12)  # no gaps
    assert full_union.geom_type == "Polygon" and not full_union.interiors


# A mosaic: 2 x 2 GeoTIFF tiles on one grid, assembled by a VRT.

TILE = 80


def write_vrt(path: Path, tiles: dict[tuple[int, int], Path], height: int, width: int) -> Path:
    with rasterio.open(next(iter(tiles.values()))) as src:
        wkt = src.crs.to_wkt()
    transform = from_origin(*ORIGIN, PIXEL, PIXEL)
    names = json.dumps(list(CLASSES.names))
    colours = "".join(f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="255"/>' for r, g, b in CLASSES.colors)
    sources = "".join(
        f"""
    <SimpleSource>
      <SourceFilename relativeToVRT="1">{tile.name}</SourceFilename>
      <SourceBand>1</SourceBand>
      <SrcRect xOff="0" yOff="0" xSize="{TILE}" ySize="{TILE}"/>
      <DstRect xOff="{col * TILE}" yOff="{row * TILE}" xSize="{TILE}" ySize="{TILE}"/>
    </SimpleSource>"""
        for (row, col), tile in tiles.items()
    )
    path.write_text(
        f"""<VRTDataset rasterXSize="{width}" rasterYSize="{height}">
  <SRS>{wkt.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")}</SRS>
  <GeoTransform>{transform.c!r}, {transform.a!r}, 0.0, {transform.f!r}, 0.0, {transform.e!r}</GeoTransform>
  <Metadata><MDI key="CLASS_NAMES">{names}</MDI></Metadata>
  <VRTRasterBand dataType="Byte" band="1">
    <NoDataValue>255</NoDataValue>
    <ColorInterp>Palette</ColorInterp>
    <ColorTable>{colours}</ColorTable>{sources}
  </VRTRasterBand>
</VRTDataset>
""",
        encoding="utf-8",
    )
    return path


def mosaic_scene() -> np.ndarray:
    data = blobs(2 * TILE, 2 * TILE, cell=5, seed=7, nodata=0.03)
    data[60:100, 10:150] = 1  # a field across the horizontal tile border
    data[10:150, 60:100] = 1  # ... and the vertical one: one cross over all four tiles
    data[70:90, 70:90] = 2  # a pond on the tile corner, a hole in the field
    return data


def test_mosaic_vrt_equals_merged_geotiff(tmp_path: Path, raster_writer, capsys) -> None:
    data = mosaic_scene()
    tiles = {}
    for row in range(2):
        for col in range(2):
            origin = (ORIGIN[0] + col * TILE * PIXEL, ORIGIN[1] - row * TILE * PIXEL)
            tile = data[row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE]
            tiles[row, col] = raster_writer(
                tmp_path / f"tile_{row}_{col}.classes.tif",
                tile,
                transform=from_origin(*origin, PIXEL, PIXEL),
                classes=CLASSES,
            )
    vrt = write_vrt(tmp_path / "mosaic.classes.vrt", tiles, 2 * TILE, 2 * TILE)
    merged = raster_writer(tmp_path / "merged.classes.tif", data, classes=CLASSES)
    with rasterio.open(vrt) as src:
        assert (src.read(1) == data).all()
    for block in (TILE, 48, 1024):  # blocks on the tiles, across them, one block
        for raster in (vrt, merged):
            args = ["vectorize", str(raster), "--block-size", str(block), "--overwrite"]
            assert geoct_main(args) == 0
        assert "warning" not in capsys.readouterr().err  # names and colours from the VRT
        mosaic = read_layer(tmp_path / "mosaic.polygons.gpkg")
        assert_same_layers(mosaic, read_layer(tmp_path / "merged.polygons.gpkg"))
        assert len(mosaic) == component_count(data)
        centre = shapely.Point(ORIGIN[0] + TILE * PIXEL, ORIGIN[1] - TILE * PIXEL)
        pond = mosaic[mosaic.contains(centre)]
        assert len(pond) == 1 and pond.class_name.iloc[0] == "water"
        assert pond.area_m2.iloc[0] == pytest.approx(400 * PIXEL**2, rel=1e-3)
        cross = mosaic[mosaic.touches(pond.geometry.iloc[0]) & (mosaic.class_id == 1)]
        cross = cross[cross.area > 1000 * PIXEL**2]
        assert len(cross) == 1  # one polygon over the four tiles
        field = cross.geometry.iloc[0]
        assert len(field.interiors) >= 1
        for tile in tiles.values():
            with rasterio.open(tile) as src:
                assert field.intersection(shapely.box(*src.bounds)).area > 500 * PIXEL**2
