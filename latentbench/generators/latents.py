"""The latent cache: a tokenizer's latents of the training split, encoded once, normalised, hashed.

A generator trains on latents, not images, so each tokenizer checkpoint encodes the
protocol's train split exactly once. The cache is a folder of safetensors shard parts, written
by each rank as it encodes (``shard-00000-of-00002-part-00003.safetensors``: rank 0 of 2,
its fourth part), each holding its rows' global indices, latents and labels, so a cache
written by N processes is read by any number and no rank holds its whole share in memory.
``meta.json`` holds the key (sha256 of the tokenizer checkpoint, the dataset fingerprint and
the preprocessing) and the sha256 of the latents themselves: two checkpoints that encode
identically (FlowMo's stage 1b freezes the encoder) share one generator.

Reading is lazy (``LatentShards``): the parts are memory-mapped and rows gathered on demand.
One pass over a new cache, in chunks, gives its hash and its normalisation statistics (stored
beside it in ``statistics.safetensors``), and the generator's batches are gathered from the
files (``imagenet256``'s 1.28M RAE latents are about 1 TB; no process holds them).

Normalisation (``LatentNorm``): generators want latents of about unit scale. ``channel``
standardises each channel with mean and std over the train split (2D latents: channel 0 of
(C, h, w); 1D tokens: the last axis of (L, C)); ``element`` standardises every latent
element on its own (RAE's per-element statistics); ``scaling`` multiplies by the
tokenizer's ``scaling_factor`` (SD-VAE's 0.18215); ``none`` leaves them (discrete codes).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from latentbench.distributed import barrier
from latentbench.fsutil import atomic_path, atomic_write_text

NORM_MODES = {
    "channel": "per-channel mean/std over the train split",
    "element": "per-element mean/std over the train split (RAE)",
    "scaling": "multiply by the tokenizer's scaling factor (SD-VAE)",
    "none": "latents as encoded (discrete codes)",
}
PART_BYTES = 256 * 2**20  # a rank starts a new shard part once it holds this many bytes of latents
CHUNK_BYTES = 16 * 2**20  # rows read at a time when streaming through a cache (statistics, hash)
FITTED_MODES = ("channel", "element")  # the normalisations whose statistics come from the data


@dataclass
class LatentNorm:
    """An affine map latents -> generator space: ``(z - shift) / scale``, with broadcastable statistics."""

    mode: str
    shift: Tensor
    scale: Tensor

    @classmethod
    def of_cache(cls, mode: str, shards: LatentShards, scaling_factor: float = 1.0) -> LatentNorm:
        """The normalisation ``mode`` of a latent cache, from the statistics stored with it (none is read for the others)."""
        _check_mode(mode)
        stats = shards.statistics() if mode in FITTED_MODES else {}
        return cls.from_statistics(mode, stats, shards.shape, scaling_factor, where=f" in {shards.directory}")

    @classmethod
    def from_statistics(cls, mode: str, statistics: dict[str, Tensor], shape: tuple[int, ...] | None,
                        scaling_factor: float = 1.0, where: str = "") -> LatentNorm:
        """``mode`` from ``LatentSummary.statistics()`` (fitted modes) or the per-latent ``shape`` (the others)."""
        _check_mode(mode)
        if mode in FITTED_MODES:
            if f"{mode}_shift" not in statistics:
                raise ValueError(f"the latent normalisation {mode!r} needs at least 2 values per statistic; "
                                 f"there are fewer latents{where}")
            shift, scale = statistics[f"{mode}_shift"], statistics[f"{mode}_scale"]
        else:
            if shape is None:
                raise ValueError(f"no latents to fit the normalisation on{where}")
            shift = torch.zeros(shape, dtype=torch.float64)
            scale = torch.full(shape, 1.0 / scaling_factor if mode == "scaling" else 1.0, dtype=torch.float64)
        return cls(mode, shift.float(), scale.float().clamp_min(1e-6))

    def normalize(self, z: Tensor) -> Tensor:
        return (z - self.shift.to(z)) / self.scale.to(z)

    def denormalize(self, z: Tensor) -> Tensor:
        return z * self.scale.to(z) + self.shift.to(z)

    def describe(self) -> dict[str, Any]:
        """For records: the mode and the range of the statistics."""
        return {"mode": self.mode, "meaning": NORM_MODES[self.mode], "shift_range": [float(self.shift.min()), float(self.shift.max())],
                "scale_range": [float(self.scale.min()), float(self.scale.max())]}


def _check_mode(mode: str) -> None:
    if mode not in NORM_MODES:
        raise ValueError(f"unknown latent normalisation {mode!r}; choose one of: "
                         + "; ".join(f"{k} ({v})" for k, v in NORM_MODES.items()))


class _Moments:
    """Running count, mean and sum of squared deviations over reduction dims, merged chunk by chunk.

    By hand because torch and torchmetrics have no streaming per-channel variance that reduces
    over arbitrary dims in float64; the update is Chan, Golub and LeVeque's pairwise formula.
    """

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: Tensor, dims: tuple[int, ...]) -> None:
        n_b = math.prod(x.shape[d] for d in dims)
        if n_b == 0:
            return
        var_b, mean_b = torch.var_mean(x, dims, correction=0, keepdim=True)  # one pass, no deviation tensor
        m2_b = var_b * n_b
        if self.n == 0:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta.square() * (self.n * n_b / n)
        self.n = n


class LatentSummary:
    """What one pass over latents in index order gives: their sha256 and the fitted modes' float64 statistics."""

    def __init__(self, hash: bool = True):
        self._sha = hashlib.sha256() if hash else None
        self._moments = {mode: _Moments() for mode in FITTED_MODES}
        self.shape: tuple[int, ...] | None = None

    def add(self, z: Tensor) -> None:
        z = z.float().contiguous()
        if self._sha is not None:
            self._sha.update(z.numpy().tobytes())
        if len(z):
            self.shape = tuple(z.shape[1:])
            wide = z.double()
            self._moments["channel"].add(wide, _non_channel_dims(z))
            self._moments["element"].add(wide, (0,))

    def sha256(self, labels: Tensor) -> str:
        """The latents' hash, then the labels' (identical encodings hash the same)."""
        if self._sha is None:
            raise ValueError("this summary was made without a hash (summarize(..., hash=False))")
        h = self._sha.copy()
        h.update(labels.long().contiguous().numpy().tobytes())
        return h.hexdigest()

    def statistics(self) -> dict[str, Tensor]:
        """``<mode>_shift`` (mean) and ``<mode>_scale`` (unbiased std), float64, of each fitted mode with 2+ values a statistic."""
        out = {}
        for mode, m in self._moments.items():
            if m.n >= 2:
                out[f"{mode}_shift"], out[f"{mode}_scale"] = m.mean[0], (m.m2 / (m.n - 1)).sqrt()[0]
        return out


def summarize(chunks: Iterable[Tensor], hash: bool = True) -> LatentSummary:
    """Feed ``chunks`` (index order, for the hash) through one ``LatentSummary``."""
    summary = LatentSummary(hash)
    for chunk in chunks:
        summary.add(chunk)
    return summary


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


# ---- shards ------------------------------------------------------------------------------------------

_SHARD_NAME = re.compile(r"shard-(\d{5,})-of-(\d{5,})(?:-part-(\d{5,}))?\.safetensors")
STATISTICS = "statistics.safetensors"  # a cache's normalisation statistics, written with it
REENCODE = "delete the folder to re-encode"


def _reencode(directory: Path) -> str:
    """REENCODE naming the folder (an error names one of its files, and "the folder" could be any above it)."""
    return f"delete the folder {directory} to re-encode"


class ShardWriter:
    """This rank's rows of a shard folder, written as parts of about ``part_bytes`` each as they arrive.

    A rank holds at most about two parts' worth (the rows, and their concatenation while one
    is written): encoding ``imagenet256`` with RAE writes about 1 TB in 256 MB files. Each part
    is written atomically; a rank that wrote no rows writes one empty part, so a reader sees
    every rank. A new writer first deletes what an earlier, interrupted one left: this rank's
    parts, and (rank 0) any of another world size.
    """

    def __init__(self, directory: Path, rank: int, world_size: int, part_bytes: int | None = None):
        self.directory, self.rank, self.world_size = Path(directory), rank, world_size
        self.part_bytes = PART_BYTES if part_bytes is None else part_bytes
        for old in self.directory.glob("shard-*.safetensors"):
            name = _SHARD_NAME.fullmatch(old.name)
            if name and ((int(name[1]), int(name[2])) == (rank, world_size) or (rank == 0 and int(name[2]) != world_size)):
                old.unlink(missing_ok=True)
        self.paths: list[Path] = []
        self._rows: list[tuple[Tensor, Tensor, Tensor]] = []
        self._bytes = 0

    def add(self, index: Tensor, z: Tensor, y: Tensor) -> None:
        self._rows.append((index.long().cpu(), z.float().cpu(), y.long().cpu()))
        self._bytes += z.numel() * 4
        if self._bytes >= self.part_bytes:
            self._flush()

    def close(self) -> list[Path]:
        if self._rows or not self.paths:
            self._flush()
        return self.paths

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:  # an interrupted rank leaves its finished parts; a reader refuses the gap
            self.close()

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if self._rows:
            index, z, y = (torch.cat(t) for t in zip(*self._rows, strict=True))
        else:
            index, z, y = torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0, dtype=torch.long)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"shard-{self.rank:05d}-of-{self.world_size:05d}-part-{len(self.paths):05d}.safetensors"
        with atomic_path(path) as tmp:
            save_file({"index": index.contiguous(), "latents": z.contiguous(), "labels": y.contiguous()}, str(tmp))
        self.paths.append(path)
        self._rows, self._bytes = [], 0


class LatentShards:
    """A complete folder of shard parts, read lazily: latents are memory-mapped, rows gathered on demand.

    Refuses a folder with a rank missing, parts of different world sizes, or rows that do not
    cover the indices 0..n-1 exactly once (a lost last part leaves them covered: the caller
    checks the count it expects). Labels and the row map (20 bytes a row) are held in memory;
    latents are not (safetensors maps the files, so only the rows read are paged in). Reads any
    world size's folder, and the single-file shards (``shard-00000-of-00001.safetensors``) of
    caches written before parts existed. ``fix``: what the errors tell the user to do.
    """

    def __init__(self, directory: Path, fix: str = REENCODE):
        self.directory = Path(directory)
        self.fix = fix = _reencode(self.directory) if fix == REENCODE else fix
        paths = sorted(p for p in self.directory.glob("shard-*.safetensors") if _SHARD_NAME.fullmatch(p.name))
        if not paths:
            raise FileNotFoundError(f"no latent shards in {self.directory}; {fix}")
        names = [_SHARD_NAME.fullmatch(p.name).groups() for p in paths]
        worlds = {int(w) for _, w, _ in names}
        if len(worlds) != 1 or {int(r) for r, _, _ in names} != set(range(worlds.pop())):
            raise ValueError(f"{self.directory} holds an incomplete or mixed set of shards ({[p.name for p in paths]}); {fix}")
        self.paths = paths
        indices, labels, shapes = [], [], set()
        for path in paths:
            with open_safetensors(path, fix) as f:
                indices.append(f.get_tensor("index"))
                labels.append(f.get_tensor("labels"))
                if len(indices[-1]):
                    shapes.add(tuple(f.get_slice("latents").get_shape()[1:]))
        if len(shapes) > 1:
            raise ValueError(f"latent shards in {self.directory} hold latents of different shapes {sorted(shapes)}; {fix}")
        index = torch.cat(indices)
        order = index.argsort()
        if not torch.equal(index[order], torch.arange(len(index))):
            raise ValueError(f"latent shards in {self.directory} do not cover indices 0..{len(index) - 1} exactly once "
                             f"(a part is missing or was written twice); {fix}")
        self.shape: tuple[int, ...] = shapes.pop() if shapes else ()
        self.labels = torch.cat(labels)[order]
        self._part = torch.cat([torch.full((len(i),), k, dtype=torch.int32) for k, i in enumerate(indices)])[order]
        self._row = torch.cat([torch.arange(len(i)) for i in indices])[order]
        self._maps: list[Tensor] | None = None
        self._statistics: dict[str, Tensor] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict[str, Any]:  # a copy sent to another process maps the files itself
        return {**self.__dict__, "_maps": None}

    @property
    def _latents(self) -> list[Tensor]:
        if self._maps is None:
            self._maps = [open_safetensors(p, self.fix).get_tensor("latents") for p in self.paths]  # zero-copy: the file's pages
        return self._maps

    def rows(self, index: Tensor) -> Tensor:
        """The latents of global rows ``index``, in that order (float32, a copy)."""
        index = torch.as_tensor(index, dtype=torch.long)
        if len(self.paths) == 1:
            return self._latents[0][self._row[index]]
        out = torch.empty(len(index), *self.shape)
        part, row = self._part[index], self._row[index]
        for k in part.unique().tolist():
            mine = part == k
            out[mine] = self._latents[k][row[mine]]
        return out

    def chunks(self, rows: int | None = None, index: Tensor | None = None) -> Iterator[Tensor]:
        """The latents of ``index`` (default: every row, in order), ``rows`` at a time (default: about ``CHUNK_BYTES``)."""
        index = torch.arange(len(self)) if index is None else torch.as_tensor(index, dtype=torch.long)
        yield from (self.rows(part) for part in index.split(rows or max(1, CHUNK_BYTES // (4 * math.prod(self.shape)))))

    def statistics(self) -> dict[str, Tensor]:
        """The fitted normalisations' statistics (``LatentSummary.statistics``): stored with the cache, else one pass."""
        if self._statistics is None:
            self._statistics = summarize(self.chunks(), hash=False).statistics()  # a cache from before they were stored
        return self._statistics

    def read_all(self) -> tuple[Tensor, Tensor]:
        """Every (latent, label) in index order, in memory: for small folders only."""
        return self.rows(torch.arange(len(self))), self.labels.clone()


def open_safetensors(path: Path, fix: str):
    """``safe_open`` of ``path``; ValueError naming it, and ``fix``, when it is not a whole safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt")
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}; cut short by a kill or a full disk?); "
                         f"{fix}") from None


class NormalizedLatents(Dataset):
    """The generator's training set: (normalised latent, label) rows of a latent cache, read per batch.

    Items are what ``TensorDataset(norm.normalize(z), y)`` would give, bit for bit (the map is
    elementwise); ``__getitems__`` lets a DataLoader gather a whole batch from the mapped files at once.
    """

    def __init__(self, shards: LatentShards, norm: LatentNorm):
        self.shards, self.norm = shards, norm

    def __len__(self) -> int:
        return len(self.shards)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.shards.shape

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self.norm.normalize(self.shards.rows(index)), self.shards.labels[index], strict=True))


# ---- the cache ---------------------------------------------------------------------------------------

def _cached_meta(directory: Path, key: CacheKey) -> dict[str, Any] | None:
    """The folder's ``meta.json`` if it records a finished cache for ``key``, else None."""
    meta_path = directory / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # written atomically: edited or damaged
        raise ValueError(f"latent cache {meta_path} is not valid JSON ({err}); {_reencode(directory)}") from None
    return meta if meta.get("key") == key.digest else None


def load_cache(directory: Path, key: CacheKey) -> tuple[LatentShards, dict[str, Any]] | None:
    """The cached (shards, meta) if the folder holds a complete cache for ``key``, else None.

    Refuses shards that do not hold what ``meta.json`` recorded (a lost last part leaves the
    indices contiguous). The stored statistics are used when they belong to these latents.
    """
    meta = _cached_meta(directory, key)
    if meta is None:
        return None
    shards = LatentShards(directory)
    if len(shards) != meta["n"] or list(shards.shape) != meta["shape"]:
        raise ValueError(f"latent cache {directory} holds {len(shards)} latents of shape {list(shards.shape)} but its "
                         f"meta.json records {meta['n']} of {meta['shape']}: a shard part is missing; {_reencode(directory)}")
    path = directory / STATISTICS
    if path.exists():
        with open_safetensors(path, "delete it: the statistics are computed again from the latents") as f:
            if (f.metadata() or {}).get("latents_sha256") == meta["latents_sha256"]:
                shards._statistics = {k: f.get_tensor(k).clone() for k in f.keys()}
    if shards._statistics is None:  # a cache from before statistics were stored: one pass, stored for the next run
        _store_statistics(directory, shards.statistics(), meta["latents_sha256"])
    return shards, meta


def _store_statistics(directory: Path, statistics: dict[str, Tensor], sha256: str) -> None:
    """Rank 0 writes the statistics of the latents with hash ``sha256`` beside them."""
    from safetensors.torch import save_file

    from latentbench.benchmark.evaluate import world

    if world()[0] == 0:
        with atomic_path(directory / STATISTICS) as tmp:
            save_file({k: v.contiguous() for k, v in statistics.items()}, str(tmp), metadata={"latents_sha256": sha256})


def build_cache(directory: Path, key: CacheKey, tokenizer, dataset, batch_size: int) -> tuple[LatentShards, dict[str, Any]]:
    """Encode ``dataset`` (sharded over ranks) straight into shard parts; then one pass for the hash and the statistics.

    Every rank makes that pass (no rank waits on another's long read in a collective); rank 0
    writes the statistics and then ``meta.json``, which marks the cache finished.
    """
    from latentbench.benchmark.evaluate import encode_batches, world

    rank, world_size = world()
    with ShardWriter(directory, rank, world_size) as writer:
        for index, z, y in encode_batches(tokenizer, dataset, batch_size):
            writer.add(index, z, y)
    barrier()
    shards = LatentShards(directory)
    summary = summarize(shards.chunks())
    shards._statistics = summary.statistics()
    meta = {"key": key.digest, "key_fields": asdict(key), "latents_sha256": summary.sha256(shards.labels),
            "n": len(shards), "shape": list(shards.shape), "world_size": world_size}
    _store_statistics(directory, shards._statistics, meta["latents_sha256"])
    if rank == 0:
        atomic_write_text(directory / "meta.json", json.dumps(meta, indent=1, sort_keys=True))
    return shards, meta


def cached_latents(directory: Path, key: CacheKey, tokenizer, dataset, batch_size: int) -> tuple[LatentShards, dict[str, Any]]:
    """The train split's latents for ``key`` (lazily read): from ``directory`` when cached there, else encoded into it."""
    from latentbench.benchmark.evaluate import world
    from latentbench.distributed import broadcast

    if broadcast(_cached_meta(directory, key) is not None):  # rank 0 decides: every rank reads, or every rank encodes its shard
        found = load_cache(directory, key)
        if found is None:
            raise RuntimeError(f"latent cache {directory} changed while being read; rerun the bench")
        return found
    # Another key's cache, or an interrupted write: unmark it before any part is replaced (a half-replaced
    # cache must never read as finished). Each rank's ShardWriter replaces the parts it left (rank 0 also
    # those of another world size); stored statistics count only for the latents whose hash they name.
    if world()[0] == 0:
        (directory / "meta.json").unlink(missing_ok=True)
    barrier()
    return build_cache(directory, key, tokenizer, dataset, batch_size)
