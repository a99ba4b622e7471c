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
