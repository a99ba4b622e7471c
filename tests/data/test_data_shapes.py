"""The procedural shapes dataset: determinism, any resolution, balanced labels."""
import numpy as np
import pytest
import torch
from PIL import Image

from latentbench.data import build_dataset
from latentbench.data.shapes import SHAPE_CLASSES, render_shape_image


@pytest.mark.parametrize("resolution", [32, 64, 256])
def test_any_resolution(resolution):
    ds = build_dataset("shapes:20:10", "train", resolution)
    x, y = ds[3]
    assert x.shape == (3, resolution, resolution) and x.dtype == torch.float32
    assert -1 <= x.min() and x.max() <= 1 and y == 3


def test_deterministic_across_instances():
    a, b = build_dataset("shapes", "val", 64), build_dataset("shapes", "val", 64)
    assert torch.equal(a[7][0], a[7][0]) and torch.equal(a[7][0], b[7][0])
    assert a.info["fingerprint"] == b.info["fingerprint"]


def test_items_and_splits_differ():
    train, val = build_dataset("shapes", "train", 32), build_dataset("shapes", "val", 32)
    assert not torch.equal(train[0][0], train[10][0])  # same class, different image
    assert not torch.equal(train[0][0], val[0][0])
    assert train.info["fingerprint"] != val.info["fingerprint"]


def test_balanced_ten_classes_and_sizes():
    ds = build_dataset("shapes", "train", 32)
    assert len(ds) == 5000 and len(build_dataset("shapes", "val", 32)) == 1000
    assert ds.info["class_names"] == list(SHAPE_CLASSES) and ds.info["num_classes"] == 10
    assert np.bincount(ds.targets).tolist() == [500] * 10
    custom = build_dataset("shapes:30:7", "val", 32)
    assert len(custom) == 7 and custom.info["n"] == 7


def test_limit_and_index_range():
    ds = build_dataset("shapes", "train", 32, limit=12)
    assert len(ds) == 12 and ds.info["limit"] == 12
    with pytest.raises(IndexError):
        ds[12]


def test_scene_does_not_depend_on_resolution():
    big = Image.fromarray(render_shape_image(0, 4, 256)).resize((32, 32), Image.BOX)
    small = render_shape_image(0, 4, 32)
    assert np.abs(np.asarray(big, dtype=float) - small).mean() < 8


@pytest.mark.parametrize("source", ["shapes:10", "shapes:a:b", "shapes:0:5"])
def test_bad_shapes_source(source):
    with pytest.raises(ValueError, match="shapes:<n_train>:<n_val>"):
        build_dataset(source, "train", 32)
