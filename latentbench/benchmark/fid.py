"""Fréchet distance (FID) from streamed float64 feature sums, exact under DDP, with a bootstrap interval.

The Fréchet distance between two Gaussians fitted to feature sets (Heusel et al. 2017, eq. 6)::

    FID = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))

with ``S`` the *unbiased* covariance (divisor ``n - 1``), as ``numpy.cov``, pytorch-fid,
torch-fidelity and ADM's evaluator use. The trace of the matrix square root comes from two
symmetric eigensolves (:func:`frechet_distance` says why that is the same number as
``scipy.linalg.sqrtm``'s, and 6-8x faster at D = 2048).

How the statistics are kept:

* No feature list is held in memory. Per feature stream the metric keeps three float64 sums —
  the count ``n``, ``sum_i x_i`` (D,) and ``sum_i x_i x_i^T`` (D, D) — and derives
  ``mu = sum / n`` and ``S = (outer - n mu mu^T) / (n - 1)`` at the end. Sums reduce by
  addition, so a DDP all-reduce gives the single-process statistics (up to float64 rounding
  of the summation order). Float64 keeps the cancellation in ``outer - n mu mu^T`` harmless
  for features whose mean is not many orders of magnitude above their spread (true of
  Inception pool features).
* rFID streams the features of the real images next to those of their reconstructions;
  gFID compares generated samples with fixed reference statistics (:class:`ReferenceStats`,
  written by :meth:`FeatureStats.save_npz` or imported from an ADM reference batch with
  :func:`load_adm_reference`).

Small-sample FID is biased upwards (the bias shrinks roughly as 1/n), so FID values are only
comparable at equal sample counts: every result carries ``n`` (and ``n_real``) and, when
asked for, a 95% bootstrap interval for the sampling spread at that ``n``. The interval does
not remove the bias.

The bootstrap is a *Poisson bootstrap* (Hanley & MacGibbon 2006; Chamandy et al. 2012,
"Estimating uncertainty for massive data streams"): instead of resampling n items with
replacement, which needs all features at once, each sample i enters replicate b with an
integer weight ``w_bi ~ Poisson(1)``, and the weighted sums are streamed like the plain ones.
The weights are a pure function of ``(seed, b, global sample index)``, so replicates do not
depend on batch size, batch order or the number of DDP ranks. Resampling with replacement
duplicates samples, which inflates FID's small-sample bias, so the replicate FIDs sit above
the point estimate by about that bias (measured: D = 64, n = 300 gave FID 60.4 and replicate
percentiles [69.2, 76.9], wholly above it). The reported interval is therefore the 2.5 / 97.5
percentiles of the replicates shifted down by ``bootstrap_bias`` (replicate mean minus value,
also returned), its lower end clipped at 0 (at tiny n the shift can exceed the low percentile):
it describes the sampling spread around the value, not the value's own bias. Its cost is real: per feature
stream it keeps ``bootstrap * D^2 * 8`` bytes (Inception, D = 2048: 32 MiB per replicate) and
each update costs ``bootstrap`` times a plain update, and ``compute()`` takes one or two
symmetric eigensolves per replicate (one against a fixed reference, whose root is kept).
"""
from __future__ import annotations

import functools
import hashlib
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
import torch
from torch import Tensor
from torchmetrics import Metric

from latentbench.fsutil import atomic_path

INTERVAL_LEVEL = 0.95
MIN_BOOTSTRAP = 10  # fewer replicates put the 2.5th / 97.5th percentiles on one or two replicates (1 gave [v, v])
BOOTSTRAP_MEMORY_LIMIT = 2 * 1024**3  # bytes of (B, D, D) replicate states; above it, ask for fewer replicates
BOOTSTRAP_CHUNK_ELEMENTS = 1 << 23  # float64 elements (64 MiB) of the weighted-feature temporary per product
PSD_RTOL = 1e-6  # a covariance eigenvalue below -PSD_RTOL * the largest is not rounding: the matrix is not PSD
META_PREFIX = "meta_"  # npz keys holding the metadata strings of a statistics file

# Poisson(1) CDF for k = 0..31; from k ~ 18 on it is 1.0 in float64, so the table never runs out.
_POISSON1_CDF = scipy.stats.poisson.cdf(np.arange(32), 1.0)
_U64 = np.uint64


# ---------------------------------------------------------------------------------------------
# Fréchet distance between two Gaussians
# ---------------------------------------------------------------------------------------------

def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, *, sqrt_sigma2: np.ndarray | None = None) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``tr(sqrtm(S1 S2))`` is computed as ``tr(sqrtm(R S1 R))`` with ``R = S2^(1/2)``: the two
    products are similar matrices (``S1 S2 = S1 R R`` and ``R S1 R`` share eigenvalues), and the
    second is symmetric positive semi-definite, so its trace root is the sum of the square roots
    of its ``eigvalsh`` eigenvalues. This is the same number pytorch-fid, ADM's evaluator
    (``scipy.linalg.sqrtm``) and torch-fidelity / torchmetrics (``eigvals(S1 S2)``) compute
    (tested against sqrtm and torch-fidelity: 1e-15 relative with full-rank covariances), found by
    two symmetric eigensolves instead of a general square root: at D = 2048 on a 2-core CPU 2.6 s
    against 15-21 s for ``sqrtm``. With singular covariances (``n < D``) the D - n zero eigenvalues
    come out as rounding noise in every method, complex in those and real here, where they are
    set to zero (:func:`_clip_rounding`): this value matches the exact one computed in the
    samples' span (an SVD of the centred features) to ~1e-12, while the others keep the noise's
    square roots and read up to ~2e-4 relative lower at D = 2048 (less at smaller D); no
    pytorch-fid offset retry is needed.

    Args:
        mu1, mu2: means, shape (D,).
        sigma1, sigma2: covariances, shape (D, D).
        sqrt_sigma2: ``psd_sqrt(sigma2)`` when already known (a fixed reference), to skip one eigensolve.

    Returns:
        The distance as a Python float.

    Raises:
        ValueError: shapes disagree, an input holds NaN or Inf, or a covariance is not positive
            semi-definite beyond rounding.
    """
    mu1, sigma1 = _check_gaussian(mu1, sigma1, "first Gaussian")
    mu2, sigma2 = _check_gaussian(mu2, sigma2, "second Gaussian")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    root = psd_sqrt(sigma2, "second") if sqrt_sigma2 is None else sqrt_sigma2
    product = root @ sigma1 @ root
    eigenvalues = _psd_eigenvalues((product + product.T) / 2, "first")
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.sqrt(eigenvalues).sum())
    # a distance is never negative: between equal Gaussians the sum cancels to rounding, either side of zero (a folder
    # against itself read -1.7e-13 with 12 images of 128 features), and a negative FID would be printed and recorded
    return max(value, 0.0)


def psd_sqrt(sigma: np.ndarray, which: str = "reference") -> np.ndarray:
    """The symmetric square root of a covariance, ``V diag(sqrt(w)) V^T`` from ``eigh``.

    Eigenvalues that rounding left slightly negative count as zero; see :func:`_psd_eigenvalues`.
    """
    w, v = np.linalg.eigh(sigma)
    root = (v * np.sqrt(_clip_rounding(w, which))) @ v.T
    return (root + root.T) / 2  # exactly symmetric; the product leaves it so only to rounding


def _psd_eigenvalues(matrix: np.ndarray, which: str) -> np.ndarray:
    """Eigenvalues of a symmetric matrix that should be positive semi-definite, rounding negatives at zero."""
    return _clip_rounding(np.linalg.eigvalsh(matrix), which)


def _clip_rounding(w: np.ndarray, which: str) -> np.ndarray:
    """Eigenvalues with rounding-level ones set to 0; ValueError for a plainly negative one.

    A covariance from float64 sums is PSD up to rounding, which leaves its zero eigenvalues at
    about ``D * eps * max(w)`` either side of zero (``eigvalsh``'s absolute accuracy). Those
    below that level are zeros, negative or not: with ``n < D`` samples there are ``D - n`` of
    them, and keeping their square roots (``sqrt(1e-13)`` is 3e-7, summed over ~2,000) biased
    FID low by ~2e-4 relative and made the distance of a folder to itself negative (-8e-5 at
    n = 10). A negative eigenvalue below ``-PSD_RTOL * max(w)`` is far beyond rounding and far
    below any real covariance's: the matrix is not PSD.
    """
    scale = max(float(np.abs(w).max(initial=0.0)), np.finfo(np.float64).tiny)
    if w.min(initial=0.0) < -PSD_RTOL * scale:
        raise ValueError(f"{which} covariance is not positive semi-definite: eigenvalue {w.min():.3g} against a "
                         f"largest of {scale:.3g}; a covariance from real features cannot have one")
    rounding = max(w.shape[-1], 1) * np.finfo(np.float64).eps * scale
    return np.where(w > rounding, w, 0.0)


def _check_gaussian(mu: Any, sigma: Any, which: str) -> tuple[np.ndarray, np.ndarray]:
    """mu (D,) and sigma (D, D) as finite float64 arrays, or ValueError."""
    mu, sigma = _float64(mu), _float64(sigma)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{which}: need mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{which}: mu or sigma contains NaN or Inf")
    return mu, sigma


def _float64(x: Any) -> np.ndarray:
    """A tensor or array-like as a float64 numpy array (copied off the GPU when needed)."""
    if isinstance(x, Tensor):
        x = x.detach().cpu()
    return np.asarray(x, dtype=np.float64)


def moments(n: float, total: np.ndarray, total_outer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (divisor n - 1) from a count, sum_i x_i and sum_i x_i x_i^T.

    ``n`` may be a sum of integer (bootstrap) weights: the result is then the mean and
    covariance of the sample in which item i appears w_i times.
    """
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {n:g}")
    mu = total / n
    sigma = (total_outer - np.outer(total, mu)) / (n - 1)
    return mu, (sigma + sigma.T) / 2  # exact symmetry; the summed outer products are symmetric only to rounding


CANCELLATION_WARN, CANCELLATION_FAIL = 1e-6, 1e-3  # estimated relative error of a streamed covariance


def check_cancellation(mu: np.ndarray, sigma: np.ndarray, which: str) -> None:
    """Warn (or ValueError) when a covariance from streamed sums has lost precision to cancellation.

    ``S = (sum x x^T - n mu mu^T) / (n - 1)`` subtracts numbers of size ``mu_i mu_j``, so each entry
    carries an absolute rounding error of about ``eps * max_i mu_i^2``; measured against the
    features' mean variance ``tr(S) / D`` (the scale of the FID's terms) that is the relative error
    this estimates. On features of unit spread shifted by 1e4 / 1e6 / 1e7 the FID moved by
    7e-8 / 1.5e-4 / 0.23 relative, the last with no other sign. A single constant feature (no
    spread, any mean) costs nothing and is not flagged; pool features (Inception, the domain
    classifiers) have means of the order of their spread.
    """
    spread = float(np.trace(sigma)) / max(len(mu), 1)  # the mean variance
    rounding = np.finfo(np.float64).eps * float(np.max(mu**2, initial=0.0))  # absolute error of an entry
    if rounding == 0 or spread > rounding / CANCELLATION_WARN:
        return
    if spread <= rounding:  # no spread above rounding: every feature constant, or the spread cancelled away
        message = (f"{which} features show no spread above the rounding of their streamed sums (means up to "
                   f"{np.sqrt(rounding / np.finfo(np.float64).eps):.3g}): the covariance is lost to cancellation, or "
                   "every feature is constant; centre the features in the extractor (subtract a fixed mean)")
        raise ValueError(message)
    error = rounding / spread
    message = (f"{which} features have a mean up to {np.sqrt(error / np.finfo(np.float64).eps):.3g} times their typical "
               f"spread: their streamed covariance keeps only about {max(-np.log10(error), 0):.0f} significant digits "
               f"(relative error ~{error:.1g}); centre the features in the extractor (subtract a fixed mean)")
    if error > CANCELLATION_FAIL:
        raise ValueError(message)
    warnings.warn(message, stacklevel=3)


def check_bootstrap(bootstrap: int, name: str = "bootstrap") -> None:
    """ValueError unless ``bootstrap`` is 0 (no interval) or at least ``MIN_BOOTSTRAP`` replicates."""
    if bootstrap < 0 or 0 < bootstrap < MIN_BOOTSTRAP:
        raise ValueError(f"{name} must be 0 (no interval) or at least {MIN_BOOTSTRAP} replicates, got {bootstrap}: "
                         "a 95% interval's ends are the 2.5th and 97.5th percentiles of the replicates (more give "
                         "steadier ends, within the memory limit)")


def check_bootstrap_memory(bootstrap: int, num_features: int, streams: int, name: str = "bootstrap") -> None:
    """ValueError when ``bootstrap`` replicates of ``streams`` feature streams of dimension ``num_features`` need more
    than ``BOOTSTRAP_MEMORY_LIMIT`` bytes of (B, D, D) float64 states (rFID streams 2, gFID against a reference 1)."""
    need = bootstrap * num_features**2 * 8 * streams
    if need > BOOTSTRAP_MEMORY_LIMIT:
        most = BOOTSTRAP_MEMORY_LIMIT // (num_features**2 * 8 * streams)
        raise ValueError(f"{name}={bootstrap} at D={num_features} needs {need / 2**30:.1f} GiB of "
                         f"replicate states ({streams} stream(s) x B x D^2 x 8 bytes), over the "
                         f"{BOOTSTRAP_MEMORY_LIMIT / 2**30:.0f} GiB limit: use at most {most} replicates")


def check_features(features: Any, dim: int, name: str = "features") -> Tensor:
    """(B, dim) finite features as a float64 tensor, or ValueError naming the problem."""
    x = torch.as_tensor(features).detach()
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must be (B, {dim}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(1).nonzero().flatten().tolist()
        raise ValueError(f"{name} at batch positions {bad[:10]} contain NaN or Inf")
    return x.to(torch.float64)


# ---------------------------------------------------------------------------------------------
# Statistics files
# ---------------------------------------------------------------------------------------------

@dataclass(eq=False)
class ReferenceStats:
    """Fixed Gaussian statistics of a feature set: the reference of gFID.

    Attributes:
        mu: mean, (D,) float64.
        sigma: unbiased covariance, (D, D) float64.
        n: number of samples behind the statistics; None when the file does not say (ADM).
        meta: provenance strings (extractor_id, weights_sha256, preprocessing, dataset fingerprint, ...).
        path: the file it was read from, if any.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None
    meta: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        where = f"reference statistics{f' in {self.path}' if self.path else ''}"
        try:
            self.mu, self.sigma = _check_gaussian(self.mu, self.sigma, where)
        except ValueError as err:  # a file: say how to get a usable one
            fix = ("; no FID can be computed from it: write it again with latentbench stats (from finite features), or "
                   "give another statistics file" if self.path else "")
            raise ValueError(f"{err}{fix}") from None
        self.n = None if self.n is None else int(self.n)

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return self.mu.shape[0]

    @functools.cached_property
    def sqrt_sigma(self) -> np.ndarray:
        """``psd_sqrt(sigma)``, computed once: every FID against this reference reuses it."""
        return psd_sqrt(self.sigma, f"reference{f' in {self.path}' if self.path else ''}")

    @property
    def sha256(self) -> str:
        """sha256 of mu and sigma as little-endian float64 bytes.

        It hashes the numbers that enter the FID, not the file: the same statistics hash the
        same whether they come from this module's npz or an ADM reference batch, and a
        multi-GB ADM file (which also stores images) need not be read in full.
        """
        h = hashlib.sha256()
        for a in (self.mu, self.sigma):
            h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
        return h.hexdigest()


@dataclass(eq=False)
class FeatureStats:
    """Streamed first and second moments of features, as float64 numpy arrays.

    Attributes:
        n: number of feature vectors seen.
        total: sum_i x_i, (D,) float64.
        total_outer: sum_i x_i x_i^T, (D, D) float64.
    """

    n: int
    total: np.ndarray
    total_outer: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> FeatureStats:
        """Statistics of no features, of dimension ``dim``."""
        return cls(0, np.zeros(dim, dtype=np.float64), np.zeros((dim, dim), dtype=np.float64))

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return self.total.shape[0]

    def update(self, features: Tensor | np.ndarray) -> None:
        """Add a batch of features, (B, D), accumulated in float64."""
        x = check_features(features, self.dim).cpu().numpy()  # (B, D) float64
        self.n += x.shape[0]
        self.total += x.sum(0)
        self.total_outer += x.T @ x

    @property
    def mu(self) -> np.ndarray:
        """Mean, (D,)."""
        return moments(self.n, self.total, self.total_outer)[0]

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance (divisor n - 1), (D, D), as numpy.cov."""
        return moments(self.n, self.total, self.total_outer)[1]

    def reference(self, **meta: str) -> ReferenceStats:
        """These statistics frozen as a :class:`ReferenceStats`, with provenance strings ``meta``."""
        mu, sigma = moments(self.n, self.total, self.total_outer)
        check_cancellation(mu, sigma, "reference")
        return ReferenceStats(mu, sigma, self.n, _check_meta(meta))

    def save_npz(self, path: str | os.PathLike, **meta: str) -> Path:
        """Write mu, sigma, n and the ``meta`` strings to an npz file, atomically (temporary file + rename).

        The file stores ``mu`` and ``sigma`` under ADM's key names (so ADM's evaluator reads it
        too), ``n``, and each meta string under ``meta_<key>``. The raw sums are not stored:
        they follow from mu, sigma and n.

        Args:
            path: destination ``.npz`` file; its folder is created when missing.
            **meta: provenance strings, e.g. ``extractor_id``, ``weights_sha256``,
                ``preprocessing``, ``dataset_fingerprint``.

        Returns:
            The path written.
        """
        mu, sigma = moments(self.n, self.total, self.total_outer)
        arrays = {"mu": mu, "sigma": sigma, "n": np.int64(self.n)}
        arrays.update({META_PREFIX + k: np.str_(v) for k, v in _check_meta(meta).items()})
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return path

    @classmethod
    def load_npz(cls, path: str | os.PathLike) -> ReferenceStats:
        """Read a file written by :meth:`save_npz`.

        Args:
            path: the ``.npz`` file.

        Returns:
            Its mu, sigma, n and meta strings as a :class:`ReferenceStats`.

        Raises:
            ValueError: the file lacks ``mu``, ``sigma`` or ``n`` (ADM reference batches have no
                ``n``: read those with :func:`load_adm_reference`).
        """
        path = Path(path)
        with np.load(path, allow_pickle=False) as f:
            _require_keys(path, f.files, ("mu", "sigma", "n"),
                          hint="; an ADM reference batch has no 'n': use load_adm_reference()")
            meta = {k[len(META_PREFIX):]: str(f[k][()]) for k in f.files if k.startswith(META_PREFIX)}
            return ReferenceStats(f["mu"], f["sigma"], int(f["n"]), meta, path)


def load_adm_reference(path: str | os.PathLike) -> ReferenceStats:
    """Read mu and sigma from an ADM reference batch (e.g. ``VIRTUAL_imagenet256_labeled.npz``).

    Only ``mu`` and ``sigma`` are read (npz members load lazily, so the images or pool
    features in ``arr_0`` are never loaded); the sample count is not stored, so ``n`` is None.

    Args:
        path: the ``.npz`` file.

    Returns:
        A :class:`ReferenceStats` with ``n=None``.

    Raises:
        ValueError: the file lacks ``mu`` or ``sigma``.
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as f:
        _require_keys(path, f.files, ("mu", "sigma"))
        return ReferenceStats(f["mu"], f["sigma"], None, {}, path)


def statistics_extractor(path: str | os.PathLike) -> str | None:
    """The extractor id a statistics file of ours was computed with; None for another file (an ADM
    batch, an unreadable one: ``load_reference_for`` says what is wrong with it)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            key = f"{META_PREFIX}extractor_id"
            return str(npz[key]) if key in npz.files else None
    except (ValueError, OSError, zipfile.BadZipFile):
        return None


def load_reference_for(path: str | os.PathLike, extractor, fix: str) -> ReferenceStats:
    """Reference statistics from an npz, refused unless they are of ``extractor``'s features.

    Ours (``FeatureStats.save_npz``) carry the extractor's id and weights hash, and a mismatch is
    refused; an ADM reference batch (``mu``, ``sigma`` only) is Inception pool features and needs
    ``inception-tf``. ``fix`` completes the message (``pass --extractor {expected}``; ``{expected}``
    is the extractor the file was computed with).
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            ours = "n" in npz.files  # ADM reference batches carry mu and sigma only
    except (ValueError, OSError, zipfile.BadZipFile) as e:  # numpy's own message suggests allow_pickle, which no option sets
        raise ValueError(f"{path} is not a readable .npz of statistics ({type(e).__name__}); write one with "
                         "latentbench stats, or give an ADM reference batch (an .npz of mu and sigma)") from None
    try:
        reference = FeatureStats.load_npz(path) if ours else load_adm_reference(path)
    except (OSError, EOFError, zipfile.BadZipFile) as e:  # a member cut short or damaged (its CRC): read only now
        raise ValueError(f"{path} is not a readable .npz of statistics ({type(e).__name__}: {e}); write it again with "
                         "latentbench stats, or give an ADM reference batch (an .npz of mu and sigma)") from None
    # the extractor first: another one's features are most often of another width too, and only this error says the fix
    expected = reference.meta.get("extractor_id") if ours else "inception-tf"
    if expected and expected != extractor.id:
        origin = (f"was computed with {expected}" if ours else
                  f"carries only mu and sigma, as an ADM reference batch of Inception features does, so it is read as {expected}")
        raise ValueError(f"{path} {origin}, not {extractor.id}; {fix.format(expected=expected)}")
    if reference.dim != extractor.dim:
        raise ValueError(f"{path} holds {reference.dim}-d statistics but {extractor.id} gives {extractor.dim}-d features")
    sha = reference.meta.get("weights_sha256")
    if ours and sha and sha != extractor.weights_sha256:
        raise ValueError(f"{path} was computed with {expected} weights {sha[:12]}, these are {extractor.weights_sha256[:12]}: "
                         "statistics and samples must come from the same network")
    return reference


def _require_keys(path: Path, present: list[str], required: tuple[str, ...], hint: str = "") -> None:
    """ValueError naming the file and the missing keys when ``present`` lacks any of ``required``."""
    missing = [k for k in required if k not in present]
    if missing:
        raise ValueError(f"{path} is not a statistics file: it lacks the key(s) {missing} "
                         f"(it has {sorted(present)[:10]}){hint}")


def _check_meta(meta: dict[str, Any]) -> dict[str, str]:
    """Metadata must map identifier-like keys to strings (they become npz member names)."""
    for key, value in meta.items():
        if not key.isidentifier():
            raise ValueError(f"meta key {key!r} must be an identifier")
        if not isinstance(value, str):
            raise TypeError(f"meta value of {key!r} must be a str, got {type(value).__name__}")
    return dict(meta)


# ---------------------------------------------------------------------------------------------
# Streamed Poisson bootstrap weights
# ---------------------------------------------------------------------------------------------
# Hand-written: no library draws random numbers as a pure function of (seed, replicate, index)
# in a vectorised way. numpy's Philox could, but only one generator per sample (slow at 50k
# samples); a counter-based hash does all (B, batch) draws in a few array operations.

def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 (Steele, Lea & Flood 2014): a bijective, avalanching hash of uint64 arrays."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2^64 by design
        x = x + _U64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
        return x ^ (x >> _U64(31))


def poisson_weights(seed: int, replicates: int, index: Tensor | np.ndarray) -> np.ndarray:
    """Poisson(1) bootstrap weights, (replicates, len(index)) float64, a pure function of (seed, b, index[i]).

    Each (seed, b, i) is hashed to 64 random bits (SplitMix64 chained over the three keys),
    the top 53 bits give a uniform u in [0, 1), and the weight is the Poisson(1) quantile of u
    (inverse CDF). A sample's weights therefore depend on nothing but its global index.
    """
    idx = np.asarray(torch.as_tensor(index).detach().cpu()).reshape(-1)
    if not np.issubdtype(idx.dtype, np.integer) or (idx < 0).any():
        raise ValueError(f"sample indices must be non-negative integers, "
                         f"got dtype {idx.dtype}, min {idx.min(initial=0)}")
    key = _splitmix64(np.full(1, seed, dtype=_U64))  # (1,)
    key = _splitmix64(key ^ np.arange(replicates, dtype=_U64))  # (R,)
    bits = _splitmix64(key[:, None] ^ idx.astype(_U64)[None, :])  # (R, N)
    u = (bits >> _U64(11)).astype(np.float64) * 2.0**-53  # (R, N) in [0, 1)
    return np.searchsorted(_POISSON1_CDF, u, side="right").astype(np.float64)


# ---------------------------------------------------------------------------------------------
# The metric
# ---------------------------------------------------------------------------------------------

class FrechetDistance(Metric):
    """Fréchet distance of streamed features: rFID against paired real features, or gFID against a reference.

    States are float64 sums with ``dist_reduce_fx="sum"``: per stream (the fake features and,
    without a reference, the real ones) its sample count (``n``, ``n_real``), sum_i x_i (D,) and
    sum_i x_i x_i^T (D, D); with ``bootstrap=B`` also their Poisson-weighted versions per
    replicate, (B,), (B, D) and (B, D, D). Calling the metric (``forward``) only updates it: a per-batch FID
    is meaningless.

    What the bootstrap resamples: against a fixed ``reference``, the fake features only (the
    reference is taken as exact). Without one, real and fake both: with ``resample="pairs"``
    (rFID) the real feature of sample index i draws the same weight as the fake one of index i,
    so pairs are resampled jointly; with ``resample="sides"`` (two unrelated sets, e.g. two
    folders of different images) each side draws its own weights. Resampling only one side of
    two sample sets would duplicate images on that side alone and inflate the replicates' FID,
    whose centred spread then says little.

    Args:
        num_features: feature dimension D.
        reference: fixed real statistics (gFID); None to stream real features as well (rFID).
        bootstrap: number of Poisson bootstrap replicates for the 95% interval: 0 for none, else
            at least ``MIN_BOOTSTRAP`` (the interval's ends are the 2.5th and 97.5th
            percentiles of the replicates). Memory: ``bootstrap * D^2 * 8`` bytes per stream;
            more than 2 GiB in all is refused.
        seed: seed of the bootstrap weights.
        resample: ``"pairs"`` or ``"sides"``, see above (only without a reference).
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, num_features: int, reference: ReferenceStats | None = None, bootstrap: int = 0,
                 seed: int = 0, resample: str = "pairs", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        check_bootstrap(bootstrap)
        if not 0 <= seed < 2**63:  # the real side's independent weights use the seed with the top bit set
            raise ValueError(f"the bootstrap seed must be in [0, 2^63), got {seed}")
        if resample not in ("pairs", "sides"):
            raise ValueError(f"resample must be 'pairs' (real row i with fake row i) or 'sides' (each side on its own), "
                             f"got {resample!r}")
        if reference is not None and reference.dim != num_features:
            raise ValueError(f"reference statistics have {reference.dim} features, the metric {num_features}")
        self.num_features, self.reference, self.bootstrap, self.seed = num_features, reference, bootstrap, seed
        self.resample = resample
        streams = ("fake",) if reference is not None else ("fake", "real")
        check_bootstrap_memory(bootstrap, num_features, len(streams))
        d, b = num_features, bootstrap
        for s in streams:  # counts per stream: the real side of two folders may hold another number of images
            count = "n" if s == "fake" else "n_real"
            self.add_state(count, torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
            if b:
                self.add_state(f"boot_{count}", torch.zeros(b, dtype=torch.float64), dist_reduce_fx="sum")
        for s in streams:
            self.add_state(f"{s}_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{s}_outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
            if b:
                self.add_state(f"boot_{s}_sum", torch.zeros(b, d, dtype=torch.float64), dist_reduce_fx="sum")
                self.add_state(f"boot_{s}_outer", torch.zeros(b, d, d, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, fake: Tensor, *, real: Tensor | None = None, index: Tensor | None = None) -> None:
        """Add a batch. ``real`` by keyword only: the fake side comes first here (gFID has no real one), where PSNR,
        SSIM and LPIPS take ``(real, fake)``, so ``update(real, fake)`` is a TypeError, not a swapped pair.

        Args:
            fake: features of generated or reconstructed images, (B, D).
            real: features of the paired real images, (B, D), row i paired with ``fake[i]``
                (rFID); must be None when the metric has a reference (gFID). Without a
                reference, real features may instead come through ``update_real``.
            index: global sample indices, (B,) int64, each sample exactly once over all
                updates and ranks; required when ``bootstrap > 0``.
        """
        streams = {"fake": check_features(fake, self.num_features, "fake features").to(self.n.device)}
        if real is not None and self.reference is not None:
            raise ValueError("give paired real features (rFID) or a reference at construction (gFID), not both")
        if real is not None:
            streams["real"] = check_features(real, self.num_features, "real features").to(self.n.device)
            if real.shape != fake.shape:
                raise ValueError(f"real and fake features must pair row by row, "
                                 f"got {tuple(real.shape)} and {tuple(fake.shape)}")
        self._add(streams, index)

    def update_real(self, real: Tensor, index: Tensor | None = None) -> None:
        """Add real features on their own (no reference): the real side of two sample sets streamed apart.

        Args:
            real: features of real images, (B, D).
            index: global indices of these real samples, (B,) int64, each once over all updates
                and ranks; required when ``bootstrap > 0``. Under ``resample="pairs"`` real index i
                is resampled with fake index i; under ``"sides"`` the indices are the real side's own.
        """
        if self.reference is not None:
            raise ValueError("update_real needs a metric without a reference (the reference is the real side)")
        self._add({"real": check_features(real, self.num_features, "real features").to(self.n.device)}, index)

    def _add(self, streams: dict[str, Tensor], index: Tensor | None) -> None:
        """Add (B, D) float64 features to their streams' sums and, with a bootstrap, to every replicate."""
        batch = next(iter(streams.values())).shape[0]
        if index is not None and tuple(index.shape) != (batch,):
            raise ValueError(f"index must be ({batch},), got {tuple(index.shape)}")
        if self.bootstrap and index is None:
            raise ValueError("bootstrap > 0 needs the global sample index of each row (index=...)")
        for s, x in streams.items():
            getattr(self, "n" if s == "fake" else "n_real").add_(x.shape[0])
            getattr(self, f"{s}_sum").add_(x.sum(0))
            getattr(self, f"{s}_outer").addmm_(x.T, x)
        if self.bootstrap:
            self._update_bootstrap(streams, index)

    def _weights(self, stream: str, index: Tensor) -> Tensor:
        """(R, B) Poisson(1) weights of a stream's rows: the real side shares the fake side's under
        ``resample="pairs"`` and draws its own (the seed with its top bit set) under ``"sides"``."""
        seed = self.seed | (1 << 63) if stream == "real" and self.resample == "sides" else self.seed
        return torch.from_numpy(poisson_weights(seed, self.bootstrap, index)).to(self.n.device)

    def _update_bootstrap(self, streams: dict[str, Tensor], index: Tensor) -> None:
        """Add the batch to every replicate with its Poisson(1) weights."""
        dim = self.num_features
        weights: dict[str, Tensor] = {}  # by seed stream: a real/fake pair of one update shares its weights under "pairs"
        for s, x in streams.items():  # x: (B, D)
            key = "real" if s == "real" and self.resample == "sides" else "fake"
            w = weights[key] = weights[key] if key in weights else self._weights(s, index)  # (R, B)
            getattr(self, "boot_n" if s == "fake" else "boot_n_real").add_(w.sum(1))
            batch = w.shape[1]
            chunk = max(1, BOOTSTRAP_CHUNK_ELEMENTS // (batch * dim))  # replicates per batched product
            getattr(self, f"boot_{s}_sum").add_(w @ x)  # (R, D)
            outer = getattr(self, f"boot_{s}_outer")  # (R, D, D)
            for r in range(0, self.bootstrap, chunk):
                wc = w[r:r + chunk]  # (chunk, B)
                # outer[b] += x^T diag(w_b) x, in place, for a chunk of replicates at once
                outer[r:r + chunk].baddbmm_(wc[:, None, :] * x.T, x.expand(len(wc), batch, dim))

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Update only; a per-batch FID would be both costly and meaningless."""
        self.update(*args, **kwargs)

    def compute(self) -> dict[str, Any]:
        """FID of everything seen (summed over ranks), with its bootstrap interval.

        Returns:
            ``{"value": float, "n": fake sample count, "n_real": real count (None for a
            reference without one), "interval": [lo, hi] (2.5 / 97.5 percentiles of the
            replicate FIDs, shifted down by "bootstrap_bias", the lower end at least 0) or None, "bootstrap": B, "interval_level": 0.95,
            "bootstrap_bias": mean of the replicate FIDs minus "value", or None}``.

        Raises:
            ValueError: fewer than 2 samples on a side; under ``resample="pairs"`` real and fake
            counts that differ; a covariance spoiled by cancellation (``check_cancellation``,
            which warns of a milder loss). A bootstrap replicate with total weight below 2 (a
            handful of samples) gives no interval, with a warning.
        """
        n = int(self.n)
        n_real = self.reference.n if self.reference is not None else int(self.n_real)
        if min(n, 2 if self.reference is not None else n_real) < 2:
            raise ValueError(f"FID needs at least 2 samples per side to estimate a covariance, got {n} fake and "
                             f"{n_real} real")
        if self.reference is None and self.resample == "pairs" and n_real != n:
            raise ValueError(f"resample='pairs' needs one real feature per fake one, got {n_real} real and {n} fake "
                             "(use resample='sides' for two unpaired sets)")
        value = self._distance(n, self.fake_sum, self.fake_outer,
                               None if self.reference is not None else (n_real, self.real_sum, self.real_outer),
                               check=True)
        interval = bias = None
        lightest = min(float(c.min()) for c in self._boot_counts()) if self.bootstrap else None
        if lightest is not None and lightest < 2:  # the value stands; only its interval cannot be had
            warnings.warn(f"FID of {n} samples is given without a bootstrap interval: a replicate drew a total weight "
                          f"of {lightest:g} (< 2), too few to estimate a covariance; about 20 samples or more give one "
                          "(or set the bootstrap to 0)", stacklevel=1)
        elif self.bootstrap:
            replicates = self.replicate_values()
            lo, hi = np.percentile(replicates, [50 * (1 - INTERVAL_LEVEL), 50 * (1 + INTERVAL_LEVEL)])
            bias = float(replicates.mean() - value)
            # centred: the spread, not the resampling bias; a distance is never negative, so at tiny n,
            # where the shift exceeds the low percentile, the interval starts at 0
            interval = [max(float(lo) - bias, 0.0), float(hi) - bias]
        return {"value": value, "n": n, "n_real": n_real,
                "interval": interval, "bootstrap": self.bootstrap, "interval_level": INTERVAL_LEVEL,
                "bootstrap_bias": bias}

    def _boot_counts(self) -> list[Tensor]:
        """Each resampled stream's total weight per replicate, (B,) each."""
        return [self.boot_n] + ([self.boot_n_real] if self.reference is None else [])

    def replicate_values(self) -> np.ndarray:
        """FID of each bootstrap replicate, (B,) float64 (unsynced under DDP; ``compute()`` syncs first)."""
        if not self.bootstrap:
            raise ValueError("the metric was built with bootstrap=0: there are no replicates")
        counts = [c.cpu().numpy() for c in self._boot_counts()]
        lightest = min(c.min() for c in counts)
        if lightest < 2:
            raise ValueError(f"a bootstrap replicate drew a total weight of {lightest:g} (< 2) from "
                             f"{int(self.n)} samples: too few samples for a bootstrap interval")
        real_counts = counts[-1] if self.reference is None else None
        return np.array([
            self._distance(counts[0][b], self.boot_fake_sum[b], self.boot_fake_outer[b],
                           None if self.reference is not None
                           else (real_counts[b], self.boot_real_sum[b], self.boot_real_outer[b]))
            for b in range(self.bootstrap)
        ])

    def _distance(self, n: float, fake_sum: Tensor, fake_outer: Tensor,
                  real: tuple[float, Tensor, Tensor] | None, check: bool = False) -> float:
        """FID of one set of fake sums against the reference or against real sums (their count, sum, outer sum);
        ``check``: first ``check_cancellation`` of the covariances (the value's, not every replicate's)."""
        mu1, sigma1 = moments(n, fake_sum.cpu().numpy(), fake_outer.cpu().numpy())
        if check:
            check_cancellation(mu1, sigma1, "fake")
        if real is None:
            ref = self.reference
            return frechet_distance(mu1, sigma1, ref.mu, ref.sigma, sqrt_sigma2=ref.sqrt_sigma)
        mu2, sigma2 = moments(real[0], real[1].cpu().numpy(), real[2].cpu().numpy())
        if check:
            check_cancellation(mu2, sigma2, "real")
        return frechet_distance(mu1, sigma1, mu2, sigma2)
