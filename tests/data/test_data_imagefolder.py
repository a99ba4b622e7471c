"""imagefolder sources: class discovery, split folders, ignored files and the bad-image policies."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentbench.data import BadImageError, SplitNotFoundError, build_dataset


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _noisy(w: int, h: int, seed: int = 0):
    """A writer that saves a noise image of size (w, h) to the given path."""
    return lambda path: _noise(w, h, seed).save(path)


def _write_truncated(path: Path, fmt: str) -> None:
    _noise(64, 64).save(path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _palette_with_transparency() -> Image.Image:
    img = Image.new("P", (20, 20), 1)
    img.putpalette([0, 0, 0, 200, 30, 10] + [0] * 762)
    return img


GOOD = {  # file name -> writer; every colour mode the loader must accept
    "rgb.jpg": _noisy(40, 30),
    "gray_L.png": lambda p: Image.new("L", (20, 20), 77).save(p),
    "gray_LA.png": lambda p: Image.new("LA", (20, 20), (90, 10)).save(p),
    "palette_trns.png": lambda p: _palette_with_transparency().save(p, transparency=1),
    "rgba.png": lambda p: Image.new("RGBA", (20, 20), (10, 20, 30, 0)).save(p),
    "cmyk.jpg": lambda p: Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(p, quality=95),
    "gray16.png": lambda p: Image.fromarray(np.full((20, 20), 32896, dtype=np.uint16)).save(p),
    "bilevel.bmp": lambda p: Image.new("1", (20, 20), 1).save(p),
    "tiny_1x1.png": lambda p: Image.new("RGB", (1, 1), (5, 6, 7)).save(p),
    "tiny_3x7.PNG": _noisy(3, 7),
}
BAD = {  # file name -> writer, reason fragment
    "trunc.jpg": (lambda p: _write_truncated(p, "JPEG"), "truncated"),
    "trunc.png": (lambda p: _write_truncated(p, "PNG"), "truncated"),
    "text.png": (lambda p: p.write_text("not an image\n"), "not a recognised image"),
    "zero.png": (lambda p: p.write_bytes(b""), "empty file"),
}


def _make(folder: Path, writers: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, write in writers.items():
        write(folder / name)


@pytest.fixture
def mixed(tmp_path) -> Path:
    """Class "good" with every colour mode, class "mixed" with two good and every bad file, junk beside."""
    _make(tmp_path / "good", GOOD)
    _make(tmp_path / "mixed", {n: w for n, (w, _) in BAD.items()})
    _make(tmp_path / "mixed", {"a_ok.png": _noisy(20, 20), "z_ok.png": _noisy(9, 9)})
    (tmp_path / "README.txt").write_text("hello")
    (tmp_path / "good" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "mixed" / "notes.md").write_text("x")
    return tmp_path


def test_error_policy_names_every_bad_file_first_in_sorted_order(mixed):
    with pytest.raises(BadImageError, match="on_bad_image skip") as info:
        build_dataset(f"imagefolder:{mixed}", "train", 16)
    assert info.value.path == str(mixed / "mixed" / "text.png")  # first bad file in sorted order
    assert f"{len(BAD)} files are unreadable in all" in str(info.value)
    assert all(str(mixed / "mixed" / name) in str(info.value) for name in BAD)


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_file_is_detected(tmp_path, name):
    write, reason = BAD[name]
    _make(tmp_path / "c", {"ok.png": _noisy(8, 8), name: write})
    with pytest.raises(BadImageError) as info:
        build_dataset(f"imagefolder:{tmp_path}", "val", 8)
    assert info.value.path.endswith(name) and reason in info.value.reason
    ds = build_dataset(f"imagefolder:{tmp_path}", "val", 8, on_bad_image="skip")
    assert len(ds) == 1 and ds.info["n_skipped"] == 1 and reason in ds.info["skipped"][0]["reason"]


def test_skip_policy_drops_and_records(mixed):
    ds = build_dataset(f"imagefolder:{mixed}", "train", 16, on_bad_image="skip")
    assert len(ds) == ds.info["n"] == len(GOOD) + 2
    assert ds.info["n_skipped"] == len(BAD)
    assert sorted(Path(s["path"]).name for s in ds.info["skipped"]) == sorted(BAD)
    assert ds.info["class_names"] == ["good", "mixed"] and ds.info["num_classes"] == 2
    assert ds.targets == [0] * len(GOOD) + [1, 1]
    assert ds.info["n_ignored_non_image"] == 3  # README.txt, .DS_Store, notes.md
    assert ds.info["n_upsampled"] == 3  # 1x1, 3x7 and the 9x9 image, all below 16
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and -1 <= x.min() <= x.max() <= 1


def test_modes_come_out_as_expected(mixed):
    ds = build_dataset(f"imagefolder:{mixed}", "train", 8, on_bad_image="skip")
    names = [Path(ds.files.name(k)).name for k in ds.kept]
    pixel = {name: ((ds[i][0][:, 4, 4] + 1) * 127.5).round().int().tolist() for i, name in enumerate(names)}
    assert pixel["gray16.png"] == [128, 128, 128]  # 16-bit 32896 scaled by 1/257, not clipped to 255
    assert pixel["gray_L.png"] == [77, 77, 77]
    assert pixel["gray_LA.png"] == [90, 90, 90]
    assert pixel["rgba.png"] == [10, 20, 30]
    assert pixel["palette_trns.png"] == [200, 30, 10]
    assert pixel["bilevel.bmp"] == [255, 255, 255]
    assert pixel["tiny_1x1.png"] == [5, 6, 7]
    assert pixel["cmyk.jpg"][0] > 240 and max(pixel["cmyk.jpg"][1:]) < 15


def test_split_subfolder_is_used_when_present(tmp_path):
    _make(tmp_path / "train" / "cat", {"a.png": _noisy(8, 8)})
    _make(tmp_path / "val" / "cat", {"b.png": _noisy(8, 8, 1), "c.png": _noisy(8, 8, 2)})
    _make(tmp_path / "val" / "dog", {"d.png": _noisy(8, 8, 3)})
    train, val = (build_dataset(f"imagefolder:{tmp_path}", s, 8) for s in ("train", "val"))
    assert len(train) == 1 and train.info["root"] == str(tmp_path / "train")
    assert len(val) == 3 and val.info["class_names"] == ["cat", "dog"] and val.targets == [0, 0, 1]


def test_flat_folder_is_one_class_for_any_split(tmp_path):
    _make(tmp_path, {"a.png": _noisy(8, 8), "b.jpeg": _noisy(8, 8)})
    ds = build_dataset(f"imagefolder:{tmp_path}", "whatever", 8)
    assert len(ds) == 2 and ds.info["class_names"] == [""] and ds.info["num_classes"] == 1


def test_images_beside_class_folders_are_counted(tmp_path):
    _make(tmp_path / "cls", {"a.png": _noisy(8, 8)})
    _make(tmp_path, {"loose.png": _noisy(8, 8)})
    ds = build_dataset(f"imagefolder:{tmp_path}", "train", 8)
    assert len(ds) == 1 and ds.info["n_ignored_outside_classes"] == 1


def test_a_hidden_image_beside_the_class_folders_is_not_named_as_one(tmp_path):
    """macOS's ``._loose.png`` beside the class folders is a resource fork, not an image left outside the classes: it is
    counted with the other ignored files and named nowhere, as a hidden file inside a class folder is."""
    _make(tmp_path / "cls", {"a.png": _noisy(8, 8)})
    (tmp_path / "._loose.png").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble magic, not a PNG
    info = build_dataset(f"imagefolder:{tmp_path}", "train", 8).info
    assert info["n_ignored_outside_classes"] == 0 and info["n_ignored_non_image"] == 1
    assert "ignored_outside_classes_examples" not in info and "ignored_non_image_examples" not in info


def test_the_bench_names_a_few_ignored_files_of_each_kind(tmp_path):
    """Files of a format not read (.heic) and images beside the class folders: counted, and now named in the bench's
    line (the first three of each; hidden files counted, not named); the limit check names them too."""
    from dataclasses import replace

    from latentbench.benchmark.datanotes import data_notes
    from latentbench.benchmark.harness import _check_data_for_the_stages
    from latentbench.benchmark.protocol import load_protocol

    _make(tmp_path / "cat", {"a.png": _noisy(8, 8)})
    _make(tmp_path / "dog", {"b.png": _noisy(8, 8, 1)})  # two classes: the smoke protocol's domain extractor needs them
    for name in ("cat/.DS_Store", "cat/IMG_1.heic", "cat/IMG_2.heic", "cat/IMG_3.heic", "cat/IMG_4.heic"):
        (tmp_path / name).write_bytes(b"x")
    _make(tmp_path, {"loose.png": _noisy(8, 8)})
    info = build_dataset(f"imagefolder:{tmp_path}", "train", 8).info
    assert info["n_ignored_non_image"] == 5 and info["n_ignored_outside_classes"] == 1
    [line] = data_notes(info)
    assert line == (f"imagefolder:{tmp_path} [train]: ignored 5 file(s) that are not images by their extension "
                    "(cat/IMG_1.heic, cat/IMG_2.heic, cat/IMG_3.heic, ...): only .png .jpg .jpeg .bmp .gif .tif .tiff "
                    ".webp .ppm .pgm files are read, so convert any images among them to one of those; ignored 1 image "
                    "file(s) beside the class folders (loose.png): each sub-folder is a class and only images inside one "
                    "are read; move them into their class's folder")
    proto = load_protocol("smoke")
    proto = replace(proto, data=replace(proto.data, num_train=4))
    with pytest.raises(ValueError, match=r"has 2 images \(ignored 5 file\(s\) .*cat/IMG_1.heic.*\): its rows"):
        _check_data_for_the_stages(proto, info, info)
    (tmp_path / "loose.png").unlink()
    for name in ("IMG_1", "IMG_2", "IMG_3", "IMG_4"):
        (tmp_path / "cat" / f"{name}.heic").unlink()
    info = build_dataset(f"imagefolder:{tmp_path}", "train", 8).info  # hidden files alone: counted, nothing said
    assert info["n_ignored_non_image"] == 1 and "ignored_non_image_examples" not in info and data_notes(info) == []


def test_fingerprint_follows_content_not_location(tmp_path):
    _make(tmp_path / "a" / "cls", {f"{i}.png": _noisy(8, 8, i) for i in range(3)})
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    fp = lambda d, **kw: build_dataset(f"imagefolder:{tmp_path / d}", "train", 8, **kw).info["fingerprint"]
    assert fp("a") == fp("b")
    assert fp("a") != fp("a", limit=2)
    _noise(8, 8, 99).save(tmp_path / "b" / "cls" / "1.png")
    assert fp("a") != fp("b")


def test_limit_applies_after_skipping(tmp_path):
    _make(tmp_path / "c", {"0.png": lambda p: p.write_bytes(b""), **{f"{i}.png": _noisy(8, 8, i) for i in range(1, 5)}})
    ds = build_dataset(f"imagefolder:{tmp_path}", "train", 8, on_bad_image="skip", limit=2)
    assert len(ds) == 2 and ds.info["limit"] == 2 and ds.info["n_skipped"] == 1
    assert [Path(ds.files.name(k)).name for k in ds.kept] == ["1.png", "2.png"]


def test_invalid_policy_raises(tmp_path):
    with pytest.raises(ValueError, match="'error', 'skip'"):
        build_dataset(f"imagefolder:{tmp_path}", "train", 8, on_bad_image="ignore")


def test_empty_folder_raises_naming_it(tmp_path):
    (tmp_path / "README.txt").write_text("no images here")
    with pytest.raises(ValueError, match=str(tmp_path)):
        build_dataset(f"imagefolder:{tmp_path}", "train", 8)


def test_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset(f"imagefolder:{tmp_path / 'nowhere'}", "train", 8)


def test_all_unreadable_raises(tmp_path):
    _make(tmp_path, {"a.png": lambda p: p.write_bytes(b"")})
    with pytest.raises(ValueError, match="none of the 1 image files is readable"):
        build_dataset(f"imagefolder:{tmp_path}", "train", 8, on_bad_image="skip")


def test_a_missing_split_beside_other_splits_is_an_error(tmp_path):
    """train/ and val/ but no validation/: not a dataset whose classes are 'train' and 'val'."""
    _make(tmp_path / "train" / "cat", {"a.png": _noisy(8, 8)})
    _make(tmp_path / "val" / "cat", {"b.png": _noisy(8, 8, 1)})
    with pytest.raises(SplitNotFoundError, match=r"cannot serve as every split itself\) has no split 'validation'; available splits: 'train', 'val'"):
        build_dataset(f"imagefolder:{tmp_path}", "validation", 8)


def test_hidden_folders_are_not_classes_and_an_empty_class_is_an_error(tmp_path):
    _make(tmp_path / "cat", {"a.png": _noisy(8, 8)})
    _make(tmp_path / "dog", {"b.png": _noisy(8, 8, 1)})
    _make(tmp_path / ".ipynb_checkpoints", {"c.png": _noisy(8, 8, 2)})
    _make(tmp_path / "__MACOSX" / "cat", {"._a.png": lambda p: p.write_bytes(b"resource fork")})
    _make(tmp_path / "dog" / ".thumbs", {"d.png": _noisy(8, 8, 3)})
    ds = build_dataset(f"imagefolder:{tmp_path}", "train", 8)
    assert ds.info["class_names"] == ["cat", "dog"] and ds.targets == [0, 1]
    (tmp_path / "bird").mkdir()  # sorted first: it would shift cat and dog to labels 1 and 2
    with pytest.raises(ValueError, match=f"class folder {tmp_path / 'bird'} holds no images .* shift the labels"):
        build_dataset(f"imagefolder:{tmp_path}", "train", 8)


def test_a_link_back_up_the_tree_does_not_repeat_images(tmp_path):
    _make(tmp_path / "cat" / "sub", {"a.png": _noisy(8, 8)})
    _make(tmp_path / "dog", {"b.png": _noisy(8, 8, 1)})
    (tmp_path / "cat" / "sub" / "up").symlink_to("..")  # cat/sub/up -> cat: a loop
    (tmp_path / "dog" / "same").symlink_to(tmp_path / "dog")
    ds = build_dataset(f"imagefolder:{tmp_path}", "train", 8)
    assert len(ds) == 2 and ds.targets == [0, 1]


def test_a_link_from_one_class_to_the_root_or_another_class_is_refused(tmp_path):
    """Followed, it would list the other classes' images again under this class's label."""
    _make(tmp_path / "cat" / "sub", {"a.png": _noisy(8, 8)})
    _make(tmp_path / "dog", {"b.png": _noisy(8, 8, 1)})
    (tmp_path / "cat" / "sub" / "loop").symlink_to(tmp_path)  # cat/sub/loop -> the split's root
    with pytest.raises(ValueError, match=r"cat/sub/loop, reached through a link inside class folder .*cat, is .*: its "
                                         r"images would be listed again under cat's label; remove the link"):
        build_dataset(f"imagefolder:{tmp_path}", "train", 8)
    (tmp_path / "cat" / "sub" / "loop").unlink()
    (tmp_path / "cat" / "dogs").symlink_to(tmp_path / "dog")  # into another class
    with pytest.raises(ValueError, match=r"cat/dogs, reached through a link inside class folder"):
        build_dataset(f"imagefolder:{tmp_path}", "train", 8)


def test_a_class_folder_that_is_a_link_to_another_class_or_the_root_is_refused(tmp_path):
    """A class folder that is itself a link (dogs -> dog) would list the same images under two labels."""
    _make(tmp_path / "cat", {"a.png": _noisy(8, 8)})
    _make(tmp_path / "dog", {"b.png": _noisy(8, 8, 1)})
    (tmp_path / "dogs").symlink_to(tmp_path / "dog")
    with pytest.raises(ValueError, match=r"class folders .*dog and .*dogs are the same folder .*: its images would be "
                                         r"listed under both labels; remove the link"):
        build_dataset(f"imagefolder:{tmp_path}", "train", 8)
    (tmp_path / "dogs").unlink()
    (tmp_path / "all").symlink_to(tmp_path)  # a class folder that is the split's root
    with pytest.raises(ValueError, match=r"class folder .*all is the split's root .*: every class's images would be "
                                         r"listed again under its label; remove the link"):
        build_dataset(f"imagefolder:{tmp_path}", "train", 8)


def test_a_folder_that_cannot_be_listed_is_an_error_not_a_smaller_dataset(tmp_path, monkeypatch):
    """Simulated (tests may run as root, who reads anything): listing cat/sub raises PermissionError."""
    import os

    _make(tmp_path / "cat" / "sub", {"a.png": _noisy(8, 8)})
    _make(tmp_path / "dog", {"b.png": _noisy(8, 8, 1)})
    scandir, denied = os.scandir, str(tmp_path / "cat" / "sub")

    def guarded(path="."):
        if os.fspath(path) == denied:
            raise PermissionError(13, "Permission denied", denied)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", guarded)
    with pytest.raises(ValueError, match=f"cannot list folder {denied}: Permission denied; its images would be left out"):
        build_dataset(f"imagefolder:{tmp_path}", "train", 8)
    denied = str(tmp_path)
    with pytest.raises(ValueError, match=f"cannot list folder {tmp_path}: Permission denied"):
        build_dataset(f"imagefolder:{tmp_path}", "train", 8)


def test_a_broken_link_in_a_flat_folder_is_reported_not_dropped(tmp_path):
    _make(tmp_path, {"a.png": _noisy(8, 8)})
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(BadImageError, match="b.png"):
        build_dataset(f"imagefolder:{tmp_path}", "train", 8)
    assert build_dataset(f"imagefolder:{tmp_path}", "train", 8, on_bad_image="skip").info["n_skipped"] == 1


def test_a_file_name_that_is_not_utf8_is_scanned_without_the_cache(tmp_path):
    import os

    _make(tmp_path / "cat", {"a.png": _noisy(8, 8)})
    os.rename(tmp_path / "cat" / "a.png", os.fsencode(tmp_path / "cat") + b"/caf\xe9.png")  # Latin-1 name on disk
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")  # not even a cache warning
        first = build_dataset(f"imagefolder:{tmp_path}", "train", 8)
        again = build_dataset(f"imagefolder:{tmp_path}", "train", 8)
    assert len(first) == 1 and first.info["fingerprint"] == again.info["fingerprint"]


def test_the_bench_says_in_one_line_what_a_scan_skipped_and_upsampled(mixed):
    from latentbench.benchmark.datanotes import data_notes

    ds = build_dataset(f"imagefolder:{mixed}", "train", 16, on_bad_image="skip")
    [line] = data_notes(ds.info)
    assert line.startswith(f"imagefolder:{mixed} [train]: skipped {len(BAD)} unreadable file(s), first ")
    assert str(mixed / "mixed" / "text.png") in line and "not a recognised image" in line
    assert f"3 of {len(ds)} images have a side below 16 px and are upsampled" in line
    assert data_notes(build_dataset(f"imagefolder:{mixed / 'good'}", "train", 1).info) == []


def test_the_bench_says_which_images_it_reads_nearly_black_or_unturned_also_from_the_scan_cache(tmp_path, monkeypatch):
    """16-bit PNGs of 0..255 values and a JPEG with an EXIF orientation: one line each, with an example and the fix,
    on the first scan and on a second one that only stats the files."""
    from latentbench.benchmark.datanotes import data_notes
    from latentbench.data.images import EXIF_ORIENTATION

    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 8
    gray = np.random.default_rng(0).integers(0, 256, (20, 20), dtype=np.uint16)
    _make(tmp_path / "images" / "a", {f"g{i}.png": lambda p: Image.fromarray(gray).save(p) for i in range(3)}
          | {"rgb.png": _noisy(20, 20)})
    _make(tmp_path / "images" / "b", {"photo.jpg": lambda p: _noise(20, 20).save(p, exif=exif)})
    decoded = _decodes_with_a_trusted_cache(tmp_path, monkeypatch)
    source = f"imagefolder:{tmp_path / 'images'}"
    first = build_dataset(source, "train", 16)
    off_scale, oriented = data_notes(first.info)
    assert off_scale.startswith(f"{source} [train]: 3 of 5 images look saved on another scale than the one they are "
                                f"read on (e.g. {tmp_path / 'images' / 'a' / 'g0.png'}: I;16 with every value in 0..255)")
    assert off_scale.endswith("save them as 8-bit images (a [0, 1] float image as round(value * 255))")
    assert oriented.startswith(f"{source} [train]: 1 of 5 images carry an EXIF orientation "
                               f"(e.g. {tmp_path / 'images' / 'b' / 'photo.jpg'}: orientation 8)")
    assert "as ADM and torch-fidelity read them; transpose them first with PIL.ImageOps.exif_transpose" in oriented
    assert len(decoded) == 5
    decoded.clear()
    second = build_dataset(source, "train", 16)
    assert decoded == [] and second.info == first.info and data_notes(second.info) == [off_scale, oriented]


def test_the_bench_says_which_images_hold_several_frames_also_from_the_scan_cache(tmp_path, monkeypatch):
    """An animated GIF and a multi-page TIFF are read as their first frame: one line with an example and the fix,
    as ``latentbench metrics`` warns of them, on the first scan and on a second one that only stats the files."""
    from latentbench.benchmark.datanotes import data_notes

    frames = [_noise(20, 20, seed) for seed in range(3)]
    _make(tmp_path / "images" / "a", {"anim.gif": lambda p: frames[0].save(p, save_all=True, append_images=frames[1:]),
                                      "still.gif": lambda p: frames[0].save(p), "rgb.png": _noisy(20, 20)})
    _make(tmp_path / "images" / "b", {"scan.tif": lambda p: frames[0].save(p, save_all=True, append_images=frames[1:2]),
                                      "page.tif": lambda p: frames[1].save(p)})
    decoded = _decodes_with_a_trusted_cache(tmp_path, monkeypatch)
    source = f"imagefolder:{tmp_path / 'images'}"
    first = build_dataset(source, "train", 16)
    [line] = data_notes(first.info)
    assert line == (f"{source} [train]: 2 of 5 images hold several frames (e.g. {tmp_path / 'images' / 'a' / 'anim.gif'}: "
                    "3 frames, an animated GIF or a multi-page TIFF): only the first frame is trained and measured, as ADM "
                    "and torch-fidelity read them; save the frame you mean as a single-frame image (with PIL: "
                    "img.seek(i), then img.save as PNG)")
    assert len(decoded) == 5
    decoded.clear()
    second = build_dataset(source, "train", 16)
    assert decoded == [] and second.info == first.info and data_notes(second.info) == [line]


def _netpbm(seed: int, colour: bool) -> bytes:
    """A 10x9 PPM (colour) or PGM file: its bytes are the pixels, with no encoder in between that could change."""
    rng = np.random.default_rng(seed)
    return (b"P6 10 9 255\n" if colour else b"P5 10 9 255\n") + rng.integers(0, 256, 10 * 9 * (3 if colour else 1),
                                                                            dtype=np.uint8).tobytes()


# the fingerprint of the folder below, as the versions before the frame counts computed it (at eb7ac7c)
ORDINARY_FINGERPRINT = "82322754bffca7e5521130e4a045ac8e291c9893f15a83874d0b39932776d35a"


def test_ordinary_images_keep_the_info_and_fingerprint_they_had(tmp_path):
    """The frame counts enter a split's info only when there is one to report: a folder without multi-frame images
    has the info (keys, counts, fingerprint) of the versions before, so its run keys and the gFID reference
    statistics cached under that info stay valid."""
    _make(tmp_path / "a", {f"{i}.ppm": lambda p, i=i: p.write_bytes(_netpbm(i, True)) for i in range(3)})
    _make(tmp_path / "b", {f"{i}.pgm": lambda p, i=i: p.write_bytes(_netpbm(10 + i, False)) for i in range(2)})
    info = build_dataset(f"imagefolder:{tmp_path}", "train", 8).info
    assert info == {"source": f"imagefolder:{tmp_path}", "split": "train", "resolution": 8, "n": 5, "num_classes": 2,
                    "class_names": ["a", "b"], "fingerprint": ORDINARY_FINGERPRINT, "preprocessing": "adm-center-crop",
                    "limit": None, "n_skipped": 0, "skipped": [], "n_ignored_non_image": 0, "n_upsampled": 0,
                    "n_ignored_outside_classes": 0, "root": str(tmp_path)}
    assert list(info) == ["source", "split", "resolution", "n", "num_classes", "class_names", "fingerprint",
                          "preprocessing", "limit", "n_skipped", "skipped", "n_ignored_non_image", "n_upsampled",
                          "n_ignored_outside_classes", "root"]


def test_the_bench_says_when_train_and_eval_are_the_same_images(tmp_path):
    """A folder without split sub-folders serves every split: the bench says in one line that it measures the images
    it trains on, and how to hold images out; a folder with train/ and val/ gets no such line."""
    from latentbench.benchmark.datanotes import split_notes

    for c in ("a", "b"):
        _make(tmp_path / "flat" / c, {f"{i}.png": _noisy(8, 8, i) for i in range(3)})
        for split in ("train", "val"):
            _make(tmp_path / "split" / split / c, {f"{i}.png": _noisy(8, 8, i) for i in range(3)})
    flat = f"imagefolder:{tmp_path / 'flat'}"
    [line] = split_notes(build_dataset(flat, "train", 8).info, build_dataset(flat, "val", 8, limit=4).info)
    assert line == (f"{flat}: the train and val splits are read from the same images ({tmp_path / 'flat'} has no train/ "
                    "or val/ sub-folder; 4 of the 4 val images are train images too), so the bench trains on the images it "
                    "measures (reconstruction metrics, rFID and the probe are not on held-out images); to hold images out, "
                    "give it train/ and val/ folders of different images")
    split = f"imagefolder:{tmp_path / 'split'}"
    assert split_notes(build_dataset(split, "train", 8).info, build_dataset(split, "val", 8).info) == []
    assert set(build_dataset(flat, "val", 8).info) == set(build_dataset(split, "val", 8).info)  # the info is as it was
    for source in (flat, split):  # a protocol naming one split twice measures what it trained on, whatever the folder
        [line] = split_notes(build_dataset(source, "train", 8).info, build_dataset(source, "train", 8, limit=4).info)
        assert line == (f"{source}: the protocol's train and eval split are both 'train' (4 of the 4 eval images are train "
                        "images too), so the bench trains on the images it measures (reconstruction metrics, rFID and "
                        "the probe are not on held-out images); to hold images out, give the protocol's data.eval_split "
                        "another split")


def _decodes_with_a_trusted_cache(tmp_path, monkeypatch) -> list[int]:
    """Age the files under ``tmp_path / "images"`` past the scan cache's racy window (a second scan trusts its
    entries), put the cache in ``tmp_path``, and return the list every decoded file's index is appended to."""
    import os
    import time

    import latentbench.data.encoded as encoded

    old = time.time_ns() - 60 * 10**9
    for path in (tmp_path / "images").rglob("*.*"):
        os.utime(path, ns=(old, old))
    monkeypatch.setenv("LATENTBENCH_CACHE", str(tmp_path / "cache"))
    decoded, real = [], encoded._decode_one
    monkeypatch.setattr(encoded, "_decode_one", lambda files, i: decoded.append(i) or real(files, i))
    return decoded
