"""The precision a run trains in: the protocol's, unless this machine cannot run it at speed.

Protocols pin bf16 autocast for training (``bf16-mixed``). On GPUs with bf16 and on CPUs whose
bf16 goes to oneDNN (AVX512 or AMX) it is 1.5-4x faster than float32. On any other CPU PyTorch
falls back to scalar bf16 kernels: measured on an AVX2-only AMD EPYC (2 cores), a 1024^3 matrix product ran
at 0.8 GFLOP/s in bf16 against 104 GFLOP/s in float32, and one `ci` sdvae training step took 16 s
instead of under a second. There the harness trains in ``32-true`` instead, says so in one line,
and records the protocol's and the used precision; the leaderboard marks such rows and the
regression gate compares them with float32 golden values. ``--precision`` overrides the choice.

Hand-written because nothing upstream decides this: Lightning runs whatever precision it is
given; PyTorch's oneDNN probe (used below) only says whether bf16 reaches oneDNN.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

BF16 = frozenset({"bf16-mixed", "bf16-true", "bf16"})
FALLBACK = "32-true"
CHOICES = ("auto", "32-true", "bf16-mixed")


@dataclass(frozen=True)
class Precision:
    """What a run was asked to train in, what it trains in, and why they differ (None: they don't)."""

    requested: str
    used: str
    reason: str | None = None

    @property
    def changed(self) -> bool:
        return self.used != self.requested


@functools.cache
def bf16_support(device_type: str) -> tuple[bool, str]:
    """(usable, what this device is): whether bf16 autocast runs at speed here.

    On the CPU this is PyTorch's own test for routing bf16 to oneDNN (AVX512 with BW/VL/DQ, or
    AMX, or AVX-NE-CONVERT); without it bf16 matrix products and convolutions take scalar kernels.
    """
    if device_type == "cuda":
        usable = torch.cuda.is_bf16_supported(including_emulation=False)
        return usable, f"{torch.cuda.get_device_name()} ({'with' if usable else 'without'} bf16)"
    cap = torch.backends.cpu.get_cpu_capability()
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return True, f"{cap} CPU (oneDNN runs bf16)"
    return False, (f"{cap} CPU without oneDNN bf16 support (no AVX512 or AMX): PyTorch's fallback bf16 kernels are "
                   "~100x slower than float32 (an AVX2-only AMD EPYC: 0.8 vs 104 GFLOP/s matrix products)")


def device_type() -> str:
    """The device Lightning's ``accelerator="auto"`` trains on here (cuda or cpu)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(requested: str, override: str = "auto", device: str | None = None) -> Precision:
    """The precision to train in for a protocol's ``requested`` one.

    Args:
        requested: the protocol's (or recipe's) Lightning precision string.
        override: ``auto`` (the requested one, or float32 where bf16 is not usable here), or a
            Lightning precision to use regardless (``--precision`` on the command line).
        device: ``cuda`` or ``cpu``; default: what ``accelerator="auto"`` picks.
    """
    if override not in CHOICES:
        raise ValueError(f"--precision must be one of {', '.join(CHOICES)}, got {override!r}")
    if override != "auto":
        return Precision(requested, override, None if override == requested else f"--precision {override} given")
    if requested not in BF16:
        return Precision(requested, requested)
    usable, what = bf16_support(device or device_type())
    if usable:
        return Precision(requested, requested)
    return Precision(requested, FALLBACK, f"{what}; training runs in {FALLBACK} instead "
                                          f"(--precision {requested} forces bf16)")
