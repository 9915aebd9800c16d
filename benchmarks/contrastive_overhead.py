"""Step time and peak memory of the patch contrastive loss versus the baseline.

For each backbone (Swin-T, ViT-S/16, PoolFormer-S12 at their real sizes, a light FPN
head) three training steps are compared (forward + backward + AdamW step):

* ``baseline``: segmentation loss only (contrastive off);
* ``ours``: plus :class:`geoct.models.PatchContrastiveLoss` (sample, then project
  only the sampled tokens; no host synchronisation);
* ``reference``: plus a reference-style loop (stages x classes, ``unique``,
  boolean indexing/``nonzero``, ``argsort``, every token projected), like
  ContrastiveDCSwin.

Step times come from one subprocess per backbone that interleaves the three variants
step by step on the same model, so that varying machine load affects them alike; the
fastest step is reported (the median is in the JSON). Peak memory comes from one
subprocess per (backbone, variant): ``torch.cuda.max_memory_allocated`` after warm-up
on CUDA, and on CPU the growth of the peak resident set size (``getrusage`` max RSS)
over the RSS before the first training step (gradients and optimiser state included).

Run: ``python benchmarks/contrastive_overhead.py`` (CPU: 128 px, batch 4) or on a GPU
``--device cuda --size 512 --batch 16`` (bf16 autocast). ``--device`` takes ``auto``
(CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``. Only torch, timm and
segmentation_models_pytorch are needed: on a GPU machine without geoct's geospatial
stack the segmentation loss is loaded from its file.
"""

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import geoct
from geoct.models import PatchContrastiveLoss, build_segmenter


def _segmentation_loss() -> type:
    """geoct's ``SegmentationLoss``, without ``geoct.tasks`` if that cannot be imported.

    Importing ``geoct.tasks`` imports the Lightning tasks and with them TorchGeo,
    rasterio, GeoPandas, ...; the loss module itself needs only torch and
    segmentation_models_pytorch, so a bare GPU machine can run this benchmark.
    """
    try:
        from geoct.tasks.losses import SegmentationLoss
    except ImportError:
        path = Path(geoct.__file__).parent / "tasks" / "losses.py"
        spec = importlib.util.spec_from_file_location("geoct_task_losses", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.SegmentationLoss
    return SegmentationLoss


SegmentationLoss = _segmentation_loss()

BACKBONES = {
    "swin_t": "swin_tiny_patch4_window7_224",
    "vit_s16": "vit_small_patch16_224",
    "poolformer_s12": "poolformer_s12",
}
VARIANTS = ("baseline", "ours", "reference")
NUM_CLASSES = 6
IGNORE = 255


def reference_loss(features, logits, mask, heads, strides, take_top=0.4):
    """Reference-style loop (ContrastiveDCSwin @HEAD) with the cosine loss."""
    prob = logits.detach().float().softmax(1)
    classes = [c for c in torch.unique(mask).tolist() if c != IGNORE]
    total = logits.new_zeros(())
    for stage, p in strides.items():
        f = features[stage]
        b, c_s, h, w = f.shape
        lab = mask.unfold(1, p, p).unfold(2, p, p).reshape(b * h * w, p * p)
        conf_all = F.avg_pool2d(prob, p).permute(0, 2, 3, 1).reshape(b * h * w, -1)
        z = F.normalize(heads[str(stage)](f.permute(0, 2, 3, 1).reshape(-1, c_s)).float(), dim=-1)
        for c in classes:
            frac = (lab == c).float().mean(1)
            pos, neg = z[frac == 1], z[frac == 0]
            order = torch.argsort(conf_all[frac == 1, c])
            k = int(len(order) * take_top)
            if k < 2 or len(neg) < 4:
                continue
            low, high = pos[order[:k]], pos[order[-k:]]
            m = min(len(neg), k)
            total = total + F.softplus(-(low * high).sum(-1)).mean()
            total = total + F.softplus((low[:m] * neg[:m]).sum(-1)).mean()
    return total / len(strides) / max(len(classes), 1)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def synthetic_batch(
    batch: int, size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    cells = size // 32
    mask = torch.randint(0, NUM_CLASSES, (batch, cells, cells), generator=g)
    mask = mask.repeat_interleave(32, 1).repeat_interleave(32, 2)
    noise = torch.randint(0, NUM_CLASSES, (batch, size, size), generator=g)
    edges = torch.rand(batch, size, size, generator=g) < 0.05
    mask = torch.where(edges, noise, mask)
    x = torch.randn(batch, 4, size, size, generator=g)
    return x.to(device), mask.to(device)


def make_step(args: argparse.Namespace) -> tuple[object, torch.device]:
    """Build the model and return ``step(variant)`` running one training step."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = build_segmenter(BACKBONES[args.backbone], 4, NUM_CLASSES, "fpn", args.decoder_channels)
    stages = list(range(len(net.backbone.strides)))
    contrastive = PatchContrastiveLoss(
        {s: net.backbone.channels[s] for s in stages},
        {s: net.backbone.strides[s] for s in stages},
        NUM_CLASSES,
        IGNORE,
        loss="cosine",
        take_top=0.4,
        max_samples=args.max_samples,
        clip=None,
    )
    net.to(device).train()
    contrastive.to(device)
    seg_loss = SegmentationLoss(IGNORE)
    params = list(net.parameters()) + list(contrastive.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    x, mask = synthetic_batch(args.batch, args.size, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(variant: str) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits, features = net.forward_features(x)
            loss = seg_loss(logits.float(), mask)
            if variant == "ours":
                loss = loss + contrastive(features, logits, mask).loss
            elif variant == "reference":
                loss = loss + reference_loss(
                    features, logits, mask, contrastive.heads, contrastive.strides
                )
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step, device


def child_memory(args: argparse.Namespace) -> dict:
    """Peak memory of one variant, alone in this process."""
    step, device = make_step(args)
    rss0 = rss_bytes()
    for _ in range(args.warmup):
        step(args.variant)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        step(args.variant)
    if device.type == "cuda":
        return {"peak_bytes": int(torch.cuda.max_memory_allocated())}
    return {"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0}


def child_timing(args: argparse.Namespace) -> dict:
    """Step times of all variants, interleaved so that machine load affects them alike."""
    step, _ = make_step(args)
    for variant in VARIANTS * args.warmup:
        step(variant)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.steps):
        for variant in VARIANTS:
            start = time.perf_counter()
            step(variant)
            times[variant].append(time.perf_counter() - start)
    return {v: {"step_s": min(t), "median_s": sorted(t)[len(t) // 2]} for v, t in times.items()}


def run_child(args: argparse.Namespace, backbone: str, variant: str) -> dict:
    cmd = [
        sys.executable, __file__, "--child", "--backbone", backbone, "--variant", variant,
        "--device", args.device, "--size", str(args.size), "--batch", str(args.batch),
        "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--decoder-channels", str(args.decoder_channels), "--max-samples", str(args.max_samples),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{backbone}/{variant} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--size", type=int, default=None, help="patch side (CPU 128, CUDA 512)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (CPU 4, CUDA 16)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--decoder-channels", type=int, default=128, help="light FPN width")
    parser.add_argument("--max-samples", type=int, default=1024)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).parent / "results" / "contrastive_overhead.json",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    cuda = args.device.startswith("cuda")
    args.size = args.size or (512 if cuda else 128)
    args.batch = args.batch or (16 if cuda else 4)
    args.steps = args.steps or (20 if cuda else 5)
    if args.child:
        result = child_timing(args) if args.variant == "timing" else child_memory(args)
        print(json.dumps(result))
        return 0

    device_name = torch.cuda.get_device_name(torch.device(args.device)) if cuda else "cpu"
    print(f"device {device_name}, {args.size} px, batch {args.batch}, best of {args.steps} steps")
    header = (
        f"{'backbone':<15}{'variant':<11}{'step ms':>9}{'x base':>8}{'peak MiB':>10}{'x base':>8}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for backbone in args.backbones:
        timing = run_child(args, backbone, "timing")
        base = None
        for variant in VARIANTS:
            r = timing[variant] | run_child(args, backbone, variant)
            base = base or r
            row = {
                "backbone": backbone,
                "variant": variant,
                **r,
                "time_ratio": r["step_s"] / base["step_s"],
                "memory_ratio": r["peak_bytes"] / max(base["peak_bytes"], 1),
            }
            rows.append(row)
            print(
                f"{backbone:<15}{variant:<11}{r['step_s'] * 1e3:>9.1f}{row['time_ratio']:>8.2f}"
                f"{r['peak_bytes'] / 2**20:>10.1f}{row['memory_ratio']:>8.2f}"
            )
    settings = {
        k: v for k, v in vars(args).items() if k not in ("child", "backbone", "variant", "output")
    }
    result = {"device": device_name, "settings": settings, "torch": torch.__version__, "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
