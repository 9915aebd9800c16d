"""Prepare the ISPRS Potsdam 2D semantic labelling download for geoct.

    python data_recipes/potsdam.py --source DIR --out DIR

DIR holds the official zips (1_DSM.zip, 1_DSM_normalisation.zip, 4_Ortho_RGBIR.zip or
2_Ortho_RGB.zip + 3_Ortho_IRRG.zip, 5_Labels_all.zip, ...) or their extracted folders.
"""

import argparse
import sys

from geoct.datasets.layout import DEFAULT_BLOCK_SIZE
from geoct.datasets.recipes import prepare_potsdam, run_recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="potsdam.py", description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="folder with the official zips or files")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tiles", help="comma-separated tile ids (default: all 38)")
    parser.add_argument("--val-tiles", help="comma-separated training tiles to validate on")
    parser.add_argument("--no-dsm", action="store_true", help="prepare without the DSM")
    parser.add_argument("--no-ndsm", action="store_true", help="leave out the nDSM")
    parser.add_argument(
        "--eroded-labels",
        action="store_true",
        help="use 5_Labels_all_noBoundary (boundaries ignored)",
    )
    parser.add_argument(
        "--unknown-as-ignore", action="store_true", help="map unknown label colours to ignore"
    )
    parser.add_argument(
        "--resample-heights",
        action="store_true",
        help="resample a DSM/nDSM on another grid (same CRS) instead of failing",
    )
    parser.add_argument(
        "--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="GeoTIFF block side (px)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    args = parser.parse_args(argv)
    return run_recipe(
        parser.prog,
        lambda: prepare_potsdam(
            args.source,
            args.out,
            tiles=args.tiles.split(",") if args.tiles else None,
            val_tiles=args.val_tiles.split(",") if args.val_tiles else None,
            dsm=not args.no_dsm,
            ndsm=False if args.no_ndsm else None,
            eroded_labels=args.eroded_labels,
            unknown_as_ignore=args.unknown_as_ignore,
            resample_heights=args.resample_heights,
            block_size=args.block_size,
            overwrite=args.overwrite,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
