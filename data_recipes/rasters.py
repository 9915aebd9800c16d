"""Prepare your own georeferenced rasters (any CRS, any band count) for geoct.

    python data_recipes/rasters.py --images 'img/*.tif' --labels 'lab/*.tif' \
        --classes classes.json --out DIR [--dsm 'dsm/*.tif']

Images and labels pair up by file name (tile id = file stem). Labels hold class ids
(1 band) or colours (3 bands) as listed in classes.json; labels and DSMs on another
grid are resampled onto the image's (nearest for labels, bilinear for heights).
"""

import argparse
import sys

from geoct.classes import ClassTable
from geoct.datasets.layout import DEFAULT_BLOCK_SIZE
from geoct.datasets.recipes import prepare_rasters, run_recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rasters.py", description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="glob of image rasters")
    parser.add_argument("--labels", required=True, help="glob of label rasters")
    parser.add_argument("--dsm", help="glob of DSM rasters")
    parser.add_argument("--classes", required=True, help="classes.json (names, colors)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--bands", help="comma-separated band names (default B1..Bn)")
    parser.add_argument("--val-tiles", help="comma-separated tile ids for validation")
    parser.add_argument("--test-tiles", help="comma-separated tile ids for testing")
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

    return run_recipe(
        parser.prog,
        lambda: prepare_rasters(
            args.images,
            args.labels,
            ClassTable.from_json(args.classes),
            args.out,
            dsm=args.dsm,
            bands=split(args.bands),
            val_tiles=split(args.val_tiles),
            test_tiles=split(args.test_tiles),
            unknown_as_ignore=args.unknown_as_ignore,
            block_size=args.block_size,
            name=args.name,
            overwrite=args.overwrite,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
