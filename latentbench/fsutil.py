"""Files that are never half-written: write to a temporary name beside the target, then rename."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success, delete it on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _final_mode(path))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


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


def load_yaml_mapping(path: str | os.PathLike, what: str) -> dict:
    """A YAML file that must hold a mapping (``what`` names it in errors: "tokenizer config", "protocol").

    Raises:
        ValueError: the file is not valid YAML, or holds a list or a scalar: naming the file and the place.
    """
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{what} {path} is not valid YAML: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{what} {path} must hold a mapping of keys (name: ..., ...), not a {type(raw).__name__}")
    return raw
