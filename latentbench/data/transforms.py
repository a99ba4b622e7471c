"""Protocol-exact preprocessing: the ADM center crop and the [-1, 1] tensor conversion."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from latentbench.data.images import to_rgb

ADM_CENTER_CROP = "adm-center-crop"


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """Resize and center-crop an image the way ADM does for ImageNet.

    Written after guided-diffusion ``image_datasets.py`` ``center_crop_arr`` (Dhariwal &
    Nichol, 2021), the preprocessing the tokenizer and diffusion papers' ImageNet-256
    numbers use: halve with a BOX filter while the short side is at least twice the target,
    then one BICUBIC resize so the short side equals ``image_size``, then a center crop.
    Images smaller than ``image_size`` are upsampled by the bicubic step.

    Args:
        pil_image: the image; converted to RGB first if it is in another mode.
        image_size: side of the square output.

    Returns:
        uint8 array of shape (image_size, image_size, 3).
    """
    img = to_rgb(pil_image)
    while min(img.size) >= 2 * image_size:
        img = img.resize(tuple(side // 2 for side in img.size), resample=Image.BOX)
    scale = image_size / min(img.size)
    img = img.resize(tuple(round(side * scale) for side in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """Convert an (H, W, 3) uint8 array to a float32 (3, H, W) tensor in [-1, 1].

    Args:
        arr: uint8 image array, channels last.

    Returns:
        float32 tensor ``arr / 127.5 - 1``, channels first.
    """
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected a (H, W, 3) uint8 array, got {arr.shape} {arr.dtype}")
    chw = np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)  # (3, H, W), a copy
    # In numpy, in place: torch's multi-threaded elementwise ops crawl when the cores are busy.
    chw /= 127.5
    chw -= 1.0
    return torch.from_numpy(chw)
