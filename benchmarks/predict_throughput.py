"""Throughput and memory of ``geoct predict``.

(a) the model's pure forward throughput on pre-loaded window batches, (b) end-to-end
``predict_scene`` throughput in windows per second with the same model and device,
and (c) peak RSS of predicting scenes of growing size on CPU with a tiny model,
each size in its own process.

Targets: (b) / (a) >= 0.8 and RSS(largest) / RSS(smallest) <= 1.15.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from torch import nn

from geoct.classes import POTSDAM
from geoct.metadata import ModelSpec
from geoct.predict.engine import PredictOptions, WindowPredictor, predict_scene, resolve_device

SPEC = ModelSpec(
    bands=("R", "G", "B", "IR"),
    mean=(120.0,) * 4,
    std=(60.0,) * 4,
    gsd=0.05,
    patch_size=512,
    classes=POTSDAM,
)


def conv_net(width: int, depth: int) -> nn.Module:
    """A plain full-resolution conv net: *depth* 3x3 convs of *width* channels."""
    torch.manual_seed(0)
    layers, c = [], SPEC.in_channels
    for _ in range(depth):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
        c = width
    return nn.Sequential(*layers, nn.Conv2d(c, SPEC.classes.num_classes, 1))


def load(args: argparse.Namespace) -> tuple[nn.Module, ModelSpec]:
    if args.checkpoint:
        from geoct.tasks import load_model

        return load_model(args.checkpoint)
    return conv_net(args.width, args.depth), SPEC


def write_scene(path: Path, size: int, count: int = 4) -> Path:
    """Write a noise scene block by block (memory independent of its size)."""
    rng = np.random.default_rng(0)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": count,
        "dtype": "uint8",
        "crs": "EPSG:25833",
        "transform": from_origin(368000.0, 5808000.0, 0.05, 0.05),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "photometric": "MINISBLACK",
        "BIGTIFF": "IF_NEEDED",
    }
    with rasterio.Env(GDAL_CACHEMAX=16 << 20), rasterio.open(path, "w", **profile) as dst:
        for _, win in dst.block_windows(1):
            shape = (count, win.height, win.width)
            dst.write(rng.integers(0, 256, shape, dtype=np.uint8), window=win)
    return path


def forward_throughput(model: nn.Module, spec: ModelSpec, args: argparse.Namespace) -> float:
    """(a) windows per second of the model alone on pre-loaded batches."""
    predictor = WindowPredictor(model, spec.classes.num_classes, resolve_device(args.device))
    rng = np.random.default_rng(0)
    shape = (args.batch_size, spec.in_channels, args.window, args.window)
    batches = [rng.standard_normal(shape, dtype=np.float32) for _ in range(2)]
    predictor(batches[0])
    n = 0
    start = time.perf_counter()
    while n < args.windows:
        predictor(batches[n // args.batch_size % 2])
        n += args.batch_size
    return n / (time.perf_counter() - start)


def end_to_end_throughput(model: nn.Module, spec: ModelSpec, args: argparse.Namespace, work: Path):
    """(b) windows per second of ``predict_scene`` over a scene of about ``--windows`` windows."""
    stride = args.window - args.overlap
    side = max(1, round(args.windows**0.5)) * stride + args.overlap - args.overlap // 2 * 2
    scene = write_scene(work / "throughput.tif", side, spec.in_channels)
    options = PredictOptions(
        window=args.window,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        overwrite=True,
        progress=False,
    )
    result = predict_scene(model, spec, scene, work / "throughput.classes.tif", options=options)
    return result.windows_run / result.seconds, result


def _vm(field: str) -> float:
    """A ``/proc/self/status`` memory field in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_rss(size: int, work: Path) -> None:
    """Predict the noise scene of *size* px with a tiny model and print JSON with peak RSS.

    ``peak_rss_mb`` is the process high-water mark of the prediction alone: the
    mark is reset (``/proc/self/clear_refs``) after imports and model creation,
    whose transient peak would otherwise hide it.
    """
    torch.set_num_threads(2)
    scene = work / f"rss_{size}.tif"
    model = conv_net(8, 1)
    process_peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path("/proc/self/clear_refs").write_text("5")
    rss_before = _vm("VmRSS")
    options = PredictOptions(window=512, overlap=128, batch_size=4, device="cpu", progress=False)
    out = work / f"rss_{size}.classes.tif"
    result = predict_scene(model, SPEC, scene, out, options=options)
    report = {
        "size": size,
        "peak_rss_mb": _vm("VmHWM"),
        "rss_before_predict_mb": rss_before,
        "process_peak_before_predict_mb": process_peak_before,
        "seconds": result.seconds,
        "windows": result.windows,
    }
    print(json.dumps(report))


def rss_table(sizes: list[int], work: Path) -> list[dict]:
    """(c) run :func:`child_rss` for each size in a fresh process."""
    rows = []
    for size in sizes:
        write_scene(work / f"rss_{size}.tif", size)
        cmd = [sys.executable, __file__, "--child-rss", str(size), "--work", str(work)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        for path in work.glob(f"rss_{size}*"):
            path.unlink()
        print(
            f"  {size:>6} px: peak RSS {rows[-1]['peak_rss_mb']:.0f} MB "
            f"({rows[-1]['seconds']:.0f} s)",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="geoct checkpoint (default: a plain conv net)")
    parser.add_argument("--width", type=int, default=32, help="conv net width")
    parser.add_argument("--depth", type=int, default=4, help="conv net depth")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--windows", type=int, default=16, help="windows timed in (a) and (b)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[2000, 8000, 20000])
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temp folder)")
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "results" / "predict_throughput.json"
    )
    parser.add_argument("--child-rss", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rss:
        child_rss(args.child_rss, args.work)
        return
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        model, spec = load(args)
        device = resolve_device(args.device)
        forward = forward_throughput(model, spec, args)
        e2e, result = end_to_end_throughput(model, spec, args, work)
        print(f"(a) forward only : {forward:8.2f} windows/s ({device}, batch {args.batch_size})")
        print(f"(b) end to end   : {e2e:8.2f} windows/s ({result.windows_run} windows)")
        print(f"    ratio (b)/(a): {e2e / forward:8.2f}   target >= 0.80")
        print("(c) peak RSS on CPU, tiny model:")
        rows = rss_table(args.sizes, work) if args.sizes else []
        ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"] if rows else None
        if rows:
            print(f"{'size':>8} {'windows':>8} {'seconds':>8} {'RSS before MB':>14} {'peak MB':>8}")
            for r in rows:
                print(
                    f"{r['size']:>8} {r['windows']:>8} {r['seconds']:>8.1f} "
                    f"{r['rss_before_predict_mb']:>14.0f} {r['peak_rss_mb']:>8.0f}"
                )
            print(f"    ratio largest/smallest: {ratio:.3f}   target <= 1.15")
    report = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "model": args.checkpoint or f"conv net width {args.width} depth {args.depth}",
        "window": args.window,
        "overlap": args.overlap,
        "batch_size": args.batch_size,
        "forward_windows_per_s": forward,
        "end_to_end_windows_per_s": e2e,
        "ratio": e2e / forward,
        "rss": rows,
        "rss_ratio": ratio,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
