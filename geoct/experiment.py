"""Controlled comparisons of the contrastive term against the same model without it.

A comparison trains a baseline and one or more contrastive variants: the same network
weights at step 0 (every variant copies the baseline's encoder and decoder), the
same training patches (the datamodule's sampler has its own seed) and the same
schedule, with deterministic algorithms, so that a rerun reproduces every figure
(training is chaotic: a last-bit difference in one gradient grows into a few points of
mIoU by the end of a run). It records the test scores, the per-epoch validation history, the mean
training step time, the peak memory, the class separability of the encoder's patch
embeddings on the test windows (:mod:`geoct.embeddings`) and gradient diagnostics of
each run: how often gradient clipping was active and, for contrastive runs, how the
segmentation and the weighted contrastive gradients on the encoder compare in size and
direction at the first and the last step.
"""

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor

from .datasets import PotsdamDataModule
from .embeddings import network_outputs, patch_embeddings, pure_coverage, separability
from .tasks import ContrastiveSemanticSegmentationTask

#: Training steps left out of the step time (warm-up, allocator growth).
WARMUP_STEPS = 3


@dataclass
class RunResult:
    """Figures of one training run.

    Attributes:
        variant: ``"baseline"`` or the name of a contrastive variant.
        seed: Seed of initialisation, sampling and augmentation.
        test: Test scores as logged by the task (``test_mIoU``, ``test_IoU_<class>``, ...).
        history: Validation scores per epoch.
        step_seconds: Mean wall time of a training step after warm-up.
        peak_memory_mb: Peak CUDA memory allocated, or the peak resident set size on CPU.
        separability: Centroid and hard-pair accuracies of the encoder's pure-patch
            embeddings on the test windows, per stage (:func:`geoct.embeddings.separability`).
        coverage: Share of labelled and of misclassified test pixels that lie in pure
            patches at each stage's stride (:func:`geoct.embeddings.pure_coverage`).
        gradients: ``norm_mean`` and ``clipped_fraction`` of the training steps,
            and for contrastive runs ``start_/end_cosine`` and ``start_/end_ratio`` (see
            :func:`gradient_agreement`).
        task: The trained task.
    """

    variant: str
    seed: int
    test: dict[str, float]
    history: list[dict[str, float]]
    step_seconds: float
    peak_memory_mb: float
    separability: dict[str, float]
    coverage: dict[str, float]
    gradients: dict[str, float]
    task: ContrastiveSemanticSegmentationTask = field(repr=False)


class StepTimer(Callback):
    """Wall time of each training step, synchronised on CUDA."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def _sync(self, module: LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer: Trainer, module: LightningModule, *args: Any) -> None:
        """Start the clock."""
        self._sync(module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, module: LightningModule, *args: Any) -> None:
        """Record the step's time."""
        self._sync(module)
        self.seconds.append(time.perf_counter() - self._start)

    @property
    def mean(self) -> float:
        """Mean step time after :data:`WARMUP_STEPS`."""
        steps = self.seconds[WARMUP_STEPS:] or self.seconds
        return sum(steps) / max(len(steps), 1)


class GradientNorm(Callback):
    """Total gradient norm of each training step, before clipping."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(
        self, trainer: Trainer, module: LightningModule, *args: Any
    ) -> None:
        """Record the norm (Lightning clips after this hook)."""
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    def summary(self, clip: float | None) -> dict[str, float]:
        """Mean norm and the fraction of steps whose norm exceeded *clip*."""
        norms = torch.tensor(self.norms or [float("nan")])
        clipped = (norms > clip).float().mean().item() if clip else 0.0
        return {"norm_mean": norms.mean().item(), "clipped_fraction": clipped}


class ValidationHistory(Callback):
    """Validation scores logged at the end of each epoch."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: Trainer, module: LightningModule) -> None:
        """Record the validation scores of the epoch (validation runs before this hook)."""
        scores = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        self.epochs.append({"epoch": trainer.current_epoch, **scores})


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement on *device*."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since :func:`reset_peak_memory`, in MiB (CPU: the resident set's)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def variant_tasks(
    model_args: dict[str, Any], variants: dict[str, dict[str, Any]], seed: int
) -> dict[str, ContrastiveSemanticSegmentationTask]:
    """Build the baseline and contrastive variants with identical initial network weights.

    Args:
        model_args: Task arguments shared by all runs (``contrastive`` is set here).
        variants: Contrastive variants by name, each with its overrides of *model_args*
            (e.g. ``{"w0.1": {"contrastive_weight": 0.1}}``).
        seed: Seed of the initialisation.

    Returns:
        ``{"baseline": ..., **{name: ...}}``; every network starts from the baseline's
        weights, and variants with the same stages start with the same projection heads.
    """
    args = {k: v for k, v in model_args.items() if k != "contrastive"}
    seed_everything(seed, verbose=False)
    tasks = {"baseline": ContrastiveSemanticSegmentationTask(**args, contrastive=False)}
    for name, overrides in variants.items():
        seed_everything(seed, verbose=False)
        task = ContrastiveSemanticSegmentationTask(**{**args, **overrides}, contrastive=True)
        task.model.load_state_dict(tasks["baseline"].model.state_dict())
        tasks[name] = task
    return tasks


def fit_and_test(
    variant: str,
    task: ContrastiveSemanticSegmentationTask,
    data_args: dict[str, Any],
    seed: int,
    max_epochs: int,
    root_dir: Path,
    accelerator: str = "auto",
    gradient_clip_val: float | None = 1.0,
) -> RunResult:
    """Train *task* on a :class:`~geoct.datasets.PotsdamDataModule`, then test it.

    Args:
        variant: Name of the run.
        task: The task to train (see :func:`variant_tasks`).
        data_args: Datamodule arguments; ``seed`` is set to *seed*.
        seed: Seed of patch sampling and augmentation.
        max_epochs: Training epochs.
        root_dir: Folder for logs and checkpoints.
        accelerator: Lightning accelerator.
        gradient_clip_val: Clip of the total gradient norm (None: off).

    Returns:
        The run's figures.
    """
    datamodule = PotsdamDataModule(**{**data_args, "seed": seed})
    timer, history, norms = StepTimer(), ValidationHistory(), GradientNorm()
    trainer = Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=max_epochs,
        gradient_clip_val=gradient_clip_val,
        deterministic="warn",
        callbacks=[timer, history, norms],
        logger=CSVLogger(root_dir, name=variant, version=f"seed{seed}"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    device = trainer.strategy.root_device
    probe = probe_batch(datamodule, device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        start = gradient_agreement(copy.deepcopy(task).to(device), *probe)
    seed_everything(seed, verbose=False)
    reset_peak_memory(device)
    trainer.fit(task, datamodule=datamodule)
    peak = peak_memory_mb(device)
    test = trainer.test(task, datamodule=datamodule, verbose=False)[0]
    gradients = {
        **norms.summary(gradient_clip_val),
        **{f"start_{name}": v for name, v in start.items()},
        **{f"end_{name}": v for name, v in gradient_agreement(task.to(device), *probe).items()},
    }
    num_classes, strides = task.hparams["num_classes"], task.model.backbone.strides
    outputs = network_outputs(task.model, held_out_batches(datamodule, device))
    embeddings = patch_embeddings(outputs, range(len(strides)), num_classes)
    return RunResult(
        variant=variant,
        seed=seed,
        test={k: float(v) for k, v in test.items()},
        history=history.epochs,
        step_seconds=timer.mean,
        peak_memory_mb=peak,
        separability=separability(embeddings, datamodule.model_spec.classes.names),
        coverage=pure_coverage(outputs, strides, num_classes),
        gradients=gradients,
        task=task,
    )


def gradient_agreement(
    task: ContrastiveSemanticSegmentationTask, image: Tensor, mask: Tensor
) -> dict[str, float]:
    """Compare the segmentation and weighted contrastive gradients on the encoder.

    Computed in eval mode (no drop path) on one batch, without changing *task*.

    Args:
        task: A contrastive task.
        image: Normalised images (B, C, H, W).
        mask: Labels (B, H, W).

    Returns:
        ``cosine`` between the two gradients and ``ratio`` of the weighted contrastive
        gradient's norm to the segmentation gradient's; empty for a baseline.
    """
    if task.patch_loss is None:
        return {}
    was_training = task.training
    task.eval()
    params = [p for p in task.model.backbone.parameters() if p.requires_grad]
    logits, features = task.model.forward_features(image)
    seg = task.criterion(logits, mask)
    con = task.hparams["contrastive_weight"] * task.patch_loss(features, logits, mask).loss
    grads = [_flat_grad(loss, params) for loss in (seg, con)]
    task.train(was_training)
    cosine = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0).item()
    return {"cosine": cosine, "ratio": (grads[1].norm() / grads[0].norm()).item()}


def _flat_grad(loss: Tensor, params: list[torch.nn.Parameter]) -> Tensor:
    """Gradient of *loss* with respect to *params*, flattened (zeros where unused)."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).flatten()
            for p, g in zip(params, grads, strict=True)
        ]
    )


def probe_batch(
    datamodule: PotsdamDataModule, device: torch.device, size: int = 16
) -> tuple[Tensor, Tensor]:
    """The first *size* validation windows, normalised, as one batch."""
    datamodule.setup("validate")
    images, masks, count = [], [], 0
    for batch in datamodule.val_dataloader():
        batch = datamodule.aug({k: batch[k].to(device) for k in ("image", "mask")})
        images.append(batch["image"])
        masks.append(batch["mask"])
        count += len(batch["image"])
        if count >= size:
            break
    datamodule.teardown("validate")
    return torch.cat(images)[:size], torch.cat(masks)[:size]


def held_out_batches(
    datamodule: PotsdamDataModule, device: torch.device
) -> Iterator[tuple[Tensor, Tensor]]:
    """Normalised test windows and masks of *datamodule*, on *device*."""
    datamodule.setup("test")
    for batch in datamodule.test_dataloader():
        batch = datamodule.aug({k: batch[k].to(device) for k in ("image", "mask")})
        yield batch["image"], batch["mask"]
    datamodule.teardown("test")


def compare(
    model_args: dict[str, Any],
    data_args: dict[str, Any],
    seed: int,
    max_epochs: int,
    root_dir: Path,
    accelerator: str = "auto",
    variants: dict[str, dict[str, Any]] | None = None,
    gradient_clip_val: float | None = 1.0,
) -> dict[str, RunResult]:
    """Train and test the baseline and contrastive variants under identical conditions.

    Args:
        model_args: Task arguments shared by all runs.
        data_args: Datamodule arguments.
        seed: Seed of initialisation, patch sampling and augmentation.
        max_epochs: Training epochs.
        root_dir: Folder for logs.
        accelerator: Lightning accelerator.
        variants: Contrastive variants and their overrides (see :func:`variant_tasks`);
            default: one ``"contrastive"`` run with *model_args* as they are.
        gradient_clip_val: Clip of the total gradient norm (None: off).

    Returns:
        Run figures by name, the baseline first.
    """
    tasks = variant_tasks(model_args, variants or {"contrastive": {}}, seed)
    return {
        name: fit_and_test(
            name, task, data_args, seed, max_epochs, root_dir, accelerator, gradient_clip_val
        )
        for name, task in tasks.items()
    }
