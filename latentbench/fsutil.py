"""Files that are never half-written: write to a temporary name beside the target, then rename."""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success, delete it on error."""
    path = Path(path)
    if path.is_dir():  # os.replace would fail only after the content was written, naming the temporary file
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except FileExistsError:  # mkdir's word for a file standing where a folder of the path should be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)) from None
    except OSError as err:  # named as the file to write, not as mkstemp's temporary name
        raise type(err)(err.errno, err.strerror, str(path)) from None
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _final_mode(path))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


# a path that cannot be written (or read): permissions, a read-only file system, a full disk or quota, a file where a
# folder should be or the other way round
FILESYSTEM_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                               errno.EISDIR})


def filesystem_error_line(err: OSError, cache_dir: Path | None = None) -> str | None:
    """One line for an OSError of FILESYSTEM_ERRNOS (the file, what the system said, the fix), None for other errors.

    Args:
        err: the error.
        cache_dir: the suite's cache folder; a file under it gets the hint to point ``LATENTBENCH_CACHE`` elsewhere.
    """
    if err.errno not in FILESYSTEM_ERRNOS:
        return None
    name = err.filename if err.filename is not None else "a file"
    what = f"{err.strerror or os.strerror(err.errno)}: {name}" + (f" -> {err.filename2}" if err.filename2 else "")
    fix = {errno.ENOSPC: "free space on that disk, or choose a folder on another one",
           errno.EDQUOT: "free space within your quota, or choose a folder on another disk",
           errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
           errno.EISDIR: "that path is a folder: give the path of a file"}.get(
        err.errno, "make it (and its folder) writable for this user, or choose another folder")
    if cache_dir is not None and err.filename is not None and _inside(Path(err.filename), cache_dir):
        fix += f" with LATENTBENCH_CACHE (the suite's cache, now {cache_dir})"
    return f"{what}: {fix}"


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def _final_mode(path: Path) -> int:
    """The replaced file's permission bits, or what ``open()`` would give a new file (0o666 less the umask).

    ``mkstemp`` creates its file 0o600 and the rename keeps that, so without this a leaderboard,
    a statistics file or a shared cache entry would be readable by its writer alone.
    """
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``): setting it
    to read it, the portable way, would for a moment give files other threads create (loaders, TensorBoard's
    writer) mode 0o666."""
    with contextlib.suppress(OSError), open("/proc/self/status") as f:  # not Linux: the portable way below
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o077)  # the restrictive value while it is read
    os.umask(umask)
    return umask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@functools.cache
def unique_key_loader() -> type:
    """PyYAML's safe loader, refusing a key given twice in one mapping (a ``ConstructorError`` at the second one's line):
    PyYAML keeps the last silently, so a key pasted twice into a hand-edited config, protocol or golden file would
    take whichever came last. A function, so that importing this module does not import PyYAML."""
    from collections.abc import Hashable

    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):  # PyYAML's own check in construct_mapping names it
                    continue
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice in one mapping",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def load_yaml_mapping(path: str | os.PathLike, what: str) -> dict:
    """A YAML file that must hold a mapping (``what`` names it in errors: "tokenizer config", "protocol").

    Raises:
        ValueError: the file is not valid YAML (a key given twice in one mapping included), or holds a list or a
            scalar: naming the file and the place.
    """
    import yaml

    try:
        raw = yaml.load(Path(path).read_text(), Loader=unique_key_loader())  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as err:  # one line with the place; PyYAML's own text spans lines and names "<unicode string>"
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        context = (f" ({err.context}{f' from line {err.context_mark.line + 1}' if err.context_mark is not None else ''})"
                   if err.context and err.problem else "")
        raise ValueError(f"{what} {path} is not valid YAML: {where}{err.problem or err.context}{context}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{what} {path} is not valid YAML: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{what} {path} must hold a mapping of keys (name: ..., ...), not a {type(raw).__name__}")
    return raw
