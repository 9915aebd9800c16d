"""Kornia batch augmentation for geoct datamodules: normalisation, flips, rotations, jitter.

Geometric augmentations move image and mask together; the photometric jitter touches
only the optical bands, never the height channel.
"""

from collections.abc import Sequence
from typing import Any

import kornia.augmentation as K
import torch
from kornia.augmentation import IntensityAugmentationBase2D
from kornia.augmentation import random_generator as rg
from torch import Tensor


class RandomOpticalJitter(IntensityAugmentationBase2D):
    """Mild random brightness and contrast change of the first *num_optical* channels.

    Works on normalised images: contrast scales each optical channel about its mean,
    brightness adds an offset in units of the band's standard deviation. Later
    channels (the height band) are left untouched.
    """

    def __init__(
        self,
        num_optical: int,
        brightness: float = 0.1,
        contrast: float = 0.1,
        p: float = 0.5,
        keepdim: bool = False,
    ) -> None:
        """Initialise a new RandomOpticalJitter.

        Args:
            num_optical: Number of leading channels to jitter.
            brightness: Largest additive offset (normalised units).
            contrast: Largest relative contrast change.
            p: Probability of jittering a sample.
            keepdim: Keep the input shape (see kornia).
        """
        super().__init__(p=p, keepdim=keepdim)
        self.num_optical = num_optical
        self._param_generator = rg.PlainUniformGenerator(
            (torch.tensor([-brightness, brightness]), "brightness", None, None),
            (torch.tensor([1 - contrast, 1 + contrast]), "contrast", None, None),
        )

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Jitter the optical channels of a batch."""
        out = input.clone()
        optical = out[:, : self.num_optical]
        shape = (-1, 1, 1, 1)
        brightness = params["brightness"].to(input).view(shape)
        contrast = params["contrast"].to(input).view(shape)
        mean = optical.mean(dim=(-2, -1), keepdim=True)
        out[:, : self.num_optical] = (optical - mean) * contrast + mean + brightness
        return out


class _DropKeys(torch.nn.Module):
    """Remove sample entries that kornia cannot augment (``bounds``, ``transform``)."""

    def __init__(self, aug: K.AugmentationSequential, keep: Sequence[str]) -> None:
        super().__init__()
        self.aug = aug
        self.keep = tuple(keep)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        aside = {k: v for k, v in batch.items() if k not in self.keep}
        out = self.aug({k: v for k, v in batch.items() if k in self.keep})
        out.update(aside)
        return out


def normalize(mean: Sequence[float], std: Sequence[float]) -> torch.nn.Module:
    """Per-band normalisation of ``batch["image"]`` (validation, test, predict)."""
    aug = K.AugmentationSequential(
        K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std)),
        data_keys=None,
        keepdim=True,
    )
    return _DropKeys(aug, ("image", "mask"))


def train_augmentation(
    mean: Sequence[float],
    std: Sequence[float],
    num_optical: int,
    jitter: float = 0.1,
) -> torch.nn.Module:
    """Normalisation plus flips, 90-degree rotations and optical jitter (training).

    Args:
        mean: Per-band mean.
        std: Per-band standard deviation.
        num_optical: Number of leading optical bands that get photometric jitter.
        jitter: Strength of the brightness and contrast jitter.

    Returns:
        A module mapping a batch dict to an augmented batch dict.
    """
    aug = K.AugmentationSequential(
        K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std)),
        K.RandomHorizontalFlip(p=0.5),
        K.RandomVerticalFlip(p=0.5),
        K.RandomRotation90(times=(0, 3), resample="nearest", p=1.0),
        RandomOpticalJitter(num_optical, brightness=jitter, contrast=jitter, p=0.5),
        data_keys=None,
        keepdim=True,
    )
    return _DropKeys(aug, ("image", "mask"))
