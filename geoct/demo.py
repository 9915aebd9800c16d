"""``make demo``: the whole geoct workflow on a synthetic Potsdam-like dataset.

Generates the data, trains ``configs/synthetic_tiny.yaml`` (contrastive term on), predicts a
held-out scene with ``geoct predict``, vectorises it, evaluates it against the scene's labels
and prints a summary. Every step runs the real command line in a subprocess; all outputs land
in one folder, which is replaced on each run.

    python -m geoct.demo [--out demo_output] [--epochs N] [--length N] [--tiles N] [--size PX]
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import GeoctError

#: Repository root, where ``configs/`` and ``data_recipes/`` live.
ROOT = Path(__file__).resolve().parent.parent

#: Training configuration of the demo.
CONFIG = ROOT / "configs" / "synthetic_tiny.yaml"


@dataclass
class Timings:
    """Wall-clock seconds of each demo step, in the order they ran."""

    steps: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, *command: str | Path) -> None:
        """Run *command* as step *name*, failing with a one-line error if it fails."""
        print(f"\n== {name}: {' '.join(str(c) for c in command)}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([str(c) for c in command], cwd=ROOT)
        self.steps[name] = time.perf_counter() - start
        if proc.returncode:
            raise GeoctError(f"demo step '{name}' failed with exit status {proc.returncode}")


def geoct(*args: str | Path) -> list[str | Path]:
    """Return the command line of ``geoct ARGS`` in this interpreter."""
    return [sys.executable, "-m", "geoct", *args]


def newest_checkpoint(runs: Path) -> Path:
    """Return the best checkpoint of the newest training run under *runs*."""
    checkpoints = [p for p in runs.rglob("*.ckpt") if p.name != "last.ckpt"]
    if not checkpoints:
        checkpoints = list(runs.rglob("last.ckpt"))
    if not checkpoints:
        raise GeoctError(f"{runs}: training wrote no checkpoint")
    return max(checkpoints, key=lambda p: p.stat().st_mtime)


def held_out_scene(data: Path) -> tuple[Path, Path]:
    """Return the image and label raster of the first test tile of the dataset in *data*."""
    meta = json.loads((data / "dataset.json").read_text())
    tile = meta["tiles"][meta["splits"]["test"][0]]
    return data / tile["image"], data / tile["label"]


def render_overview(image: Path, classes: Path, confidence: Path, output: Path) -> Path:
    """Draw the orthophoto, the predicted classes (with the raster's colours) and the confidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import rasterio
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from .export.class_raster import read_class_table

    table = read_class_table(classes)
    with rasterio.open(image) as src:
        rgb = src.read([1, 2, 3]).transpose(1, 2, 0)
    with rasterio.open(classes) as src:
        predicted = src.read(1, masked=True)
    with rasterio.open(confidence) as src:
        conf = src.read(1, masked=True) / 255
    colours = np.array(table.colors) / 255
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    axes[0].imshow(rgb)
    axes[0].set_title("Orthophoto (held-out synthetic tile)")
    axes[1].imshow(predicted, cmap=ListedColormap(colours), vmin=0, vmax=len(colours) - 1,
                   interpolation="nearest")  # fmt: skip
    axes[1].set_title("geoct predict: classes")
    axes[1].legend(
        handles=[
            Patch(facecolor=c, edgecolor="black", label=n)
            for n, c in zip(table.names, colours, strict=True)
        ],
        loc="lower left",
        fontsize=8,
    )
    shown = axes[2].imshow(conf, cmap="magma", vmin=0, vmax=1)
    axes[2].set_title("Confidence (max class probability)")
    fig.colorbar(shown, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(output, dpi=80)
    plt.close(fig)
    return output


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summarise(out: Path, timings: Timings, outputs: dict[str, Path]) -> str:
    """Return the printed summary and write it as ``summary.json`` in *out*."""
    report = json.loads(outputs["evaluation report"].read_text())
    predict_log = json.loads((out / "prediction" / "predict.json").read_text())["scenes"][0]
    lines = [
        "",
        "geoct demo summary",
        f"  training time            {timings.steps['train']:.0f} s",
        f"  mIoU                     {report['mean_iou']:.3f}",
        f"  overall accuracy         {report['overall_accuracy']:.3f}",
    ]
    lines += [
        f"  {'IoU ' + name:<25}{_score(scores['iou'])}"
        for name, scores in report["per_class"].items()
    ]
    lines.append(f"  prediction speed         {predict_log['megapixels_per_second']:.2f} MP/s")
    lines += [f"  {kind:<25}{path}" for kind, path in outputs.items()]
    summary = {
        "seconds": timings.steps,
        "mean_iou": report["mean_iou"],
        "per_class_iou": {name: scores["iou"] for name, scores in report["per_class"].items()},
        "outputs": {k: str(v) for k, v in outputs.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return "\n".join(lines)


def run_demo(out: Path, epochs: int, length: int, tiles: int, size: int) -> str:
    """Run every demo step into *out* and return the summary."""
    out = out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    data, runs, pred = out / "data", out / "runs", out / "prediction"
    pred.mkdir(parents=True)
    timings = Timings()
    timings.run(
        "data",
        sys.executable,
        ROOT / "data_recipes" / "synthetic_potsdam.py",
        "--out", data, "--tiles", str(tiles), "--size", str(size), "--seed", "0",
    )  # fmt: skip
    timings.run(
        "train",
        *geoct(
            "fit", "--config", CONFIG, "--data.root", data,
            "--trainer.max_epochs", str(epochs), "--data.length", str(length),
            "--trainer.default_root_dir", runs,
            "--trainer.logger.init_args.save_dir", runs,
            "--trainer.accelerator", "auto",
        ),
    )  # fmt: skip
    checkpoint = newest_checkpoint(runs)
    image, labels = held_out_scene(data)
    classes = pred / f"{image.stem}.classes.tif"
    timings.run(
        "predict",
        *geoct(
            "predict", image, "--checkpoint", checkpoint, "--output", classes,
            "--confidence", "--probabilities", "--vector", "--stac",
            "--report", pred / "predict.json", "--overwrite",
        ),
    )  # fmt: skip
    report, plot = out / "evaluation.json", out / "evaluation.png"
    timings.run(
        "evaluate",
        *geoct("evaluate", classes, labels, "--report", report, "--plot", plot, "--overwrite"),
    )
    figure = render_overview(
        image, classes, pred / f"{image.stem}.confidence.tif", out / "prediction.png"
    )
    outputs = {
        "checkpoint": checkpoint,
        "class COG": classes,
        "confidence": pred / f"{image.stem}.confidence.tif",
        "probabilities": pred / f"{image.stem}.probabilities.tif",
        "polygons": pred / f"{image.stem}.polygons.gpkg",
        "raster style": classes.with_suffix(".qml"),
        "STAC item": pred / f"{image.stem}.item.json",
        "evaluation report": report,
        "evaluation plot": plot,
        "overview figure": figure,
    }
    missing = [str(p) for p in outputs.values() if not p.exists()]
    if missing:
        raise GeoctError(f"demo outputs missing: {', '.join(missing)}")
    return summarise(out, timings, outputs)


def main(argv: list[str] | None = None) -> int:
    """Run the demo from the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m geoct.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=ROOT / "demo_output", help="output folder")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs")
    parser.add_argument("--length", type=int, default=192, help="training patches per epoch")
    parser.add_argument("--tiles", type=int, default=6, help="synthetic tiles")
    parser.add_argument("--size", type=int, default=512, help="synthetic tile side in pixels")
    args = parser.parse_args(argv)
    try:
        print(run_demo(args.out, args.epochs, args.length, args.tiles, args.size))
    except GeoctError as e:
        print(f"geoct demo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
