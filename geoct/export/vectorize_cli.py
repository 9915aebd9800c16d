"""``geoct vectorize``: class polygons from a class raster."""

import argparse
from pathlib import Path

from .class_raster import add_raster_options, classes_option
from .messages import report_warnings
from .vector_layers import DEFAULT_GPKG_VERSION, GPKG_VERSIONS
from .vectorize import vectorize_raster


def default_output(classes_path: Path) -> Path:
    """Return ``SCENE.polygons.gpkg`` for ``SCENE.classes.tif``, else ``NAME.gpkg``."""
    stem = classes_path.name.removesuffix(classes_path.suffix)
    if stem.endswith(".classes"):
        stem = stem.removesuffix(".classes") + ".polygons"
    return classes_path.with_name(f"{stem}.gpkg")


def parser(prog: str = "geoct vectorize") -> argparse.ArgumentParser:
    """Return the argument parser of ``geoct vectorize``."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Polygonise a class raster into a styled GeoPackage or GeoJSON layer "
        "(seamless across processing blocks and mosaic tiles; nodata is never polygonised). "
        "The raster is read block row by block row and polygons are written as soon as "
        "they are complete, so memory does not grow with the raster.",
    )
    p.add_argument(
        "classes",
        type=Path,
        help="class raster, e.g. SCENE.classes.tif or a mosaic OUT_DIR/mosaic.classes.vrt",
    )
    p.add_argument(
        "--output",
        type=Path,
        help="output .gpkg (default: SCENE.polygons.gpkg beside the raster; QGIS style "
        "inside) or .geojson (RFC 7946, EPSG:4326; QGIS style in NAME.qml beside it); "
        "an SLD is written beside either as NAME.gpkg.sld or NAME.geojson.sld",
    )
    p.add_argument("--confidence", type=Path, help="confidence raster for mean_confidence")
    p.add_argument(
        "--simplify",
        type=float,
        default=0.0,
        metavar="M",
        help="simplification tolerance in metres on the ground (converted to map units at "
        "the scene centre; map units for a raster without CRS); neighbours keep sharing "
        "their edges, without gaps or overlaps (default: 0, keep pixel edges)",
    )
    p.add_argument(
        "--min-area",
        type=float,
        default=0.0,
        metavar="M2",
        help="drop polygons smaller than this ground area in m², measured on the "
        "ellipsoid in any CRS (default: 0)",
    )
    p.add_argument(
        "--gpkg-version",
        choices=GPKG_VERSIONS,
        default=DEFAULT_GPKG_VERSION,
        help=f"GeoPackage version of a .gpkg output (default: {DEFAULT_GPKG_VERSION}, "
        "which QGIS on GDAL < 3.7 opens without a compatibility warning)",
    )
    add_raster_options(p, "the raster")
    return p


def main(argv: list[str]) -> int:
    """Run ``geoct vectorize``; *argv[0]* is the command name.

    Returns:
        The exit status.
    """
    p = parser()
    args = p.parse_args(argv[1:])
    if args.simplify < 0 or args.min_area < 0 or args.block_size < 1:
        p.error("--simplify and --min-area must be >= 0 and --block-size >= 1")
    output = args.output or default_output(args.classes)
    with report_warnings():
        vectorize_raster(
            args.classes,
            output,
            confidence_path=args.confidence,
            simplify=args.simplify,
            min_area=args.min_area,
            classes=classes_option(args.class_names),
            overwrite=args.overwrite,
            block_size=args.block_size,
            gpkg_version=args.gpkg_version,
        )
    print(output)
    return 0
