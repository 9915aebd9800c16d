"""``geoct evaluate``: accuracy of a class raster against reference labels."""

import argparse
from pathlib import Path

from .class_raster import add_raster_options, classes_option
from .evaluate import check_report_outputs, evaluate, format_table, plot_report, write_report
from .messages import report_warnings


def parser(prog: str = "geoct evaluate") -> argparse.ArgumentParser:
    """Return the argument parser of ``geoct evaluate``."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Compare a predicted class raster with reference labels (class ids or "
        "RGB colour codes) and report IoU, F1, precision, recall and overall accuracy.",
    )
    p.add_argument("prediction", type=Path, help="predicted class raster")
    p.add_argument("labels", type=Path, help="reference labels on the same grid")
    p.add_argument(
        "--ignore-index",
        type=int,
        help="label value to ignore (default: the prediction's nodata value, else 255)",
    )
    p.add_argument(
        "--exclude-class",
        action="append",
        metavar="NAME",
        help="class left out of the second macro average; repeatable "
        "(default: clutter, if there is such a class)",
    )
    p.add_argument("--report", type=Path, help="write the scores as JSON")
    p.add_argument("--plot", type=Path, help="write a confusion matrix and IoU figure (.png)")
    p.add_argument(
        "--align",
        action="store_true",
        help="reproject labels on another grid to the prediction's (nearest neighbour)",
    )
    add_raster_options(p, "the prediction")
    return p


def main(argv: list[str]) -> int:
    """Run ``geoct evaluate``; *argv[0]* is the command name.

    Returns:
        The exit status.
    """
    p = parser()
    args = p.parse_args(argv[1:])
    if args.block_size < 1:
        p.error("--block-size must be >= 1")
    check_report_outputs((args.report, args.plot), args.overwrite)
    with report_warnings():
        evaluation = evaluate(
            args.prediction,
            args.labels,
            ignore_index=args.ignore_index,
            exclude=args.exclude_class,
            classes=classes_option(args.class_names),
            align=args.align,
            block_size=args.block_size,
        )
        print(format_table(evaluation))
        if args.report:
            write_report(evaluation, args.report, args.overwrite)
        if args.plot:
            plot_report(evaluation, args.plot, args.overwrite)
    return 0
