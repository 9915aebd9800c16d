import torch

from geoct.datasets.augment import RandomOpticalJitter, normalize, train_augmentation


def batch() -> dict[str, torch.Tensor]:
    base = torch.randint(0, 6, (6, 1, 16, 16)).float()
    image = torch.cat([base.repeat(1, 4, 1, 1) * 10, base], dim=1)
    return {"image": image, "mask": base[:, 0].long(), "bounds": torch.zeros(6, 9)}


def test_geometric_augmentation_keeps_image_and_mask_aligned() -> None:
    aug = train_augmentation([0.0] * 5, [1.0] * 5, num_optical=4)
    torch.manual_seed(0)
    for _ in range(5):
        b = batch()
        out = aug(b)
        assert torch.equal(out["image"][:, 4], out["mask"].float())  # height is not jittered
        assert out["mask"].dtype == torch.int64 and out["bounds"] is b["bounds"]


def test_jitter_touches_only_optical_bands() -> None:
    jitter = RandomOpticalJitter(num_optical=3, brightness=0.5, contrast=0.5, p=1.0)
    x = torch.rand(4, 5, 8, 8)
    y = jitter(x)
    assert not torch.equal(y[:, :3], x[:, :3])
    assert torch.equal(y[:, 3:], x[:, 3:])


def test_normalize() -> None:
    b = batch()
    out = normalize([1.0] * 5, [2.0] * 5)(dict(b))
    assert torch.allclose(out["image"], (b["image"] - 1) / 2)
    assert torch.equal(out["mask"], b["mask"])
