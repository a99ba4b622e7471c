"""Per-sample random streams: sample ``i`` of a generated set draws only from a generator seeded by ``i``.

gFID's sample set must not depend on how samples are batched or sharded over processes
(README, "Scaling out": each gFID sample's class, noise and decoder noise come from its global index).
torch draws a batch from one generator, so batch composition would change every sample;
these helpers give each sample its own ``torch.Generator`` instead. Written by hand because
no library offers per-row generators.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_MIX = 0x9E3779B97F4A7C15  # golden-ratio increment (splitmix64): nearby indices give unrelated seeds
_MASK = (1 << 63) - 1


def sample_seed(base: int, index: int) -> int:
    """The seed of sample ``index`` of a set whose seed is ``base`` (a positive 63-bit integer)."""
    x = (int(base) * _MIX + int(index) + 1) & ((1 << 64) - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (x ^ (x >> 31)) & _MASK


def generators(seeds: Sequence[int] | Tensor, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per sample, seeded by its seed."""
    seeds = seeds.tolist() if isinstance(seeds, Tensor) else list(seeds)
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def randn(gens: Sequence[torch.Generator], shape: Sequence[int], device: torch.device | str = "cpu",
          dtype: torch.dtype = torch.float32) -> Tensor:
    """(len(gens), *shape) standard normal noise, row ``i`` drawn from ``gens[i]`` alone."""
    return torch.stack([torch.randn(*shape, generator=g, device=device, dtype=dtype) for g in gens])


def rand(gens: Sequence[torch.Generator], shape: Sequence[int], device: torch.device | str = "cpu",
         dtype: torch.dtype = torch.float32) -> Tensor:
    """(len(gens), *shape) uniform [0, 1) numbers, row ``i`` drawn from ``gens[i]`` alone."""
    return torch.stack([torch.rand(*shape, generator=g, device=device, dtype=dtype) for g in gens])


def drop_labels(y: Tensor, probability: float, null_label: int) -> Tensor:
    """Class-conditioning dropout (DiT's LabelEmbedder, MaskGIT's): each label of ``y`` (B,) becomes ``null_label``
    with ``probability``, drawn from the global generator as training's other randomness is (not per sample)."""
    if probability <= 0:
        return y
    drop = torch.rand(y.shape, device=y.device) < probability  # (B,)
    return torch.where(drop, torch.full_like(y, null_label), y)
