"""Reconstruction metrics under the suite's measurement conventions (DESIGN.md).

* Images are quantised to uint8 by rounding, ``round((x + 1) * 127.5)`` clamped to [0, 255],
  before any metric: the numbers are those of the PNGs a user would save.
* PSNR and SSIM are computed per image, then averaged (never pooled over a batch).
* SSIM uses a Gaussian window (sigma 1.5, 11 taps), data_range 255, and averages the SSIM map
  only where the full window fits, as Wang et al.'s reference and scikit-image do
  (torchmetrics averages the reflect-padded map, which differs by up to 0.02 at 32x32).
* Sums are float64 torchmetrics states with ``dist_reduce_fx="sum"``: exact under DDP.
"""
from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.image import structural_similarity_index_measure

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # (11 - 1) / 2: the border where the window does not fit


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] float images -> uint8 by rounding (not truncation); uint8 passes through."""
    if x.dtype == torch.uint8:
        return x
    check_finite(x)
    return ((x.double() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def check_finite(x: Tensor) -> None:
    """Raise ValueError when images contain NaN or Inf (a diverged decoder, not a metric value)."""
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"images at batch positions {bad[:10]} contain NaN or Inf; cannot compute metrics")


def check_pair(real: Tensor, fake: Tensor) -> None:
    """Both (B, 3, H, W) of the same shape."""
    if real.shape != fake.shape or real.ndim != 4:
        raise ValueError(f"real and fake must both be (B, C, H, W) of one shape, got {tuple(real.shape)} and {tuple(fake.shape)}")


def psnr_per_image(real: Tensor, fake: Tensor) -> Tensor:
    """PSNR in dB of each image pair, on uint8 values (inf for identical images)."""
    check_pair(real, fake)
    diff = to_uint8(real).double() - to_uint8(fake).double()
    mse = diff.pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(255.0**2 / mse)


def ssim_per_image(real: Tensor, fake: Tensor) -> Tensor:
    """SSIM of each image pair (Gaussian 11/1.5, data_range 255, valid-window mean over channels)."""
    check_pair(real, fake)
    if min(real.shape[-2:]) <= 2 * SSIM_RADIUS:
        raise ValueError(f"SSIM needs images larger than {2 * SSIM_RADIUS + 1} px, got {tuple(real.shape[-2:])}")
    _, ssim_map = structural_similarity_index_measure(
        to_uint8(fake).double(), to_uint8(real).double(), gaussian_kernel=True, sigma=SSIM_SIGMA,
        data_range=255.0, reduction="none", return_full_image=True,
    )
    r = SSIM_RADIUS
    return ssim_map[..., r:-r, r:-r].flatten(1).mean(1)


class _PerImageMean(Metric):
    """Mean of a per-image value, with float64 sums that all-reduce by summation."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    @abstractmethod
    def per_image(self, real: Tensor, fake: Tensor) -> Tensor:
        """One value per image pair, shape (B,)."""

    def update(self, real: Tensor, fake: Tensor) -> None:
        values = self.per_image(real, fake)
        self.total += values.sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        if self.count == 0:
            raise ValueError(f"{type(self).__name__}.compute() called before any update")
        return self.total / self.count


class PSNR(_PerImageMean):
    """Mean per-image PSNR (dB) of uint8-rounded images in [-1, 1]."""

    def per_image(self, real: Tensor, fake: Tensor) -> Tensor:
        return psnr_per_image(real, fake)


class SSIM(_PerImageMean):
    """Mean per-image SSIM of uint8-rounded images in [-1, 1]."""

    def per_image(self, real: Tensor, fake: Tensor) -> Tensor:
        return ssim_per_image(real, fake)
