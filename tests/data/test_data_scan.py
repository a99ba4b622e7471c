"""The up-front scan: order, reporting every bad file and early stop, over many in-memory files."""
import io

import pytest
from PIL import Image

from latentbench.data import BadImageError
from latentbench.data.encoded import scan_files


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


class MemoryFiles:
    """N in-memory PNGs (every 7th one small), some of them broken; counts reads."""

    def __init__(self, n: int, bad: set[int]):
        self.n, self.bad, self.reads = n, bad, 0
        self.big, self.small = _png((16, 16)), _png((4, 4))

    def __len__(self):
        return self.n

    def read(self, index):
        self.reads += 1
        return b"junk" if index in self.bad else (self.small if index % 7 == 0 else self.big)

    def name(self, index):
        return f"mem[{index}]"

    def label(self, index):
        return index % 3


def test_every_bad_file_is_reported_the_first_in_order_leading():
    """One run names them all: fixing one file per rerun would take as many scans as there are bad files."""
    files = MemoryFiles(1100, bad={1050, 700})
    with pytest.raises(BadImageError) as info:
        scan_files(files, resolution=8)  # > 1000: the progress bar path
    assert info.value.path == "mem[700]" and files.reads == 1100
    assert "2 files are unreadable in all; the others: mem[1050] (" in str(info.value)
    assert str(info.value).endswith(info.value.advice)


def test_a_single_bad_file_keeps_its_plain_message_and_many_are_capped():
    with pytest.raises(BadImageError) as one:
        scan_files(MemoryFiles(30, bad={4}), resolution=8)
    assert "unreadable in all" not in str(one.value) and str(one.value).startswith("cannot decode image mem[4]: ")
    with pytest.raises(BadImageError) as many:
        scan_files(MemoryFiles(30, bad=set(range(25))), resolution=8)
    text = str(many.value)
    assert "25 files are unreadable in all" in text and "mem[9] (" in text and "mem[10] (" not in text
    assert "; and 15 more" in text


def test_skip_keeps_order_and_counts():
    report = scan_files(MemoryFiles(1100, bad={3, 1099}), resolution=8, on_bad_image="skip")
    assert report.kept == [i for i in range(1100) if i not in {3, 1099}]
    assert [s["path"] for s in report.skipped] == ["mem[3]", "mem[1099]"]
    assert report.n_upsampled == sum(1 for i in report.kept if i % 7 == 0)
    assert len(report.digests) == len(report.kept)


def test_limit_stops_the_scan_early():
    files = MemoryFiles(5000, bad={0})
    report = scan_files(files, resolution=8, on_bad_image="skip", limit=10)
    assert report.kept == list(range(1, 11)) and files.reads < 200


def test_scan_threads_follow_the_cpus_and_share_them_between_a_nodes_processes(monkeypatch):
    import os

    import latentbench.data.encoded as encoded

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    assert encoded.scan_threads() == encoded.MAX_SCAN_THREADS == 32
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert encoded.scan_threads() == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert encoded.scan_threads() == 1  # 2 CPUs, 8 processes: still one thread each


@pytest.mark.parametrize("threads", [1, 5])
def test_the_scan_does_not_depend_on_its_thread_count(threads, monkeypatch):
    import latentbench.data.encoded as encoded

    files = MemoryFiles(150, bad={3, 99})
    reference = scan_files(files, 8, "skip", limit=120)
    monkeypatch.setattr(encoded, "scan_threads", lambda: threads)
    report = scan_files(MemoryFiles(150, bad={3, 99}), 8, "skip", limit=120)
    assert (report.kept, report.digests, report.skipped, report.n_upsampled) == \
        (reference.kept, reference.digests, reference.skipped, reference.n_upsampled)


SCAN_WORKER = """
import json, sys
import torch.distributed as dist
import latentbench.data.encoded as encoded
from latentbench.data import BadImageError, build_dataset

folder, on_bad_image, out = sys.argv[1], sys.argv[2], sys.argv[3]
dist.init_process_group("gloo")
decoded = []
real = encoded._decode_one


def decode(files, i):
    decoded.append(i)
    if on_bad_image == "skip" and sys.argv[4:] == ["crash"] and dist.get_rank() == 1:
        raise MemoryError("out of memory")  # not a bad image: an unexpected failure in one process
    return real(files, i)


encoded._decode_one = decode
try:
    with encoded.collective_scan():
        data = build_dataset("imagefolder:" + folder, "train", 16, on_bad_image=on_bad_image)
    result = {"fingerprint": data.info["fingerprint"], "n": len(data), "skipped": data.info["skipped"],
              "n_upsampled": data.info["n_upsampled"], "n_multiframe": data.info.get("n_multiframe"),
              "multiframe_example": data.info.get("multiframe_example")}
except (BadImageError, MemoryError, RuntimeError) as err:
    result = {"error": f"{type(err).__name__}: {err}"}
result["decoded"] = len(decoded)
json.dump(result, open(out + str(dist.get_rank()), "w"))
dist.destroy_process_group()
"""


def _scan_in_processes(tmp_path, folder, on_bad_image, nproc, *extra, cache_dir=None):
    """Build the folder's train split in ``nproc`` processes; the scan cache in ``cache_dir``, off without one."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "scan_worker.py"
    script.write_text(SCAN_WORKER)
    out = tmp_path / f"scan-{on_bad_image}-{nproc}-"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(script), str(folder), on_bad_image, str(out), *extra]
    cache = {"LATENTBENCH_SCAN_CACHE": "1", "LATENTBENCH_CACHE": str(cache_dir)} if cache_dir else {"LATENTBENCH_SCAN_CACHE": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **cache})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((tmp_path / f"{out.name}{rank}").read_text()) for rank in range(nproc)]


def test_processes_share_a_scan_and_agree_with_one_process(tmp_path):
    folder = tmp_path / "images"
    for c, n in (("a", 12), ("b", 9)):
        (folder / "train" / c).mkdir(parents=True)
        for i in range(n):
            (folder / "train" / c / f"{i:02d}.png").write_bytes(_png((16, 16) if i % 4 else (8, 8)))
    # files in order: a/00..a/11 (indices 0-11), b/00..b/08 (12-20); rank 1 of 2 scans the odd indices
    (folder / "train" / "a" / "05.png").write_bytes(b"junk")  # rank 1's shard, the first bad file in order
    (folder / "train" / "b" / "00.png").write_bytes(b"junk")  # index 12: rank 0's shard
    one = _scan_in_processes(tmp_path, folder, "skip", 1)[0]
    two = _scan_in_processes(tmp_path, folder, "skip", 2)
    for rank in two:
        assert {k: rank[k] for k in one if k != "decoded"} == {k: one[k] for k in one if k != "decoded"}
    assert one["n"] == 19 and [s["path"][-8:] for s in one["skipped"]] == ["a/05.png", "b/00.png"]
    assert one["decoded"] == 21 and sorted(r["decoded"] for r in two) == [10, 11]  # each process half
    errors = _scan_in_processes(tmp_path, folder, "error", 2)
    assert all("cannot decode image" in r["error"] and "a/05.png" in r["error"] for r in errors)  # the first in order, everywhere
    crashed = _scan_in_processes(tmp_path, folder, "skip", 2, "crash")  # one process fails: both stop, neither hangs
    assert crashed[1]["error"] == "MemoryError: out of memory"
    assert crashed[0]["error"].startswith("RuntimeError: scanning") and "failed in process 1: MemoryError: out of memory" in crashed[0]["error"]


def test_processes_share_the_scan_cache_and_rank_zero_stores_every_share(tmp_path):
    """Also the facts the bench reports: an animated GIF in rank 1's share is counted by every scan, the cached ones
    included (rank 0 stored its frame count)."""
    import os
    import time

    folder = tmp_path / "images"
    (folder / "train" / "a").mkdir(parents=True)
    for i in range(9):
        path = folder / "train" / "a" / (f"{i}.gif" if i == 3 else f"{i}.png")
        if i == 3:  # index 3: rank 1 of 2 decodes it
            frames = [Image.new("RGB", (16, 16), (9 * k, 0, 0)) for k in range(4)]
            frames[0].save(path, save_all=True, append_images=frames[1:])
        else:
            path.write_bytes(b"junk" if i == 4 else _png((16, 16)))
        old = time.time_ns() - 60 * 10**9
        os.utime(path, ns=(old, old))  # older than the racy window: entries are trusted
    reference = _scan_in_processes(tmp_path, folder, "skip", 1)[0]
    assert reference["n_multiframe"] == 1 and reference["multiframe_example"] == {
        "path": str(folder / "train" / "a" / "3.gif"), "frames": 4}
    first = _scan_in_processes(tmp_path, folder, "skip", 2, cache_dir=tmp_path / "cache")
    again = _scan_in_processes(tmp_path, folder, "skip", 2, cache_dir=tmp_path / "cache")
    assert sorted(r["decoded"] for r in first) == [4, 5]
    assert [r["decoded"] for r in again] == [1, 0]  # only the bad file (index 4, rank 0's share) is decoded again
    for result in first + again:
        assert {k: result[k] for k in reference if k != "decoded"} == {k: reference[k] for k in reference if k != "decoded"}
