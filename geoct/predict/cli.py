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
from ..raster_io import atomic_output, check_output, output_set
from .engine import PredictionResult, PredictOptions, predict_scene
from .values import ValueOptions
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
    parser.add_argument(
        "--compile", action="store_true", help="compile the model with torch.compile (slow start)"
    )
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
        "--simplify",
        type=float,
        default=0.0,
        help="polygon simplification tolerance in metres on the ground",
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
    parser.add_argument(
        "--scale",
        type=_factors,
        metavar="FACTOR[,FACTOR...]",
        help="multiply the optical bands by FACTOR (one, or one per band) before normalising, "
        "e.g. 0.25 for 10-bit values stored in uint16 or 255 for reflectance in 0..1",
    )
    parser.add_argument(
        "--rescale",
        action="store_true",
        help="normalise each band with the scene's own (sampled) mean and std instead of the "
        "training statistics",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="predict even when the scene's values are out of the trained range (warns)",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="with several scenes, go on after a scene fails; list the failures at the end "
        "and exit with status 2",
    )
    parser.add_argument(
        "--mosaic",
        type=Path,
        metavar="OUT_DIR",
        help="the scenes are tiles of one mosaic (files, globs, a VRT or @list.txt): predict "
        "it seamlessly into OUT_DIR, one output per tile, resumable, shared between the "
        "processes of torchrun",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _factors(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a number or comma-separated numbers: {text!r}"
        ) from None


def options_from_args(args: argparse.Namespace) -> PredictOptions:
    """Return the :class:`PredictOptions` given on the command line."""
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    if args.rescale and args.scale is not None:
        raise ConfigError("give either --scale or --rescale, not both")
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
        values=ValueOptions(scale=args.scale, rescale=args.rescale, force=args.force),
        compile=args.compile,
    )


def after_scene(result: PredictionResult, args: argparse.Namespace) -> None:
    """Run follow-up steps requested on the command line for one predicted scene.

    Polygonises the class raster (``--vector``), then writes the STAC item
    (``--stac``); each adds its file to ``result.outputs``.

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


def follow_up_paths(classes: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Return the polygon layer and STAC item that *args* asks for beside *classes*."""
    stem = classes.name.removesuffix(".tif").removesuffix(".classes")
    paths = {}
    if args.vector:
        paths["polygons"] = classes.with_name(f"{stem}.polygons.{args.vector_format}")
    if args.stac:
        paths["stac"] = classes.with_name(f"{stem}.item.json")
    return paths


def scene_outputs(scene: Path, args: argparse.Namespace) -> list[Path]:
    """Return every file predicting *scene* may write, the class raster first."""
    from ..export.sidecars import vector_style_paths

    rasters = OutputPaths.beside(scene, args.output, args.confidence, args.probabilities)
    classes = rasters.classes
    paths = [p for _, p in rasters.items()]
    paths += [Path(f"{classes}.aux.xml"), classes.with_suffix(".qml")]
    follow_up = follow_up_paths(classes, args)
    paths += follow_up.values()
    if "polygons" in follow_up:
        paths += vector_style_paths(follow_up["polygons"]).values()
    return paths


def _stac_provenance(classes: Path, args: argparse.Namespace) -> dict[str, object]:
    """Return the STAC ``geoct:`` properties: the class raster's provenance tags and config."""
    import rasterio

    with rasterio.open(classes) as src:
        tags = src.tags()
    keys = ("CHECKPOINT", "CHECKPOINT_SHA256", "WINDOW", "OVERLAP", "TTA", "MATCH_GSD", "SCENE_GSD")
    provenance: dict[str, object] = {k.lower(): tags[k] for k in keys if k in tags}
    provenance["config"] = getattr(args, "model_config", None)
    return provenance


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def check_inputs_outputs(inputs: list[Path], outputs: dict[Path, list[Path]]) -> None:
    """Refuse a run in which an output is one of its inputs, or two scenes share an output.

    Args:
        inputs: Scenes, DSM and checkpoint.
        outputs: Scene to the files it writes (see :func:`scene_outputs`).

    Raises:
        InputError: On the first clash.
    """
    seen: dict[Path, Path] = {}
    for scene, paths in outputs.items():
        for path in paths:
            for source in inputs:
                if _same_file(path, source):
                    raise InputError(
                        path,
                        f"is an input of this run; an output of {scene.name} "
                        "would replace it (choose another --output)",
                    )
            key = path.resolve()
            if key in seen:
                raise InputError(path, f"would be written for both {seen[key]} and {scene}")
            seen[key] = scene


def check_scene(scene: Path, outputs: list[Path], overwrite: bool) -> None:
    """Open *scene* once and check its outputs, so a bad scene fails before the model loads."""
    from ..raster_io import open_raster

    open_raster(scene, georeferenced=True).close()
    for path in outputs:
        check_output(path, overwrite)


def write_report(
    path: Path, results: list[PredictionResult], failed: dict[Path, str], overwrite: bool
) -> Path:
    """Write the run's figures, outputs and failures as JSON.

    Args:
        path: Report file.
        results: Scenes that were predicted.
        failed: Scenes that failed, with the reason.
        overwrite: Whether an existing report may be replaced.

    Returns:
        *path*.
    """
    import json

    scenes = [
        {
            "scene": str(result.scene),
            "width": result.width,
            "height": result.height,
            "windows": result.windows,
            "windows_run": result.windows_run,
            "seconds": result.seconds,
            "megapixels_per_second": result.megapixels_per_second,
            "publish_seconds": result.publish_seconds,
            "stage_seconds": result.stages,
            "outputs": {kind: str(p) for kind, p in result.outputs.items()},
        }
        for result in results
    ]
    report = {
        "scenes": scenes,
        "failed": [{"scene": str(s), "error": reason} for s, reason in failed.items()],
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


def _predict_one(model, spec, scene: Path, args: argparse.Namespace, options) -> PredictionResult:
    """Predict one scene and its follow-up layers, publishing all of its files as one unit."""
    with output_set(scene_outputs(scene, args), args.overwrite):
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
    return result


def _fail(scene: Path, error: Exception, failed: dict[Path, str]) -> None:
    failed[scene] = str(error)
    print(f"geoct: error: {error}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    """Run ``geoct predict``.

    Every scene is opened and every output checked before the model loads. Each
    scene's files (rasters, sidecars, polygons, STAC item) appear together or not
    at all. With ``--keep-going`` a failing scene is reported and the others are
    still predicted; the exit status is then 2.

    Args:
        argv: Command line, ``argv[0] == "predict"``.

    Returns:
        Exit status.
    """
    from ..errors import GeoctError

    args = build_parser().parse_args(argv[1:])
    if args.checkpoint is None:
        raise ConfigError(f"give --checkpoint MODEL.ckpt or set {CHECKPOINT_ENV}")
    if args.mosaic is not None:
        from .mosaic_cli import predict_mosaic_command

        return predict_mosaic_command(args)
    if len(args.scenes) > 1 and args.output is not None:
        raise ConfigError("--output can only be used with a single scene")
    if not args.checkpoint.is_file():
        raise InputError(args.checkpoint, "checkpoint not found")
    options = options_from_args(args)
    outputs = {scene: scene_outputs(scene, args) for scene in args.scenes}
    inputs = [*args.scenes, args.checkpoint, *([args.dsm] if args.dsm else [])]
    report = {Path("--report"): [args.report]} if args.report is not None else {}
    check_inputs_outputs(inputs, {**outputs, **report})
    if args.report is not None:
        check_output(args.report, args.overwrite)
    failed: dict[Path, str] = {}
    for scene, paths in outputs.items():
        try:
            check_scene(scene, paths, args.overwrite)
        except GeoctError as e:
            if not args.keep_going:
                raise
            _fail(scene, e, failed)
    results = []
    with _cli_signals():
        from ..tasks import load_model

        model, spec = load_model(args.checkpoint, map_location="cpu")
        for scene in args.scenes:
            if scene in failed:
                continue
            try:
                result = _predict_one(model, spec, scene, args, options)
            except GeoctError as e:
                if not args.keep_going:
                    raise
                _fail(scene, e, failed)
                continue
            results.append(result)
            print(result.summary(), file=sys.stdout, flush=True)
    if args.report is not None:
        write_report(args.report, results, failed, args.overwrite)
    if failed:
        names = ", ".join(s.name for s in failed)
        print(
            f"geoct: error: {len(failed)} of {len(args.scenes)} scenes failed: {names}",
            file=sys.stderr,
        )
        return 2
    return 0
