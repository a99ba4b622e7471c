"""Where the suite's files live: the checkout's configs/, leaderboards/ and runs/."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
LEADERBOARD_DIR = REPO_ROOT / "leaderboards"
RUNS_DIR = REPO_ROOT / "runs"
