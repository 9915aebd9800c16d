"""Vector labels: polygons with a class field, burned onto each image's pixel grid.

Training polygons digitised in QGIS or ArcGIS are read from any OGR vector file
(GeoPackage, GeoJSON, Shapefile, FlatGeobuf; GeoParquet with ``pyarrow``),
checked, reprojected to each image's CRS and rasterised onto its grid:

* **Pixel-centre rule.** A pixel takes a polygon's class when its centre lies
  inside the polygon (GDAL's rule, ``all_touched=False``), so a polygon covers the
  same pixels whatever its neighbours and a pixel never gets two classes.
* **Priority.** Where polygons overlap, the one drawn last wins. Polygons are drawn
  from the largest ground area to the smallest, so a car digitised on top of a
  road, or a tree inside a lawn, keeps its class; with a priority field, lower
  values are drawn first and higher ones win (ties again by area).
* **Ignore index.** Pixels that no polygon covers get the class table's ignore
  index: sparse labels train correctly and unlabelled ground is never a class.
  A feature whose class id is the ignore index (e.g. 255) masks what is under it.

Nothing is dropped silently: empty geometries, point or line features, features
outside every image and features too thin to cover a pixel centre are skipped with
a warning that counts them; invalid geometries (self-intersections such as a
bow-tie) are repaired with :func:`shapely.make_valid` and counted; a missing field,
missing class values and unknown classes are errors.
"""

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from pyproj import CRS, Transformer
from rasterio.features import rasterize

from ..classes import RGB, ClassTable
from ..errors import InputError
from ..export.class_raster import DEFAULT_COLORS
from ..geodesy import ground_area_perimeter
from .layout import Grid

#: File name endings read as vector files (anything else is a raster).
VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".parquet", ".geoparquet")

#: Endings read with :func:`geopandas.read_parquet` (needs ``pyarrow``).
PARQUET_SUFFIXES = (".parquet", ".geoparquet")

#: Points along each side of an image's footprint when it is projected to the
#: vector CRS, so that its curved outline is followed closely.
FOOTPRINT_POINTS = 64

#: Class id of features that mark areas to ignore when ids come without a class table.
IGNORE_ID = 255

#: Feature ids named in a message, at most.
SHOWN_FEATURES = 5


def is_vector_file(path: str | Path) -> bool:
    """Whether *path* is read as a vector file, by its ending."""
    return str(path).lower().endswith(VECTOR_SUFFIXES)


def _examples(fids: Sequence[object]) -> str:
    shown = ", ".join(str(f) for f in list(fids)[:SHOWN_FEATURES])
    if len(fids) == 1:
        return f"feature {shown}"
    return f"features {shown}" + (", ..." if len(fids) > SHOWN_FEATURES else "")


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"{n} {word}"
    if word.endswith("y"):
        return f"{n} {word[:-1]}ies"
    return f"{n} {word}es" if word.endswith("s") else f"{n} {word}s"


def read_vector(
    path: str | Path, layer: str | None = None, option: str = "--label-layer"
) -> gpd.GeoDataFrame:
    """Read one layer of a vector file, indexed by feature id.

    Args:
        path: GeoPackage, GeoJSON, Shapefile, FlatGeobuf or GeoParquet file.
        layer: Layer to read; needed only when the file has several.
        option: Command-line option that chooses the layer, named in errors.

    Returns:
        The features; the index holds the feature ids (``fid``) as QGIS shows them.

    Raises:
        InputError: If the file is missing or unreadable, has several layers and
            *layer* is not given, has no layer *layer*, or has no CRS.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if str(path).lower().endswith(PARQUET_SUFFIXES):
        frame = _read_parquet(path)
    else:
        frame = _read_ogr(path, layer, option)
    if frame.crs is None:
        raise InputError(
            path, "has no CRS; assign one (QGIS: Layer Properties > Source > Assigned CRS)"
        )
    return frame


def _read_parquet(path: Path) -> gpd.GeoDataFrame:
    try:
        return gpd.read_parquet(path)
    except ImportError:
        raise InputError(path, "reading GeoParquet needs pyarrow (pip install pyarrow)") from None
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot be read as GeoParquet ({e})") from None


def _read_ogr(path: Path, layer: str | None, option: str) -> gpd.GeoDataFrame:
    try:
        layers = pyogrio.list_layers(path)
    except pyogrio.errors.DataSourceError:
        raise InputError(path, "not a vector file GDAL can read") from None
    spatial = [str(name) for name, geometry_type in layers if geometry_type is not None]
    if not spatial:
        raise InputError(path, "has no layer with geometries")
    if layer is None and len(spatial) > 1:
        raise InputError(
            path, f"has {len(spatial)} layers ({', '.join(spatial)}); choose one with {option}"
        )
    if layer is not None and layer not in [str(name) for name, _ in layers]:
        raise InputError(path, f"has no layer {layer!r} (layers: {', '.join(spatial)})")
    try:
        return gpd.read_file(path, layer=layer or spatial[0], fid_as_index=True)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as e:
        raise InputError(path, f"cannot be read ({e})") from None


def clean_polygons(frame: gpd.GeoDataFrame, path: str | Path) -> gpd.GeoDataFrame:
    """Keep the polygonal features, repairing invalid ones; warn about every change.

    Args:
        frame: Features as read.
        path: Their file, named in warnings.

    Returns:
        The features with a non-empty, valid (multi)polygon; invalid geometries
        are repaired with :func:`shapely.make_valid` (``structure`` method) and
        keep only their polygonal parts.
    """
    geoms = frame.geometry.to_numpy()
    empty = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    if empty.any():
        ids = frame.index[empty].tolist()
        warnings.warn(
            f"{path}: {_plural(int(empty.sum()), 'feature')} with an empty geometry skipped "
            f"({_examples(ids)})",
            stacklevel=2,
        )
    invalid = ~empty & ~shapely.is_valid(np.where(empty, None, geoms))
    if invalid.any():
        ids = frame.index[invalid].tolist()
        reason = shapely.is_valid_reason(geoms[invalid][0])
        warnings.warn(
            f"{path}: {_plural(int(invalid.sum()), 'invalid geometry')} repaired with "
            f"make_valid ({_examples(ids)}; first: {reason})",
            stacklevel=2,
        )
        geoms = geoms.copy()
        geoms[invalid] = shapely.make_valid(
            geoms[invalid], method="structure", keep_collapsed=False
        )
    geoms = np.array(
        [_polygonal(g) if ok else None for g, ok in zip(geoms, ~empty, strict=True)], dtype=object
    )
    lost = ~empty & (shapely.is_missing(geoms) | shapely.is_empty(geoms))
    if lost.any():
        ids = frame.index[lost].tolist()
        warnings.warn(
            f"{path}: {_plural(int(lost.sum()), 'feature')} without area (points, lines or "
            f"collapsed polygons) skipped ({_examples(ids)}); labels must be polygons",
            stacklevel=2,
        )
    keep = ~empty & ~lost
    out = frame[keep].copy()
    return out.set_geometry(gpd.GeoSeries(geoms[keep], index=out.index, crs=frame.crs))


def _polygonal(geom: shapely.Geometry) -> shapely.Geometry | None:
    """The polygonal parts of *geom*, or None."""
    if isinstance(geom, shapely.Polygon | shapely.MultiPolygon):
        return geom
    parts = [
        p for p in shapely.get_parts(geom) if isinstance(p, shapely.Polygon | shapely.MultiPolygon)
    ]
    return shapely.union_all(parts) if parts else None


def classes_from_values(names: Sequence[str]) -> ClassTable:
    """A class table of *names* (in this order) with distinct default colours."""
    return ClassTable(names=tuple(names), colors=distinct_colors(len(names)))


def distinct_colors(n: int) -> tuple[RGB, ...]:
    """*n* distinct colours: :data:`~geoct.export.class_raster.DEFAULT_COLORS`, then more."""
    colors = list(DEFAULT_COLORS[:n])
    hue = 0.0
    while len(colors) < n:
        hue = (hue + 0.618033988749895) % 1.0
        rgb = _hsv_to_rgb(hue, 0.55 + 0.4 * ((len(colors) // 7) % 2), 0.85)
        if rgb not in colors:
            colors.append(rgb)
    return tuple(colors)


def _hsv_to_rgb(h: float, s: float, v: float) -> RGB:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return round(r * 255), round(g * 255), round(b * 255)


def _is_id_field(values: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return False
    v = values.to_numpy(dtype=np.float64)
    return bool(np.all(v == np.round(v)))


def class_ids(
    values: pd.Series,
    classes: ClassTable | None,
    path: str | Path,
    field: str,
    unknown_as_ignore: bool = False,
) -> tuple[np.ndarray, np.ndarray, ClassTable]:
    """Class ids of the features from their field values.

    Args:
        values: The class field, indexed by feature id; names (text) or ids (integers).
        classes: Class table to match against; None builds one from the values:
            the distinct names sorted (ids: the distinct values but
            :data:`IGNORE_ID` sorted numerically, numbered from 0 and named by their
            value), with distinct default colours.
        path: Vector file, named in errors.
        field: Field name, named in errors.
        unknown_as_ignore: Give features with a missing value or a class not in
            *classes* the ignore index (with a warning) instead of failing.

    Returns:
        uint8 ids, whether each feature is kept (false for features skipped under
        *unknown_as_ignore*), and the class table.

    Raises:
        InputError: For missing values, or classes not in *classes*, unless
            *unknown_as_ignore*; for more classes than a class table holds.
    """
    missing = values.isna().to_numpy()
    if missing.any() and not unknown_as_ignore:
        raise InputError(
            path,
            f"{_plural(int(missing.sum()), 'feature')} without a value in field {field!r} "
            f"({_examples(values.index[missing].tolist())}); fill them in, or use "
            "--unknown-as-ignore to skip them",
        )
    present = values[~missing]
    numeric = _is_id_field(present)
    keys = present.astype(np.int64) if numeric else present.astype(str)
    if classes is None:
        ignore = {IGNORE_ID} if numeric else set()
        distinct = sorted(set(keys.tolist()) - ignore)
        if not distinct:
            raise InputError(path, f"no feature has a value in field {field!r}")
        if len(distinct) > 254:
            raise InputError(
                path, f"field {field!r} has {len(distinct)} values, at most 254 classes"
            )
        classes = classes_from_values([str(v) for v in distinct])
        lookup = {v: i for i, v in enumerate(distinct)} | {v: classes.ignore_index for v in ignore}
    elif numeric:
        lookup = {i: i for i in range(classes.num_classes)} | {
            classes.ignore_index: classes.ignore_index
        }
    else:
        lookup = {name: i for i, name in enumerate(classes.names)}
    ids = np.full(len(values), classes.ignore_index, dtype=np.uint8)
    mapped = keys.map(lookup)
    unknown = mapped.isna().to_numpy()
    if unknown.any():
        _unknown_classes(keys[unknown], classes, path, field, numeric, unknown_as_ignore)
    kept = np.flatnonzero(~missing)[~unknown]
    ids[kept] = mapped[~unknown].to_numpy(dtype=np.int64)
    keep = np.zeros(len(values), dtype=bool)
    keep[kept] = True
    if missing.any():
        warnings.warn(
            f"{path}: {_plural(int(missing.sum()), 'feature')} without a value in field "
            f"{field!r} ignored ({_examples(values.index[missing].tolist())})",
            stacklevel=2,
        )
    return ids, keep, classes


def _unknown_classes(
    keys: pd.Series,
    classes: ClassTable,
    path: str | Path,
    field: str,
    numeric: bool,
    unknown_as_ignore: bool,
) -> None:
    counts = keys.value_counts()
    listed = ", ".join(f"{v!r}: {_plural(int(n), 'feature')}" for v, n in counts.head(8).items())
    more = f" and {len(counts) - 8} more" if len(counts) > 8 else ""
    known = (
        f"ids 0-{classes.num_classes - 1} or {classes.ignore_index}"
        if numeric
        else ", ".join(classes.names)
    )
    message = (
        f"{_plural(len(counts), 'unknown class')} in field {field!r}: {listed}{more} "
        f"(classes: {known})"
    )
    if not unknown_as_ignore:
        raise InputError(path, f"{message}; use --unknown-as-ignore to skip them")
    warnings.warn(f"{path}: {message} ignored", stacklevel=3)


def drawing_order(geoms: np.ndarray, crs: CRS, priority: np.ndarray | None = None) -> np.ndarray:
    """Indices of *geoms* in drawing order: the last drawn wins where polygons overlap.

    Args:
        geoms: Polygons in *crs*.
        crs: Their CRS (areas are measured on the ground, in m²).
        priority: Optional number per polygon; lower values are drawn first.

    Returns:
        Ascending *priority*, then descending ground area, then file order.
    """
    area, _ = ground_area_perimeter(geoms, crs)
    position = np.arange(len(geoms))
    if priority is None:
        return np.lexsort((position, -area))
    return np.lexsort((position, -area, priority))


def _footprint(grid: Grid, crs: CRS) -> shapely.Geometry:
    """The outline of *grid* in *crs*, densified so that its curved sides are followed."""
    t = grid.transform
    corners = [t @ (0, 0), t @ (grid.width, 0), t @ (grid.width, grid.height), t @ (0, grid.height)]
    outline = shapely.Polygon(corners)
    dense = shapely.segmentize(outline, outline.length / (4 * FOOTPRINT_POINTS))
    to_crs = Transformer.from_crs(grid.crs, crs, always_xy=True)
    return shapely.make_valid(
        shapely.transform(dense, lambda xy: np.column_stack(to_crs.transform(xy[:, 0], xy[:, 1])))
    )


@dataclass
class VectorLabels:
    """Label polygons with their class ids, in drawing order (the last drawn wins).

    Attributes:
        path: The vector file, named in messages.
        geometry: Valid (multi)polygons in :attr:`crs`, in drawing order.
        class_ids: uint8 class id of each polygon (the ignore index masks).
        fids: Feature id of each polygon in the file.
        crs: CRS of the polygons.
        classes: Class table of the ids.
    """

    path: Path
    geometry: np.ndarray
    class_ids: np.ndarray
    fids: np.ndarray
    crs: CRS
    classes: ClassTable

    def __post_init__(self) -> None:
        """Index the polygons for footprint queries."""
        self._tree = shapely.STRtree(self.geometry)
        self._burned = np.zeros(len(self.geometry), dtype=bool)

    def on_grid(self, grid: Grid) -> np.ndarray:
        """Indices (in drawing order) of the polygons that intersect *grid*'s footprint."""
        return np.sort(self._tree.query(_footprint(grid, self.crs), predicate="intersects"))

    def check_coverage(self, grids: Sequence[Grid]) -> None:
        """Fail if no polygon lies on any image, warn about those that lie on none.

        Raises:
            InputError: If every polygon is outside every image (usually a wrong CRS).
        """
        hit = np.zeros(len(self.geometry), dtype=bool)
        for grid in grids:
            hit[self.on_grid(grid)] = True
        footprints = [_footprint(grid, self.crs) for grid in grids]
        if hit.all():
            return
        outside = self.fids[~hit].tolist()
        if not hit.any():

            def span(geoms: Sequence[shapely.Geometry]) -> str:
                return ", ".join(f"{v:.8g}" for v in shapely.total_bounds(geoms))

            raise InputError(
                self.path,
                f"none of the {_plural(len(outside), 'feature')} lies on any image (in "
                f"{self.crs.to_string()}, the features span {span(self.geometry)}, the images "
                f"{span(footprints)}); check the layer's CRS",
            )
        warnings.warn(
            f"{self.path}: {len(outside)} of {len(self.fids)} features "
            f"{'lies' if len(outside) == 1 else 'lie'} outside every image and "
            f"{'is' if len(outside) == 1 else 'are'} not used ({_examples(outside)})",
            stacklevel=2,
        )

    def rasterize(self, grid: Grid) -> np.ndarray:
        """Burn the polygons onto *grid* by the pixel-centre rule, in drawing order.

        Args:
            grid: The image's grid.

        Returns:
            uint8 class ids ``(H, W)``; the ignore index where no polygon covers a
            pixel centre.
        """
        chosen = self.on_grid(grid)
        if not len(chosen):
            return np.full((grid.height, grid.width), self.classes.ignore_index, dtype=np.uint8)
        geoms = gpd.GeoSeries(self.geometry[chosen], crs=self.crs).to_crs(grid.crs)
        burned = rasterize(
            zip(geoms.to_numpy(), chosen.tolist(), strict=True),
            out_shape=(grid.height, grid.width),
            transform=grid.transform,
            fill=-1,
            all_touched=False,
            dtype=np.int32,
        )
        seen = np.unique(burned)
        self._burned[seen[seen >= 0]] = True
        lut = np.append(self.class_ids, np.uint8(self.classes.ignore_index))
        return lut[burned]

    def warn_unburned(self, grids: Sequence[Grid]) -> None:
        """Warn about polygons on an image that no pixel centre fell in, once all are burned."""
        on_images = np.zeros(len(self.geometry), dtype=bool)
        for grid in grids:
            on_images[self.on_grid(grid)] = True
        unburned = on_images & ~self._burned
        if unburned.any():
            n = int(unburned.sum())
            warnings.warn(
                f"{self.path}: {_plural(n, 'feature')} {'covers' if n == 1 else 'cover'} "
                "no pixel centre "
                f"(thinner than a pixel, or hidden under features drawn later) "
                f"({_examples(self.fids[unburned].tolist())})",
                stacklevel=2,
            )


def read_vector_labels(
    path: str | Path,
    field: str,
    classes: ClassTable | None = None,
    layer: str | None = None,
    priority: str | None = None,
    unknown_as_ignore: bool = False,
) -> VectorLabels:
    """Read, check and order label polygons.

    Args:
        path: Vector file (see :data:`VECTOR_SUFFIXES`).
        field: Field holding each feature's class name or id.
        classes: Class table; None builds one from the field's values (see
            :func:`class_ids`).
        layer: Layer of a file with several.
        priority: Numeric field giving the drawing order (higher values win); by
            default smaller polygons win.
        unknown_as_ignore: Skip features with unknown or missing classes (with a
            warning) instead of failing.

    Returns:
        The polygons in drawing order.

    Raises:
        InputError: For an unreadable file or layer, a missing field, missing or
            unknown classes, or a file without polygons.
    """
    path = Path(path)
    frame = read_vector(path, layer)
    for name in (field, priority):
        if name is not None and name not in frame.columns:
            fields = ", ".join(str(c) for c in frame.columns if c != frame.geometry.name)
            raise InputError(path, f"has no field {name!r} (fields: {fields or 'none'})")
    if frame.empty:
        raise InputError(path, "has no features")
    ids, keep, classes = class_ids(frame[field], classes, path, field, unknown_as_ignore)
    frame = clean_polygons(frame.assign(_class_id=ids)[keep], path)
    if frame.empty:
        raise InputError(path, "has no polygon with an area to use as a label")
    order_by = None
    if priority is not None:
        values = pd.to_numeric(frame[priority], errors="coerce")
        bad = values.isna().to_numpy()
        if bad.any():
            raise InputError(
                path,
                f"{_plural(int(bad.sum()), 'feature')} without a number in priority field "
                f"{priority!r} ({_examples(frame.index[bad].tolist())})",
            )
        order_by = values.to_numpy(dtype=np.float64)
    geoms = frame.geometry.to_numpy()
    order = drawing_order(geoms, frame.crs, order_by)
    return VectorLabels(
        path=path,
        geometry=geoms[order],
        class_ids=frame["_class_id"].to_numpy(dtype=np.uint8)[order],
        fids=frame.index.to_numpy()[order],
        crs=CRS.from_user_input(frame.crs),
        classes=classes,
    )


@dataclass
class AreaOfInterest:
    """Where labels count: pixels outside become the ignore index.

    Attributes:
        path: The vector file, named in messages.
        geometry: The union of its polygons, in :attr:`crs`.
        crs: CRS of the geometry.
    """

    path: Path
    geometry: shapely.Geometry
    crs: CRS

    @classmethod
    def read(cls, path: str | Path, layer: str | None = None) -> "AreaOfInterest":
        """Read the polygons of an AOI file and merge them.

        Raises:
            InputError: If the file is unreadable or has no polygon.
        """
        path = Path(path)
        frame = clean_polygons(read_vector(path, layer, "--aoi-layer"), path)
        if frame.empty:
            raise InputError(path, "has no polygon to use as an area of interest")
        return cls(
            path, shapely.union_all(frame.geometry.to_numpy()), CRS.from_user_input(frame.crs)
        )

    def mask(self, grid: Grid) -> np.ndarray:
        """Pixels of *grid* whose centre lies inside the AOI, as a boolean ``(H, W)``."""
        geom = gpd.GeoSeries([self.geometry], crs=self.crs).to_crs(grid.crs).iloc[0]
        if geom.is_empty:
            return np.zeros((grid.height, grid.width), dtype=bool)
        inside = rasterize(
            [(geom, 1)],
            out_shape=(grid.height, grid.width),
            transform=grid.transform,
            fill=0,
            all_touched=False,
            dtype=np.uint8,
        )
        return inside.astype(bool)
