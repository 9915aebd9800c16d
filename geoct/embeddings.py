"""Patch embeddings of a trained network and how well they separate the classes.

The contrastive term acts on the encoder's tokens: it pulls the *pure* patches of a
class (every pixel of the token's footprint has that class) together and pushes other
classes away. These helpers collect the same pure-patch features from held-out windows
so that the effect can be measured directly, independently of the decoder:

* :func:`network_outputs` runs the network once over the windows; the measures below
  read its outputs;
* :func:`centroid_accuracy` classifies each patch by its nearest class centroid (cosine)
  and reports the balanced accuracy (mean per-class recall), so large classes do not
  dominate; restricted to two classes (e.g. tree vs low vegetation) 0.5 means
  inseparable;
* :func:`pure_coverage` measures which labelled pixels, and which misclassified pixels,
  lie in pure patches at all: the term never sees the others (object edges, small
  objects), whatever its settings.
"""

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

#: Class pairs that are hard to tell apart in aerial imagery (Potsdam class names).
HARD_PAIRS: tuple[tuple[str, str], ...] = (
    ("tree", "low_vegetation"),
    ("building", "impervious_surfaces"),
)


def pure_patches(mask: Tensor, stride: int, num_classes: int) -> tuple[Tensor, Tensor]:
    """Label each token of a stride-*stride* grid and flag the pure ones.

    Args:
        mask: Class ids (B, H, W), H and W multiples of *stride*.
        stride: Token footprint in pixels.
        num_classes: Ids at or above this (ignore) never make a pure patch.

    Returns:
        Token labels (B, H/stride, W/stride) and a boolean mask of pure tokens.
    """
    cells = mask.unfold(1, stride, stride).unfold(2, stride, stride).flatten(-2)
    first = cells[..., 0]
    return first, (cells == first.unsqueeze(-1)).all(-1) & (first < num_classes)


#: What :func:`network_outputs` gives per batch: predicted classes (B, H, W), the
#: backbone feature maps by stage, and the labels (B, H, W), all on the CPU.
Outputs = tuple[Tensor, list[Tensor], Tensor]


@torch.no_grad()
def network_outputs(network: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> list[Outputs]:
    """Run *network* once (eval mode) over *batches* for the measures of this module.

    Args:
        network: A :class:`~geoct.models.Segmenter` (``forward_features``).
        batches: Normalised images (B, C, H, W) and masks (B, H, W).

    Returns:
        One :data:`Outputs` per batch.
    """
    was_training = network.training
    network.eval()
    outputs = []
    for image, mask in batches:
        logits, features = network.forward_features(image)
        outputs.append((logits.argmax(1).cpu(), [f.float().cpu() for f in features], mask.cpu()))
    network.train(was_training)
    return outputs


def patch_embeddings(
    outputs: Iterable[Outputs], stages: Sequence[int], num_classes: int
) -> dict[int, tuple[Tensor, Tensor]]:
    """Encoder features of the pure patches, per stage.

    Args:
        outputs: From :func:`network_outputs`.
        stages: Backbone stages to collect.
        num_classes: Number of classes (higher ids are ignored).

    Returns:
        ``{stage: (features (N, C_s), labels (N,))}``.
    """
    parts: dict[int, list[tuple[Tensor, Tensor]]] = {s: [] for s in stages}
    for _, features, mask in outputs:
        for s in stages:
            f = features[s]
            labels, pure = pure_patches(mask, mask.shape[-1] // f.shape[-1], num_classes)
            parts[s].append((f.permute(0, 2, 3, 1)[pure], labels[pure]))
    return {
        s: (torch.cat([f for f, _ in p]), torch.cat([y for _, y in p])) for s, p in parts.items()
    }


def pure_coverage(
    outputs: Iterable[Outputs], strides: Sequence[int], num_classes: int
) -> dict[str, float]:
    """Share of labelled and of misclassified pixels that lie in pure patches.

    Args:
        outputs: From :func:`network_outputs`; H and W multiples of every stride.
        strides: Token footprints in pixels.
        num_classes: Number of classes (higher ids are ignored).

    Returns:
        ``{"stride<p>_pixels": ..., "stride<p>_errors": ...}``.
    """
    totals = torch.zeros(len(strides), 2, 2)
    for prediction, _, mask in outputs:
        labelled = mask < num_classes
        wrong = labelled & (prediction != mask)
        for i, p in enumerate(strides):
            pure = pure_patches(mask, p, num_classes)[1]
            inside = pure.repeat_interleave(p, 1).repeat_interleave(p, 2)
            for j, selected in enumerate((labelled, wrong)):
                totals[i, j] += torch.tensor([(selected & inside).sum(), selected.sum()])
    share = totals[..., 0] / totals[..., 1].clamp(min=1)
    return {
        f"stride{p}_{kind}": share[i, j].item()
        for i, p in enumerate(strides)
        for j, kind in enumerate(("pixels", "errors"))
    }


def centroid_accuracy(
    features: Tensor, labels: Tensor, classes: Sequence[int] | None = None
) -> float:
    """Balanced nearest-centroid accuracy of *features* under cosine similarity.

    Args:
        features: Patch features (N, C).
        labels: Class ids (N,).
        classes: Classes to use (default: those present); other patches are dropped.

    Returns:
        Mean per-class recall, or NaN with fewer than two classes present.
    """
    present = labels.unique().tolist()
    classes = [c for c in (present if classes is None else classes) if c in present]
    if len(classes) < 2:
        return float("nan")
    keep = torch.isin(labels, torch.tensor(classes))
    f = nn.functional.normalize(features[keep], dim=1)
    y = labels[keep]
    centroids = nn.functional.normalize(torch.stack([f[y == c].mean(0) for c in classes]), dim=1)
    predicted = torch.tensor(classes)[(f @ centroids.T).argmax(1)]
    return torch.stack([(predicted[y == c] == c).float().mean() for c in classes]).mean().item()


def separability(
    embeddings: dict[int, tuple[Tensor, Tensor]], names: Sequence[str]
) -> dict[str, float]:
    """Centroid and hard-pair accuracies of every stage.

    Args:
        embeddings: Output of :func:`patch_embeddings`.
        names: Class names, indexed by class id (for :data:`HARD_PAIRS`).

    Returns:
        ``{"stage<s>_centroid": ..., "stage<s>_<a>_vs_<b>": ...}``.
    """
    pairs = [(a, b) for a, b in HARD_PAIRS if a in names and b in names]
    scores = {}
    for s, (f, y) in embeddings.items():
        scores[f"stage{s}_centroid"] = centroid_accuracy(f, y)
        for a, b in pairs:
            pair = (names.index(a), names.index(b))
            scores[f"stage{s}_{a}_vs_{b}"] = centroid_accuracy(f, y, classes=pair)
    return scores
