"""ADM center crop and the [-1, 1] tensor conversion."""
import numpy as np
import pytest
import torch
from PIL import Image

from latentbench.data import center_crop_arr, to_tensor


def _noise(w: int, h: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _bicubic_crop(img: Image.Image, size: int) -> np.ndarray:
    """Reference for an image whose short side is below 2*size: one bicubic resize, center crop."""
    scale = size / min(img.size)
    arr = np.asarray(img.resize(tuple(round(s * scale) for s in img.size), Image.BICUBIC))
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def test_no_box_halving_when_short_side_below_twice():
    img = _noise(512, 384)  # min 384 < 2 * 256: straight to bicubic 341x256, crop
    out = center_crop_arr(img, 256)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, _bicubic_crop(img, 256))


def test_box_halving_before_bicubic():
    img = _noise(1024, 768)  # min 768 >= 512: one BOX halving to 512x384, then bicubic
    expected = _bicubic_crop(img.resize((512, 384), Image.BOX), 256)
    np.testing.assert_array_equal(center_crop_arr(img, 256), expected)
    assert not np.array_equal(expected, _bicubic_crop(img, 256))


def test_solid_colour_survives():
    out = center_crop_arr(Image.new("RGB", (1024, 1024), (12, 200, 99)), 256)
    assert out.shape == (256, 256, 3) and np.all(out == (12, 200, 99))


def test_small_image_is_upsampled():
    out = center_crop_arr(_noise(100, 50), 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8


def test_non_rgb_input_is_converted():
    assert center_crop_arr(Image.new("L", (40, 40), 7), 32).shape == (32, 32, 3)


def test_to_tensor_range_and_layout():
    arr = np.zeros((4, 5, 3), dtype=np.uint8)
    arr[0, 0] = (255, 0, 128)
    x = to_tensor(arr)
    assert x.shape == (3, 4, 5) and x.dtype == torch.float32 and x.is_contiguous()
    assert x[:, 0, 0].tolist() == pytest.approx([1.0, -1.0, 128 / 127.5 - 1], abs=1e-6)
    assert x[:, 1, 1].tolist() == [-1.0, -1.0, -1.0]


def test_to_tensor_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(np.zeros((4, 4, 3), dtype=np.float32))
