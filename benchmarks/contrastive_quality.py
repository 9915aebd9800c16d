"""Does the contrastive term help? Baseline vs contrastive on the synthetic dataset.

Both variants share data, initial weights, seeds and schedule (geoct.experiment.compare);
only the contrastive term differs. Reports mean and standard deviation over seeds of the
test mIoU and per-class IoU, plus training step time and peak memory.

    python benchmarks/contrastive_quality.py [--seeds 0 1 2] [--epochs 8] [--tiles 12] [--size 512]
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import yaml

from geoct.datasets.recipes import prepare_synthetic
from geoct.experiment import compare

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("baseline", "contrastive")


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
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override model arguments, e.g. contrastive_weight=0.5 (YAML values)",
    )
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "contrastive_quality.json"
    )
    return parser.parse_args()


def load_config(path: Path, overrides: list[str]) -> tuple[dict, dict]:
    config = yaml.safe_load(path.read_text())
    model = dict(config["model"])
    for item in overrides:
        key, value = item.split("=", 1)
        model[key] = yaml.safe_load(value)
    return model, dict(config["data"]["init_args"])


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: dict[str, list]) -> dict:
    keys = [
        k for k in runs["baseline"][0].test if k.startswith(("test_mIoU", "test_IoU_", "test_OA"))
    ]
    table = {}
    for variant in VARIANTS:
        results = runs[variant]
        table[variant] = {k: mean_std([r.test[k] for r in results]) for k in keys}
        table[variant]["step_seconds"] = mean_std([r.step_seconds for r in results])
        table[variant]["peak_memory_mb"] = mean_std([r.peak_memory_mb for r in results])
    return table


def print_table(table: dict) -> None:
    rows = list(table["baseline"])
    print(f"\n{'metric':<32}{'baseline':>20}{'contrastive':>20}{'delta':>10}")
    for key in rows:
        (bm, bs), (cm, cs) = table["baseline"][key], table["contrastive"][key]
        print(f"{key:<32}{bm:>12.4f} ± {bs:<6.4f}{cm:>12.4f} ± {cs:<6.4f}{cm - bm:>+10.4f}")
    step = table["contrastive"]["step_seconds"][0] / table["baseline"]["step_seconds"][0]
    memory = table["contrastive"]["peak_memory_mb"][0] / table["baseline"]["peak_memory_mb"][0]
    print(f"\nstep time ratio {step:.3f}, peak memory ratio {memory:.3f}")


def main() -> None:
    args = parse_args()
    model_args, data_args = load_config(args.config, args.set)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "data"
            prepare_synthetic(data, tiles=args.tiles, size=args.size, seed=0)
        data_args["root"] = str(data)
        if args.length:
            data_args["length"] = args.length
        runs: dict[str, list] = {v: [] for v in VARIANTS}
        for seed in args.seeds:
            results = compare(
                model_args, data_args, seed, args.epochs, Path(tmp) / "runs", args.accelerator
            )
            for variant, result in results.items():
                runs[variant].append(result)
                print(
                    f"seed {seed} {variant:<12} test mIoU {result.test['test_mIoU']:.4f} "
                    f"step {result.step_seconds * 1000:.0f} ms",
                    flush=True,
                )
    table = summarise(runs)
    print_table(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model": model_args,
        "data": data_args,
        "runs": {
            v: [
                {
                    "seed": r.seed,
                    "test": r.test,
                    "history": r.history,
                    "step_seconds": r.step_seconds,
                    "peak_memory_mb": r.peak_memory_mb,
                }
                for r in runs[v]
            ]
            for v in VARIANTS
        },
        "summary": {
            v: {k: {"mean": m, "std": s} for k, (m, s) in t.items()} for v, t in table.items()
        },
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
