"""Where the suite's files live: the checkout's configs/, leaderboards/ and runs/, and the user's cache."""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
LEADERBOARD_DIR = REPO_ROOT / "leaderboards"
RUNS_DIR = REPO_ROOT / "runs"


def default_cache_dir() -> Path:
    """``$LATENTBENCH_CACHE``, else ``~/.cache/latentbench``."""
    return Path(os.environ.get("LATENTBENCH_CACHE") or Path.home() / ".cache" / "latentbench").expanduser()
