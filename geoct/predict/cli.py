"""``geoct predict``: predict land-cover classes of one or more scenes with a checkpoint."""

import argparse
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError, InputError
from ..raster_io import atomic_output, check_output
from .engine import PredictionResult, PredictOptions, predict_scene
from .writer import OutputPaths

#: Environment variable naming the default checkpoint.
CHECKPOINT_ENV = "GEOCT_CHECKPOINT"


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``geoct predict``; callers may add options to it."""
    parser = argparse.ArgumentParser(
        prog="geoct predict",
        description="Predict a class raster (and optionally confidence and probabilities) for "
        "each scene, as Cloud Optimized GeoTIFFs on the scene's exact grid.",
    )
    parser.add_argument("scenes", nargs="+", type=Path, metavar="SCENE", help="scene raster(s)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=os.environ.get(CHECKPOINT_ENV),
        help=f"geoct checkpoint (default: ${CHECKPOINT_ENV})",
    )
    parser.add_argument("--dsm", type=Path, help="DSM/nDSM for checkpoints with a height band")
    parser.add_argument("--output", type=Path, help="class raster path (one scene only)")
    parser.add_argument("--confidence", action="store_true", help="also write SCENE.confidence.tif")
    parser.add_argument(
        "--probabilities", action="store_true", help="also write SCENE.probabilities.tif"
    )
    parser.add_argument("--window", type=int, help="window size in pixels (default: checkpoint)")
    parser.add_argument("--overlap", type=int, help="window overlap in pixels (default: window/4)")
    parser.add_argument("--batch-size", type=int, help="windows per batch (default: automatic)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--tta", action="store_true", help="average over flips")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument(
        "--match-gsd", action="store_true", help="run the model at the checkpoint's GSD"
    )
    parser.add_argument(
        "--vector", action="store_true", help="also polygonise into SCENE.polygons.gpkg"
    )
    parser.add_argument(
        "--vector-format",
        choices=("gpkg", "geojson"),
        default="gpkg",
        help="polygon format with --vector (default: gpkg)",
    )
    parser.add_argument(
        "--simplify", type=float, default=0.0, help="polygon simplification tolerance (map units)"
    )
    parser.add_argument(
        "--min-area", type=float, default=0.0, help="drop polygons smaller than this (m²)"
    )
    parser.add_argument(
        "--stac", action="store_true", help="also write a STAC item SCENE.item.json"
    )
    parser.add_argument(
        "--report", type=Path, help="write the run's figures and outputs as JSON (one scene only)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def options_from_args(args: argparse.Namespace) -> PredictOptions:
    """Return the :class:`PredictOptions` given on the command line."""
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    return PredictOptions(
        window=args.window,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        tta=args.tta,
        match_gsd=args.match_gsd,
        confidence=args.confidence,
        probabilities=args.probabilities,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )


def after_scene(result: PredictionResult, args: argparse.Namespace) -> None:
    """Run follow-up steps requested on the command line for one predicted scene.

    Polygonises the class raster (``--vector``), then writes the STAC item
    (``--stac``) and the JSON report (``--report``); each adds its file to
    ``result.outputs``.

    Args:
        result: The scene's prediction.
        args: Parsed command line.
    """
    classes = result.outputs["classes"]
    paths = follow_up_paths(classes, args)
    if args.vector:
        from ..export.vectorize import vectorize_raster

        result.outputs["polygons"] = vectorize_raster(
            classes,
            paths["polygons"],
            confidence_path=result.outputs.get("confidence"),
            simplify=args.simplify,
            min_area=args.min_area,
            classes=result.spec.classes,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    if args.stac:
        from ..export.stac import write_stac_item

        result.outputs["stac"] = write_stac_item(
            classes,
            paths["stac"],
            confidence_path=result.outputs.get("confidence"),
            probabilities_path=result.outputs.get("probabilities"),
            polygons_path=result.outputs.get("polygons"),
            spec=result.spec,
            provenance=_stac_provenance(classes, args),
            overwrite=args.overwrite,
        )
    if args.report:
        result.outputs["report"] = _write_report(result, args.report, args.overwrite)


def follow_up_paths(classes: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Return the polygon, STAC item and report files that *args* asks for beside *classes*."""
    stem = classes.name.removesuffix(".tif").removesuffix(".classes")
    paths = {
        "polygons": classes.with_name(f"{stem}.polygons.{args.vector_format}")
        if args.vector
        else None,
        "stac": classes.with_name(f"{stem}.item.json") if args.stac else None,
        "report": args.report,
    }
    return {kind: path for kind, path in paths.items() if path is not None}


def _stac_provenance(classes: Path, args: argparse.Namespace) -> dict[str, object]:
    """Return the STAC ``geoct:`` properties: the class raster's provenance tags and config."""
    import rasterio

    with rasterio.open(classes) as src:
        tags = src.tags()
    keys = ("CHECKPOINT", "CHECKPOINT_SHA256", "WINDOW", "OVERLAP", "TTA", "MATCH_GSD")
    provenance: dict[str, object] = {k.lower(): tags[k] for k in keys if k in tags}
    provenance["config"] = getattr(args, "model_config", None)
    return provenance


def _write_report(result: PredictionResult, path: Path, overwrite: bool) -> Path:
    """Write the figures and output paths of *result* as JSON."""
    import json

    report = {
        "scene": str(result.scene),
        "width": result.width,
        "height": result.height,
        "windows": result.windows,
        "windows_run": result.windows_run,
        "seconds": result.seconds,
        "megapixels_per_second": result.megapixels_per_second,
        "outputs": {kind: str(p) for kind, p in result.outputs.items()},
    }
    with atomic_output(path, overwrite) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def _warning_line(message, category, filename, lineno, line=None) -> str:
    return f"geoct: warning: {message}\n"


@contextmanager
def _cli_signals() -> Iterator[None]:
    """Show warnings as one line and turn SIGTERM into KeyboardInterrupt (clean-up runs)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, interrupt) if in_main else None
    formatter = warnings.formatwarning
    warnings.formatwarning = _warning_line
    try:
        yield
    finally:
        warnings.formatwarning = formatter
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def main(argv: list[str]) -> int:
    """Run ``geoct predict``.

    Args:
        argv: Command line, ``argv[0] == "predict"``.

    Returns:
        Exit status.
    """
    args = build_parser().parse_args(argv[1:])
    if args.checkpoint is None:
        raise ConfigError(f"give --checkpoint MODEL.ckpt or set {CHECKPOINT_ENV}")
    if len(args.scenes) > 1 and (args.output is not None or args.report is not None):
        raise ConfigError("--output and --report can only be used with a single scene")
    if not args.checkpoint.is_file():
        raise InputError(args.checkpoint, "checkpoint not found")
    options = options_from_args(args)
    for scene in args.scenes:
        classes = OutputPaths.beside(scene, args.output, False, False).classes
        for path in follow_up_paths(classes, args).values():
            check_output(path, args.overwrite)
    with _cli_signals():
        from ..tasks import load_model

        model, spec = load_model(args.checkpoint, map_location="cpu")
        for scene in args.scenes:
            result = predict_scene(
                model,
                spec,
                scene,
                args.output,
                dsm=args.dsm,
                options=options,
                checkpoint=args.checkpoint,
            )
            after_scene(result, args)
            print(result.summary(), file=sys.stdout, flush=True)
    return 0
