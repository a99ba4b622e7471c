"""Where the suite's files live: the checkout's configs/, leaderboards/ and runs/, and the user's cache."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
LEADERBOARD_DIR = REPO_ROOT / "leaderboards"
RUNS_DIR = REPO_ROOT / "runs"


def display_path(path: str | os.PathLike) -> str:
    """A path relative to the checkout when it lies inside it (records stay valid in any clone), else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def require_checkout() -> None:
    """FileNotFoundError unless the package sits in its repository checkout (configs/ beside it).

    The protocols, tokenizer configs and leaderboards are the checkout's files, not package
    data: a wheel installed elsewhere has none of them.
    """
    if not CONFIG_DIR.is_dir():
        raise FileNotFoundError(f"latentbench runs from its repository checkout, but there is no configs/ beside the "
                                f"package ({CONFIG_DIR}): clone the repository and install it editable there "
                                "(make install, or pip install -e .)")


def default_cache_dir() -> Path:
    """``$LATENTBENCH_CACHE``, else ``~/.cache/latentbench``."""
    return Path(os.environ.get("LATENTBENCH_CACHE") or Path.home() / ".cache" / "latentbench").expanduser()
