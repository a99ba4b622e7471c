"""gFID and convergence: decode a generator's sampled latents, measure them against reference statistics.

The generator stage (``generators.module``) writes the latents it sampled at each evaluated
step; here each step's set is decoded by the tokenizer (sample ``i``'s decoder noise from its
own seed), passed through the protocol's feature extractor as uint8 images, and compared
with the reference statistics by the Fréchet distance (with a Poisson-bootstrap interval).
The curve of gFID over training steps gives the convergence steps: the first evaluated step
at which gFID reaches the protocol's target, and the speed-up against a baseline's curve.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentbench.generators import seeding

DECODE_SEED_OFFSET = 2  # decoder noise seeds: sample_seed(seed + 2, i), apart from the generator's own streams


# ---- reference statistics --------------------------------------------------------------------------

def reference_stats(reference: str, dataset_fn, extractor, batch_size: int, cache_dir: Path | None = None):
    """The gFID reference: statistics of a split's images (cached by extractor and data), or an .npz file.

    Args:
        reference: a split name of the protocol's data (``train``), or a path to an ``.npz`` with
            mu/sigma (this suite's ``FeatureStats.save_npz`` files or an ADM reference batch).
        dataset_fn: split name -> dataset of (image in [-1, 1], label).
        extractor: the protocol's feature extractor.
        batch_size: extraction batch size.
        cache_dir: where computed statistics are cached; None = not cached.

    Returns:
        A ``ReferenceStats`` with ``meta`` naming what it was computed from.
    """
    from latentbench.benchmark.fid import FeatureStats, load_reference_for

    if reference.endswith(".npz"):
        path = Path(reference)
        if not path.is_absolute() and not path.exists() and cache_dir is not None:
            path = Path(cache_dir) / reference  # shipped protocols name files to place in the cache
        from latentbench.distributed import require_agreement

        # a node without the file would raise alone and leave the others waiting in a collective
        require_agreement("found" if path.is_file() else "missing", f"the gFID reference {reference}",
                          "put the file on every node (the cache folder, LATENTBENCH_CACHE) or on a shared filesystem")
        if not path.is_file():
            raise FileNotFoundError(f"gFID reference statistics {reference} not found (looked at {path}): the protocol's "
                                    "generator.reference names an .npz of mu/sigma (e.g. ADM's reference batch); "
                                    "download it there or give an absolute path in the protocol")
        return load_reference_for(path, extractor, fix="the protocol's generator.reference must hold statistics of "
                                  f"its eval.extractor ({extractor.id})")
    dataset = dataset_fn(reference)
    key = {"extractor": extractor.id, "weights": extractor.weights_sha256, "data": dataset.info}
    path = None
    if cache_dir is not None:
        from latentbench.cachefiles import hashed_cache_path

        path = hashed_cache_path(cache_dir, "reference-stats", "ref", f"{dataset.info.get('source', '')}-{reference}",
                                 key).with_suffix(".npz")
        from latentbench.distributed import all_gather

        # Every rank must take the same branch (the other one all-reduces), and each reads its own node's file: the
        # cache folder may be one per node (LATENTBENCH_CACHE), so rank 0 finding it says nothing of the other nodes
        if all(all_gather(path.is_file())):
            return FeatureStats.load_npz(path)
    stats = _split_stats(dataset, extractor, batch_size)
    meta = {"extractor_id": extractor.id, "weights_sha256": extractor.weights_sha256,
            "preprocessing": extractor.preprocessing, "dataset": json.dumps(dataset.info, sort_keys=True, default=str)}
    if path is not None:  # every rank holds the summed statistics: none reads a file that another node wrote
        from latentbench.distributed import barrier, is_rank_zero

        if is_rank_zero():
            stats.save_npz(path, **meta)
        barrier()
        if not path.is_file():  # a node with a cache folder of its own writes its copy (its ranks race harmlessly)
            stats.save_npz(path, **meta)
    return stats.reference(**meta)


@torch.no_grad()
def _split_stats(dataset, extractor, batch_size: int):
    """Feature statistics of every image of ``dataset`` (sharded over ranks, summed)."""
    from latentbench.benchmark.evaluate import shard_loader
    from latentbench.benchmark.fid import FeatureStats
    from latentbench.benchmark.metrics import to_uint8

    stats = FeatureStats.empty(extractor.dim)
    for _, x, _ in shard_loader(dataset, batch_size):
        stats.update(extractor(to_uint8(x)))
    _all_reduce_stats(stats)
    return stats


def _all_reduce_stats(stats) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        for name in ("total", "total_outer"):
            t = torch.from_numpy(getattr(stats, name))
            dist.all_reduce(t)
            setattr(stats, name, t.numpy())
        n = torch.tensor(stats.n)
        dist.all_reduce(n)
        stats.n = int(n)


# ---- one evaluation ---------------------------------------------------------------------------------

@torch.no_grad()
def decode_samples(tokenizer, z: Tensor, index: Tensor, norm, seed: int) -> Tensor:
    """Normalised sampled latents -> images in [-1, 1]; sample i's decoder noise from its own seed."""
    from latentbench.distributed import module_device
    from latentbench.tokenizers.base import decode_per_sample

    latents = (norm.denormalize(z) if norm is not None else z).to(module_device(tokenizer))  # denormalised on the CPU, then moved
    seeds = [seeding.sample_seed(seed + DECODE_SEED_OFFSET, int(i)) for i in index]
    return decode_per_sample(tokenizer, latents, seeds).float().clamp(-1, 1)


@torch.no_grad()
def measure_samples(step_dir: Path, tokenizer, norm, extractor, reference, seed: int, batch_size: int,
                    bootstrap: int = 0, keep_images: int = 0, num_samples: int | None = None) -> tuple[dict[str, Any], Tensor | None]:
    """gFID of the latents sampled in ``step_dir`` (this rank decodes its shard; the metric sums over ranks).

    ``num_samples``: how many the folder must hold (a lost last part leaves the indices contiguous).

    Returns:
        (the FID result with ``n``, interval and the extractor's label; the first ``keep_images``
        decoded images by index, for a picture, or None).
    """
    from latentbench.benchmark.evaluate import ShardSampler, gather_by_index, world
    from latentbench.benchmark.fid import FrechetDistance
    from latentbench.benchmark.metrics import to_uint8
    from latentbench.distributed import module_device
    from latentbench.generators.latents import LatentShards

    retrain = f"delete {step_dir.parent.parent} to train the generator and sample again"  # samples come from training
    samples = LatentShards(step_dir, fix=retrain)  # read batch by batch: 50k RAE samples are 39 GB
    if num_samples is not None and len(samples) != num_samples:
        raise ValueError(f"{step_dir} holds {len(samples)} of the {num_samples} gFID samples (a part is missing); {retrain}")
    fid = FrechetDistance(extractor.dim, reference=reference, bootstrap=bootstrap, seed=seed).to(module_device(extractor))
    rank, world_size = world()
    mine = torch.tensor(list(ShardSampler(len(samples), rank, world_size)), dtype=torch.long)
    shown = []  # (indices, images) of the samples kept for the picture
    for chunk in mine.split(batch_size):
        images = decode_samples(tokenizer, samples.rows(chunk), chunk, norm, seed)
        fid.update(extractor(to_uint8(images)), index=chunk)
        keep = chunk < keep_images
        if keep.any():
            shown.append((chunk[keep], images[keep].cpu()))
    result = fid.compute()
    result["label"] = "g" + extractor.metric_name
    kept = gather_by_index(shown) if keep_images else None  # the first keep_images samples, whichever ranks decoded them
    return result, kept[0] if kept else None


# ---- convergence ---------------------------------------------------------------------------------------

def steps_to_target(curve: list[dict[str, Any]], target: float | None) -> int | None:
    """The first evaluated step whose gFID is at or below ``target``; None if never (or no target)."""
    if target is None:
        return None
    return next((p["step"] for p in curve if p["value"] <= target), None)


def speedup(ours: int | None, baseline: int | None, baseline_budget: int) -> dict[str, Any] | None:
    """Convergence speed-up against the baseline's curve: baseline steps / our steps to the target.

    When the baseline never reached the target within its ``baseline_budget`` steps, the ratio is a
    lower bound (``">="``); when we never reached it, there is no ratio.
    """
    if ours is None:
        return None
    if baseline is None:
        return {"ratio": baseline_budget / ours, "bound": ">="}
    return {"ratio": baseline / ours, "bound": "="}


def plot_curves(curves: dict[str, list[dict[str, Any]]], path: Path, label: str = "gFID",
                target: float | None = None, target_label: str = "target", groups: dict[str, str] | None = None) -> Path:
    """gFID-vs-steps curves of several runs in one PNG (written atomically).

    ``groups`` maps each curve to its group (a leaderboard row name, whose rows of earlier
    commits are curves too): a group's curves share a colour; the last of each, in ``curves``'
    order, is drawn solid with its interval, the earlier ones dashed and faint. The legend sits
    beside the axes, where it hides no curve.
    """
    from latentbench.benchmark.plots import pyplot, save_png

    plt = pyplot()

    groups = groups or {name: name for name in curves}
    order = sorted(dict.fromkeys(groups.values()))
    palette = plt.get_cmap("tab10" if len(order) <= 10 else "tab20")
    colours = {g: palette(i % palette.N) for i, g in enumerate(order)}
    latest = {groups[name]: name for name in curves}  # the last curve of each group
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    for name in sorted(curves, key=lambda n: (order.index(groups[n]), n != latest[groups[n]], n)):
        curve, current = curves[name], name == latest[groups[name]]
        steps = [p["step"] for p in curve]
        values = [p["value"] for p in curve]
        colour = colours[groups[name]]
        ax.plot(steps, values, marker="o" if current else ".", linestyle="-" if current else "--", color=colour,
                alpha=1.0 if current else 0.45, linewidth=1.6 if current else 1.0, label=name)
        if current:
            lo = [p["interval"][0] if p.get("interval") else v for p, v in zip(curve, values, strict=True)]
            hi = [p["interval"][1] if p.get("interval") else v for p, v in zip(curve, values, strict=True)]
            ax.fill_between(steps, lo, hi, color=colour, alpha=0.15)
    if target is not None:
        ax.axhline(target, color="gray", linestyle=":", linewidth=1, label=f"{target_label} {target:.4g}")
    ax.set_xlabel("generator training step")
    ax.set_ylabel(f"{label} (lower is better)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    save_png(fig, path)
    return path
