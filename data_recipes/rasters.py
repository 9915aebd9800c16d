"""Prepare your own georeferenced rasters (any CRS, any band count) for geoct.

    python data_recipes/rasters.py --images 'img/*.tif' --labels 'lab/*.tif' \
        --classes classes.json --out DIR [--dsm 'dsm/*.tif']
    python data_recipes/rasters.py --images ortho.tif --labels polygons.gpkg \
        --label-field class --out DIR [--classes classes.json] [--aoi aoi.gpkg]

Images and label rasters pair up by file name (tile id = file stem). Label rasters
hold class ids (1 band) or colours (3 bands) as listed in classes.json; labels and
DSMs on another grid are resampled onto the image's (nearest for labels, bilinear
for heights). Label polygons (GeoPackage, GeoJSON, Shapefile, FlatGeobuf,
GeoParquet) are reprojected to each image and burned onto its grid: a pixel takes
a polygon's class when its centre is inside it, smaller polygons win over larger
ones (or higher --label-priority values win), and pixels no polygon covers, or
outside --aoi, are ignored in training. One image, or any --split-* option, gives a
spatial split into blocks, with a buffer of at least one patch between the sets.
"""

import argparse
import sys

from geoct.classes import ClassTable
from geoct.datasets.layout import DEFAULT_BLOCK_SIZE
from geoct.datasets.recipes import SpatialSplitOptions, prepare_rasters, run_recipe
from geoct.datasets.splits import DEFAULT_FRACTIONS, DEFAULT_PATCH_SIZE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rasters.py", description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="glob of image rasters")
    parser.add_argument(
        "--labels", required=True, help="glob of label rasters, or a vector file of polygons"
    )
    parser.add_argument("--label-field", help="field of the polygons holding class names or ids")
    parser.add_argument("--label-layer", help="layer of a vector file with several")
    parser.add_argument(
        "--label-priority",
        metavar="FIELD",
        help="numeric field: polygons with higher values win (default: smaller polygons win)",
    )
    parser.add_argument("--aoi", help="vector file of areas of interest (labels outside ignored)")
    parser.add_argument("--aoi-layer", help="layer of an AOI file with several")
    parser.add_argument("--dsm", help="glob of DSM rasters")
    parser.add_argument(
        "--classes",
        help="classes.json (names, colors); for polygons, default: the class field's values",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--bands", help="comma-separated band names (default B1..Bn)")
    parser.add_argument("--val-tiles", help="comma-separated tile ids for validation")
    parser.add_argument("--test-tiles", help="comma-separated tile ids for testing")
    parser.add_argument(
        "--split-block",
        type=float,
        metavar="METRES",
        help="spatial split: block side in metres (default: 8 patches, fewer for small images)",
    )
    parser.add_argument(
        "--split-buffer",
        type=float,
        metavar="METRES",
        help="spatial split: gap between train, val and test (default and minimum: one patch)",
    )
    parser.add_argument(
        "--split-fractions",
        metavar="TRAIN,VAL,TEST",
        help="spatial split: shares of the blocks (default: "
        + ",".join(f"{f:g}" for f in DEFAULT_FRACTIONS)
        + ")",
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        default=DEFAULT_PATCH_SIZE,
        help=f"training patch side in px the spatial split is made for (default {DEFAULT_PATCH_SIZE})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the spatial split (default 0)")
    parser.add_argument("--name", default="rasters", help="dataset name")
    parser.add_argument(
        "--unknown-as-ignore", action="store_true", help="map unknown label values to ignore"
    )
    parser.add_argument(
        "--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="GeoTIFF block side (px)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    args = parser.parse_args(argv)

    def split(value: str | None) -> list[str] | None:
        return value.split(",") if value else None

    fractions = DEFAULT_FRACTIONS
    if args.split_fractions:
        try:
            fractions = tuple(float(f) for f in args.split_fractions.split(","))
        except ValueError:
            parser.error(f"--split-fractions {args.split_fractions!r}: expected e.g. 0.6,0.2,0.2")
    spatial = args.split_block or args.split_buffer or args.split_fractions
    options = SpatialSplitOptions(
        block=args.split_block,
        buffer=args.split_buffer,
        fractions=fractions,
        seed=args.seed,
        patch_size=args.patch_size,
    )

    return run_recipe(
        parser.prog,
        lambda: prepare_rasters(
            args.images,
            args.labels,
            ClassTable.from_json(args.classes) if args.classes else None,
            args.out,
            dsm=args.dsm,
            bands=split(args.bands),
            val_tiles=split(args.val_tiles),
            test_tiles=split(args.test_tiles),
            unknown_as_ignore=args.unknown_as_ignore,
            block_size=args.block_size,
            name=args.name,
            overwrite=args.overwrite,
            label_field=args.label_field,
            label_layer=args.label_layer,
            label_priority=args.label_priority,
            aoi=args.aoi,
            aoi_layer=args.aoi_layer,
            spatial_split=True if spatial else None,
            split_options=options,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
