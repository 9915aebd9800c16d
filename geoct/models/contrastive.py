"""Supervised patch contrastive loss on transformer tokens (Contrastive Transformer).

Re-implementation of the objective of Jyhne et al., "Contrastive Transformer"
(arXiv 2303.14806), reference code ``ContrastiveDCSwin`` of Sjyhne/ContrastiveGeoSeg.
See ``docs/contrastive-transformer-method.md`` for the full description.

At each selected stage with stride p, the mask is cut into the p x p blocks covered by
the tokens. For each class c present in the batch, *pure* patches (all p^2 pixels are
c) are positives and patches without any pixel of c are negatives; mixed patches are
never used (``purity < 1`` relaxes "pure" to "at least that share of c", so that
small objects and edges, which have few pure patches, take part). Pools span the whole
batch. Positives are ranked by the mean softmax probability of c over the patch
(detached, so no gradient reaches the decoder): the
``k = min(floor(|P| * take_top), max_samples)`` least confident are queries (hard
positives), the k most confident are keys (easy positives), paired least with least
as in the reference. Only the sampled tokens are projected.

Per (stage, class) term, with q, k, n unit vectors from the stage's projection head:

* ``info_nce``: mean over m = min(k, #negatives) queries of
  ``-log(exp(q.k/t) / (exp(q.k/t) + sum_j exp(q.n_j/t)))`` over m shared negatives.
* ``cosine``: mean of ``-log sigmoid(cos(q_i, k_i))`` over k positive pairs plus mean
  of ``-log sigmoid(-cos(q_i, n_i))`` over min(k, #negatives) negative pairs (the
  reference's soft-CE on ``[1 - s, s]``, ``s = (cos + 1) / 2``, is exactly this).

A (stage, class) term is skipped when c is absent from the batch, k < 2 or there are
fewer than 4 negatives (reference rules). The loss is the sum of the terms divided by
the number of valid terms (``divisor="valid"``, default) or by
``#stages x #classes present`` (``divisor="all"``, the reference), then clamped to
``[0, clip]`` (a gradient gate, as in the reference; ``clip=None`` disables it).

Fixes relative to the reference:

* negatives are sampled at random (``negatives="random"``) or as the patches with the
  highest predicted probability of c (``negatives="hard"``), not in raster order;
* beyond ``max_samples`` the *most* confident positives are the keys (the reference
  took the least confident of its top set);
* the divisor counts valid terms by default;
* stages are addressed by their backbone index, never by list position;
* the ignore label is a parameter; ignore pixels are "not c" (so a patch containing
  them is never pure but may be a negative, as in the reference), except that patches
  made only of ignore pixels (nodata, padding) are never negatives;
* masks are never interpolated: patch labels are exact pixel counts.

Everything is vectorised with static shapes (random keys + ``topk``, validity masks),
so there is no host synchronisation. Only the 3 x K x M sampled tokens are projected,
or all tokens of a stage when it has fewer than that (small inputs). Under DDP the pools are per replica: each process
samples from its own sub-batch, like the reference under DP/DDP.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .projection import ProjectionHead


@dataclass
class ContrastiveOutput:
    """Result of :class:`PatchContrastiveLoss`.

    Attributes:
        loss: The clamped loss that is added to the objective.
        raw: The loss before clamping.
        clipped: 1.0 if the clamp was active, else 0.0.
        valid_terms: Number of (stage, class) terms that were not skipped.
    """

    loss: Tensor
    raw: Tensor
    clipped: Tensor
    valid_terms: Tensor


def patch_class_counts(
    mask: Tensor, strides: Sequence[int], num_classes: int, ignore_index: int
) -> dict[int, Tensor]:
    """Count the pixels of each class in every patch, for several patch sizes.

    The mask is padded (bottom/right) with *ignore_index* to a multiple of the
    largest stride. Counts are exact (sum pooling of a one-hot mask); coarser
    strides are pooled from finer ones when they divide evenly.

    Args:
        mask: Labels (B, H, W); values outside ``[0, num_classes)`` count as ignore.
        strides: Patch sides.
        num_classes: Number of classes K.
        ignore_index: Label of unlabelled pixels.

    Returns:
        Stride -> counts (B, K + 1, H_p / stride, W_p / stride); channel K counts
        ignore pixels.
    """
    size = max(strides)
    h, w = mask.shape[-2:]
    mask = F.pad(mask, (0, -w % size, 0, -h % size), value=ignore_index)
    labels = torch.where((mask >= 0) & (mask < num_classes), mask, num_classes)
    onehot = torch.zeros(
        (mask.shape[0], num_classes + 1, *mask.shape[-2:]), device=mask.device
    ).scatter_(1, labels.unsqueeze(1), 1.0)
    counts: dict[int, Tensor] = {}
    for stride in sorted(set(strides)):
        finer = [s for s in counts if stride % s == 0]
        source, factor = (counts[max(finer)], stride // max(finer)) if finer else (onehot, stride)
        counts[stride] = F.avg_pool2d(source, factor, divisor_override=1)
    return counts


def patch_confidence(prob: Tensor, stride: int) -> Tensor:
    """Mean class probability over each patch (zero-padded to a multiple of *stride*)."""
    h, w = prob.shape[-2:]
    prob = F.pad(prob, (0, -w % stride, 0, -h % stride))
    return F.avg_pool2d(prob, stride)


def _first_k(k: Tensor, m: int) -> Tensor:
    """Row mask (K, m): position j < k[c]."""
    return torch.arange(m, device=k.device) < k.unsqueeze(1)


class PatchContrastiveLoss(nn.Module):
    """Patch-level supervised contrastive loss over several encoder stages."""

    def __init__(
        self,
        channels: Mapping[int, int],
        strides: Mapping[int, int],
        num_classes: int,
        ignore_index: int = 255,
        loss: Literal["info_nce", "cosine"] = "info_nce",
        temperature: float = 0.1,
        take_top: float = 0.4,
        max_samples: int = 1024,
        projection_dim: int = 128,
        divisor: Literal["valid", "all"] = "valid",
        negatives: Literal["random", "hard"] = "random",
        clip: float | None = 1.5,
        min_positives: int = 2,
        min_negatives: int = 4,
        purity: float = 1.0,
    ) -> None:
        """Initialise a new PatchContrastiveLoss.

        Args:
            channels: Stage index -> token dimension, for each selected stage.
            strides: Stage index -> stride in pixels (the patch side).
            num_classes: Number of classes K.
            ignore_index: Label of unlabelled pixels.
            loss: ``"info_nce"`` or ``"cosine"``.
            temperature: InfoNCE temperature.
            take_top: Fraction of the positive pool used as hard and as easy positives.
            max_samples: Cap on queries, keys and negatives per (stage, class).
            projection_dim: Output dimension of the projection heads.
            divisor: ``"valid"`` (mean over valid terms) or ``"all"`` (reference).
            negatives: ``"random"`` or ``"hard"`` (highest predicted probability of c).
            clip: Upper clamp of the loss (gradient gate); None for no clamp.
            min_positives: Skip a class when k is smaller.
            min_negatives: Skip a class when it has fewer negatives.
            purity: Share of a patch's pixels that must be c for it to be a positive
                of c; 1.0 (the paper's pure patches) or a majority in (0.5, 1).
        """
        super().__init__()
        if loss not in ("info_nce", "cosine"):
            raise ValueError(f"contrastive_loss {loss!r}: expected 'info_nce' or 'cosine'")
        if divisor not in ("valid", "all"):
            raise ValueError(f"divisor {divisor!r}: expected 'valid' or 'all'")
        if negatives not in ("random", "hard"):
            raise ValueError(f"negatives {negatives!r}: expected 'random' or 'hard'")
        if not 0 < take_top <= 1:
            raise ValueError(f"take_top {take_top}: expected a fraction in (0, 1]")
        if not 0.5 < purity <= 1:
            raise ValueError(f"purity {purity}: expected a fraction in (0.5, 1]")
        self.heads = nn.ModuleDict(
            {str(s): ProjectionHead(c, projection_dim) for s, c in channels.items()}
        )
        self.strides = {int(s): int(strides[s]) for s in channels}
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.loss = loss
        self.temperature = temperature
        self.take_top = take_top
        self.max_samples = max_samples
        self.divisor = divisor
        self.negatives = negatives
        self.clip = clip
        self.min_positives = min_positives
        self.min_negatives = min_negatives
        self.purity = purity
        self._generator: torch.Generator | None = None

    def forward(
        self, features: Sequence[Tensor], logits: Tensor, mask: Tensor
    ) -> ContrastiveOutput:
        """Compute the loss.

        Args:
            features: All backbone feature maps (B, C_s, h_s, w_s), indexed by stage,
                computed on the input padded (bottom/right) to ``h_s * stride_s``.
            logits: Segmentation logits (B, K, H, W); only used, detached, to rank.
            mask: Labels (B, H, W); padded with the ignore label to the feature grid.

        Returns:
            The loss and its statistics.
        """
        height = max(features[s].shape[-2] * p for s, p in self.strides.items())
        width = max(features[s].shape[-1] * p for s, p in self.strides.items())
        pad = (0, width - mask.shape[-1], 0, height - mask.shape[-2])
        mask = F.pad(mask, pad, value=self.ignore_index)
        prob = F.pad(logits.detach().float().softmax(dim=1), pad)
        counts = patch_class_counts(
            mask, list(self.strides.values()), self.num_classes, self.ignore_index
        )
        any_counts = next(iter(counts.values()))
        present = any_counts[:, : self.num_classes].sum(dim=(0, 2, 3)) > 0
        total = prob.new_zeros(())
        n_valid = torch.zeros((), dtype=torch.long, device=prob.device)
        for stage, stride in self.strides.items():
            f = features[stage]
            h, w = f.shape[-2:]
            term, valid = self.stage_terms(
                f,
                counts[stride][..., :h, :w],
                patch_confidence(prob, stride)[..., :h, :w],
                self.heads[str(stage)],
                stride * stride,
            )
            valid = valid & present
            total = total + torch.where(valid, term, 0.0).sum()
            n_valid = n_valid + valid.sum()
        if self.divisor == "valid":
            divisor = n_valid.clamp(min=1)
        else:
            divisor = len(self.strides) * present.sum().clamp(min=1)
        raw = total / divisor
        if self.clip is None:
            return ContrastiveOutput(raw, raw, raw.new_zeros(()), n_valid)
        return ContrastiveOutput(raw.clamp(0.0, self.clip), raw, (raw > self.clip).float(), n_valid)

    def random_like(self, x: Tensor) -> Tensor:
        """Uniform random numbers shaped like *x*, from the loss's own generator.

        The generator is seeded from :func:`torch.initial_seed` on first use, so
        negative sampling is reproducible under ``seed_everything`` without shifting
        the global random stream that augmentation draws from: a run with the term on
        sees the same augmented patches as the same run with it off.
        """
        if self._generator is None or self._generator.device != x.device:
            self._generator = torch.Generator(x.device).manual_seed(torch.initial_seed())
        return torch.rand(x.shape, generator=self._generator, device=x.device, dtype=x.dtype)

    def sample(self, counts: Tensor, conf: Tensor, pixels: int) -> tuple[Tensor, ...]:
        """Choose hard positives, easy positives and negatives for every class.

        Args:
            counts: Pixel counts (K + 1, N) per class (and ignore) of the N tokens.
            conf: Mean predicted probability (K, N) of each class per token.
            pixels: Pixels per patch (stride squared).

        Returns:
            Token indices (K, M) of hard positives, easy positives and negatives,
            the number k (K,) of valid positive pairs and the number (K,) of valid
            negatives; entries past those counts are arbitrary.
        """
        n = counts.shape[1]
        m = min(self.max_samples, n)
        classes = counts[: self.num_classes]
        pure = classes >= math.ceil(self.purity * pixels - 1e-9)
        absent = (classes == 0) & (counts[self.num_classes] < pixels)
        k = (pure.sum(1).double() * self.take_top).floor().long().clamp(max=m)
        n_neg = absent.sum(1).clamp(max=m)
        ninf = torch.tensor(float("-inf"), device=conf.device)
        hard = torch.where(pure, -conf, ninf).topk(m, dim=1).indices
        easy = torch.where(pure, conf, ninf).topk(m, dim=1).indices
        pair = (k.unsqueeze(1) - 1 - torch.arange(m, device=k.device)).clamp(min=0)
        easy = easy.gather(1, pair)
        keys = conf if self.negatives == "hard" else self.random_like(conf)
        neg = torch.where(absent, keys, ninf).topk(m, dim=1).indices
        return hard, easy, neg, k, n_neg

    def stage_terms(
        self, features: Tensor, counts: Tensor, conf: Tensor, head: nn.Module, pixels: int
    ) -> tuple[Tensor, Tensor]:
        """Loss of every class at one stage.

        Args:
            features: Stage tokens (B, C, h, w).
            counts: Pixel counts (B, K + 1, h, w).
            conf: Mean class probabilities (B, K, h, w).
            head: The stage's projection head.
            pixels: Pixels per patch.

        Returns:
            Per-class loss (K,) and whether the term is valid (K,).
        """
        tokens = features.permute(0, 2, 3, 1).flatten(0, 2)
        counts = counts.transpose(0, 1).flatten(1)
        conf = conf.transpose(0, 1).flatten(1)
        hard, easy, neg, k, n_neg = self.sample(counts, conf, pixels)
        num_classes, m = hard.shape
        index = torch.cat([hard, easy, neg], dim=1).flatten()
        small = index.numel() < tokens.shape[0]
        z = head(tokens.index_select(0, index)) if small else head(tokens).index_select(0, index)
        q, key, n = z.view(num_classes, 3, m, -1).unbind(1)
        valid = (k >= self.min_positives) & (n_neg >= self.min_negatives)
        if self.loss == "info_nce":
            terms = self.info_nce(q, key, n, torch.minimum(k, n_neg))
        else:
            terms = self.cosine(q, key, n, k, torch.minimum(k, n_neg))
        return terms, valid

    def info_nce(self, q: Tensor, key: Tensor, n: Tensor, m: Tensor) -> Tensor:
        """InfoNCE with shared negatives over the first m[c] rows of each class.

        Args:
            q: Queries (K, M, D), unit norm.
            key: Positive keys (K, M, D), unit norm.
            n: Negatives (K, M, D), unit norm.
            m: Number of valid queries and negatives per class (K,).

        Returns:
            Mean loss per class (K,).
        """
        rows = _first_k(m, q.shape[1])
        pos = (q * key).sum(-1) / self.temperature
        neg = (q @ n.transpose(1, 2)) / self.temperature
        neg = neg.masked_fill(~rows.unsqueeze(1), float("-inf"))
        per_query = torch.logsumexp(torch.cat([pos.unsqueeze(-1), neg], -1), -1) - pos
        return torch.where(rows, per_query, 0.0).sum(1) / m.clamp(min=1)

    def cosine(self, q: Tensor, key: Tensor, n: Tensor, k: Tensor, m: Tensor) -> Tensor:
        """Logistic loss on raw cosines of positive and negative pairs.

        Args:
            q: Hard positives (K, M, D), unit norm.
            key: Easy positives (K, M, D), unit norm.
            n: Negatives (K, M, D), unit norm.
            k: Number of valid positive pairs per class (K,).
            m: Number of valid negative pairs per class (K,).

        Returns:
            Mean positive-pair loss plus mean negative-pair loss per class (K,).
        """
        size = q.shape[1]
        pos = F.softplus(-(q * key).sum(-1))
        neg = F.softplus((q * n).sum(-1))
        pos = torch.where(_first_k(k, size), pos, 0.0).sum(1) / k.clamp(min=1)
        neg = torch.where(_first_k(m, size), neg, 0.0).sum(1) / m.clamp(min=1)
        return pos + neg
