"""hf sources: save_to_disk folders (Dataset and DatasetDict), column detection, offline hub errors."""
import time

import numpy as np
import pytest
import torch
from PIL import Image

datasets = pytest.importorskip("datasets")

from latentbench.data import (  # noqa: E402
    BadImageError,
    SplitNotFoundError,
    build_dataset,
    center_crop_arr,
    to_tensor,
)
from latentbench.data.hf import HubUnreachableError  # noqa: E402

CLASSES = ["cat", "dog", "bird"]


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (12 + i, 10, 3), dtype=np.uint8)) for i in range(n)]


def _dataset(n: int, seed: int = 0, label_feature=None, labels=None):
    label_feature = label_feature or datasets.ClassLabel(names=CLASSES)
    labels = labels if labels is not None else [i % 3 for i in range(n)]
    features = datasets.Features(
        {"caption": datasets.Value("string"), "image": datasets.Image(), "label": label_feature}
    )
    data = {"caption": ["x"] * n, "image": _images(n, seed), "label": labels}
    return datasets.Dataset.from_dict(data, features=features)


def test_saved_dataset_dict(tmp_path):
    datasets.DatasetDict({"train": _dataset(6), "validation": _dataset(4, seed=1)}).save_to_disk(tmp_path / "dd")
    ds = build_dataset(f"hf:{tmp_path / 'dd'}", "validation", 16)
    assert len(ds) == 4 and ds.info["class_names"] == CLASSES and ds.info["num_classes"] == 3
    assert ds.targets == [0, 1, 2, 0]
    assert ds.info["image_column"] == "image" and ds.info["label_column"] == "label"
    x, y = ds[1]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 1
    expected = _images(4, seed=1)[1]  # the PNG round trip is lossless
    assert torch.equal(x, to_tensor(center_crop_arr(expected, 16)))
    train = build_dataset(f"hf:{tmp_path / 'dd'}", "train", 16)
    assert len(train) == 6 and train.info["fingerprint"] != ds.info["fingerprint"]


def test_missing_split_lists_available(tmp_path):
    datasets.DatasetDict({"train": _dataset(2), "validation": _dataset(2)}).save_to_disk(tmp_path / "dd")
    with pytest.raises(SplitNotFoundError, match="'train', 'validation'") as info:
        build_dataset(f"hf:{tmp_path / 'dd'}", "test", 16)
    assert isinstance(info.value, KeyError)


def test_saved_single_dataset_serves_any_split(tmp_path):
    _dataset(5).save_to_disk(tmp_path / "one")
    a = build_dataset(f"hf:{tmp_path / 'one'}", "train", 8)
    b = build_dataset(f"hf:{tmp_path / 'one'}", "validation", 8, limit=3)
    assert len(a) == 5 and len(b) == 3 and b.info["limit"] == 3


def test_plain_label_column_and_no_label(tmp_path):
    _dataset(4, label_feature=datasets.Value("int64"), labels=[0, 4, 1, 4]).save_to_disk(tmp_path / "ints")
    ds = build_dataset(f"hf:{tmp_path / 'ints'}", "train", 8)
    assert ds.info["class_names"] == ["0", "1", "2", "3", "4"] and ds.targets == [0, 4, 1, 4]
    _dataset(3).remove_columns("label").save_to_disk(tmp_path / "nolabel")
    ds = build_dataset(f"hf:{tmp_path / 'nolabel'}", "train", 8)
    assert ds.info["num_classes"] == 1 and ds.targets == [0, 0, 0] and ds.info["label_column"] is None


def test_labels_that_are_not_class_indices_stop_naming_the_column(tmp_path):
    _dataset(3, labels=[0, -1, -1]).save_to_disk(tmp_path / "unlabelled")  # -1: Hugging Face's "no label" (ImageNet test)
    with pytest.raises(ValueError, match=r"2 of 3 rows have a label outside 0\.\.2 in column 'label' \(row 1: -1"):
        build_dataset(f"hf:{tmp_path / 'unlabelled'}", "train", 8)
    _dataset(2, label_feature=datasets.Value("string"), labels=["cat", "dog"]).save_to_disk(tmp_path / "names")
    with pytest.raises(ValueError, match=r"'label' holds str values \(row 0: 'cat'\).*class_encode_column"):
        build_dataset(f"hf:{tmp_path / 'names'}", "train", 8)


def test_labels_read_as_indices_whatever_format_the_dataset_was_saved_in(tmp_path):
    """set_format("numpy" / "torch") survives save_to_disk: its rows give numpy or tensor scalars, still class indices."""
    for fmt in ("numpy", "torch"):
        saved = _dataset(3, labels=[2, 0, 1])
        saved.set_format(fmt)
        saved.save_to_disk(tmp_path / fmt)
        assert build_dataset(f"hf:{tmp_path / fmt}", "train", 8).targets == [2, 0, 1]
    _dataset(3, label_feature=datasets.Value("float32"), labels=[1.0, 0.0, 1.0]).save_to_disk(tmp_path / "floats")
    assert build_dataset(f"hf:{tmp_path / 'floats'}", "train", 8).targets == [1, 0, 1]


def test_undecodable_rows(tmp_path):
    good = _dataset(3)
    bad = datasets.Dataset.from_dict(
        {"caption": ["x"], "image": [{"bytes": b"garbage", "path": None}], "label": [1]}, features=good.features
    )
    datasets.concatenate_datasets([good, bad]).save_to_disk(tmp_path / "bad")
    with pytest.raises(BadImageError, match=r"\[3\]"):
        build_dataset(f"hf:{tmp_path / 'bad'}", "train", 8)
    ds = build_dataset(f"hf:{tmp_path / 'bad'}", "train", 8, on_bad_image="skip")
    assert len(ds) == 3 and ds.info["n_skipped"] == 1


def test_hub_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = datasets.config.HF_HUB_OFFLINE
    start = time.monotonic()
    with pytest.raises(HubUnreachableError, match="save_to_disk") as info:
        build_dataset("hf:latentbench-tests/no-such-dataset", "validation", 32)
    assert time.monotonic() - start < 10  # not the ~25 s of hub retries
    assert "HF_DATASETS_OFFLINE" in str(info.value) and isinstance(info.value, ConnectionError)
    assert "offline mode is set" in str(info.value), "it says why the hub was not asked, not that it is unreachable"
    assert datasets.config.HF_HUB_OFFLINE == before  # the call-time switch is undone


def test_missing_local_path_fails_without_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        build_dataset(f"hf:{tmp_path / 'missing'}", "train", 8)


@pytest.mark.parametrize("cache", ["on", "off"])
def test_rows_without_an_image_are_bad_images(tmp_path, monkeypatch, cache):
    """A row whose image is None is named like any unreadable image, so skip drops it."""
    monkeypatch.setenv("LATENTBENCH_SCAN_CACHE", "1" if cache == "on" else "0")
    good = _dataset(3)
    empty = datasets.Dataset.from_dict({"caption": ["x", "y"], "image": [None, None],
                                        "label": [1, 2]}, features=good.features)
    datasets.concatenate_datasets([good, empty]).save_to_disk(tmp_path / "holes")
    with pytest.raises(BadImageError, match=r"\[3\].*the row has no image \(its 'image' cell is empty\)"):
        build_dataset(f"hf:{tmp_path / 'holes'}", "train", 8)
    ds = build_dataset(f"hf:{tmp_path / 'holes'}", "train", 8, on_bad_image="skip")
    assert len(ds) == 3 and ds.info["n_skipped"] == 2


def test_images_read_nearly_black_or_unturned_are_counted(tmp_path):
    """The hf scan reports what the image-folder scan does: 16-bit images of 0..255 values, EXIF orientations."""
    import io

    def encoded(image: Image.Image, fmt: str, **save) -> dict:
        out = io.BytesIO()
        image.save(out, format=fmt, **save)
        return {"bytes": out.getvalue(), "path": None}

    rng = np.random.default_rng(0)
    dark = Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint16))  # 8-bit values in a 16-bit file
    assert dark.mode.startswith("I;16")
    exif = Image.Exif()
    exif[0x0112] = 6  # to be turned by 90 degrees for display
    turned = encoded(Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)), "JPEG", exif=exif.tobytes())
    plain = [encoded(image, "PNG") for image in _images(3)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    rows = {"image": [encoded(dark, "PNG"), turned, *plain], "label": [0, 1, 2, 0, 1]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "odd")
    ds = build_dataset(f"hf:{tmp_path / 'odd'}", "train", 16)
    assert ds.info["n_off_scale"] == 1 and "0..255" in ds.info["off_scale_example"]["reason"]
    assert ds.info["n_oriented"] == 1 and ds.info["oriented_example"]["orientation"] == 6
    datasets.Dataset.from_dict({"image": plain, "label": [0, 1, 2]}, features=features).save_to_disk(tmp_path / "plain")
    info = build_dataset(f"hf:{tmp_path / 'plain'}", "train", 16).info
    assert not {"n_off_scale", "off_scale_example", "n_oriented", "oriented_example"} & set(info)


def test_images_of_several_frames_are_counted_and_said(tmp_path):
    """The hf scan is the image-folder scan: an animated GIF row is counted and gets the bench's line; a dataset of
    single-frame images keeps the info it had (no frame keys, the same fingerprint as before they were counted)."""
    import io

    from latentbench.benchmark.datanotes import data_notes

    def encoded(image: Image.Image, **save) -> dict:
        out = io.BytesIO()
        image.save(out, format="GIF", **save)
        return {"bytes": out.getvalue(), "path": None}

    frames = _images(3)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    rows = {"image": [encoded(frames[0]), encoded(frames[0], save_all=True, append_images=frames[1:]),
                      encoded(frames[1])], "label": [0, 1, 2]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "animated")
    source, example = f"hf:{tmp_path / 'animated'}", f"{tmp_path / 'animated'}:train[1]"
    info = build_dataset(source, "train", 16).info
    assert info["n_multiframe"] == 1 and info["multiframe_example"] == {"path": example, "frames": 3}
    assert [line for line in data_notes(info) if "several frames" in line] == [
        f"{source} [train]: 1 of 3 images hold several frames (e.g. {example}: 3 frames, an animated GIF or a multi-page "
        "TIFF): only the first frame is trained and measured, as ADM and torch-fidelity read them; save the frame you "
        "mean as a single-frame image (with PIL: img.seek(i), then img.save as PNG)"]
    ppm = [{"bytes": b"P6 4 3 255\n" + bytes(range(7 * i, 7 * i + 36)), "path": None} for i in range(3)]  # no encoder
    datasets.Dataset.from_dict({"image": ppm, "label": [0, 1, 2]}, features=features).save_to_disk(tmp_path / "plain")
    plain = f"hf:{tmp_path / 'plain'}"
    assert build_dataset(plain, "train", 16).info == {  # as before the frame counts (at eb7ac7c)
        "source": plain, "split": "train", "resolution": 16, "n": 3, "num_classes": 3, "class_names": CLASSES,
        "fingerprint": "42ea9e6f673a1d5c369280b0340893c40d6db9fa2e56841d103ef13ccbe2e596",
        "preprocessing": "adm-center-crop", "limit": None, "n_skipped": 0, "skipped": [], "n_ignored_non_image": 0,
        "n_upsampled": 3, "image_column": "image", "label_column": "label"}


def test_the_bench_says_when_a_single_saved_dataset_is_both_splits(tmp_path):
    from latentbench.benchmark.datanotes import split_notes

    _dataset(5).save_to_disk(tmp_path / "one")
    source = f"hf:{tmp_path / 'one'}"
    [line] = split_notes(build_dataset(source, "train", 8).info, build_dataset(source, "validation", 8, limit=3).info)
    assert line.startswith(f"{source}: the train and validation splits are read from the same images (it is one saved "
                           "Dataset, not a DatasetDict; 3 of the 3 validation images are train images too)")
    assert line.endswith("save a DatasetDict with 'train' and 'validation' splits of different images")
    datasets.DatasetDict({"train": _dataset(4), "validation": _dataset(2, seed=1)}).save_to_disk(tmp_path / "dd")
    dd = f"hf:{tmp_path / 'dd'}"
    assert split_notes(build_dataset(dd, "train", 8).info, build_dataset(dd, "validation", 8).info) == []
