"""Sharded evaluation that counts every sample exactly once, on 1 or N processes.

``DistributedSampler`` pads the last shard with repeated samples so every rank gets the
same count: that changes the metric whenever N is not divisible by the world size. Here
rank r takes samples r, r + W, r + 2W, ... and nothing else; metric states are float64
sums that all-reduce, and every per-sample random draw (decoder noise, bootstrap weights)
is keyed by the sample's global index, so results do not depend on batch size or on W.
"""
from __future__ import annotations

import contextlib
import math
import warnings
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without torch.distributed."""
    from latentbench.distributed import rank, world_size

    return rank(), world_size()


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ... of range(n): disjoint shards covering every index once, no padding.

    With ``rank=None`` the rank and world size are read when iterating, so a loader built
    before the process group exists (Lightning starts it in ``fit``) shards correctly.
    """

    def __init__(self, n: int, rank: int | None = 0, world_size: int = 1):
        if rank is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.rank, self.world_size = n, rank, world_size

    @property
    def indices(self) -> range:
        rank, world_size = world() if self.rank is None else (self.rank, self.world_size)
        return range(rank, self.n, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class Indexed(Dataset):
    """Wrap a dataset so items carry their global index: (index, x, y)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Tensor, int]:
        x, y = self.dataset[i]
        return i, x, y


RECON_SEED_OFFSET = 3  # reconstructions' decoder noise: apart from gFID's streams (seed, seed + 1, seed + 2)
_LOADER_WORKERS = 0  # set for a bench by ``loader_workers`` (the protocol's train.num_workers)


@contextlib.contextmanager
def loader_workers(n: int):
    """Decode images in ``n`` worker processes in every ``shard_loader`` opened inside (reconstruction,
    the probe's and the latent cache's encoding, reference statistics).

    A setting rather than an argument threaded through each pass because it changes no number
    (the sampler fixes the order, every item is deterministic), only whether JPEG decoding keeps
    up with the accelerator: the paper protocol reads 50,000 validation and 1.28M train images.
    """
    global _LOADER_WORKERS
    if n < 0:
        raise ValueError(f"loader workers must be >= 0, got {n}")
    before, _LOADER_WORKERS = _LOADER_WORKERS, n
    try:
        yield
    finally:
        _LOADER_WORKERS = before


def shard_loader(dataset: Dataset, batch_size: int, num_workers: int | None = None) -> DataLoader:
    """A loader over this rank's shard of ``dataset``, yielding (indices, x, y) batches in order.

    ``num_workers`` None: the current ``loader_workers`` setting (0 outside a bench).
    """
    rank, world_size = world()
    workers = _LOADER_WORKERS if num_workers is None else num_workers
    return DataLoader(Indexed(dataset), batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world_size),
                      num_workers=workers)


@dataclass
class ReconstructionPass:
    """What one pass over the eval split produced on this rank."""

    latents: list[Tensor] = field(default_factory=list)  # each batch's latents, or what reconstruct's ``features`` keeps
    labels: list[Tensor] = field(default_factory=list)
    indices: list[Tensor] = field(default_factory=list)
    grid: list[tuple[Tensor, Tensor, Tensor]] = field(default_factory=list)  # (indices, originals, reconstructions)
    coding_s: float = 0.0
    n: int = 0

    def rows(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(indices, latents or features, labels) of each batch (``gather_by_index`` them)."""
        return zip(self.indices, self.latents, self.labels, strict=True)

    def throughput(self) -> float | None:
        """Encode + decode images per second over all ranks: all images / the slowest rank's coding time."""
        n, seconds = torch.tensor(float(self.n), dtype=torch.float64), torch.tensor(self.coding_s, dtype=torch.float64)
        if world()[1] > 1:
            dist.all_reduce(n)
            dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        return float(n / seconds) if seconds > 0 else None


def gather_by_index(parts: Iterable[Sequence[Tensor]]) -> tuple[Tensor, ...] | None:
    """All ranks' rows, ordered by global index: ``parts`` are this rank's ``(indices, *tensors)`` batches.

    A rank may hold no batches (a split smaller than the world, a picture's few images); it
    still joins the gather. Returns the tensors without the indices, or None when no rank
    holds a row. Every rank must call it (a collective); on one process it only sorts.
    """
    parts = list(parts)
    mine = tuple(torch.cat(column) for column in zip(*parts, strict=True)) if parts else None
    found = [mine]
    if world()[1] > 1:
        found = [None] * world()[1]
        dist.all_gather_object(found, mine)
    found = [p for p in found if p is not None and len(p[0])]
    if not found:
        return None
    indices, *tensors = (torch.cat(column) for column in zip(*found, strict=True))
    order = indices.argsort()
    return tuple(t[order] for t in tensors)


class ReconstructionMetrics:
    """PSNR, SSIM, LPIPS and rFID of reconstructions, streamed and summed over ranks.

    Args:
        extractor: FID feature extractor, or None when unavailable (``unavailable`` says why).
        lpips: an LPIPS metric, or None when unavailable.
        bootstrap: Poisson-bootstrap replicates for the rFID interval.
        seed: bootstrap seed.
        unavailable: metric name -> reason, reported instead of a value.
        device: where the metrics (their networks and states) live; ``update`` takes images there.
    """

    def __init__(self, extractor=None, lpips=None, bootstrap: int = 0, seed: int = 0,
                 unavailable: dict[str, str] | None = None, device: torch.device | str = "cpu"):
        from latentbench.benchmark.fid import FrechetDistance
        from latentbench.benchmark.metrics import PSNR, SSIM

        self.metrics: dict[str, Any] = {"psnr": PSNR().to(device), "ssim": SSIM().to(device)}
        if lpips is not None:
            self.metrics["lpips"] = lpips.to(device)
        self.extractor = extractor.to(device) if extractor is not None else None
        self.fid = FrechetDistance(extractor.dim, bootstrap=bootstrap, seed=seed).to(device) if extractor is not None else None
        self.unavailable = dict(unavailable or {})
        self.lowest = {"real": math.inf, "fake": math.inf}  # for the [0, 1]-decoder warning of results()
        self.scale_warning: str | None = None  # what results() found of the decoder's scale
        self.highest_fake = -math.inf  # and the [0, 255] one: set by reconstruct, from the decoder's output before its clamp

    def update(self, index: Tensor, real: Tensor, fake: Tensor) -> None:
        """Add a batch of (real, reconstruction) pairs in [-1, 1] with their global indices."""
        from latentbench.benchmark.metrics import to_uint8

        for name, x in (("real", real), ("fake", fake)):
            if x.is_floating_point():
                self.lowest[name] = min(self.lowest[name], float(x.amin()))
        real_u8, fake_u8 = to_uint8(real), to_uint8(fake)  # once for every metric (they take uint8 as is)
        for metric in self.metrics.values():
            metric.update(real_u8, fake_u8)
        if self.fid is not None:
            self.fid.update(self.extractor(fake_u8), real=self.extractor(real_u8), index=index)

    def scale_problem(self) -> str | None:
        """What the reconstructions' range says of the decoder's scale, or None when nothing is wrong.

        While the images reach -0.5 or lower: reconstructions above 10 before the clamp are the mark of
        a decoder that returns [0, 255] images, and none below 0 that of one that returns [0, 1]
        images; the metrics read both as [-1, 1] (PSNR and SSIM far too low).
        """
        from latentbench.distributed import all_gather

        # every rank's shard: the answer (and the record's warning) must not depend on how the split was sharded
        lows_real, lows_fake, highs_fake = zip(*all_gather((self.lowest["real"], self.lowest["fake"], self.highest_fake)),
                                               strict=True)
        low_real, low_fake, high_fake = min(lows_real), min(lows_fake), max(highs_fake)
        if low_real > -0.5:
            return None
        if high_fake > 10:  # far out of [-1, 1] before the clamp, whatever small undershoot it has
            return (f"every reconstruction lies in [0, {high_fake:.4g}] while the images reach "
                    f"{low_real:.2f}: if the tokenizer's decode returns [0, 255] images, return "
                    "x / 127.5 - 1 instead (latentbench reads images as [-1, 1] and clamps them there, so nearly "
                    "every pixel reads white); its PSNR, SSIM, LPIPS and rFID are measured on the wrong scale")
        if low_fake < 0:
            return None
        return (f"every reconstruction lies in [0, 1] while the images reach {low_real:.2f}: if the "
                "tokenizer's decode returns [0, 1] images, return x * 2 - 1 instead (latentbench reads images "
                "as [-1, 1]); its PSNR, SSIM, LPIPS and rFID are measured on the wrong scale")

    def results(self) -> dict[str, dict[str, Any]]:
        """{name: {"value", "n", ...}} for every metric, {"unavailable": reason} where there is none; warns of
        ``scale_problem``."""
        self.scale_warning = self.scale_problem()  # kept for the eval stage's result: one gather across ranks
        if self.scale_warning:
            warnings.warn(self.scale_warning, stacklevel=2)
        out: dict[str, dict[str, Any]] = {name: metric.result() for name, metric in self.metrics.items()}
        if "lpips" in out:
            out["lpips"]["net"] = self.metrics["lpips"].net
        if self.fid is not None:
            fid = self.fid.compute()
            out["rfid"] = {**fid, "label": "r" + self.extractor.metric_name, "extractor": self.extractor.describe()}
        out.update({name: {"unavailable": reason} for name, reason in self.unavailable.items()})
        return {name: not_finite_as_unavailable(name, result) for name, result in out.items()}


def not_finite_as_unavailable(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """A metric whose value is not a finite number, as ``{"unavailable": why}``: a record holds numbers or reasons.

    The one expected case is PSNR when a reconstruction is exact after uint8 rounding (its MSE
    is 0); anything else non-finite is a failure of the measurement, said as such.
    """
    value = result.get("value")
    if value is None or math.isfinite(value):
        return result
    if name == "psnr" and result.get("exact"):
        why = (f"{result['exact']} of {result['n']} reconstructions are identical to their image after uint8 rounding "
               "(MSE 0, PSNR infinite), so the mean PSNR is infinite")
        if result.get("finite_mean") is not None:
            why += f"; {result['finite_mean']:.2f} dB over the other {result['n'] - result['exact']}"
    else:
        why = f"the measurement gave {value} over {result.get('n')} images"
    return {"unavailable": why}


@torch.no_grad()
def reconstruct(tokenizer, dataset: Dataset, metrics: ReconstructionMetrics, batch_size: int, seed: int = 0,
                grid_size: int = 16, progress: bool = True, features: Callable[[Tensor], Tensor] | None = None) -> ReconstructionPass:
    """Encode and decode this rank's shard of ``dataset``, updating ``metrics``.

    ``grid_size`` images spread evenly over the split are kept for a picture of the reconstructions.
    A stochastic decoder draws each image's noise from a seed of its global index alone
    (``sample_seed(seed + RECON_SEED_OFFSET, i)``), so reconstructions do not depend on the
    batch size or the number of processes; ``features(latents)`` of each batch is kept for the linear probe (default: the
    latents; the bench keeps the probe's pooled features, which mean pooling makes far smaller).
    """
    from tqdm.auto import tqdm

    from latentbench.distributed import module_device
    from latentbench.generators.seeding import sample_seed
    from latentbench.tokenizers.base import decode_per_sample

    rank, _ = world()
    out = ReconstructionPass()
    device = module_device(tokenizer)
    shown = set(torch.linspace(0, len(dataset) - 1, grid_size).round().long().tolist())  # spread over the split
    for index, x, y in tqdm(shard_loader(dataset, batch_size), desc="reconstruct", unit="batch", disable=not progress or rank > 0):
        start = time.perf_counter()
        x = x.to(device, non_blocking=True)
        z = tokenizer.encode(x)
        # decoders overshoot [-1, 1]; clamp as saving the image would (metrics then round to uint8)
        seeds = [sample_seed(seed + RECON_SEED_OFFSET, int(i)) for i in index]
        raw = decode_per_sample(tokenizer, z, seeds).float()
        rec = raw.clamp(-1, 1)
        if rec.is_cuda:  # CUDA only queues the work: wait for it, or the throughput counts the queueing
            torch.cuda.synchronize(rec.device)
        out.coding_s += time.perf_counter() - start
        metrics.highest_fake = max(metrics.highest_fake, float(raw.amax()))  # a [0, 255] decoder, told apart from [0, 1]
        metrics.update(index, x, rec)
        out.latents.append((features(z) if features is not None else z).float().cpu())
        out.labels.append(torch.as_tensor(y))
        out.indices.append(index)
        keep = [k for k, i in enumerate(index.tolist()) if i in shown]
        if keep:
            out.grid.append((index[keep], x[keep].cpu(), rec[keep].cpu()))
        out.n += len(x)
    return out


@torch.no_grad()
def encode_batches(tokenizer, dataset: Dataset, batch_size: int, progress: bool = True) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(global indices, latents, labels) of each batch of this rank's shard of ``dataset``, latents float32 on the CPU."""
    from tqdm.auto import tqdm

    from latentbench.distributed import module_device

    rank, _ = world()
    device = module_device(tokenizer)
    for index, x, y in tqdm(shard_loader(dataset, batch_size), desc="encode", unit="batch", disable=not progress or rank > 0):
        yield index, tokenizer.encode(x.to(device, non_blocking=True)).float().cpu(), torch.as_tensor(y)
