"""What every plot of the suite does alike: matplotlib without a display, and a PNG written atomically (a reader of
the leaderboard folder never sees half a file), the figure closed after it."""
from __future__ import annotations

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display on a CPU box or in CI), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path) -> None:
    """Write ``fig`` to ``path`` as a PNG, atomically, trimmed to its contents, and close it."""
    from latentbench.fsutil import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    pyplot().close(fig)
