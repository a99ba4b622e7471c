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


def test_a_file_that_cannot_be_written_is_named_not_its_temporary(tmp_path, monkeypatch):
    """An unwritable folder (simulated: the tests may run as root, whom permissions do not stop) is reported under the
    file to write, with the fix; before, the error named mkstemp's '.x.npz.01vb2v5a.tmp'."""
    import errno

    from latentbench import fsutil

    def refused(dir, prefix, suffix):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, f"{prefix}01vb2v5a{suffix}"))

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", refused)
    target = tmp_path / "cache" / "stats.npz"
    with pytest.raises(PermissionError) as err:
        atomic_write_text(target, "x")
    assert err.value.filename == str(target) and not target.exists()
    assert fsutil.filesystem_error_line(err.value, tmp_path / "elsewhere") == (
        f"Permission denied: {target}: make it (and its folder) writable for this user, or choose another folder")
    assert fsutil.filesystem_error_line(err.value, tmp_path / "cache").endswith(
        f"or choose another folder with LATENTBENCH_CACHE (the suite's cache, now {tmp_path / 'cache'})")
    assert fsutil.filesystem_error_line(FileNotFoundError(errno.ENOENT, "No such file", "x")) is None  # said elsewhere


def test_a_folder_or_a_file_in_the_way_is_named_before_writing(tmp_path):
    from latentbench.fsutil import filesystem_error_line

    (tmp_path / "out.npz").mkdir()
    (tmp_path / "file").write_text("")
    with pytest.raises(IsADirectoryError) as err:  # was raised by os.replace after the write, naming the temporary file
        atomic_write_text(tmp_path / "out.npz", "x")
    assert filesystem_error_line(err.value).endswith(f"{tmp_path / 'out.npz'}: that path is a folder: give the path of a file")
    with pytest.raises(NotADirectoryError) as err:  # was mkdir's FileExistsError
        atomic_write_text(tmp_path / "file" / "x.npz", "x")
    assert filesystem_error_line(err.value).endswith(
        f"{tmp_path / 'file' / 'x.npz'}: a part of that path is a file, not a folder: choose another path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out.npz"] and not any((tmp_path / "out.npz").iterdir())


@pytest.mark.parametrize("text, line", [
    ("name: x\ndata: {source: mnist\n", "line 3, column 1: expected ',' or '}', but got '<stream end>' "
                                        "(while parsing a flow mapping from line 2)"),
    ("name: x\n  bad: [1\n", "line 2, column 6: mapping values are not allowed here"),
    # a key given twice: PyYAML kept the last silently, so `train: {max_steps: 800}` pasted below an edited one won
    ("name: x\ntrain:\n  max_steps: 100\n  max_steps: 800\n", "line 4, column 3: 'max_steps' is given twice in one mapping"),
])
def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path, text, line):
    """PyYAML's message spans four lines, names the file as "<unicode string>" and draws a caret under the place."""
    from latentbench.fsutil import load_yaml_mapping

    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_yaml_mapping(path, "protocol")
    assert str(err.value) == f"protocol {path} is not valid YAML: {line}"
