"""Throughput, stage times and memory of ``geoct predict``, against the model alone and the I/O floor.

Measured in one run, so that ratios hold on a shared machine:

(a) forward only: the model alone on pre-loaded, normalised window batches on the
    device, in windows per second (same batch size, threads and precision);
(b) end to end: ``predict_scene`` over a smooth (compressible) uint8 RGBIR scene,
    classes (``--confidence``: plus confidence), in windows/s and scene Mpx/s,
    publishing (overviews and COG copy) timed separately;
(c) per-window stage times: read, to device (copy and normalisation), forward,
    blend, finalise, to host, write, summed over threads (on CUDA from a second,
    profiled run synchronised around each stage, on a smaller scene);
(d) the I/O floor: one blocked read of the scene and one write of a uint8 raster
    of its size (a COG: DEFLATE, mode overviews);
(e) memory at growing scene sizes: peak RSS on CPU (each size in its own process,
    over as many windows as the largest size runs, see :func:`child_rss`),
    peak GPU memory on CUDA.

Targets: CPU, default conv net: (b) / (a) >= 0.9. CPU, ``--null-model`` (one 1x1
conv): (b) within 2 x (d) in time. CUDA, Swin-T + FPN at 512 px, bf16, automatic
batch, 20k px scene, ``--confidence``: (b) / (a) >= 0.8. Memory largest / smallest
<= 1.15.

    python benchmarks/predict_throughput.py                       # CPU conv net
    python benchmarks/predict_throughput.py --null-model          # CPU, 4096 px scene
    python benchmarks/predict_throughput.py --model swin_t --device cuda \
        --scene-size 20000 --confidence --gpu-memory-sizes 2048   # the GPU target
"""

# ruff: noqa: E402 (the process settings come before torch loads)

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from geoct.runtime import tune_for_streaming

# The process settings of ``geoct predict``, before torch loads OpenMP.
tune_for_streaming()

import numpy as np
import rasterio
import rasterio.shutil
import torch
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from torch import nn

from geoct.classes import POTSDAM
from geoct.metadata import ModelSpec
from geoct.predict.engine import (
    PredictOptions,
    WindowPredictor,
    auto_batch_size,
    predict_scene,
    resolve_device,
)
from geoct.predict.transfer import STAGES, profile_stages
from geoct.predict.windows import WindowGrid

SPEC = ModelSpec(
    bands=("R", "G", "B", "IR"),
    mean=(120.0,) * 4,
    std=(60.0,) * 4,
    gsd=0.05,
    patch_size=512,
    classes=POTSDAM,
)

#: Backbones of ``--model``: timm names, built with a light FPN head.
BACKBONES = {
    "swin_t": "swin_tiny_patch4_window7_224",
    "vit_s16": "vit_small_patch16_224",
}


def conv_net(width: int, depth: int) -> nn.Module:
    """A plain full-resolution conv net: *depth* 3x3 convs of *width* channels."""
    torch.manual_seed(0)
    layers, c = [], SPEC.in_channels
    for _ in range(depth):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
        c = width
    return nn.Sequential(*layers, nn.Conv2d(c, SPEC.classes.num_classes, 1))


def null_model() -> nn.Module:
    """A near-null model: one 1x1 conv from the bands to the classes."""
    torch.manual_seed(0)
    return nn.Conv2d(SPEC.in_channels, SPEC.classes.num_classes, 1)


def load(args: argparse.Namespace) -> tuple[nn.Module, ModelSpec, str]:
    """Return the model, its spec and a description."""
    if args.checkpoint:
        from geoct.tasks import load_model

        model, spec = load_model(args.checkpoint)
        return model, spec, str(args.checkpoint)
    if args.model == "null":
        return null_model(), SPEC, "one 1x1 conv (null model)"
    if args.model in BACKBONES:
        from geoct.models import build_segmenter

        torch.manual_seed(0)
        net = build_segmenter(BACKBONES[args.model], 4, 6, "fpn", args.decoder_channels)
        return net, SPEC, f"{BACKBONES[args.model]} + FPN ({args.decoder_channels} ch)"
    return conv_net(args.width, args.depth), SPEC, f"conv net width {args.width} depth {args.depth}"


def write_scene(path: Path, size: int, count: int = 4) -> Path:
    """Write a smooth, compressible uint8 scene (DEFLATE, 512 px tiles) block by block."""
    axis = np.arange(size, dtype=np.float32)
    profiles = [
        (np.sin(axis / (300 + 50 * b)), np.cos(axis / (200 + 30 * b))) for b in range(count)
    ]
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
        "compress": "DEFLATE",
        "photometric": "MINISBLACK",
        "BIGTIFF": "IF_NEEDED",
        "NUM_THREADS": "ALL_CPUS",
    }
    with rasterio.Env(GDAL_CACHEMAX=64 << 20), rasterio.open(path, "w", **profile) as dst:
        for _, win in dst.block_windows(1):
            rows = slice(win.row_off, win.row_off + win.height)
            cols = slice(win.col_off, win.col_off + win.width)
            block = np.stack([127 + 100 * ys[rows, None] * xs[None, cols] for xs, ys in profiles])
            dst.write(block.astype(np.uint8), window=win)
    return path


def scene_for(args: argparse.Namespace, work: Path, size: int) -> Path:
    path = work / f"scene_{size}.tif"
    return path if path.exists() else write_scene(path, size)


def options(args: argparse.Namespace, batch_size: int | None) -> PredictOptions:
    return PredictOptions(
        window=args.window,
        overlap=args.overlap,
        batch_size=batch_size,
        device=args.device,
        confidence=args.confidence,
        overwrite=True,
        progress=False,
        compile=args.compile,
    )


def forward_only(
    model: nn.Module, spec: ModelSpec, args: argparse.Namespace, device: torch.device
) -> tuple[float, int]:
    """(a) Windows per second of the model alone, and the batch size used."""
    predictor = WindowPredictor(model, spec.classes.num_classes, device, compile=args.compile)
    window = (args.window, args.window)
    batch_size = args.batch_size or auto_batch_size(predictor, spec.in_channels, window)
    predictor.batch_size = batch_size
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (batch_size, spec.in_channels, *window)
    batches = [torch.randn(shape, generator=gen, device=device) for _ in range(2)]
    for batch in batches:
        predictor(batch)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    n, start = 0, time.perf_counter()
    while n < args.forward_windows:
        predictor(batches[n // batch_size % 2])
        n += batch_size
    sync()
    return n / (time.perf_counter() - start), batch_size


def end_to_end(model, spec, args, scene: Path, work: Path, batch_size: int) -> dict:
    """(b) One ``predict_scene`` run; its figures."""
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    out = work / f"{scene.stem}.classes.tif"
    result = predict_scene(model, spec, scene, out, options=options(args, batch_size))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    pixels = result.width * result.height
    return {
        "size": result.width,
        "windows": result.windows,
        "windows_run": result.windows_run,
        "seconds": result.seconds,
        "publish_seconds": result.publish_seconds,
        "windows_per_s": result.windows_run / result.seconds,
        "megapixels_per_s": pixels / 1e6 / result.seconds,
        "stages": result.stages,
        "gpu_peak_bytes": peak,
    }


def profiled(model, spec, args, scene: Path, work: Path, batch_size: int) -> dict:
    """(c) Stage times per window, the device synchronised around each stage."""
    device = resolve_device(args.device)
    with profile_stages(device, sync=True) as times:
        run = end_to_end(model, spec, args, scene, work, batch_size)
    return {stage: times.seconds[stage] / run["windows"] for stage in STAGES}


def io_floor(scene: Path, work: Path) -> dict:
    """(d) Seconds of one blocked read of *scene* and one COG write of a uint8 raster of its size."""
    start = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=64 << 20), rasterio.open(scene) as src:
        classes = np.empty((src.height, src.width), dtype=np.uint8)
        for _, win in src.block_windows(1):
            block = src.read(window=win)
            rows = slice(win.row_off, win.row_off + win.height)
            cols = slice(win.col_off, win.col_off + win.width)
            classes[rows, cols] = block[0] // 43
        profile = {
            "driver": "MEM",
            "width": src.width,
            "height": src.height,
            "count": 1,
            "dtype": "uint8",
            "crs": src.crs,
            "transform": src.transform,
        }
    read = time.perf_counter() - start
    levels = max(0, math.ceil(math.log2(max(classes.shape) / 256)))
    start = time.perf_counter()
    with MemoryFile() as mem, mem.open(**profile) as dst:
        dst.write(classes, 1)
        rasterio.shutil.copy(
            dst,
            work / "floor.classes.tif",
            driver="COG",
            COMPRESS="DEFLATE",
            BLOCKSIZE="512",
            OVERVIEW_RESAMPLING="MODE",
            OVERVIEW_COUNT=str(levels),
            NUM_THREADS="ALL_CPUS",
            BIGTIFF="IF_SAFER",
        )
    write = time.perf_counter() - start
    return {"read_seconds": read, "write_seconds": write, "seconds": read + write}


def _vm(field: str) -> float:
    """A ``/proc/self/status`` memory field in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_rss(size: int, work: Path, windows: int) -> None:
    """Predict the scene of *size* px with a tiny model and print JSON with peak RSS.

    ``peak_rss_mb`` is the process high-water mark of one prediction alone: the
    mark is reset (``/proc/self/clear_refs``) after imports and model creation.
    A high-water mark also catches transient buffers (the model's activations, a
    batch's logits, a block being finalised) at the moment they happen to coincide,
    and a longer run gives them more chances: a 2048 px scene (25 windows)
    predicted over and over in one process climbs by about 130 MB in its first 450
    windows. So the scene is then predicted again in the same process until at
    least *windows* windows have run, and ``peak_rss_equal_windows_mb`` is the mark
    over all of them: scene sizes are compared over runs of the same length.
    """
    torch.set_num_threads(2)
    model = conv_net(8, 1)
    process_peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path("/proc/self/clear_refs").write_text("5")
    rss_before = _vm("VmRSS")
    opts = PredictOptions(
        window=512, overlap=128, batch_size=4, device="cpu", progress=False, overwrite=True
    )
    out = work / f"rss_{size}.classes.tif"
    result = predict_scene(model, SPEC, work / f"rss_{size}.tif", out, options=opts)
    report = {
        "size": size,
        "peak_rss_mb": _vm("VmHWM"),
        "rss_before_predict_mb": rss_before,
        "process_peak_before_predict_mb": process_peak_before,
        "seconds": result.seconds,
        "windows": result.windows,
    }
    runs, done = 1, result.windows
    while done < windows:
        done += predict_scene(model, SPEC, work / f"rss_{size}.tif", out, options=opts).windows
        runs += 1
    report |= {"peak_rss_equal_windows_mb": _vm("VmHWM"), "runs": runs, "windows_run": done}
    print(json.dumps(report))


def rss_table(sizes: list[int], work: Path, repeats: int) -> list[dict]:
    """(e) on CPU: :func:`child_rss` for each size, *repeats* times, each in a fresh process.

    Every size is predicted over at least as many windows as the largest one has
    (see :func:`child_rss`). Runs still differ by a few percent; each size reports
    the median of its runs' marks, and every run.
    """
    windows = max(len(WindowGrid(s, s, (512, 512), (128, 128))) for s in sizes)
    rows = []
    for size in sizes:
        write_scene(work / f"rss_{size}.tif", size)
        runs = []
        for _ in range(repeats):
            cmd = [sys.executable, __file__, "--child-rss", str(size), "--work", str(work)]
            cmd += ["--rss-windows", str(windows)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            for path in work.glob(f"rss_{size}.classes*"):
                path.unlink()
        (work / f"rss_{size}.tif").unlink()
        row = dict(runs[0])
        for key in ("peak_rss_mb", "peak_rss_equal_windows_mb"):
            values = [r[key] for r in runs]
            row[key], row[key.replace("peak_", "peaks_")] = statistics.median(values), values
        rows.append(row)
        print(
            f"  {size:>6} px: peak RSS {row['peak_rss_equal_windows_mb']:.0f} MB over "
            f"{row['windows_run']} windows ({row['runs']} runs; runs "
            f"{', '.join(f'{v:.0f}' for v in row['peaks_rss_equal_windows_mb'])}); "
            f"one run {row['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    return rows


def scene_size(args: argparse.Namespace) -> int:
    """Scene side: ``--scene-size``, else about ``--windows`` windows (4096 px for the null model)."""
    if args.scene_size:
        return args.scene_size
    if args.model == "null":
        return 4096
    stride = args.window - args.overlap
    return max(1, round(args.windows**0.5)) * stride + args.overlap - args.overlap // 2 * 2


def print_report(report: dict) -> None:
    e2e, fwd = report["end_to_end"], report["forward_windows_per_s"]
    floor = report["io_floor"]
    print(f"device {report['device']}, {report['model']}, batch {report['batch_size']}")
    print(f"(a) forward only     : {fwd:9.2f} windows/s")
    print(
        f"(b) end to end       : {e2e['windows_per_s']:9.2f} windows/s, "
        f"{e2e['megapixels_per_s']:.2f} Mpx/s, {e2e['seconds']:.2f} s for a "
        f"{e2e['size']} px scene ({e2e['windows']} windows), "
        f"publishing {e2e['publish_seconds']:.2f} s"
    )
    each = ", ".join(f"{r:.2f}" for r in report["ratios"])
    print(
        f"    (b) / (a)        : {report['ratio']:9.2f} (medians of {report['repeats']}; each {each})"
    )
    print(
        "(c) per window, ms   : " + "  ".join(f"{s} {v:.2f}" for s, v in report["stage_ms"].items())
    )
    print(
        f"(d) I/O floor        : {floor['seconds']:.2f} s (read {floor['read_seconds']:.2f} s, "
        f"write {floor['write_seconds']:.2f} s); end to end / floor {report['floor_ratio']:.2f} "
        f"(each {', '.join(f'{r:.2f}' for r in report['floor_ratios'])})"
    )
    for name, value in report.get("memory_ratio", {}).items():
        print(f"(e) memory {name}: largest / smallest {value:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="geoct checkpoint (default: --model)")
    parser.add_argument("--model", choices=["conv", "null", *BACKBONES], default="conv")
    parser.add_argument("--null-model", action="store_true", help="same as --model null")
    parser.add_argument("--width", type=int, default=32, help="conv net width")
    parser.add_argument("--depth", type=int, default=4, help="conv net depth")
    parser.add_argument("--decoder-channels", type=int, default=128, help="FPN width")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--batch-size", type=int, help="default: 4 on CPU, automatic on CUDA")
    parser.add_argument("--windows", type=int, default=16, help="scene of about this many windows")
    parser.add_argument("--scene-size", type=int, help="scene side in px (overrides --windows)")
    parser.add_argument("--confidence", action="store_true", help="also write confidence")
    parser.add_argument(
        "--repeats", type=int, default=3, help="(a), (b) and (d) alternated; medians reported"
    )
    parser.add_argument("--forward-windows", type=int, help="windows timed in (a)")
    parser.add_argument("--profile-size", type=int, default=4096, help="scene side of (c) on CUDA")
    parser.add_argument("--sizes", type=int, nargs="*", default=[], help="(e) RSS sizes on CPU")
    parser.add_argument("--rss-repeats", type=int, default=2, help="(e) runs per size (median)")
    parser.add_argument("--gpu-memory-sizes", type=int, nargs="*", default=[])
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temp folder)")
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "results" / "predict_throughput.json"
    )
    parser.add_argument("--child-rss", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rss-windows", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.null_model:
        args.model = "null"
    if args.child_rss:
        child_rss(args.child_rss, args.work, args.rss_windows)
        return 0
    device = resolve_device(args.device)
    size = scene_size(args)
    grid = WindowGrid(size, size, (args.window,) * 2, (args.overlap,) * 2)
    args.forward_windows = args.forward_windows or min(len(grid), 256)
    if args.batch_size is None and device.type == "cpu":
        args.batch_size = 4
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        model, spec, description = load(args)
        scene = scene_for(args, work, size)
        runs = []
        for _ in range(args.repeats):
            forward, batch_size = forward_only(model, spec, args, device)
            e2e = end_to_end(model, spec, args, scene, work, batch_size)
            floor = io_floor(scene, work)
            runs.append({"forward_windows_per_s": forward, "end_to_end": e2e, "io_floor": floor})
        forward = statistics.median(r["forward_windows_per_s"] for r in runs)
        e2e = sorted((r["end_to_end"] for r in runs), key=lambda e: e["seconds"])[len(runs) // 2]
        floor = sorted((r["io_floor"] for r in runs), key=lambda f: f["seconds"])[len(runs) // 2]
        if device.type == "cuda":
            small = scene_for(args, work, min(size, args.profile_size))
            stage_ms = profiled(model, spec, args, small, work, batch_size)
        else:
            stage_ms = {stage: e2e["stages"][stage] / e2e["windows"] for stage in STAGES}
        memory = {}
        if device.type == "cuda" and args.gpu_memory_sizes:
            peaks = [end_to_end(model, spec, args, scene_for(args, work, s), work, batch_size)
                     for s in args.gpu_memory_sizes]  # fmt: skip
            rows = [*({"size": p["size"], "gpu_peak_bytes": p["gpu_peak_bytes"]} for p in peaks)]
            rows.append({"size": size, "gpu_peak_bytes": e2e["gpu_peak_bytes"]})
            rows.sort(key=lambda r: r["size"])
            memory["gpu"] = rows
        if device.type == "cpu" and args.sizes:
            memory["rss"] = rss_table(args.sizes, work, args.rss_repeats)
    ratios = {}
    if "gpu" in memory:
        ratios["gpu"] = memory["gpu"][-1]["gpu_peak_bytes"] / memory["gpu"][0]["gpu_peak_bytes"]
    if "rss" in memory:
        largest, smallest = memory["rss"][-1], memory["rss"][0]
        ratios["rss"] = largest["peak_rss_equal_windows_mb"] / smallest["peak_rss_equal_windows_mb"]
        ratios["rss_one_run"] = largest["peak_rss_mb"] / smallest["peak_rss_mb"]
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "model": description,
        "window": args.window,
        "overlap": args.overlap,
        "batch_size": batch_size,
        "compile": args.compile,
        "confidence": args.confidence,
        "repeats": args.repeats,
        "forward_windows_per_s": forward,
        "end_to_end": e2e,
        "ratio": e2e["windows_per_s"] / forward,
        "ratios": [r["end_to_end"]["windows_per_s"] / r["forward_windows_per_s"] for r in runs],
        "floor_ratios": [r["end_to_end"]["seconds"] / r["io_floor"]["seconds"] for r in runs],
        "stage_ms": {k: v * 1e3 for k, v in stage_ms.items()},
        "io_floor": floor,
        "floor_ratio": e2e["seconds"] / floor["seconds"],
        "memory": memory,
        "memory_ratio": ratios,
    }
    print_report(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
