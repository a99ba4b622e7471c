"""Atomic writes: all or nothing, and with the permissions a plain write would give."""
import os

import pytest

from latentbench.fsutil import atomic_path, atomic_write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_file_gets_the_umask_mode_not_mkstemps_0600(tmp_path, umask_022):
    target = tmp_path / "results.jsonl"
    atomic_write_text(target, "row\n")
    assert target.read_text() == "row\n"
    assert target.stat().st_mode & 0o777 == 0o644  # readable by others, as open() would make it


def test_a_replaced_file_keeps_its_mode(tmp_path, umask_022):
    target = tmp_path / "table.md"
    target.write_text("old")
    target.chmod(0o664)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o664


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "stats.npz"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["stats.npz"]


def test_the_umask_is_read_without_being_changed(monkeypatch):
    """Setting the umask to read it would, for a moment, change the mode of files other threads create."""
    from latentbench import fsutil

    old = os.umask(0o027)
    try:
        calls = []
        real = os.umask
        monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real(mask))
        assert fsutil._umask() == 0o027
        if os.path.exists("/proc/self/status"):
            assert calls == []
    finally:
        os.umask(old)
