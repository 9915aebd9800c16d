"""Does the contrastive term help? Baseline vs contrastive variants on the synthetic dataset.

Every variant shares data, initial weights, seeds and schedule with the baseline
(geoct.experiment.compare); only the contrastive term and its settings differ. Reports
mean and standard deviation over seeds of the test mIoU and per-class IoU, the paired
(same-seed) mIoU difference, the separability of the encoder's patch embeddings
(nearest-centroid accuracy per stage, also for tree vs low vegetation and building vs
impervious surface), the share of labelled and of misclassified test pixels that lie in
pure patches (the only ones the term sees) at each stride, gradient diagnostics (how often the gradient norm was clipped; the
cosine and norm ratio between the weighted contrastive and the segmentation gradient on
the encoder at the first and last step), and the training step time and peak memory.

    python benchmarks/contrastive_quality.py [--seeds 0 1 2] [--epochs 8] [--tiles 12]
    python benchmarks/contrastive_quality.py --variant w0.1 contrastive_weight=0.1 \
        --variant tau0.5 contrastive_weight=0.1 temperature=0.5
"""

import argparse
import json
import logging
import math
import statistics
import tempfile
from pathlib import Path

import torch
import yaml

from geoct.datasets.recipes import prepare_synthetic
from geoct.experiment import compare

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "baseline"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "synthetic_tiny.yaml")
    parser.add_argument("--data", type=Path, help="prepared dataset (default: generate one)")
    parser.add_argument("--tiles", type=int, default=12, help="synthetic tiles when generating")
    parser.add_argument("--size", type=int, default=512, help="synthetic tile side when generating")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--length", type=int, help="training patches per epoch (default: config)")
    parser.add_argument(
        "--patch-size", type=int, help="training patch side in px (default: config)"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override model arguments of every run, e.g. lr=5e-4 (YAML values)",
    )
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        metavar=("NAME", "KEY=VALUE"),
        help="a contrastive variant and its overrides, e.g. --variant w0.1 contrastive_weight=0.1; "
        "repeat for a sweep against one baseline (default: one variant, the config as it is)",
    )
    parser.add_argument(
        "--gradient-clip", type=float, default=1.0, help="clip of the gradient norm (0: off)"
    )
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="shorthand for --accelerator (cuda: gpu); fails early when CUDA is missing",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "contrastive_quality.json"
    )
    return parser.parse_args()


def overrides(items: list[str]) -> dict:
    """Parse ``KEY=VALUE`` items, values as YAML."""
    pairs = [item.split("=", 1) for item in items]
    bad = [item for item, pair in zip(items, pairs, strict=True) if len(pair) != 2]
    if bad:
        raise SystemExit(f"contrastive_quality: expected KEY=VALUE, got {bad}")
    return {key: yaml.safe_load(value) for key, value in pairs}


def load_config(path: Path, items: list[str]) -> tuple[dict, dict]:
    config = yaml.safe_load(path.read_text())
    return {**config["model"], **overrides(items)}, dict(config["data"]["init_args"])


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation, leaving out NaN (a class absent from a run)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: dict[str, list]) -> dict:
    first = runs[BASELINE][0]
    keys = [k for k in first.test if k.startswith(("test_mIoU", "test_IoU_", "test_OA"))]
    gradient_keys = sorted({k for results in runs.values() for r in results for k in r.gradients})
    table = {}
    for name, results in runs.items():
        table[name] = {k: mean_std([r.test[k] for r in results]) for k in keys}
        for k in first.separability:
            table[name][f"sep_{k}"] = mean_std([r.separability[k] for r in results])
        for k in first.coverage:
            table[name][f"pure_{k}"] = mean_std([r.coverage[k] for r in results])
        for k in gradient_keys:
            table[name][f"grad_{k}"] = mean_std([r.gradients.get(k, math.nan) for r in results])
        table[name]["step_seconds"] = mean_std([r.step_seconds for r in results])
        table[name]["peak_memory_mb"] = mean_std([r.peak_memory_mb for r in results])
        deltas = [
            r.test["test_mIoU"] - b.test["test_mIoU"]
            for r, b in zip(results, runs[BASELINE], strict=True)
        ]
        table[name]["paired_delta_mIoU"] = mean_std(deltas)
    return table


def print_table(table: dict) -> None:
    base = table[BASELINE]
    for name, row in table.items():
        if name == BASELINE:
            continue
        print(f"\n{'metric':<44}{'baseline':>20}{name:>20}{'delta':>10}")
        for key in base:
            if key == "paired_delta_mIoU":
                continue
            (bm, bs), (cm, cs) = base[key], row[key]
            print(f"{key:<44}{bm:>12.4f} ± {bs:<6.4f}{cm:>12.4f} ± {cs:<6.4f}{cm - bm:>+10.4f}")
    print(f"\n{'variant':<20}{'mIoU':>16}{'paired delta':>20}{'step x':>9}{'memory x':>10}")
    for name, row in table.items():
        (m, s), (d, ds) = row["test_mIoU"], row["paired_delta_mIoU"]
        step = row["step_seconds"][0] / base["step_seconds"][0]
        memory = row["peak_memory_mb"][0] / base["peak_memory_mb"][0]
        print(f"{name:<20}{m:>9.4f} ± {s:.3f}{d:>+12.4f} ± {ds:.3f}{step:>9.2f}{memory:>10.2f}")


def resolve_accelerator(args: argparse.Namespace) -> str:
    """The Lightning accelerator of ``--device`` (or ``--accelerator``)."""
    if args.device is None:
        return args.accelerator
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "contrastive_quality: --device cuda: CUDA is not available on this machine"
        )
    return {"auto": "auto", "cpu": "cpu", "cuda": "gpu"}[args.device]


def main() -> None:
    args = parse_args()
    args.accelerator = resolve_accelerator(args)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    model_args, data_args = load_config(args.config, args.set)
    variants = {v[0]: overrides(v[1:]) for v in args.variant or [["contrastive"]]}
    if BASELINE in variants:
        raise SystemExit(f"contrastive_quality: {BASELINE!r} is the name of the baseline run")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "data"
            prepare_synthetic(data, tiles=args.tiles, size=args.size, seed=0)
        data_args["root"] = str(data)
        if args.length:
            data_args["length"] = args.length
        if args.patch_size:
            data_args["patch_size"] = args.patch_size
        runs: dict[str, list] = {BASELINE: [], **{v: [] for v in variants}}
        for seed in args.seeds:
            results = compare(
                model_args,
                data_args,
                seed,
                args.epochs,
                Path(tmp) / "runs",
                args.accelerator,
                variants,
                args.gradient_clip or None,
            )
            for variant, result in results.items():
                runs[variant].append(result)
                print(
                    f"seed {seed} {variant:<16} test mIoU {result.test['test_mIoU']:.4f} "
                    f"step {result.step_seconds * 1000:.0f} ms",
                    flush=True,
                )
    table = summarise(runs)
    print_table(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model": model_args,
        "variants": variants,
        "data": data_args,
        "runs": {
            v: [
                {
                    "seed": r.seed,
                    "test": r.test,
                    "history": r.history,
                    "step_seconds": r.step_seconds,
                    "peak_memory_mb": r.peak_memory_mb,
                    "separability": r.separability,
                    "coverage": r.coverage,
                    "gradients": r.gradients,
                }
                for r in runs[v]
            ]
            for v in runs
        },
        "summary": {
            v: {k: {"mean": m, "std": s} for k, (m, s) in t.items()} for v, t in table.items()
        },
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
