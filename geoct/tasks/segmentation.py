"""Semantic segmentation with the Contrastive Transformer patch objective."""

from collections.abc import Mapping
from typing import Any, Literal

import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor
from torch.optim import AdamW
from torch.optim.lr_scheduler import CosineAnnealingLR
from torchgeo.tasks import SemanticSegmentation

from ..errors import ConfigError
from ..metadata import CHECKPOINT_KEY, ModelSpec
from ..models import PatchContrastiveLoss, Segmenter, build_segmenter
from .losses import SegmentationLoss
from .metrics import SegmentationScores


def network_from_hparams(hparams: Mapping[str, Any], pretrained: bool | None = None) -> Segmenter:
    """Build the segmentation network described by task hyperparameters.

    Args:
        hparams: :class:`ContrastiveSemanticSegmentationTask` hyperparameters.
        pretrained: Overrides ``hparams["pretrained"]``; when given, no
            ``backbone_weights`` are loaded either (False when loading a checkpoint's
            own weights, so that its weights file need not exist).

    Returns:
        The network, without projection heads.
    """
    return build_segmenter(
        backbone=hparams["backbone"],
        in_channels=hparams["in_channels"],
        num_classes=hparams["num_classes"],
        decoder=hparams["decoder"],
        decoder_channels=hparams["decoder_channels"],
        backbone_indices=hparams["backbone_indices"],
        backbone_kwargs=hparams["backbone_kwargs"],
        pretrained=hparams["pretrained"] if pretrained is None else pretrained,
        backbone_weights=hparams.get("backbone_weights") if pretrained is None else None,
    )


class ContrastiveSemanticSegmentationTask(SemanticSegmentation):
    """Segmentation of a timm transformer with the patch contrastive loss.

    The network (:attr:`model`, a :class:`~geoct.models.Segmenter`) maps a
    normalised image (B, C, H, W) to logits (B, K, H, W). In training, the patch
    contrastive loss (:class:`~geoct.models.PatchContrastiveLoss`, which owns the
    projection heads) is computed on the backbone features of the selected stages and
    added, times ``contrastive_weight``, to cross-entropy (label smoothing) + Dice.
    :meth:`forward`, validation, test and :meth:`predict_step` never run the heads.

    The checkpoint is self-describing: ``checkpoint["geoct"]`` holds the
    :class:`~geoct.metadata.ModelSpec` (bands, normalisation, GSD, classes, patch
    size), taken from ``trainer.datamodule.model_spec`` or the ``model_spec``
    hyperparameter, and also stored in the hyperparameters, so that
    :func:`~geoct.tasks.load_model` rebuilds the network from the file alone.

    Under DDP, the contrastive pools are per replica (each process samples from its
    own sub-batch); metrics are synchronised across processes.
    """

    #: Validation metric for checkpointing and early stopping.
    monitor = "val_mIoU"

    #: Whether :attr:`monitor` is maximised.
    mode = "max"

    def __init__(
        self,
        backbone: str = "swin_tiny_patch4_window7_224",
        decoder: Literal["upernet", "fpn"] = "upernet",
        decoder_channels: int = 256,
        backbone_indices: list[int] | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        pretrained: bool = False,
        backbone_weights: str | None = None,
        in_channels: int = 4,
        num_classes: int = 6,
        ignore_index: int = 255,
        labels: list[str] | None = None,
        contrastive: bool = True,
        contrastive_stages: list[int] | None = None,
        contrastive_loss: Literal["info_nce", "cosine"] = "cosine",
        temperature: float = 0.1,
        take_top: float = 0.4,
        max_samples: int = 1024,
        contrastive_weight: float = 1.0,
        clip: float | None = 1.5,
        divisor: Literal["valid", "all"] = "valid",
        negatives: Literal["random", "hard"] = "random",
        purity: float = 1.0,
        projection_dim: int = 128,
        label_smoothing: float = 0.05,
        dice_smooth: float = 0.05,
        dice_weight: float = 1.0,
        exclude_from_mean: list[str] | None = None,
        model_spec: dict[str, Any] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        scheduler: Literal["none", "cosine"] = "none",
    ) -> None:
        """Initialise a new ContrastiveSemanticSegmentationTask.

        Args:
            backbone: A timm model name that supports ``features_only``, e.g.
                ``swin_tiny_patch4_window7_224``, ``vit_small_patch16_224``,
                ``poolformer_s12``. ViT and Swin are built with ``dynamic_img_size``.
            decoder: ``"upernet"`` or ``"fpn"``; plain ViTs get a ViTDet pyramid first.
            decoder_channels: Decoder width.
            backbone_indices: timm ``out_indices`` (default: all stages; four evenly
                spaced blocks for plain ViTs).
            backbone_kwargs: Extra :func:`timm.create_model` arguments (e.g. to
                shrink a model: ``embed_dim``, ``depths``, ``num_heads``).
            pretrained: Load timm's pretrained backbone weights (needs network).
            backbone_weights: Initialise the backbone from a local timm state dict
                (``.pth``/``.pt``/``.safetensors``, works offline) or a TorchGeo
                weights enum name such as ``ViTSmall16_Weights.SENTINEL2_ALL_MOCO``
                (downloads); the first layer is adapted to ``in_channels`` (see
                :mod:`geoct.models.weights`). What was loaded, with the file's
                SHA-256, is recorded as the ``backbone_weights_record`` hyperparameter
                and in ``checkpoint["geoct"]["backbone_weights"]``.
            in_channels: Input channels; must match the data's bands.
            num_classes: Number of classes.
            ignore_index: Label ignored by losses, metrics and patch labelling.
            labels: Class names for the metric keys (default: from the model spec).
            contrastive: Add the patch contrastive loss.
            contrastive_stages: Backbone stage indices (positions of the backbone's
                feature maps) that get the loss; default all.
            contrastive_loss: ``"info_nce"`` or ``"cosine"``. The defaults of this and
                of ``take_top``/``clip`` are those of the reference ContrastiveDCSwin.
            temperature: InfoNCE temperature.
            take_top: Fraction of pure patches used as hard and as easy positives.
            max_samples: Cap on sampled patches per (stage, class).
            contrastive_weight: Weight of the contrastive loss.
            clip: Clamp of the contrastive loss (reference gradient gate); None: off.
            divisor: ``"valid"``: mean over valid (stage, class) terms; ``"all"``:
                divide by #stages x #classes present (reference).
            negatives: ``"random"`` or ``"hard"`` (highest predicted probability).
            purity: Share of a patch's pixels that must be class c for it to be a
                positive of c (1.0: pure patches, as in the paper).
            projection_dim: Projection head output dimension.
            label_smoothing: Cross-entropy label smoothing.
            dice_smooth: Dice smoothing.
            dice_weight: Weight of the Dice loss.
            exclude_from_mean: Class names left out of ``mIoU``/``mF1`` (e.g.
                ``["clutter"]``); the all-class means are logged as ``*_all``.
            model_spec: :meth:`ModelSpec.to_dict` to store in checkpoints when the
                datamodule has no ``model_spec``; filled in from it otherwise.
            lr: AdamW learning rate.
            weight_decay: AdamW weight decay.
            scheduler: ``"none"`` (reference) or ``"cosine"`` annealing over max_epochs.

        Raises:
            ConfigError: For an unusable backbone or out-of-range stages.
        """
        self.weights = None
        super(SemanticSegmentation, self).__init__()
        self._checked: set[str] = set()

    def configure_models(self) -> None:
        """Build the network and, if enabled, the contrastive loss with its heads."""
        hp = self.hparams
        self.model = network_from_hparams(hp)
        if self.model.weights_record is not None:
            hp["backbone_weights_record"] = self.model.weights_record.to_dict()
        self.patch_loss: PatchContrastiveLoss | None = None
        if not hp["contrastive"]:
            return
        strides = self.model.backbone.strides
        stages = hp["contrastive_stages"]
        stages = list(range(len(strides))) if stages is None else list(stages)
        bad = [s for s in stages if not 0 <= s < len(strides)]
        if bad or not stages or len(set(stages)) != len(stages):
            raise ConfigError(
                f"contrastive_stages {stages}: backbone {hp['backbone']!r} has stages "
                f"0..{len(strides) - 1} (strides {list(strides)}); give distinct indices"
            )
        try:
            self.patch_loss = PatchContrastiveLoss(
                channels={s: self.model.backbone.channels[s] for s in stages},
                strides={s: strides[s] for s in stages},
                num_classes=hp["num_classes"],
                ignore_index=hp["ignore_index"],
                loss=hp["contrastive_loss"],
                temperature=hp["temperature"],
                take_top=hp["take_top"],
                max_samples=hp["max_samples"],
                projection_dim=hp["projection_dim"],
                divisor=hp["divisor"],
                negatives=hp["negatives"],
                purity=hp["purity"],
                clip=hp["clip"],
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def configure_losses(self) -> None:
        """Initialise the segmentation loss."""
        self.criterion = SegmentationLoss(
            ignore_index=self.hparams["ignore_index"],
            label_smoothing=self.hparams["label_smoothing"],
            dice_smooth=self.hparams["dice_smooth"],
            dice_weight=self.hparams["dice_weight"],
        )

    def configure_metrics(self) -> None:
        """Initialise OA, per-class IoU/F1 and mIoU/mF1 for each split."""
        spec = self.hparams["model_spec"]
        names = self.hparams["labels"] or (spec["classes"]["names"] if spec else None)
        scores = SegmentationScores(
            self.hparams["num_classes"],
            names,
            self.hparams["ignore_index"],
            self.hparams["exclude_from_mean"] or (),
        )
        self.train_metrics = scores.clone()
        self.val_metrics = scores.clone()
        self.test_metrics = scores.clone()

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """AdamW over all parameters (projection heads included), optional cosine decay."""
        optimizer = AdamW(
            self.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )
        if self.hparams["scheduler"] != "cosine":
            return optimizer
        epochs = max(1, self.trainer.max_epochs or 1)
        return {"optimizer": optimizer, "lr_scheduler": CosineAnnealingLR(optimizer, epochs)}

    @property
    def model_spec(self) -> ModelSpec | None:
        """The input contract stored in checkpoints, once known."""
        spec = self.hparams["model_spec"]
        return ModelSpec.from_dict(spec) if spec else None

    def setup(self, stage: str) -> None:
        """Take the model spec from the datamodule and check it against the model.

        Raises:
            ConfigError: If fitting without any model spec, or if the spec's bands or
                classes do not match ``in_channels``/``num_classes``/``ignore_index``.
        """
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        spec = getattr(datamodule, "model_spec", None) or self.model_spec
        if spec is None:
            if stage == "fit":
                raise ConfigError(
                    "no model spec: the datamodule has no 'model_spec' and the model has "
                    "no 'model_spec' hyperparameter, so the checkpoint could not describe "
                    "its input (bands, normalisation, classes)"
                )
            return
        self._check_spec(spec)
        self.hparams["model_spec"] = spec.to_dict()
        if not self.hparams["labels"]:
            for metrics in (self.train_metrics, self.val_metrics, self.test_metrics):
                metrics.names = list(spec.classes.names)
        unknown = set(self.hparams["exclude_from_mean"] or ()) - set(self.val_metrics.names)
        if unknown:
            raise ConfigError(
                f"exclude_from_mean {sorted(unknown)}: not class names "
                f"({', '.join(self.val_metrics.names)})"
            )

    def _check_spec(self, spec: ModelSpec) -> None:
        hp = self.hparams
        if spec.in_channels != hp["in_channels"]:
            raise ConfigError(
                f"in_channels={hp['in_channels']} but the data has {spec.in_channels} "
                f"bands ({', '.join(spec.bands)})"
            )
        if spec.classes.num_classes != hp["num_classes"]:
            raise ConfigError(
                f"num_classes={hp['num_classes']} but the data has "
                f"{spec.classes.num_classes} classes ({', '.join(spec.classes.names)})"
            )
        if spec.classes.ignore_index != hp["ignore_index"]:
            raise ConfigError(
                f"ignore_index={hp['ignore_index']} but the data uses {spec.classes.ignore_index}"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the model spec (and the backbone weights record) under ``checkpoint["geoct"]``."""
        spec = self.model_spec
        if spec is None:
            raise ConfigError("cannot save a checkpoint without a model spec")
        checkpoint[CHECKPOINT_KEY] = spec.to_dict()
        if self.hparams.get("backbone_weights_record"):
            checkpoint[CHECKPOINT_KEY]["backbone_weights"] = self.hparams["backbone_weights_record"]

    def _check_batch(self, x: Tensor, y: Tensor | None, stage: str) -> None:
        """Validate the first batch of each stage (one host sync)."""
        if stage in self._checked:
            return
        self._checked.add(stage)
        if x.ndim != 4 or x.shape[1] != self.hparams["in_channels"]:
            raise ConfigError(
                f"in_channels={self.hparams['in_channels']} but the {stage} images have "
                f"shape {tuple(x.shape)} (expected B, {self.hparams['in_channels']}, H, W)"
            )
        if y is None:
            return
        k, ignore = self.hparams["num_classes"], self.hparams["ignore_index"]
        bad = y[((y < 0) | (y >= k)) & (y != ignore)]
        if bad.numel():
            values = sorted(torch.unique(bad).tolist())[:10]
            raise ConfigError(
                f"{stage} mask has labels {values} outside the classes 0..{k - 1} "
                f"(ignore_index {ignore})"
            )

    def training_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Segmentation loss plus, if enabled, the weighted patch contrastive loss."""
        x, y = batch["image"], batch["mask"]
        self._check_batch(x, y, "train")
        size = x.shape[0]
        if self.patch_loss is None:
            logits = self.model(x)
        else:
            logits, features = self.model.forward_features(x)
        loss = self.criterion(logits, y)
        self.log("train_seg_loss", loss, batch_size=size)
        if self.patch_loss is not None:
            out = self.patch_loss(features, logits, y)
            loss = loss + self.hparams["contrastive_weight"] * out.loss
            self.log("train_contrastive_loss", out.raw, batch_size=size)
            self.log("train_contrastive_clip_fraction", out.clipped, batch_size=size)
            self.log("train_contrastive_terms", out.valid_terms.float(), batch_size=size)
        self.log("train_loss", loss, batch_size=size)
        self.train_metrics.update(logits.detach().argmax(1), y)
        return loss

    def _eval_step(self, batch: Any, stage: str) -> None:
        x, y = batch["image"], batch["mask"]
        self._check_batch(x, y, stage)
        logits = self(x)
        self.log(f"{stage}_loss", self.criterion(logits, y), batch_size=x.shape[0])
        getattr(self, f"{stage}_metrics").update(logits.argmax(1), y)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Log the segmentation loss and accumulate metrics (no projection heads)."""
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Log the segmentation loss and accumulate metrics (no projection heads)."""
        self._eval_step(batch, "test")

    def predict_step(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor | None]:
        """Class probabilities (B, K, H, W) plus the batch's bounds and transform."""
        x = batch["image"]
        self._check_batch(x, None, "predict")
        return {
            "probabilities": self(x).softmax(dim=1),
            "bounds": batch.get("bounds"),
            "transform": batch.get("transform"),
        }

    def _log_scores(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        if metrics.update_called:
            scores = metrics.compute()
            self.log_dict({f"{stage}_{key}": value for key, value in scores.items()})
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        """Log training OA, IoU and F1."""
        self._log_scores("train")

    def on_validation_epoch_end(self) -> None:
        """Log validation OA, IoU and F1."""
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        """Log test OA, IoU and F1."""
        self._log_scores("test")
