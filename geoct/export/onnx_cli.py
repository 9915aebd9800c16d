"""``geoct export``: a checkpoint as an ONNX model for the QGIS Deepness plugin."""

import argparse
from pathlib import Path

from .messages import report_warnings
from .onnx import DEFAULT_OVERLAP, TOLERANCE, ExportReport, export_onnx


def parser(prog: str = "geoct export") -> argparse.ArgumentParser:
    """Return the argument parser of ``geoct export``."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Export the network of a checkpoint as an ONNX model with the metadata "
        "of the QGIS Deepness plugin (Segmentor: class names, resolution, tile size, "
        "overlap and standardisation), checked against PyTorch with ONNX Runtime. "
        "Needs the onnx extra: pip install 'geoct[onnx]'.",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint written by geoct fit (.ckpt)")
    p.add_argument("--onnx", type=Path, required=True, metavar="MODEL.onnx", help="ONNX file")
    p.add_argument(
        "--tile-size",
        type=int,
        metavar="PX",
        help="side of the model's fixed input tiles (default: the training patch size)",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=DEFAULT_OVERLAP,
        metavar="PERCENT",
        help=f"tile overlap Deepness starts with, in percent (default: {DEFAULT_OVERLAP})",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        metavar="P",
        help="Deepness seg_thresh: probabilities below P are dropped before the argmax "
        "(default: 0, the argmax of geoct predict)",
    )
    p.add_argument(
        "--small-segment",
        type=int,
        default=0,
        metavar="PX",
        help="Deepness seg_small_segment: median filter removing small segments (default: 0, off)",
    )
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing ONNX file")
    return p


def summary(report: ExportReport) -> str:
    """One line describing an export, for the terminal."""
    spec = report.spec
    return (
        f"wrote {report.path}: Deepness Segmentor, {spec.classes.num_classes} classes, "
        f"{spec.in_channels} bands ({', '.join(spec.bands)}), {report.tile_size} px tiles "
        f"at {spec.gsd * 100:g} cm/px; ONNX Runtime matches PyTorch within "
        f"{report.max_difference:.1e} (tolerance {TOLERANCE:g})"
    )


def main(argv: list[str]) -> int:
    """Run ``geoct export``; *argv[0]* is the command name.

    Returns:
        The exit status.
    """
    args = parser().parse_args(argv[1:])
    with report_warnings():
        report = export_onnx(
            args.checkpoint,
            args.onnx,
            tile_size=args.tile_size,
            overlap=args.overlap,
            threshold=args.threshold,
            small_segment=args.small_segment,
            opset=args.opset,
            overwrite=args.overwrite,
        )
    print(summary(report))
    return 0
