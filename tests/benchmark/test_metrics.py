"""PSNR/SSIM against scikit-image, per image, on uint8-rounded images."""
from fractions import Fraction

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
    for i, (a, b) in enumerate(zip(_np(real), _np(fake), strict=True)):
        assert psnr[i].item() == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), rel=1e-12)
        ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=255, channel_axis=-1)
        assert abs(ssim[i].item() - ref) < 1e-12


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
    with pytest.raises(ValueError, match=r"at least 11x11 px \(its Gaussian window\), got \(10, 10\): use larger"):
        ssim_per_image(real[..., :10, :10], real[..., :10, :10])
    assert ssim_per_image(real[..., :11, :11], real[..., :11, :11]).tolist() == pytest.approx([1.0, 1.0])  # the window fits once
    for dtype in (torch.int64, torch.int32):  # 0..255 in int64 or 16-bit in int32: the scale is unknown, not guessed
        with pytest.raises(ValueError, match=f"must be uint8 .* got {dtype}"):
            psnr_per_image(torch.zeros(1, 3, 4, 4, dtype=dtype), torch.ones(1, 3, 4, 4, dtype=dtype))


def test_unit_range_images_are_warned_about(recwarn):
    """[0, 1] floats passed as images are read as [-1, 1] (~6 dB more PSNR): warned, still computed."""
    real, fake = _pair(n=2)
    unit_real, unit_fake = (real + 1) / 2, (fake + 1) / 2
    for metric in (psnr_per_image, ssim_per_image):
        with pytest.warns(UserWarning, match=r"lie in \[0, 1\]: if they are \[0, 1\] images, pass x \* 2 - 1"):
            metric(unit_real, unit_fake)
    recwarn.clear()
    psnr_per_image(real, fake), ssim_per_image(real, fake)  # [-1, 1] images
    psnr_per_image(to_uint8(unit_real * 2 - 1), to_uint8(unit_fake * 2 - 1))  # uint8 is unambiguous
    psnr_per_image(torch.full_like(real, 0.5), fake)  # a constant image proves nothing
    assert not [w for w in recwarn if "lie in [0, 1]" in str(w.message)]


def _true_level(x: float) -> int:
    """round((x + 1) * 127.5), ties to even, clamped to [0, 255], in exact rational arithmetic."""
    v = min(max((Fraction(x) + 1) * Fraction(255, 2), Fraction(0)), Fraction(255))
    return round(v)  # Fraction rounds half to even


def test_quantization_is_exact_across_chunks_and_dtypes(monkeypatch):
    from latentbench.benchmark import metrics

    g = torch.Generator().manual_seed(0)
    ties = ((torch.arange(255, dtype=torch.float64) + 0.5) / 127.5 - 1).float()  # nearest floats to each half-way point
    near = torch.cat([ties, torch.nextafter(ties, torch.tensor(2.0)), torch.nextafter(ties, torch.tensor(-2.0)),
                      torch.tensor([0.0, -0.0, 1e-45, -1e-45, -1e-20, 1e-20, -3e-8, 2**-30, -(2**-30)])])
    x = torch.cat([near, torch.rand(5000, generator=g) * 2.4 - 1.2])
    x = x[torch.randperm(len(x), generator=g)][:5770].reshape(5, 1154).t()  # non-contiguous
    expected = np.array([_true_level(v) for v in x.flatten().tolist()], dtype=np.uint8).reshape(x.shape)
    monkeypatch.setattr(metrics, "CPU_CHUNK_VALUES", 1000)  # six chunks, the last one partial
    assert np.array_equal(to_uint8(x).numpy(), expected)
    assert to_uint8(torch.tensor([-1e-20, -1e-45, 0.0, 1e-45]).reshape(1, 4)).tolist() == [[127, 127, 128, 128]]
    for dtype in (torch.float16, torch.bfloat16):
        y = x.to(dtype)
        assert np.array_equal(to_uint8(y).numpy(), np.array([_true_level(v) for v in y.float().flatten().tolist()],
                                                             dtype=np.uint8).reshape(x.shape))
    z = x.double()  # float64 keeps round((x + 1) * 127.5) computed in float64, as numpy does
    assert np.array_equal(to_uint8(z).numpy(), np.clip(np.round((z.numpy() + 1) * 127.5), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("chunk_values", [3 * 32 * 32 * 2, 2**18])
def test_chunked_metrics_equal_per_image_values(monkeypatch, chunk_values):
    from latentbench.benchmark import metrics

    real, fake = _pair(n=7)
    one_by_one = [(psnr_per_image(real[i:i + 1], fake[i:i + 1]), ssim_per_image(real[i:i + 1], fake[i:i + 1])) for i in range(7)]
    monkeypatch.setattr(metrics, "CPU_CHUNK_VALUES", chunk_values)  # 2 images per chunk, or all 7 in one
    assert torch.equal(psnr_per_image(real, fake), torch.cat([p for p, _ in one_by_one]))
    assert torch.allclose(ssim_per_image(real, fake), torch.cat([s for _, s in one_by_one]), rtol=0, atol=1e-15)


def test_ssim_equals_skimage_in_float64_at_256():
    real, fake = _pair(n=2, size=256, noise=0.05)
    ssim = ssim_per_image(real, fake)  # 196,608 values per image: one image per chunk on a CPU
    for i, (a, b) in enumerate(zip(_np(real), _np(fake), strict=True)):
        ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=255, channel_axis=-1)
        assert abs(ssim[i].item() - ref) < 1e-12
        assert psnr_per_image(real[i:i + 1], fake[i:i + 1]).item() == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), rel=1e-12)


def test_torchmetrics_ssim_map_cropped_by_the_window_radius_is_ours():
    """The README's account of the difference from torchmetrics: its mean also covers the 5-pixel border where the
    window reads reflect-padded pixels; its full map cropped by 5 pixels gives ours to float64 rounding."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    g = torch.Generator().manual_seed(0)
    real = torch.rand(3, 3, 48, 40, generator=g) * 2 - 1
    fake = (real + 0.1 * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    as_uint8 = [torch.round((x + 1) * 127.5).clamp(0, 255).double() for x in (real, fake)]
    _, full = structural_similarity_index_measure(as_uint8[1], as_uint8[0], data_range=255.0, gaussian_kernel=True,
                                                  sigma=1.5, kernel_size=11, reduction="none", return_full_image=True)
    torch.testing.assert_close(full[..., 5:-5, 5:-5].mean(dim=(1, 2, 3)), ssim_per_image(real, fake), rtol=0, atol=1e-15)
