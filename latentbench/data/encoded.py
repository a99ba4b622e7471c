"""Datasets of encoded image files (a folder, or a Hugging Face image column), scanned up front.

Construction decodes every file once, in order, on a thread pool (``scan_threads``; split between
the processes of a multi-GPU bench, ``collective_scan``): it hashes the bytes
for the fingerprint, notes which images are smaller than the resolution, which look saved on
another scale, which carry an EXIF orientation and which hold several frames (``images.decode``),
and applies the ``on_bad_image`` policy, so a bad file is found before a run starts, never an hour into it.
What it learnt about each file is kept in the scan cache (``scancache``): a later scan of files
that have not changed since only stats them.
"""
from __future__ import annotations

import contextlib
import hashlib
import heapq
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from latentbench import distributed
from latentbench.data.images import (
    BadImageError,
    combine_bad_images,
    decode,
    load_rgb,
    over_pixel_limit,
    warn_of_large_images,
)
from latentbench.data.info import content_fingerprint, dataset_info
from latentbench.data.scancache import Entry, Facts, ScanCache, Stamp, default_cache
from latentbench.data.transforms import ADM_CENTER_CROP, center_crop_arr, to_tensor

ON_BAD_IMAGE = ("error", "skip")
MAX_SCAN_THREADS = 32
SCAN_CHUNK = 64  # files decoded per batch of the pool; a `limit` stops the scan after the batch
PROGRESS_MIN_FILES = 1000  # show a progress bar above this many files


class EncodedFiles(Protocol):
    """Random access to encoded image files, their display names and labels."""

    def __len__(self) -> int: ...

    def read(self, index: int) -> bytes: ...

    def name(self, index: int) -> str: ...

    def label(self, index: int) -> int: ...


class CacheableFiles(EncodedFiles, Protocol):
    """EncodedFiles whose scan results can be kept in the scan cache (image folders, ``hf`` datasets on disk)."""

    # scan_key: a name of the file that no other file has (None: do not cache it); cheap, no I/O.
    # scan_stamp: the file's current stamp (I/O; raises OSError like ``os.stat``).
    def scan_key(self, index: int) -> str | None: ...

    def scan_stamp(self, index: int) -> Stamp: ...


_DEFAULT = object()  # scan_files' cache argument: the suite's scan cache


@dataclass
class ScanReport:
    """Outcome of scanning: usable indices, their digests, and what was skipped, upsampled or read doubtfully.

    ``n_off_scale``, ``n_oriented`` and ``n_multiframe`` count the usable images that look saved on another scale
    than the one they are read on, those with an EXIF orientation and those that hold several frames (of which
    only the first is read); ``*_example`` names the first.
    """

    kept: list[int] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    n_upsampled: int = 0
    n_off_scale: int = 0
    off_scale_example: dict | None = None  # {"path", "reason"}: "I;16 with every value in 0..255"
    n_oriented: int = 0
    oriented_example: dict | None = None  # {"path", "orientation"}
    n_multiframe: int = 0
    multiframe_example: dict | None = None  # {"path", "frames"}


def check_on_bad_image(on_bad_image: str) -> None:
    """Raise ValueError unless ``on_bad_image`` is one of ON_BAD_IMAGE."""
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image must be one of {', '.join(map(repr, ON_BAD_IMAGE))}, got {on_bad_image!r}")


def scan_files(
    files: EncodedFiles, resolution: int, on_bad_image: str = "error", limit: int | None = None, desc: str = "scan",
    cache: ScanCache | None = _DEFAULT,
) -> ScanReport:
    """Decode files in order until ``limit`` usable ones are found (all of them without a limit).

    Inside ``collective_scan`` with several processes (and no ``limit``), each process decodes
    every W-th file and they exchange what they found: the same report, in 1/W of the time.

    Args:
        files: the files to scan.
        resolution: output side; images whose short side is below it are counted as upsampled.
        on_bad_image: "error" raises once the scan is done, naming every unreadable file (the first
            MAX_NAMED); "skip" records and drops them.
        limit: stop once this many usable files are found.
        desc: label of the progress bar.
        cache: where results of unchanged files are kept (default: the suite's scan cache, written by
            rank 0 only; None: decode everything). Used only for CacheableFiles.

    Returns:
        A ScanReport.

    Raises:
        BadImageError: under "error", for the unreadable files: the first in order, then how many more and which.
    """
    check_on_bad_image(on_bad_image)
    rank, world = _scan_group()
    if not hasattr(files, "scan_key"):  # not a CacheableFiles
        cache = None
    elif cache is _DEFAULT:
        cache = default_cache(writable=distributed.rank() == 0)
    with ThreadPoolExecutor(scan_threads()) as pool, contextlib.closing(cache) if cache else contextlib.nullcontext():
        if world > 1 and limit is None:
            outcomes = _shared_outcomes(files, pool, desc, rank, world, cache)
        else:
            outcomes = _decode_in_order(files, range(len(files)), pool, desc, rank, cache=cache)
        if cache is not None:
            outcomes = cache.record(outcomes)  # stores what was decoded now (a no-op where not writable)
        with contextlib.closing(outcomes):
            # lazily: a limit stops the decoding; one process says what all of them found
            return _report(outcomes, files, resolution, on_bad_image, limit,
                           desc.removeprefix("scanning ") if distributed.rank() == 0 else None)


def _shared_outcomes(files: EncodedFiles, pool: ThreadPoolExecutor, desc: str, rank: int, world: int,
                     cache: ScanCache | None) -> Iterator[tuple]:
    """Every process decodes every ``world``-th file; all get every outcome, merged in file order."""
    failure = None
    try:
        mine = list(_decode_in_order(files, range(rank, len(files), world), pool, desc, rank, cache))
    except Exception as err:  # every rank must reach the all-gather, or the others wait there forever
        mine, failure = [], err
    shards = distributed.all_gather((mine, failure and f"{type(failure).__name__}: {failure}"))
    if failure is not None:
        raise failure
    failed = [(r, text) for r, (_, text) in enumerate(shards) if text]
    if failed:
        raise RuntimeError(f"scanning {desc!r} failed in process {failed[0][0]}: {failed[0][1]}")
    return heapq.merge(*(shard for shard, _ in shards))  # each shard is in file order: so is the merge


def _report(outcomes: Iterable[tuple], files: EncodedFiles, resolution: int, on_bad_image: str,
            limit: int | None, warn_as: str | None = None) -> ScanReport:
    """The ScanReport of (index, digest, size, facts, error, fresh) outcomes in file order; under "error", raises once
    every outcome is read, naming all the unreadable files (one rerun per bad file would otherwise find them).

    ``warn_as``: the scan's label, under which one warning counts the images over Pillow's pixel limit (from their
    sizes, so a scan the cache answers warns as the first did); None: no warning (the other processes)."""
    report, errors, large = ScanReport(), [], []
    for index, digest, size, facts, error, _ in outcomes:
        if error is not None:
            if on_bad_image == "error":
                errors.append(error)
            else:
                report.skipped.append({"path": error.path, "reason": error.reason})
            continue
        report.kept.append(index)
        report.digests.append(digest)
        report.n_upsampled += min(size) < resolution
        if over_pixel_limit(size):
            large.append((files.name(index), size))
        if facts.off_scale is not None:
            report.n_off_scale += 1
            report.off_scale_example = report.off_scale_example or {"path": files.name(index), "reason": facts.off_scale}
        if facts.orientation != 1:
            report.n_oriented += 1
            report.oriented_example = report.oriented_example or {"path": files.name(index),
                                                                  "orientation": facts.orientation}
        if facts.frames > 1:
            report.n_multiframe += 1
            report.multiframe_example = report.multiframe_example or {"path": files.name(index), "frames": facts.frames}
        if limit is not None and len(report.kept) >= limit:
            break
    if errors:
        raise combine_bad_images(errors)
    if warn_as is not None:
        warn_of_large_images(large, warn_as)
    return report


_COLLECTIVE = False  # set by collective_scan


@contextlib.contextmanager
def collective_scan():
    """Scans inside share the work between the processes of the torch.distributed group.

    Every process must build the same dataset inside it (they all-gather); the bench's stages
    do (``harness._dataset``). Without a process group it changes nothing.
    """
    global _COLLECTIVE
    before, _COLLECTIVE = _COLLECTIVE, True
    try:
        yield
    finally:
        _COLLECTIVE = before


def _scan_group() -> tuple[int, int]:
    """(rank, world size) a scan shares its work over: (rank, 1) outside ``collective_scan``."""
    return distributed.rank(), distributed.world_size() if _COLLECTIVE else 1


def scan_threads() -> int:
    """Threads of a scan: this process's share of the CPUs it may run on (at most ``MAX_SCAN_THREADS``).

    PIL decodes without the GIL, so a scan scales with threads (measured on 2 cores: 307-322
    images/s on 1 thread, 609-670 on 2). Every process of a multi-GPU bench scans (its share of)
    the same split at the same time, so each takes CPUs / processes on its node.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_SCAN_THREADS, cpus // max(distributed.processes_per_node(), 1)))


def _progress(total: int, desc: str, rank: int = 0) -> tqdm:
    """A tqdm bar on rank 0, shown only for scans of more than PROGRESS_MIN_FILES files."""
    return tqdm(total=total, desc=desc, unit="img", disable=total <= PROGRESS_MIN_FILES or rank > 0)


def _decode_in_order(files: EncodedFiles, indices: range, pool: ThreadPoolExecutor, desc: str, rank: int = 0,
                     cache: ScanCache | None = None) -> Iterator[tuple]:
    """Yield (index, digest, size, facts, error, fresh) for ``indices`` in order, a chunk at a time.

    A file with a valid ``cache`` entry is not read; ``fresh`` is ``(key, stamp, checked_ns)`` of a
    cacheable file decoded now, to be stored.
    """
    hits = 0
    with _progress(len(indices), desc, rank) as bar:
        for start in range(0, len(indices), SCAN_CHUNK):
            chunk = indices[start:start + SCAN_CHUNK]
            keys = [files.scan_key(i) for i in chunk] if cache is not None else [None] * len(chunk)
            known = cache.lookup(keys) if cache is not None else {}
            results = pool.map(lambda ik, known=known: _scan_one(files, ik[0], ik[1], known.get(ik[1])), zip(chunk, keys, strict=True))
            for index, (digest, size, facts, error, fresh, hit) in zip(chunk, results, strict=True):
                hits += hit
                bar.update()
                if hits:
                    bar.set_postfix_str(f"{hits} unchanged since the last scan", refresh=False)
                yield index, digest, size, facts, error, fresh


def _scan_one(files: EncodedFiles, index: int, key: str | None, entry: Entry | None) -> tuple:
    """One file's (digest, size, facts, error, fresh, hit): from ``entry`` while the file is unchanged, else decoded."""
    if key is None:
        return (*_decode_one(files, index), None, False)
    checked_ns = time.time_ns()  # before the stat: a write after it changes the stamp, or is caught by the racy rule
    try:
        stamp = files.scan_stamp(index)
    except OSError as err:
        return None, None, None, _unreadable(files.name(index), err), None, False
    if entry is not None and entry.valid_for(stamp):
        return entry.digest, entry.size, entry.facts, None, None, True
    digest, size, facts, error = _decode_one(files, index)
    return digest, size, facts, error, (key, stamp, checked_ns), False


def _decode_one(files: EncodedFiles, index: int) -> tuple[bytes | None, tuple[int, int] | None, Facts | None,
                                                           BadImageError | None]:
    """Read and decode one file: (sha256 digest, (width, height), facts, None) or (None, None, None, error)."""
    name = files.name(index)
    try:
        data = files.read(index)
        decoded = decode(data, name, warn_large=False)  # the scan warns once for all its large images (_report)
    except BadImageError as err:
        return None, None, None, err
    except OSError as err:
        return None, None, None, _unreadable(name, err)
    off_scale = f"{decoded.mode} with {decoded.off_scale}" if decoded.off_scale else None
    return hashlib.sha256(data).digest(), decoded.image.size, Facts(off_scale, decoded.orientation, decoded.frames), None


def _unreadable(name: str, err: OSError) -> BadImageError:
    """The BadImageError of a file that cannot be stat'ed or read."""
    return BadImageError(name, f"cannot read file: {err}")


class EncodedImageDataset(Dataset):
    """The usable images of an EncodedFiles, decoded and ADM-center-cropped on access.

    ``ds[i]`` is ``(x, y)``: x a float32 (3, resolution, resolution) tensor in [-1, 1] and y
    an int label. ``ds.info`` describes the data (see ``latentbench.data.info.dataset_info``)
    and ``ds.targets`` lists the labels.
    """

    def __init__(
        self,
        files: EncodedFiles,
        source: str,
        split: str,
        resolution: int,
        class_names: list[str],
        on_bad_image: str = "error",
        limit: int | None = None,
        **extra_info,
    ):
        """Scan ``files`` and keep the usable ones (arguments as in ``build_dataset``)."""
        report = scan_files(files, resolution, on_bad_image, limit, desc=f"scanning {source} [{split}]")
        if not report.kept:
            raise ValueError(f"{source} [{split}]: none of the {len(files)} image files is readable")
        self.files = files
        self.kept = report.kept
        self.resolution = resolution
        self.targets = [files.label(i) for i in report.kept]
        fingerprint = content_fingerprint(
            report.digests, self.targets, split=split, resolution=resolution,
            preprocessing=ADM_CENTER_CROP, class_names=class_names,
        )
        self.info = dataset_info(
            source, split, resolution, n=len(self.kept), class_names=class_names, fingerprint=fingerprint,
            preprocessing=ADM_CENTER_CROP, limit=limit, n_skipped=len(report.skipped), skipped=report.skipped,
            n_upsampled=report.n_upsampled, n_off_scale=report.n_off_scale, off_scale_example=report.off_scale_example,
            n_oriented=report.n_oriented, oriented_example=report.oriented_example,
            n_multiframe=report.n_multiframe, multiframe_example=report.multiframe_example, **extra_info,
        )

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = self.kept[i]
        img = load_rgb(self.files.read(index), self.files.name(index))
        return to_tensor(center_crop_arr(img, self.resolution)), self.files.label(index)
