"""Write synthetic Potsdam-like tiles in the layout of data_recipes/potsdam.py.

    python data_recipes/synthetic_potsdam.py --out DIR [--tiles N] [--size PX] [--seed S]

Tiles carry official Potsdam ids and file names; 3 or more tiles give at least one
training, validation and test tile. The output is deterministic per seed.
"""

import argparse
import sys

from geoct.datasets.layout import DEFAULT_BLOCK_SIZE
from geoct.datasets.recipes import prepare_synthetic, run_recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="synthetic_potsdam.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tiles", type=int, default=6, help="number of tiles (3 to 38)")
    parser.add_argument("--size", type=int, default=512, help="tile side in pixels (>= 32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (>= 0)")
    parser.add_argument(
        "--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="GeoTIFF block side (px)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    args = parser.parse_args(argv)
    if not 1 <= args.tiles <= 38:
        parser.error("--tiles must be between 1 and 38")
    if args.size < 32 or args.seed < 0:
        parser.error("--size must be at least 32 and --seed non-negative")
    return run_recipe(
        parser.prog,
        lambda: prepare_synthetic(
            args.out,
            tiles=args.tiles,
            size=args.size,
            seed=args.seed,
            block_size=args.block_size,
            overwrite=args.overwrite,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
