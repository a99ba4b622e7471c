"""The latent cache: a tokenizer's latents of the training split, encoded once, normalised, hashed.

A generator trains on latents, not images, so each tokenizer checkpoint encodes the
protocol's train split exactly once. The cache is a folder of safetensors shards, one per
rank (``shard-00000-of-00002.safetensors``), each holding its rows' global indices, latents
and labels, so a cache written by N processes is read by any number. ``meta.json`` holds the
key (sha256 of the tokenizer checkpoint, the dataset fingerprint and the preprocessing) and
the sha256 of the latents themselves: two checkpoints that encode identically (FlowMo's
stage 1b freezes the encoder) share one generator.

Normalisation (``LatentNorm``): generators want latents of about unit scale. ``channel``
standardises each channel with mean and std over the train split (2D latents: channel 0 of
(C, h, w); 1D tokens: the last axis of (L, C)); ``element`` standardises every latent
element on its own (RAE's per-element statistics); ``scaling`` multiplies by the
tokenizer's ``scaling_factor`` (SD-VAE's 0.18215); ``none`` leaves them (discrete codes).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentbench.distributed import barrier
from latentbench.fsutil import atomic_path, atomic_write_text

NORM_MODES = {
    "channel": "per-channel mean/std over the train split",
    "element": "per-element mean/std over the train split (RAE)",
    "scaling": "multiply by the tokenizer's scaling factor (SD-VAE)",
    "none": "latents as encoded (discrete codes)",
}


@dataclass
class LatentNorm:
    """An affine map latents -> generator space: ``(z - shift) / scale``, with broadcastable statistics."""

    mode: str
    shift: Tensor
    scale: Tensor

    @classmethod
    def fit(cls, mode: str, z: Tensor, scaling_factor: float = 1.0) -> LatentNorm:
        """Statistics of ``mode`` from latents (N, *shape) of the train split."""
        if mode not in NORM_MODES:
            raise ValueError(f"unknown latent normalisation {mode!r}; choose one of: "
                             + "; ".join(f"{k} ({v})" for k, v in NORM_MODES.items()))
        z = z.double()
        if mode == "channel":
            dims = _non_channel_dims(z)
            shift, scale = z.mean(dims, keepdim=True)[0], z.std(dims, keepdim=True)[0]
        elif mode == "element":
            shift, scale = z.mean(0), z.std(0)
        else:
            shift = torch.zeros(z.shape[1:], dtype=torch.float64)
            scale = torch.full(z.shape[1:], 1.0 / scaling_factor if mode == "scaling" else 1.0, dtype=torch.float64)
        return cls(mode, shift.float(), scale.float().clamp_min(1e-6))

    def normalize(self, z: Tensor) -> Tensor:
        return (z - self.shift.to(z)) / self.scale.to(z)

    def denormalize(self, z: Tensor) -> Tensor:
        return z * self.scale.to(z) + self.shift.to(z)

    def state_dict(self) -> dict[str, Tensor]:
        return {"norm_shift": self.shift.contiguous(), "norm_scale": self.scale.contiguous()}

    @classmethod
    def from_state(cls, mode: str, state: dict[str, Tensor]) -> LatentNorm:
        return cls(mode, state["norm_shift"], state["norm_scale"])

    def describe(self) -> dict[str, Any]:
        """For records: the mode and the range of the statistics."""
        return {"mode": self.mode, "meaning": NORM_MODES[self.mode], "shift_range": [float(self.shift.min()), float(self.shift.max())],
                "scale_range": [float(self.scale.min()), float(self.scale.max())]}


def _non_channel_dims(z: Tensor) -> tuple[int, ...]:
    """Reduction dims of per-channel statistics: all but 1 for (N, C, h, w), all but the last for (N, L, C)."""
    keep = 1 if z.ndim == 4 else z.ndim - 1
    return tuple(d for d in range(z.ndim) if d != keep)


@dataclass(frozen=True)
class CacheKey:
    """What determines a cache's content."""

    tokenizer_sha256: str  # the checkpoint the latents come from
    dataset: dict[str, Any]  # the dataset's info (source, split, count, fingerprint)
    preprocessing: str  # resolution and value range

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()


def latents_sha256(z: Tensor, y: Tensor) -> str:
    """sha256 of the latents and labels in index order (identical encodings hash the same)."""
    h = hashlib.sha256()
    for t in (z.float().contiguous(), y.long().contiguous()):
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def write_shard(directory: Path, rank: int, world_size: int, index: Tensor, z: Tensor, y: Tensor) -> Path:
    """Write this rank's rows atomically; the file name says which shard of how many it is."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"shard-{rank:05d}-of-{world_size:05d}.safetensors"
    with atomic_path(path) as tmp:
        save_file({"index": index.long().contiguous(), "latents": z.float().contiguous(), "labels": y.long().contiguous()}, str(tmp))
    return path


def read_shards(directory: Path) -> tuple[Tensor, Tensor]:
    """Every shard's rows, ordered by global index; refuses gaps, duplicates and a partial set of shards."""
    from safetensors.torch import load_file

    paths = sorted(directory.glob("shard-*-of-*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"no latent shards in {directory}")
    worlds = {p.stem.rsplit("-of-", 1)[1] for p in paths}
    if len(worlds) != 1 or len(paths) != int(worlds.pop()):
        raise ValueError(f"{directory} holds an incomplete or mixed set of shards ({[p.name for p in paths]}); "
                         "delete the folder to re-encode")
    parts = [load_file(str(p)) for p in paths]
    index = torch.cat([p["index"] for p in parts])
    order = index.argsort()
    if not torch.equal(index[order], torch.arange(len(index))):
        raise ValueError(f"latent shards in {directory} do not cover indices 0..{len(index) - 1} exactly once")
    return torch.cat([p["latents"] for p in parts])[order], torch.cat([p["labels"] for p in parts])[order]


def _cached_meta(directory: Path, key: CacheKey) -> dict[str, Any] | None:
    """The folder's ``meta.json`` if it records a finished cache for ``key``, else None."""
    meta_path = directory / "meta.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    return meta if meta.get("key") == key.digest else None


def load_cache(directory: Path, key: CacheKey) -> tuple[Tensor, Tensor, dict[str, Any]] | None:
    """The cached (latents, labels, meta) if the folder holds a complete cache for ``key``, else None."""
    meta = _cached_meta(directory, key)
    if meta is None:
        return None
    z, y = read_shards(directory)
    return z, y, meta


def build_cache(directory: Path, key: CacheKey, tokenizer, dataset, batch_size: int) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Encode ``dataset`` (sharded over ranks), write the shards and ``meta.json``; return all rows on every rank."""
    from latentbench.benchmark.evaluate import encode_shard, world

    rank, world_size = world()
    index, z, y = encode_shard(tokenizer, dataset, batch_size)
    write_shard(directory, rank, world_size, index, z, y)
    barrier()
    z, y = read_shards(directory)
    meta = {"key": key.digest, "key_fields": asdict(key), "latents_sha256": latents_sha256(z, y),
            "n": len(z), "shape": list(z.shape[1:]), "world_size": world_size}
    if rank == 0:
        atomic_write_text(directory / "meta.json", json.dumps(meta, indent=1, sort_keys=True))
    return z, y, meta


def cached_latents(directory: Path, key: CacheKey, tokenizer, dataset, batch_size: int) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """The train split's latents for ``key``: read from ``directory`` when cached there, else encoded and cached."""
    from latentbench.benchmark.evaluate import world
    from latentbench.distributed import broadcast

    if broadcast(_cached_meta(directory, key) is not None):  # rank 0 decides: every rank reads, or every rank encodes its shard
        found = load_cache(directory, key)
        if found is None:
            raise RuntimeError(f"latent cache {directory} changed while being read; rerun the bench")
        return found
    if world()[0] == 0:
        for stale in directory.glob("shard-*.safetensors"):  # another key's shards, or an interrupted write
            stale.unlink()
    barrier()
    return build_cache(directory, key, tokenizer, dataset, batch_size)
