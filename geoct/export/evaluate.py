"""Accuracy of a class raster against reference labels, streamed block by block.

Rows of the confusion matrix are reference classes, columns predicted classes.
Reference labels are class ids (one band) or colour codes (three bands, e.g. the
ISPRS Potsdam RGB labels) mapped to ids through the class colours.
"""

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rasterio.enums import Resampling
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from tqdm import tqdm

from ..classes import ClassTable
from ..errors import ConfigError, InputError
from ..raster_io import atomic_output, check_output, open_raster, warp_to_grid
from .class_raster import (
    block_windows,
    check_same_grid,
    has_class_names,
    has_colour_table,
    ignore_value,
    max_class_id,
    read_class_table,
)

#: Classes left out of the second macro average when none are named (Potsdam convention).
DEFAULT_EXCLUDED = ("clutter",)

#: Colour of unlabelled pixels in colour-coded labels when the class table names none.
UNLABELLED_COLOR = (0, 0, 0)


@dataclass
class Evaluation:
    """A confusion matrix and what was left out of it.

    Attributes:
        classes: Class names, colours and ignore index.
        confusion: ``(K, K)`` pixel counts, rows reference, columns prediction.
        excluded: Names of the classes left out of the ``*_excluding`` averages.
        ignored_pixels: Reference pixels equal to the ignore index.
        unknown_label_pixels: Reference pixels with an unknown id or colour.
        unpredicted_pixels: Labelled pixels the prediction leaves as nodata.
        inputs: Paths of the prediction and labels.
    """

    classes: ClassTable
    confusion: np.ndarray
    excluded: tuple[str, ...] = ()
    ignored_pixels: int = 0
    unknown_label_pixels: int = 0
    unpredicted_pixels: int = 0
    inputs: dict[str, str] = field(default_factory=dict)

    def per_class(self) -> dict[str, np.ndarray]:
        """Return IoU, F1, precision, recall (NaN where undefined) and support per class."""
        cm = self.confusion.astype(np.float64)
        tp = np.diag(cm)
        fp = cm.sum(axis=0) - tp
        fn = cm.sum(axis=1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                "iou": tp / (tp + fp + fn),
                "f1": 2 * tp / (2 * tp + fp + fn),
                "precision": tp / (tp + fp),
                "recall": tp / (tp + fn),
                "support": cm.sum(axis=1),
            }

    def summary(self) -> dict[str, float]:
        """Return overall accuracy and macro IoU/F1 with and without the excluded classes.

        Classes absent from both reference and prediction (undefined scores) do not
        count in the macro averages.
        """
        scores = self.per_class()
        total = self.confusion.sum()
        keep = np.array([n not in self.excluded for n in self.classes.names])
        return {
            "overall_accuracy": float(np.trace(self.confusion) / total) if total else math.nan,
            "mean_iou": _nanmean(scores["iou"]),
            "mean_f1": _nanmean(scores["f1"]),
            "mean_iou_excluding": _nanmean(scores["iou"][keep]),
            "mean_f1_excluding": _nanmean(scores["f1"][keep]),
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON report (undefined scores are ``null``)."""
        scores = self.per_class()
        per_class = {
            name: {key: _json_number(values[i]) for key, values in scores.items()}
            for i, name in enumerate(self.classes.names)
        }
        return {
            **self.inputs,
            "classes": list(self.classes.names),
            "excluded_classes": list(self.excluded),
            "ignore_index": self.classes.ignore_index,
            **{key: _json_number(v) for key, v in self.summary().items()},
            "per_class": per_class,
            "confusion_matrix": self.confusion.tolist(),
            "evaluated_pixels": int(self.confusion.sum()),
            "ignored_pixels": self.ignored_pixels,
            "unknown_label_pixels": self.unknown_label_pixels,
            "unpredicted_pixels": self.unpredicted_pixels,
        }


def _nanmean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def _json_number(value: float) -> float | int | None:
    if isinstance(value, float | np.floating) and math.isnan(value):
        return None
    return int(value) if float(value).is_integer() and abs(value) > 1 else float(value)


def colour_lookup(classes: ClassTable) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted packed RGB codes and the class id (or ignore index) of each.

    The table's ignore colour, else :data:`UNLABELLED_COLOR` unless a class has
    it, maps to the ignore index.

    Raises:
        ConfigError: If two classes share a colour.
    """
    pairs = {_pack(c): i for i, c in enumerate(classes.colors)}
    if len(pairs) != classes.num_classes:
        raise ConfigError("classes with the same colour cannot be told apart in colour labels")
    ignore_color = classes.ignore_color or UNLABELLED_COLOR
    pairs.setdefault(_pack(ignore_color), classes.ignore_index)
    codes = np.array(sorted(pairs), dtype=np.int64)
    return codes, np.array([pairs[c] for c in codes], dtype=np.int64)


def _pack(rgb: Sequence[int] | np.ndarray) -> Any:
    r, g, b = (np.asarray(v, dtype=np.int64) for v in rgb)
    return (r << 16) | (g << 8) | b if r.ndim else int((r << 16) | (g << 8) | b)


def decode_colours(rgb: np.ndarray, codes: np.ndarray, ids: np.ndarray, unknown: int) -> np.ndarray:
    """Map a ``(3, h, w)`` colour-coded label block to class ids.

    Args:
        rgb: Colour-coded labels.
        codes: Sorted packed colours (see :func:`colour_lookup`).
        ids: Class id of each colour.
        unknown: Value given to colours not in *codes*.

    Returns:
        ``(h, w)`` int64 ids.
    """
    packed = _pack(rgb[:3])
    index = np.clip(np.searchsorted(codes, packed), 0, len(codes) - 1)
    return np.where(codes[index] == packed, ids[index], unknown)


def _label_kind(src: DatasetReader) -> str:
    if src.count == 1 and np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
        return "ids"
    if src.count in (3, 4) and src.dtypes[0] == "uint8":
        return "colours"
    raise InputError(src.name, "labels must be 1 band of class ids or 3 bands of RGB colour codes")


def _aligned(src: DatasetReader, pred: DatasetReader, nodata: int) -> WarpedVRT:
    if src.crs is None or pred.crs is None:
        raise InputError(src.name, "cannot align labels without a CRS")
    return warp_to_grid(src, pred, Resampling.nearest, nodata=nodata)


def _resolve_classes(
    pred_path: Path, labels: DatasetReader, classes: ClassTable | Sequence[str] | None
) -> ClassTable:
    if classes is not None or has_class_names(pred_path):
        return read_class_table(pred_path, classes)
    with open_raster(pred_path) as pred:
        largest = max_class_id(pred)
    if _label_kind(labels) == "ids":
        largest = max(largest, max_class_id(labels))
    return read_class_table(pred_path, None, num_classes=largest + 1)


def _exclusions(classes: ClassTable, exclude: Iterable[str] | None) -> tuple[str, ...]:
    if exclude is None:
        return tuple(n for n in DEFAULT_EXCLUDED if n in classes.names)
    names = tuple(exclude)
    for name in names:
        if name not in classes.names:
            known = ", ".join(classes.names)
            raise ConfigError(f"--exclude-class {name!r} is not a class ({known})")
    return names


class _Accumulator:
    """Confusion counts accumulated over blocks."""

    def __init__(self, num_classes: int, ignore: tuple[int, ...], pred_nodata: int) -> None:
        self.k = num_classes
        self.ignore = ignore
        self.pred_nodata = pred_nodata
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.ignored = 0
        self.unknown = 0
        self.unpredicted = 0

    def add(self, pred: np.ndarray, labels: np.ndarray) -> None:
        labels = labels.astype(np.int64)
        pred = pred.astype(np.int64)
        ignored = np.isin(labels, self.ignore)
        unknown = ~ignored & ((labels < 0) | (labels >= self.k))
        labelled = ~ignored & ~unknown
        predicted = (pred >= 0) & (pred < self.k) & (pred != self.pred_nodata)
        valid = labelled & predicted
        self.ignored += int(ignored.sum())
        self.unknown += int(unknown.sum())
        self.unpredicted += int((labelled & ~predicted).sum())
        flat = labels[valid] * self.k + pred[valid]
        self.confusion += np.bincount(flat, minlength=self.k * self.k).reshape(self.k, self.k)


def evaluate(
    pred_path: str | Path,
    labels_path: str | Path,
    ignore_index: int | None = None,
    exclude: Iterable[str] | None = None,
    classes: ClassTable | Sequence[str] | None = None,
    align: bool = False,
    block_size: int = 1024,
) -> Evaluation:
    """Compare a class raster with reference labels.

    Args:
        pred_path: Predicted class raster (``geoct predict`` output or any id raster).
        labels_path: Reference labels: class ids, or RGB colour codes of the classes.
        ignore_index: Label value left out of the counts; defaults to the class
            table's ignore index (the prediction's nodata value, 255 if none).
            The labels' own nodata value is always left out.
        exclude: Class names left out of the ``*_excluding`` averages; defaults to
            ``clutter`` when there is such a class.
        classes: Class table or names overriding those stored in the prediction.
        align: Reproject the labels onto the prediction grid (nearest neighbour)
            instead of refusing labels on another grid.
        block_size: Side in pixels of the blocks read at a time.

    Returns:
        The confusion matrix and counts.

    Raises:
        InputError: For unreadable inputs or colour labels without class colours.
        AlignmentError: If the grids differ and *align* is false.
        ConfigError: For an unknown excluded class.
    """
    pred_path, labels_path = Path(pred_path), Path(labels_path)
    with ExitStack() as stack:
        pred = stack.enter_context(open_raster(pred_path))
        labels = stack.enter_context(open_raster(labels_path))
        kind = _label_kind(labels)
        table = _resolve_classes(pred_path, labels, classes)
        excluded = _exclusions(table, exclude)
        colour_table = isinstance(classes, ClassTable) or has_colour_table(pred_path)
        if kind == "colours" and not colour_table:
            raise InputError(
                pred_path, "has no colour table to decode colour-coded labels (pass --classes JSON)"
            )
        ignore = table.ignore_index if ignore_index is None else ignore_index
        if align:
            labels = stack.enter_context(_aligned(labels, pred, 0 if kind == "colours" else ignore))
        else:
            check_same_grid(pred, labels, hint=" (use --align to reproject the labels)")
        ignored = (ignore,) if labels.nodata is None else (ignore, int(labels.nodata))
        acc = _Accumulator(table.num_classes, ignored, ignore_value(pred))
        lookup = colour_lookup(table) if kind == "colours" else None
        windows = list(block_windows(pred.height, pred.width, block_size))
        for window in tqdm(windows, desc="evaluating", unit="block", leave=False):
            acc.add(pred.read(1, window=window), _read_labels(labels, window, lookup))
    if acc.unknown:
        what = "colours" if kind == "colours" else "ids"
        warnings.warn(
            f"{labels_path}: {acc.unknown} pixels with unknown label {what} were ignored",
            stacklevel=2,
        )
    if acc.unpredicted:
        warnings.warn(
            f"{pred_path}: {acc.unpredicted} labelled pixels have no prediction (nodata)",
            stacklevel=2,
        )
    return Evaluation(
        classes=table,
        confusion=acc.confusion,
        excluded=excluded,
        ignored_pixels=acc.ignored,
        unknown_label_pixels=acc.unknown,
        unpredicted_pixels=acc.unpredicted,
        inputs={"prediction": str(pred_path), "labels": str(labels_path)},
    )


def _read_labels(
    src: DatasetReader | WarpedVRT,
    window: Window,
    lookup: tuple[np.ndarray, np.ndarray] | None,
) -> np.ndarray:
    if lookup is None:
        return src.read(1, window=window)
    return decode_colours(src.read((1, 2, 3), window=window), *lookup, unknown=-1)


def format_table(evaluation: Evaluation) -> str:
    """Return the per-class scores and averages as a plain-text table."""
    scores = evaluation.per_class()
    width = max(12, *(len(n) for n in evaluation.classes.names))
    header = (
        f"{'class':<{width}}  {'IoU':>6}  {'F1':>6}  {'prec':>6}  {'recall':>6}  {'support':>10}"
    )
    lines = [header, "-" * len(header)]
    for i, name in enumerate(evaluation.classes.names):
        mark = "*" if name in evaluation.excluded else " "
        values = "  ".join(_fmt(scores[k][i]) for k in ("iou", "f1", "precision", "recall"))
        lines.append(f"{name + mark:<{width}}  {values}  {int(scores['support'][i]):>10}")
    summary = evaluation.summary()
    lines.append("-" * len(header))
    lines.append(f"{'overall accuracy':<{width}}  {_fmt(summary['overall_accuracy'])}")
    lines.append(f"{'macro':<{width}}  {_fmt(summary['mean_iou'])}  {_fmt(summary['mean_f1'])}")
    if evaluation.excluded:
        lines.append(
            f"{'macro w/o *':<{width}}  {_fmt(summary['mean_iou_excluding'])}  "
            f"{_fmt(summary['mean_f1_excluding'])}"
        )
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{'-':>6}" if math.isnan(value) else f"{value:6.4f}"


def write_report(evaluation: Evaluation, path: str | Path, overwrite: bool = False) -> Path:
    """Write the JSON report.

    Args:
        evaluation: Result of :func:`evaluate`.
        path: JSON file.
        overwrite: Whether an existing file may be replaced.

    Returns:
        *path*.
    """
    with atomic_output(path, overwrite) as tmp:
        tmp.write_text(json.dumps(evaluation.to_dict(), indent=2) + "\n", encoding="utf-8")
    return Path(path)


def plot_report(evaluation: Evaluation, path: str | Path, overwrite: bool = False) -> Path:
    """Draw the row-normalised confusion matrix and per-class IoU bars.

    Args:
        evaluation: Result of :func:`evaluate`.
        path: Image file; the format follows the extension (``.png``, ``.pdf``, ``.svg``).
        overwrite: Whether an existing file may be replaced.

    Returns:
        *path*.
    """
    path = Path(path)
    names = evaluation.classes.names
    k = len(names)
    cm = evaluation.confusion.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = cm / cm.sum(axis=1, keepdims=True)
    fig = Figure(figsize=(6 + 0.6 * k, 3 + 0.35 * k), layout="constrained")
    FigureCanvasAgg(fig)
    ax_cm, ax_iou = fig.subplots(1, 2, width_ratios=(1.2, 1))
    image = ax_cm.imshow(np.nan_to_num(normalised), cmap="Blues", vmin=0, vmax=1)
    for (row, col), value in np.ndenumerate(normalised):
        if not math.isnan(value):
            colour = "white" if value > 0.5 else "black"
            ax_cm.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7, color=colour)
    ax_cm.set_xticks(range(k), names, rotation=45, ha="right")
    ax_cm.set_yticks(range(k), names)
    ax_cm.set_xlabel("predicted class")
    ax_cm.set_ylabel("reference class")
    ax_cm.set_title("Confusion matrix (rows normalised)")
    fig.colorbar(image, ax=ax_cm, label="fraction of reference pixels", shrink=0.8)
    iou = np.nan_to_num(evaluation.per_class()["iou"])
    colours = [tuple(v / 255 for v in c) for c in evaluation.classes.colors]
    bars = ax_iou.barh(range(k), iou, color=colours, edgecolor="black")
    ax_iou.bar_label(bars, fmt="%.3f", padding=2, fontsize=7)
    ax_iou.set_yticks(range(k), names)
    ax_iou.invert_yaxis()
    ax_iou.set_xlim(0, 1.1)
    ax_iou.set_xlabel("IoU")
    ax_iou.set_title("Per-class IoU")
    summary = evaluation.summary()
    ax_iou.axvline(summary["mean_iou"], color="black", linestyle="--", label="mIoU")
    if evaluation.excluded:
        label = "mIoU w/o " + ", ".join(evaluation.excluded)
        ax_iou.axvline(summary["mean_iou_excluding"], color="grey", linestyle=":", label=label)
    ax_iou.legend(loc="lower right", fontsize=7)
    with atomic_output(path, overwrite) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", dpi=150)
    return path


def check_report_outputs(paths: Iterable[str | Path | None], overwrite: bool) -> None:
    """Refuse existing report files before any work starts (see :func:`check_output`)."""
    for path in paths:
        if path is not None:
            check_output(path, overwrite)
