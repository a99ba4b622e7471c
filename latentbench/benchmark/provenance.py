"""What produced a number: code commit, packages, hardware."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from latentbench.distributed import world_size
from latentbench.paths import REPO_ROOT

PACKAGES = ("latentbench", "torch", "torchvision", "lightning", "torchmetrics", "diffusers", "timm", "lpips",
            "numpy", "pillow", "scikit-image", "datasets")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> dict:
    """Commit of the checkout and whether tracked files differ from it (runs/ and leaderboards/ aside)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!leaderboards", ":!runs")
    return {"commit": commit or "unknown", "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that can change a number."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def hardware() -> dict:
    """CPU, thread count and accelerators of this process."""
    info = {
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [],
    }
    return info


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or "unknown"


def provenance() -> dict:
    """Everything about the environment that a result record carries."""
    return {
        "code": code_version(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hardware": hardware(),
        # a training resumed on another number of processes continues from its weights, not on its random streams
        "processes": world_size(),
        "command": command_line(),
    }


def command_line(argv: list[str] | None = None) -> str:
    """The command as a user would retype it: ``latentbench bench ...`` whether it ran as the console script,
    ``python -m latentbench.cli`` or by path (``sys.argv[0]`` is then an absolute path on this machine)."""
    argv = sys.argv if argv is None else argv
    program = Path(argv[0]).name if argv else ""
    ours = program == "latentbench" or (program in ("cli.py", "__main__.py") and Path(argv[0]).parent.name == "latentbench")
    return " ".join(["latentbench" if ours else argv[0], *argv[1:]]) if argv else ""
