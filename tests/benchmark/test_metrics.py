"""PSNR/SSIM against scikit-image, per image, on uint8-rounded images."""
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from latentbench.benchmark.metrics import (
    PSNR,
    SSIM,
    psnr_per_image,
    ssim_per_image,
    to_uint8,
)


def _pair(n=6, size=32, noise=0.15, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.nn.functional.interpolate(torch.rand(n, 3, size // 4, size // 4, generator=g), size=size, mode="bilinear") * 2 - 1
    fake = (real + noise * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    return real, fake


def _np(x):
    return to_uint8(x).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("size", [32, 64])
def test_matches_skimage_per_image(size):
    real, fake = _pair(size=size)
    psnr, ssim = psnr_per_image(real, fake), ssim_per_image(real, fake)
    for i, (a, b) in enumerate(zip(_np(real), _np(fake))):
        assert psnr[i].item() == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-4)
        ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=255, channel_axis=-1)
        assert ssim[i].item() == pytest.approx(ref, abs=1e-4)


def test_quantization_rounds_not_truncates():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.9999, 1.0, 2.0, -3.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255, 255, 0]  # (0+1)*127.5 = 127.5 rounds to 128 (half to even: 128)


def test_mean_of_per_image_values_independent_of_batching():
    real, fake = _pair(n=10)
    whole, split = PSNR(), PSNR()
    whole.update(real, fake)
    for i in range(0, 10, 3):
        split.update(real[i:i + 3], fake[i:i + 3])
    assert whole.compute().dtype == torch.float64
    assert whole.compute().item() == pytest.approx(split.compute().item(), abs=1e-12)
    assert whole.compute().item() == pytest.approx(psnr_per_image(real, fake).mean().item(), abs=1e-12)
    # per-image mean, not PSNR of the pooled MSE
    pooled = 10 * np.log10(255**2 / ((to_uint8(real).double() - to_uint8(fake).double()) ** 2).mean().item())
    assert abs(whole.compute().item() - pooled) > 1e-3


def test_ssim_metric_averages_per_image():
    real, fake = _pair(n=5)
    metric = SSIM()
    metric.update(real, fake)
    assert metric.compute().item() == pytest.approx(ssim_per_image(real, fake).mean().item(), abs=1e-12)


def test_bad_inputs_raise():
    real, fake = _pair(n=2)
    with pytest.raises(ValueError, match="one shape"):
        psnr_per_image(real, fake[:, :, :16])
    fake[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        PSNR().update(real, fake)
    with pytest.raises(ValueError, match="no images"):
        SSIM().compute()
    with pytest.raises(ValueError, match="larger than 11"):
        ssim_per_image(real[..., :8, :8], real[..., :8, :8])
