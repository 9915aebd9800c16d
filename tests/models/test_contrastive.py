import math

import pytest
import torch
import torch.nn.functional as F

from geoct.models import PatchContrastiveLoss, build_segmenter, patch_class_counts
from geoct.models.contrastive import patch_confidence

IGNORE = 255


def direct_counts(mask: torch.Tensor, stride: int, k: int) -> torch.Tensor:
    b, h, w = mask.shape
    hp, wp = -(-h // stride) * stride, -(-w // stride) * stride
    out = torch.zeros(b, k + 1, hp // stride, wp // stride)
    for i in range(b):
        for y in range(hp):
            for x in range(wp):
                v = int(mask[i, y, x]) if y < h and x < w else IGNORE
                out[i, v if 0 <= v < k else k, y // stride, x // stride] += 1
    return out


@pytest.mark.parametrize("strides", [(2,), (2, 4), (4, 8), (2, 8)])
def test_patch_counts_match_direct_count(strides: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 4, (2, 14, 11), generator=g)
    mask[0, :3, :5] = IGNORE
    mask[1, 5, 5] = 7  # outside the classes: counted as ignore
    counts = patch_class_counts(mask, strides, 3, IGNORE)
    size = max(strides)
    for stride in strides:
        expected = direct_counts(mask, stride, 3)
        h, w = -(-14 // size) * size // stride, -(-11 // size) * size // stride
        assert counts[stride].shape == (2, 4, h, w)
        torch.testing.assert_close(
            counts[stride][..., : expected.shape[-2], : expected.shape[-1]], expected
        )
        assert counts[stride].sum(1).eq(stride * stride).all()


def test_patch_confidence_is_block_mean() -> None:
    prob = torch.rand(1, 2, 8, 8)
    conf = patch_confidence(prob, 4)
    assert conf.shape == (1, 2, 2, 2)
    torch.testing.assert_close(conf[0, 1, 1, 0], prob[0, 1, 4:8, 0:4].mean())


# --- hand-built scene: 2 images, 16x16 px, stride 4 -> 4x4 tokens per image ------------------
# kind per token: 0/1/2 = pure class, "m" = mixed 0|1, "i" = all ignore, "b" = class 2 + ignore
KINDS = [
    ["0", "0", "0", "0", "0", "0", "m", "1", "1", "1", "1", "2", "i", "b", "0", "0"],
    ["0", "0", "0", "0", "1", "1", "1", "1", "1", "m", "2", "2", "0", "0", "1", "i"],
]


def scene(stride: int = 4) -> torch.Tensor:
    mask = torch.empty(2, 4 * stride, 4 * stride, dtype=torch.long)
    for b, kinds in enumerate(KINDS):
        for n, kind in enumerate(kinds):
            ys, xs = (
                slice((n // 4) * stride, (n // 4 + 1) * stride),
                slice((n % 4) * stride, (n % 4 + 1) * stride),
            )
            block = mask[b, ys, xs]
            if kind == "m":
                block[:] = 0
                block[: stride // 2] = 1
            elif kind == "i":
                block[:] = IGNORE
            elif kind == "b":
                block[:] = 2
                block[0, 0] = IGNORE
            else:
                block[:] = int(kind)
    return mask


def reference_terms(z, conf, mask, stride, k_classes, take_top, loss, t=0.1, max_samples=10_000):
    """Direct loop implementation of the reference algorithm with hard negatives."""
    p2 = stride * stride
    counts = direct_counts(mask, stride, k_classes).permute(1, 0, 2, 3).reshape(k_classes + 1, -1)
    terms = []
    for c in range(k_classes):
        if counts[c].sum() == 0:
            continue
        pos = [n for n in range(counts.shape[1]) if counts[c, n] == p2]
        neg = [n for n in range(counts.shape[1]) if counts[c, n] == 0 and counts[k_classes, n] < p2]
        pos.sort(key=lambda n: float(conf[c, n]))
        neg.sort(key=lambda n: -float(conf[c, n]))
        k = min(int(len(pos) * take_top), max_samples)
        if k < 2 or len(neg) < 4:
            terms.append(None)
            continue
        low, high = pos[:k], pos[len(pos) - k :]
        if loss == "info_nce":
            m = min(k, len(neg))
            total = 0.0
            for i in range(m):
                q, key = z[low[i]], z[high[i]]
                num = math.exp(float(q @ key) / t)
                den = num + sum(math.exp(float(q @ z[n]) / t) for n in neg[:m])
                total += -math.log(num / den)
            terms.append(total / m)
        else:
            sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
            pos_term = sum(-math.log(sig(float(z[low[i]] @ z[high[i]]))) for i in range(k)) / k
            m = min(k, len(neg))
            neg_term = sum(-math.log(sig(-float(z[low[i]] @ z[neg[i]]))) for i in range(m)) / m
            terms.append(pos_term + neg_term)
    return terms


def make_inputs(channels: int = 8, stride: int = 4):
    g = torch.Generator().manual_seed(1)
    mask = scene(stride)
    features = torch.randn(2, channels, 4, 4, generator=g, requires_grad=True)
    logits = torch.randn(2, 3, 4 * stride, 4 * stride, generator=g)
    return features, logits, mask


def projected_tokens(
    loss: PatchContrastiveLoss, features: torch.Tensor, stage: int = 0
) -> torch.Tensor:
    with torch.no_grad():
        return loss.heads[str(stage)](features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]))


@pytest.mark.parametrize("kind", ["info_nce", "cosine"])
@pytest.mark.parametrize("divisor", ["valid", "all"])
def test_loss_matches_direct_formula(kind: str, divisor: str) -> None:
    torch.manual_seed(0)
    features, logits, mask = make_inputs()
    loss = PatchContrastiveLoss(
        {0: 8},
        {0: 4},
        3,
        IGNORE,
        loss=kind,
        take_top=0.4,
        divisor=divisor,
        negatives="hard",
        clip=None,
    )
    out = loss([features], logits, mask)
    conf = patch_confidence(logits.softmax(1), 4).permute(1, 0, 2, 3).reshape(3, -1)
    terms = reference_terms(projected_tokens(loss, features), conf, mask, 4, 3, 0.4, kind)
    # class 0: 14 pure -> k 5; class 1: 12 pure -> k 4; class 2: 3 pure -> k 1 -> skipped
    assert terms[2] is None and None not in terms[:2]
    valid = [v for v in terms if v is not None]
    expected = sum(valid) / (len(valid) if divisor == "valid" else len(terms))
    assert int(out.valid_terms) == 2
    torch.testing.assert_close(out.loss, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.raw, out.loss)


def test_random_negatives_equal_hard_when_all_negatives_are_used() -> None:
    features, logits, _ = make_inputs()
    mask = torch.zeros(2, 16, 16, dtype=torch.long)
    mask[:, 8:] = 1
    kwargs = dict(loss="info_nce", take_top=1.0, clip=None)
    hard = PatchContrastiveLoss({0: 8}, {0: 4}, 3, IGNORE, negatives="hard", **kwargs)
    rand = PatchContrastiveLoss({0: 8}, {0: 4}, 3, IGNORE, negatives="random", **kwargs)
    rand.load_state_dict(hard.state_dict())
    # 16 pure patches and 16 negatives per class: the whole negative pool is used
    torch.testing.assert_close(
        rand([features], logits, mask).loss, hard([features], logits, mask).loss
    )


def test_random_negatives_leave_the_global_random_stream_alone() -> None:
    features, logits, mask = make_inputs()
    loss = PatchContrastiveLoss({0: 8}, {0: 4}, 3, IGNORE, negatives="random", max_samples=4)
    torch.manual_seed(5)
    first = loss([features], logits, mask).loss
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), after)
    loss._generator = None
    torch.manual_seed(5)
    torch.testing.assert_close(loss([features], logits, mask).loss, first)


def test_pools_pure_mixed_absent_and_ignore() -> None:
    _, logits, mask = make_inputs()
    loss = PatchContrastiveLoss({0: 8}, {0: 4}, 3, IGNORE, take_top=1.0, max_samples=64)
    counts = patch_class_counts(mask, [4], 3, IGNORE)[4].transpose(0, 1).flatten(1)
    conf = patch_confidence(logits.softmax(1), 4).transpose(0, 1).flatten(1)
    hard, easy, neg, k, n_neg = loss.sample(counts, conf, 16)
    kinds = KINDS[0] + KINDS[1]
    for c in range(3):
        pure = {n for n, kd in enumerate(kinds) if kd == str(c)}
        # negatives: no pixel of c; all-ignore patches ("i") are never negatives,
        # patches with some ignore ("b") are negatives of classes 0 and 1
        absent = {
            n for n, kd in enumerate(kinds) if kd not in (str(c), "i") and not (kd == "m" and c < 2)
        }
        absent -= {n for n, kd in enumerate(kinds) if kd == "b" and c == 2}
        assert int(k[c]) == len(pure)
        assert set(hard[c, : int(k[c])].tolist()) == pure == set(easy[c, : int(k[c])].tolist())
        assert int(n_neg[c]) == len(absent)
        assert set(neg[c, : int(n_neg[c])].tolist()) == absent
        ranked = conf[c, hard[c, : int(k[c])]]
        assert torch.all(ranked[1:] >= ranked[:-1])  # hard positives: ascending confidence
        paired = conf[c, easy[c, : int(k[c])]]
        assert torch.all(paired[1:] >= paired[:-1])  # keys paired least with least


def test_skipping_rules() -> None:
    features, logits, _ = make_inputs()
    mask = torch.zeros(2, 16, 16, dtype=torch.long)  # class 0 everywhere: no negatives
    loss = PatchContrastiveLoss({0: 8}, {0: 4}, 3, IGNORE, clip=None)
    out = loss([features], logits, mask)
    assert int(out.valid_terms) == 0 and float(out.loss) == 0.0
    out.loss.backward()  # still part of the graph, no NaN
    assert torch.isfinite(features.grad).all()
    mask[:, :, 8:] = 1  # 16 pure patches each -> k 6, 16 negatives each
    assert int(loss([features], logits, mask).valid_terms) == 2
    mask[0, :4, :4] = IGNORE
    everything_ignored = torch.full_like(mask, IGNORE)
    out = PatchContrastiveLoss({0: 8}, {0: 4}, 3, IGNORE, divisor="all")(
        [features], logits, everything_ignored
    )
    assert int(out.valid_terms) == 0 and float(out.loss) == 0.0


def test_max_samples_caps_pairs_with_most_confident_keys() -> None:
    _, logits, mask = make_inputs()
    loss = PatchContrastiveLoss({0: 8}, {0: 4}, 3, IGNORE, take_top=0.5, max_samples=3)
    counts = patch_class_counts(mask, [4], 3, IGNORE)[4].transpose(0, 1).flatten(1)
    conf = patch_confidence(logits.softmax(1), 4).transpose(0, 1).flatten(1)
    hard, easy, _, k, n_neg = loss.sample(counts, conf, 16)
    assert hard.shape == (3, 3) and int(k[0]) == 3 and int(n_neg[0]) == 3
    pure0 = [n for n, kd in enumerate(KINDS[0] + KINDS[1]) if kd == "0"]
    top3 = sorted(pure0, key=lambda n: float(conf[0, n]))[-3:]
    assert easy[0].tolist() == top3


def test_clip_is_a_gate() -> None:
    features, logits, mask = make_inputs()
    loss = PatchContrastiveLoss({0: 8}, {0: 4}, 3, IGNORE, clip=1e-3)
    out = loss([features], logits, mask)
    assert float(out.clipped) == 1.0 and float(out.loss) == pytest.approx(1e-3)
    assert float(out.raw) > 1e-3
    out.loss.backward()
    assert features.grad.abs().sum() == 0


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="contrastive_loss"):
        PatchContrastiveLoss({0: 8}, {0: 4}, 3, loss="triplet")
    with pytest.raises(ValueError, match="take_top"):
        PatchContrastiveLoss({0: 8}, {0: 4}, 3, take_top=0)
    with pytest.raises(ValueError, match="purity"):
        PatchContrastiveLoss({0: 8}, {0: 4}, 3, purity=0.5)


@pytest.mark.parametrize(("purity", "positives"), [(1.0, [0]), (0.75, [0, 1]), (0.6, [0, 1, 2])])
def test_purity_admits_majority_patches(purity: float, positives: list[int]) -> None:
    # four 4 x 4 patches with 16, 12 and 10 pixels of class 0, then none
    mask = torch.zeros(1, 4, 16, dtype=torch.long)
    mask[0, :, 7] = 1
    mask[0, :3, 11] = 1
    mask[0, 3, 9:12] = 2
    mask[0, :, 12:] = 1
    counts = patch_class_counts(mask, [4], 3, IGNORE)[4].transpose(0, 1).flatten(1)
    assert counts[0].tolist() == [16, 12, 10, 0]
    loss = PatchContrastiveLoss({0: 8}, {0: 4}, 3, IGNORE, take_top=1.0, purity=purity)
    hard, _, neg, k, n_neg = loss.sample(counts, torch.zeros(3, 4), 16)
    assert sorted(hard[0, : int(k[0])].tolist()) == positives
    assert neg[0, : int(n_neg[0])].tolist() == [3]


def test_gradients_reach_heads_and_encoder_not_decoder() -> None:
    torch.manual_seed(0)
    net = build_segmenter(
        "swin_tiny_patch4_window7_224",
        3,
        3,
        decoder="fpn",
        decoder_channels=16,
        backbone_kwargs={
            "embed_dim": 16,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 1, 1, 1],
            "window_size": 4,
        },
    )
    stages = {s: net.backbone.channels[s] for s in range(4)}
    loss = PatchContrastiveLoss(stages, dict(enumerate(net.backbone.strides)), 3, IGNORE, clip=None)
    mask = torch.zeros(2, 128, 128, dtype=torch.long)
    mask[:, :, 64:] = 1
    mask[0, 64:] = 2
    logits, features = net.forward_features(torch.randn(2, 3, 128, 128))
    out = loss(features, logits, mask)
    assert int(out.valid_terms) == 4 * 3
    out.loss.backward()
    for head in loss.heads.values():
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert (
        sum(float(p.grad.abs().sum()) for p in net.backbone.parameters() if p.grad is not None) > 0
    )
    for module in (net.decoder, net.classifier):
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in module.parameters())


def test_features_of_padded_inputs_get_ignore_padding() -> None:
    features = torch.randn(1, 8, 3, 3, requires_grad=True)  # 12x12 grid for a 10x10 mask
    mask = torch.zeros(1, 10, 10, dtype=torch.long)
    mask[:, :, 5:] = 1
    logits = torch.randn(1, 2, 10, 10)
    loss = PatchContrastiveLoss({0: 8}, {0: 4}, 2, IGNORE, take_top=1.0, min_negatives=1)
    out = loss([features], logits, mask)
    assert torch.isfinite(out.loss)
    counts = patch_class_counts(F.pad(mask, (0, 2, 0, 2), value=IGNORE), [4], 2, IGNORE)[4]
    assert counts[0, 2].sum() == 144 - 100


def test_backward_is_reproducible() -> None:
    # many duplicated token indices: an accumulate-by-index backward adds them in a
    # varying order across threads, and training amplifies the last-bit differences
    g = torch.Generator().manual_seed(0)
    features = torch.randn(4, 24, 16, 16, generator=g, requires_grad=True)
    mask = torch.randint(0, 6, (4, 16, 16), generator=g)
    mask = mask.repeat_interleave(4, 1).repeat_interleave(4, 2)
    logits = torch.randn(4, 6, 64, 64, generator=g)
    torch.manual_seed(0)
    loss = PatchContrastiveLoss(
        {0: 24}, {0: 4}, 6, IGNORE, take_top=0.8, max_samples=256, clip=None
    )
    grads = set()
    for _ in range(10):
        features.grad = None
        loss._generator = None  # the same random negatives every time
        loss([features], logits, mask).loss.backward()
        grads.add(features.grad.double().sum().item())
    assert len(grads) == 1
