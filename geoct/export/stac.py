"""STAC Items describing predictions: assets, classes, grid and provenance.

The Item uses the ``classification`` extension for the class raster (values,
names, colours), the ``proj`` extension for the shared pixel grid and ``raster``
for nodata and data types; its bbox and geometry are the raster footprint in
EPSG:4326 (the true quadrilateral of a rotated or sheared grid). ``gsd`` and the
bands' ``spatial_resolution`` are ground metres at the scene centre, also for
lon/lat and Web Mercator rasters. Provenance (checkpoint hash, config, window,
overlap, versions) is stored in ``geoct:``-prefixed properties.

Schema validation with :meth:`pystac.Item.validate` downloads the extension
schemas; :func:`validate_offline` checks what can be checked without a network.
"""

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pystac
import shapely
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from pystac.validation import validate_dict
from rasterio.io import DatasetReader
from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape
from shapely.geometry.polygon import orient

from ..classes import ClassTable
from ..errors import InputError
from ..geodesy import ground_gsd
from ..metadata import ModelSpec
from ..raster_io import atomic_output, open_raster
from .class_raster import has_class_names, max_class_id, read_class_table
from .styles import hex_color

#: Asset key -> (title, roles) of each prediction output.
ASSETS: dict[str, tuple[str, list[str]]] = {
    "classes": ("Land-cover classes", ["data", "classification"]),
    "confidence": ("Confidence (max class probability x 255)", ["quality", "confidence"]),
    "probabilities": ("Class probabilities x 255, one band per class", ["data", "probability"]),
    "polygons": ("Land-cover polygons", ["data", "vector"]),
}

#: Media types of assets by file extension.
MEDIA_TYPES: dict[str, str] = {
    ".tif": pystac.MediaType.COG,
    ".tiff": pystac.MediaType.COG,
    ".gpkg": "application/geopackage+sqlite3",
    ".geojson": pystac.MediaType.GEOJSON,
}

#: Points per footprint edge, so that edges keep their shape in EPSG:4326.
FOOTPRINT_POINTS = 16

#: Prefix of the provenance properties.
PREFIX = "geoct:"


def package_version(name: str) -> str | None:
    """Return the installed version of a distribution, or None."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def stac_name(name: str) -> str:
    """Return *name* with the characters STAC forbids in class names replaced by ``_``."""
    return re.sub(r"[^0-9A-Za-z_-]", "_", name) or "_"


def footprint(src: DatasetReader) -> dict[str, Any]:
    """Return the raster footprint as a GeoJSON polygon in EPSG:4326.

    The outline joins the four outer pixel corners through the affine transform
    (for rotated and sheared grids a rotated quadrilateral, not the bounding box),
    with :data:`FOOTPRINT_POINTS` points per edge, counter-clockwise (RFC 7946).

    Raises:
        InputError: If the raster has no CRS.
    """
    if src.crs is None:
        raise InputError(src.name, "has no CRS, cannot place it on the map for STAC")
    steps = [i / FOOTPRINT_POINTS for i in range(FOOTPRINT_POINTS)]
    w, h = src.width, src.height
    corners = [(w * t, 0) for t in steps] + [(w, h * t) for t in steps]
    corners += [(w * (1 - t), h) for t in steps] + [(0, h * (1 - t)) for t in steps]
    outline = orient(shapely.Polygon([src.transform @ c for c in corners]))
    geometry = transform_geom(src.crs, "EPSG:4326", mapping(outline))
    return mapping(_counter_clockwise(shape(geometry)))


def _counter_clockwise(geometry: shapely.Geometry) -> shapely.Geometry:
    if isinstance(geometry, shapely.MultiPolygon):
        return shapely.MultiPolygon([orient(part) for part in geometry.geoms])
    return orient(geometry)


def footprint_bbox(geometry: dict[str, Any]) -> list[float]:
    """Return the STAC bbox of a footprint in EPSG:4326.

    A footprint cut in two at the antimeridian gets a bbox whose west edge is
    east of its east edge, as STAC and RFC 7946 specify, instead of one that spans
    the whole globe.
    """
    geom = shape(geometry)
    west, south, east, north = geom.bounds
    if isinstance(geom, shapely.MultiPolygon) and west <= -180 and east >= 180:
        bounds = [part.bounds for part in geom.geoms]
        eastern = [b[0] for b in bounds if b[2] >= 180 and b[0] > -180]
        western = [b[2] for b in bounds if b[0] <= -180 and b[2] < 180]
        if eastern and western:
            return [min(eastern), south, max(western), north]
    return [west, south, east, north]


def classification_classes(classes: ClassTable) -> list[Classification]:
    """Return the class list of the ``classification`` extension, nodata included."""
    entries = [
        Classification.create(
            value=i, name=stac_name(name), description=name, color_hint=hex_color(rgb)[1:].upper()
        )
        for i, (name, rgb) in enumerate(zip(classes.names, classes.colors, strict=True))
    ]
    entries.append(
        Classification.create(
            value=classes.ignore_index, name="nodata", description="no prediction", nodata=True
        )
    )
    return entries


def _asset(path: Path, key: str) -> pystac.Asset:
    title, roles = ASSETS[key]
    media_type = MEDIA_TYPES.get(path.suffix.lower())
    return pystac.Asset(href=str(path.resolve()), title=title, media_type=media_type, roles=roles)


def raster_gsd(src: DatasetReader) -> float | None:
    """Return the ground sample distance of a raster in metres, or None without a CRS."""
    if src.crs is None:
        return None
    return ground_gsd(src.crs, src.transform, src.width, src.height)


def _raster_band(src: DatasetReader, band: int) -> RasterBand:
    nodata = src.nodatavals[band - 1]
    scale = src.scales[band - 1]
    return RasterBand.create(
        nodata=nodata,
        data_type=DataType(src.dtypes[band - 1]),
        spatial_resolution=raster_gsd(src),
        scale=scale if scale != 1.0 else None,
    )


def _add_raster_asset(item: pystac.Item, key: str, path: Path) -> None:
    asset = _asset(path, key)
    item.add_asset(key, asset)
    with open_raster(path) as src:
        bands = [_raster_band(src, b) for b in range(1, src.count + 1)]
    RasterExtension.ext(asset, add_if_missing=True).apply(bands)


def provenance_properties(
    provenance: Mapping[str, Any] | None, spec: ModelSpec | None
) -> dict[str, Any]:
    """Return the ``geoct:`` properties: provenance, model spec and package versions.

    Args:
        provenance: E.g. ``checkpoint``, ``checkpoint_sha256``, ``config``,
            ``window``, ``overlap``; values must be JSON-serialisable.
        spec: Input contract of the model, if known.

    Returns:
        Properties keyed ``geoct:<name>``.
    """
    properties = {f"{PREFIX}{k}": v for k, v in (provenance or {}).items() if k != "datetime"}
    if spec is not None:
        properties[f"{PREFIX}model_spec"] = spec.to_dict()
    properties[f"{PREFIX}version"] = package_version("geoct")
    properties[f"{PREFIX}torch_version"] = package_version("torch")
    return properties


def _raster_classes(path: Path, src: DatasetReader) -> ClassTable:
    count = None if has_class_names(path) else max_class_id(src) + 1
    return read_class_table(path, num_classes=count)


def build_stac_item(
    classes_path: str | Path,
    confidence_path: str | Path | None = None,
    probabilities_path: str | Path | None = None,
    polygons_path: str | Path | None = None,
    classes: ClassTable | None = None,
    spec: ModelSpec | None = None,
    provenance: Mapping[str, Any] | None = None,
    item_id: str | None = None,
) -> pystac.Item:
    """Describe a prediction as a STAC Item with absolute asset hrefs.

    Args:
        classes_path: Class raster.
        confidence_path: Confidence raster, if written.
        probabilities_path: Probability raster, if written.
        polygons_path: Polygon layer, if written.
        classes: Class table; defaults to the spec's, else the raster's.
        spec: Input contract of the model, recorded with the provenance.
        provenance: Extra ``geoct:`` properties (see :func:`provenance_properties`);
            a ``datetime`` entry (ISO 8601 string or datetime) sets the Item time.
        item_id: Item id; defaults to the class raster's name without ``.classes.tif``.

    Returns:
        The Item.

    Raises:
        InputError: If a raster cannot be read or has no CRS.
    """
    classes_path = Path(classes_path)
    when = (provenance or {}).get("datetime") or datetime.now(UTC)
    if isinstance(when, str):
        when = datetime.fromisoformat(when)
    with open_raster(classes_path) as src:
        geometry = footprint(src)
        crs, transform, shape_hw = src.crs, src.transform, [src.height, src.width]
        bounds = list(src.bounds)
        gsd = raster_gsd(src)
        table = classes or (spec.classes if spec else None) or _raster_classes(classes_path, src)
    item = pystac.Item(
        id=item_id or classes_path.name.removesuffix(".tif").removesuffix(".classes"),
        geometry=geometry,
        bbox=footprint_bbox(geometry),
        datetime=when,
        properties=provenance_properties(provenance, spec),
    )
    item.common_metadata.gsd = gsd
    item.common_metadata.created = datetime.now(UTC)
    projection = ProjectionExtension.ext(item, add_if_missing=True)
    projection.epsg = crs.to_epsg()
    projection.wkt2 = crs.to_wkt(version="WKT2_2019")
    projection.transform = list(transform)[:6]
    projection.shape = shape_hw
    projection.bbox = bounds
    _add_raster_asset(item, "classes", classes_path)
    classification = ClassificationExtension.ext(item.assets["classes"], add_if_missing=True)
    classification.classes = classification_classes(table)
    for key, path in (("confidence", confidence_path), ("probabilities", probabilities_path)):
        if path is not None:
            _add_raster_asset(item, key, Path(path))
    if polygons_path is not None:
        item.add_asset("polygons", _asset(Path(polygons_path), "polygons"))
    return item


def validate_offline(item: pystac.Item) -> None:
    """Validate an Item without network access.

    Checks the core Item schema (bundled with pystac), that the Item survives a
    dict round trip unchanged, and that the extension fields geoct relies on are
    present. Extension schemas need a download: use :meth:`pystac.Item.validate`
    where a network is available.

    Args:
        item: The Item.

    Raises:
        pystac.errors.STACValidationError: If the core schema is violated.
        ValueError: If the round trip or extension fields are wrong.
    """
    d = item.to_dict(include_self_link=False)
    validate_dict(d, stac_object_type=pystac.STACObjectType.ITEM, extensions=[])
    if pystac.Item.from_dict(d).to_dict(include_self_link=False) != d:
        raise ValueError("STAC Item changes in a dict round trip")
    classes_asset = d["assets"].get("classes", {})
    required = {
        ProjectionExtension.get_schema_uri(): (d["properties"], ("proj:shape", "proj:transform")),
        ClassificationExtension.get_schema_uri(): (classes_asset, ("classification:classes",)),
    }
    for uri, (holder, fields) in required.items():
        missing = [f for f in fields if f not in holder]
        if uri not in d.get("stac_extensions", []) or missing:
            raise ValueError(f"STAC Item lacks extension {uri} or its fields {missing}")


def write_stac_item(
    classes_path: str | Path,
    output: str | Path,
    confidence_path: str | Path | None = None,
    probabilities_path: str | Path | None = None,
    polygons_path: str | Path | None = None,
    spec: ModelSpec | None = None,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a STAC Item JSON for a prediction, asset hrefs relative to it.

    Args:
        classes_path: Class raster.
        output: Item JSON file, e.g. ``SCENE.item.json``.
        confidence_path: Confidence raster, if written.
        probabilities_path: Probability raster, if written.
        polygons_path: Polygon layer, if written.
        spec: Input contract of the model (gives the class table).
        provenance: ``geoct:`` properties and optional ``datetime``.
        overwrite: Whether an existing *output* may be replaced.

    Returns:
        *output*.

    Raises:
        InputError: If a raster cannot be read or the output cannot be written.
        OutputExistsError: If *output* exists and *overwrite* is false.
    """
    output = Path(output)
    item = build_stac_item(
        classes_path,
        confidence_path,
        probabilities_path,
        polygons_path,
        spec=spec,
        provenance=provenance,
    )
    item.set_self_href(str(output.resolve()))
    item.make_asset_hrefs_relative()
    validate_offline(item)
    with atomic_output(output, overwrite) as tmp:
        text = json.dumps(item.to_dict(include_self_link=False), indent=2, default=str)
        tmp.write_text(text + "\n", encoding="utf-8")
    return output


def write_stac_collection(
    path: str | Path, item_paths: list[Path], description: str, overwrite: bool = False
) -> Path:
    """Write a STAC Collection whose items are the given Item files (e.g. mosaic tiles).

    The items are rewritten in place with links to the collection; the collection's
    extent is the union of their bounding boxes and times.

    Args:
        path: ``collection.json`` to write.
        item_paths: STAC Item files.
        description: Collection description.
        overwrite: Whether an existing collection may be replaced.

    Returns:
        *path*.
    """
    path = Path(path)
    items = [pystac.Item.from_file(str(p)) for p in item_paths]
    if not items:
        raise InputError(path, "no STAC items to collect")
    boxes = [item.bbox for item in items]
    bbox = [min(b[0] for b in boxes), min(b[1] for b in boxes)]
    bbox += [max(b[2] for b in boxes), max(b[3] for b in boxes)]
    times = [item.datetime for item in items if item.datetime is not None]
    extent = pystac.Extent(
        pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[min(times), max(times)]])
    )
    collection = pystac.Collection(
        id=stac_name(path.parent.resolve().name or "mosaic"), description=description, extent=extent
    )
    for item, item_path in zip(items, item_paths, strict=True):
        collection.add_item(item)
        item.set_self_href(str(Path(item_path).resolve()))
    with atomic_output(path, overwrite) as tmp:
        collection.set_self_href(str(tmp.resolve()))
        collection.save_object(include_self_link=False, dest_href=str(tmp))
    collection.set_self_href(str(path.resolve()))
    for item in items:
        item.save_object(include_self_link=False)
    return path
