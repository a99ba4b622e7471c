"""The up-front scan: order, first-bad-file reporting and early stop, over many in-memory files."""
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


def test_first_bad_file_in_order_is_reported():
    with pytest.raises(BadImageError) as info:
        scan_files(MemoryFiles(1100, bad={1050, 700}), resolution=8)  # > 1000: the progress bar path
    assert info.value.path == "mem[700]"


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
