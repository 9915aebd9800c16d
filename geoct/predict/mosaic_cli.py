"""``geoct predict TILES... --mosaic OUT_DIR``: the command-line side of mosaic prediction."""

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError, InputError
from ..raster_io import atomic_output, check_output
from .distributed import workers
from .mosaic import MosaicPredictor, MosaicRun, summary, tile_paths
from .tiles import expand_tiles, mosaic_grid


def _tile_args(args: argparse.Namespace) -> argparse.Namespace:
    """The per-tile follow-up options: a STAC item per tile; polygons are made for the mosaic."""
    return argparse.Namespace(**{**vars(args), "vector": False, "output": None})


def _finish(
    predictor: MosaicPredictor, args: argparse.Namespace, runs: list[MosaicRun]
) -> dict[str, Path]:
    """Rank 0: the mosaic VRTs, one polygon layer, the STAC Collection and the report."""
    outputs = predictor.publish_mosaic()
    if args.vector and "classes" in outputs:
        from ..export.vectorize import vectorize_raster

        outputs["polygons"] = vectorize_raster(
            outputs["classes"],
            args.mosaic / f"mosaic.polygons.{args.vector_format}",
            confidence_path=outputs.get("confidence"),
            simplify=args.simplify,
            min_area=args.min_area,
            classes=predictor.spec.classes,
            overwrite=True,
            progress=not args.quiet,
        )
    if args.stac:
        from ..export.stac import write_stac_collection

        items = [
            tile_paths(args.mosaic, t, predictor.options).classes.with_name(f"{t.name}.item.json")
            for t in predictor.mosaic.tiles
        ]
        items = [p for p in items if p.exists()]
        if items:
            outputs["stac"] = write_stac_collection(
                args.mosaic / "collection.json", items, "geoct land-cover mosaic", overwrite=True
            )
    if args.report is not None:
        import json

        report = {
            "tiles": len(predictor.mosaic.tiles),
            "predicted": sum(r.done for r in runs),
            "skipped": sum(r.skipped for r in runs),
            "failed": [
                {"tile": tile, "error": error} for r in runs for tile, error in r.failed.items()
            ],
            "processes": [
                {
                    "rank": i,
                    "tiles": r.done,
                    "seconds": r.seconds,
                    "mpx_per_s": r.megapixels_per_second,
                }
                for i, r in enumerate(runs)
            ],
            "outputs": {k: str(v) for k, v in outputs.items()},
        }
        with atomic_output(args.report, overwrite=True) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return outputs


def _slim(run: MosaicRun) -> MosaicRun:
    return MosaicRun(run.done, run.skipped, run.failed, run.pixels, run.seconds)


def predict_mosaic_command(args: argparse.Namespace) -> int:
    """Run ``geoct predict --mosaic``; every process of a torchrun launch runs this.

    Returns:
        Exit status: 0, or 2 when a tile failed.
    """
    from .cli import _cli_signals, follow_up_paths, options_from_args

    if args.output is not None:
        raise ConfigError("--output cannot be used with --mosaic (outputs go to OUT_DIR)")
    if args.dsm is not None and not args.dsm.exists():
        raise InputError(args.dsm, "DSM not found")
    if not args.checkpoint.is_file():
        raise InputError(args.checkpoint, "checkpoint not found")
    options = options_from_args(args)
    mosaic = mosaic_grid(expand_tiles(args.scenes))
    if args.mosaic.exists() and not args.mosaic.is_dir():
        raise InputError(args.mosaic, "is not a folder")
    args.mosaic.mkdir(parents=True, exist_ok=True)
    sources = {t.path.resolve() for t in mosaic.tiles} | {args.checkpoint.resolve()}
    sources |= {args.dsm.resolve()} if args.dsm is not None else set()
    if args.report is not None:
        check_output(args.report, args.overwrite)
    tile_args = _tile_args(args)
    with _cli_signals(), workers() as group:
        from ..tasks import load_model

        model, spec = load_model(args.checkpoint, map_location="cpu")
        predictor = MosaicPredictor(
            model,
            spec,
            mosaic,
            args.mosaic,
            options,
            args.checkpoint,
            follow_up=(lambda result: _after(result, tile_args)) if args.stac else None,
            follow_up_paths=lambda classes: list(follow_up_paths(classes, tile_args).values()),
            dsm=args.dsm,
        )
        for tile in mosaic.tiles:
            if any(p.resolve() in sources for p in predictor.tile_outputs(tile)):
                raise InputError(tile.path, f"an output in {args.mosaic} would replace an input")
        predictor.prepare(group)
        predictor.check_resumable()
        run = predictor.run(group, args.keep_going, progress=not args.quiet)
        runs = group.gather(_slim(run))
        group.barrier()
        if group.rank == 0:
            outputs = _finish(predictor, args, runs)
            for error in (e for r in runs for e in r.failed.values()):
                print(f"geoct: error: {error}", file=sys.stderr)
            print(summary(runs, len(mosaic.tiles), outputs), flush=True)
        group.barrier()
    return 2 if any(r.failed for r in runs) else 0


def _after(result, tile_args: argparse.Namespace) -> None:
    from .cli import after_scene

    after_scene(result, tile_args)
