"""The scan cache: unchanged files are not decoded again, and nothing else about a dataset changes."""
import contextlib
import io
import os
import sqlite3
import time

import numpy as np
import pytest
from PIL import Image

import latentbench.data.encoded as encoded
from latentbench.data import BadImageError, build_dataset
from latentbench.data import scancache
from latentbench.data.images import EXIF_ORIENTATION
from latentbench.data.scancache import Facts, ScanCache


def _png(seed: int, size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "PNG", compress_level=0)
    return buf.getvalue()  # stored, not compressed: the file size depends on the image size only


def _age(path, seconds: float = 60.0) -> None:
    """Move a file's mtime into the past: the racy rule trusts entries of files older than RACY_NS."""
    t = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(t, t))


def _folder(root, n: int = 12, bad=()):
    for i in range(n):
        path = root / f"c{i % 3}" / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"junk" if i in bad else _png(i, (16, 16) if i % 4 else (6, 6)))
        _age(path)
    return root


@pytest.fixture
def decoded(monkeypatch, tmp_path):
    """The suite's scan cache in tmp_path, on; the paths the scan decodes, in a list."""
    monkeypatch.setenv("LATENTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(scancache.ENV, "1")
    names, real = [], encoded._decode_one

    def counting(files, index):
        names.append(os.path.basename(files.name(index)))
        return real(files, index)

    monkeypatch.setattr(encoded, "_decode_one", counting)
    return names


def _doubtful(root):
    """Ordinary PNGs, two 16-bit PNGs holding 0..255 values (read nearly black) and a JPEG with EXIF orientation 6."""
    _folder(root, n=6)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint16)).save(root / "c0" / f"g16_{i}.png")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)).save(root / "c1" / "turned.jpg", exif=exif)
    for path in root.rglob("*.*"):
        _age(path)
    return root


def _animated(root):
    """Ordinary PNGs, an animated GIF of 3 frames and a TIFF of 2 pages (both read as their first)."""
    _folder(root, n=6)
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(root / "c1" / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(root / "c2" / "pages.tif", save_all=True, append_images=frames[1:2])
    for path in root.rglob("*.*"):
        _age(path)
    return root


def _build(folder, **kwargs):
    return build_dataset(f"imagefolder:{folder}", "train", 8, **kwargs)


def _uncached(folder, monkeypatch, **kwargs):
    with monkeypatch.context() as m:
        m.setenv(scancache.ENV, "0")
        return _build(folder, **kwargs)


def test_a_rescan_of_unchanged_files_decodes_nothing_and_builds_the_same_dataset(tmp_path, decoded, monkeypatch):
    folder = _folder(tmp_path / "images")
    first = _build(folder)
    assert len(decoded) == 12
    decoded.clear()
    second = _build(folder)
    assert decoded == []
    reference = _uncached(folder, monkeypatch)
    assert first.info == second.info == reference.info  # fingerprint, n_upsampled, everything
    assert second.kept == reference.kept and second.targets == reference.targets
    assert (tmp_path / "cache" / scancache.FILE_NAME).is_file()


def test_a_changed_file_is_decoded_again_and_changes_the_fingerprint(tmp_path, decoded, monkeypatch):
    folder = _folder(tmp_path / "images")
    before = _build(folder)
    target = folder / "c1" / "04.png"
    replacement = _png(100, (6, 6))
    assert len(replacement) == target.stat().st_size and replacement != target.read_bytes()  # same size, new bytes
    target.write_bytes(replacement)
    _age(target)  # old mtime too: still a new ctime, so the stamp differs
    decoded.clear()
    after = _build(folder)
    assert decoded == ["04.png"]
    assert after.info["fingerprint"] != before.info["fingerprint"]
    assert after.info == _uncached(folder, monkeypatch).info


def test_a_file_broken_since_the_last_scan_is_reported(tmp_path, decoded):
    folder = _folder(tmp_path / "images")
    _build(folder)
    target = folder / "c2" / "05.png"
    target.write_bytes(target.read_bytes()[:40])  # truncated
    with pytest.raises(BadImageError, match="05.png"):
        _build(folder)
    skipped = _build(folder, on_bad_image="skip")
    assert [s["path"] for s in skipped.info["skipped"]] == [str(target)]


def test_unreadable_files_are_never_cached(tmp_path, decoded):
    folder = _folder(tmp_path / "images", bad={3})
    for _ in range(2):
        decoded.clear()
        data = _build(folder, on_bad_image="skip")
        assert data.info["n_skipped"] == 1
    assert decoded == ["03.png"]  # the second scan decoded the bad file only


def test_files_modified_just_before_a_scan_are_not_trusted(tmp_path, decoded):
    """git's racy rule: a write in the same timestamp tick as the check would leave the stamp unchanged."""
    folder = _folder(tmp_path / "images", n=4)
    fresh = folder / "c0" / "00.png"
    fresh.write_bytes(_png(7))  # mtime: now
    _build(folder)
    decoded.clear()
    _build(folder)
    assert decoded == ["00.png"]


def test_another_decoder_version_scans_again(tmp_path, decoded, monkeypatch):
    folder = _folder(tmp_path / "images", n=4)
    _build(folder)
    monkeypatch.setattr(scancache.PIL, "__version__", "0.0-other")
    decoded.clear()
    _build(folder)
    assert len(decoded) == 4


def test_the_cache_can_be_turned_off(tmp_path, decoded, monkeypatch):
    folder = _folder(tmp_path / "images", n=4)
    monkeypatch.setenv(scancache.ENV, "off")
    _build(folder)
    _build(folder)
    assert len(decoded) == 8 and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("damage", ["junk file", "folder is a file"])
def test_an_unusable_cache_warns_and_the_scan_goes_on(tmp_path, decoded, monkeypatch, damage):
    folder = _folder(tmp_path / "images", n=6)
    reference = _uncached(folder, monkeypatch)
    decoded.clear()
    if damage == "junk file":
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache" / scancache.FILE_NAME).write_bytes(b"this is not an SQLite database" * 100)
    else:
        (tmp_path / "cache").write_text("a file where the cache folder should be")
    fix = "Delete the file to start a new one" if damage == "junk file" else "Make its folder writable"  # what, where
    with pytest.warns(RuntimeWarning, match=f"scan cache .* is not usable.*scanning without it. {fix}"):
        data = _build(folder)
    assert data.info == reference.info and len(decoded) == 6


def test_a_process_that_may_not_write_reads_but_never_writes(tmp_path):
    path = tmp_path / "scans.sqlite"
    reader = ScanCache(path, writable=False)
    assert reader.lookup(["a"]) == {} and not path.exists()  # no file: nothing read, nothing created
    stamp = scancache.Stamp(1, 2, 3, 4)
    writer = ScanCache(path)
    writer.add("a", stamp, 2**62, b"d" * 32, (5, 6), Facts("I;16 with every value in 0..255", 6, 3))
    writer.close()
    reader.add("b", stamp, 2**62, b"e" * 32, (7, 8), Facts(None, 1))
    reader.close()
    found = ScanCache(path, writable=False).lookup(["a", "b", None])
    assert list(found) == ["a"] and found["a"].size == (5, 6) and found["a"].valid_for(stamp)
    assert found["a"].facts == Facts("I;16 with every value in 0..255", 6, 3)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM scans").fetchone() == (1,)
        assert db.execute("SELECT COUNT(*) FROM facts").fetchone() == (1,)
        assert db.execute("SELECT COUNT(*) FROM frame_counts").fetchone() == (1,)


def test_a_scan_stopped_by_a_limit_keeps_what_it_checked(tmp_path, decoded):
    folder = _folder(tmp_path / "images", n=12)
    _build(folder, limit=5)
    decoded.clear()
    _build(folder)
    assert len(decoded) == 12 - 5


def test_an_hf_dataset_on_disk_is_cached_until_it_is_saved_again(tmp_path, decoded, monkeypatch):
    datasets = pytest.importorskip("datasets")

    def save(seed):
        images = [{"bytes": _png(seed + i), "path": None} for i in range(6)]
        ds = datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(6)]},
                                        features=datasets.Features({"image": datasets.Image(),
                                                                    "label": datasets.ClassLabel(names=["a", "b"])}))
        ds.save_to_disk(str(tmp_path / "hfdata"))
        for f in (tmp_path / "hfdata").iterdir():
            _age(f)

    def build():
        return build_dataset(f"hf:{tmp_path / 'hfdata'}", "train", 8)

    save(0)
    first = build()
    decoded.clear()
    assert build().info == first.info and decoded == []
    save(50)  # new content, same row numbers
    rebuilt = build()
    assert len(decoded) == 6 and rebuilt.info["fingerprint"] != first.info["fingerprint"]
    with monkeypatch.context() as m:
        m.setenv(scancache.ENV, "0")
        assert build().info == rebuilt.info


def test_slices_of_one_hf_split_do_not_share_entries(tmp_path, decoded, monkeypatch):
    """``load_dataset(name, split="train[4:8]")`` reads the same Arrow file as ``train[:4]``, its row 0 being the
    file's row 4: keyed by the files and the row number alone, it took the other slice's digests (its fingerprint)."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    images = [{"bytes": _png(i), "path": None} for i in range(8)]  # rows that hold their bytes, as ImageNet's
    (tmp_path / "pngs").mkdir()
    datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(8)]}, features=features).to_parquet(
        str(tmp_path / "pngs" / "train.parquet"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def build(split):
        return build_dataset(f"hf:{tmp_path / 'pngs'}", split, 8)

    for f in build("train").files.rows.cache_files:  # the racy rule: entries of files written just now are not used
        _age(f["filename"])
    build("train[:4]")
    decoded.clear()
    assert build("train[:4]").info["n"] == 4 and decoded == []  # cached
    tail = build("train[4:8]")
    with monkeypatch.context() as m:
        m.setenv(scancache.ENV, "0")
        assert tail.info == build("train[4:8]").info


def test_an_hf_row_that_names_its_image_by_path_depends_on_that_file(tmp_path):
    datasets = pytest.importorskip("datasets")
    from latentbench.data.hf import HFImageRows

    image = tmp_path / "a.png"
    image.write_bytes(_png(1))
    in_memory = datasets.Dataset.from_dict({"image": [str(image)]}, features=datasets.Features({"image": datasets.Image()}))
    assert HFImageRows(in_memory, "image", [0], "mem").scan_key(0) is None  # not backed by files: not cached
    on_disk = in_memory.map(lambda row: row, cache_file_name=str(tmp_path / "rows.arrow"))  # keeps the path, no bytes
    rows = HFImageRows(on_disk, "image", [0], "disk")
    assert rows.scan_key(0) is not None and not rows.all_bytes
    before = rows.scan_stamp(0)
    image.write_bytes(_png(2, (20, 20)))
    assert rows.scan_stamp(0) != before


def test_images_read_nearly_black_or_unturned_are_counted_by_every_scan(tmp_path, decoded, monkeypatch):
    """The counts come from the cache on a rescan that only stats the files, and the data is the same as without them."""
    folder = _doubtful(tmp_path / "images")
    first = _build(folder)
    assert len(decoded) == 9
    assert first.info["n_off_scale"] == 2 and first.info["off_scale_example"] == {
        "path": str(folder / "c0" / "g16_0.png"), "reason": "I;16 with every value in 0..255"}
    assert first.info["n_oriented"] == 1 and first.info["oriented_example"] == {
        "path": str(folder / "c1" / "turned.jpg"), "orientation": 6}
    decoded.clear()
    second = _build(folder)
    assert decoded == [] and second.info == first.info == _uncached(folder, monkeypatch).info
    limited = _build(folder, limit=3)  # c0's 00.png, 03.png, g16_0.png: the counts are of the images used
    assert limited.info["n_off_scale"] == 1 and "n_oriented" not in limited.info


def test_ordinary_images_leave_the_info_as_it_was(tmp_path, decoded):
    info = _build(_folder(tmp_path / "images")).info
    assert list(info) == ["source", "split", "resolution", "n", "num_classes", "class_names", "fingerprint",
                          "preprocessing", "limit", "n_skipped", "skipped", "n_ignored_non_image", "n_upsampled",
                          "n_ignored_outside_classes", "root"]
    assert _build(tmp_path / "images").info == info  # from the cache too


def test_a_cache_written_before_the_facts_is_used_after_one_more_decoding(tmp_path, decoded):
    """A cache file of a version without the facts table: its entries are decoded once more, then cached again;
    an entry such a version rewrites later (a new check time) loses its facts, and its file alone is decoded."""
    folder = _doubtful(tmp_path / "images")
    first = _build(folder)
    path = tmp_path / "cache" / scancache.FILE_NAME
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("DROP TABLE facts")  # the file as such a version wrote it: the scans table is the same
        db.commit()
    decoded.clear()
    assert _build(folder).info == first.info and len(decoded) == 9
    decoded.clear()
    assert _build(folder).info == first.info and decoded == []
    with contextlib.closing(sqlite3.connect(path)) as db:  # such a version checks turned.jpg again and writes its row
        row = db.execute("SELECT * FROM scans WHERE key = ?", (str(folder / "c1" / "turned.jpg"),)).fetchone()
        db.execute("INSERT OR REPLACE INTO scans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row[:6], row[6] + 1, *row[7:]))
        db.commit()
    decoded.clear()
    assert _build(folder).info == first.info and decoded == ["turned.jpg"]


def test_images_of_several_frames_are_counted_by_every_scan(tmp_path, decoded, monkeypatch):
    """An animated GIF and a multi-page TIFF are read as their first frame: counted, with the first as the example,
    by the scan that decodes them, by a rescan that only stats them, and by a scan without the cache."""
    folder = _animated(tmp_path / "images")
    first = _build(folder)
    assert len(decoded) == 8
    assert first.info["n_multiframe"] == 2
    assert first.info["multiframe_example"] == {"path": str(folder / "c1" / "anim.gif"), "frames": 3}
    decoded.clear()
    second = _build(folder)
    assert decoded == [] and second.info == first.info == _uncached(folder, monkeypatch).info
    limited = _build(folder, limit=3)  # c0's 00.png and 03.png, c1's 01.png: no multi-frame image among them
    assert not {"n_multiframe", "multiframe_example"} & set(limited.info)


def test_a_cache_written_before_the_frame_counts_is_used_after_one_more_decoding(tmp_path, decoded):
    """Entries of a version without the frame counts (no frame_counts row) are decoded once more, then cached with
    them; such a version still writes its 5-column facts rows into the file, and an entry it rewrites (a new check
    time) loses its frame count: that file alone is decoded again."""
    folder = _animated(tmp_path / "images")
    first = _build(folder)
    assert first.info["n_multiframe"] == 2
    path = tmp_path / "cache" / scancache.FILE_NAME
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert [column[1] for column in db.execute("PRAGMA table_info(facts)")] == [
            "key", "decoder", "checked_ns", "off_scale", "orientation"]  # the layout older versions insert into
        db.execute("DELETE FROM frame_counts")  # the entries as such a version left them
        db.commit()
    decoded.clear()
    assert _build(folder).info == first.info and len(decoded) == 8
    decoded.clear()
    assert _build(folder).info == first.info and decoded == []
    key = str(folder / "c1" / "anim.gif")
    with contextlib.closing(sqlite3.connect(path)) as db:  # such a version checks anim.gif again and writes its rows
        scan = db.execute("SELECT * FROM scans WHERE key = ?", (key,)).fetchone()
        facts = db.execute("SELECT * FROM facts WHERE key = ?", (key,)).fetchone()
        db.execute("INSERT OR REPLACE INTO scans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*scan[:6], scan[6] + 1, *scan[7:]))
        db.execute("INSERT OR REPLACE INTO facts VALUES (?, ?, ?, ?, ?)", (*facts[:2], facts[2] + 1, *facts[3:]))
        db.commit()
    decoded.clear()
    assert _build(folder).info == first.info and decoded == ["anim.gif"]
