"""Fréchet distance against scipy / numpy references and torch-fidelity; streaming, files, bootstrap, DDP sums."""
import numpy as np
import pytest
import scipy.linalg
import torch

from latentbench.benchmark.fid import (
    FeatureStats,
    FrechetDistance,
    ReferenceStats,
    frechet_distance,
    load_adm_reference,
    poisson_weights,
    psd_sqrt,
)

D = 64


def _features(n, shift=0.0, scale=1.0, seed=0, dim=D):
    """Correlated, non-centred, well-conditioned features (n, dim) in float32."""
    g = torch.Generator().manual_seed(seed)
    rotation = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0]
    mix = torch.linspace(0.5, 2.0, dim, dtype=torch.float64)[:, None] * rotation  # singular values 0.5..2
    return (torch.randn(n, dim, generator=g, dtype=torch.float64) @ mix * scale + shift + 0.5).float()


def _reference_fid(a, b):
    """FID written out from numpy mean/cov and scipy's sqrtm, float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _stats(x):
    stats = FeatureStats.empty(x.shape[1])
    stats.update(x)
    return stats


def _gaussians(x):
    x = np.asarray(x, np.float64)
    return x.mean(0), np.cov(x, rowvar=False)


REAL, FAKE = _features(400, seed=1), _features(300, shift=0.3, scale=1.3, seed=2)


def test_frechet_distance_matches_scipy_reference():
    ours = frechet_distance(*_gaussians(REAL), *_gaussians(FAKE))
    assert ours == pytest.approx(_reference_fid(REAL, FAKE), rel=1e-6)
    assert ours > 1.0
    assert abs(frechet_distance(*_gaussians(REAL), *_gaussians(REAL))) < 1e-6


def test_frechet_distance_matches_torch_fidelity():
    metric_fid = pytest.importorskip("torch_fidelity.metric_fid")
    stats_real = metric_fid.fid_features_to_statistics(REAL.double())
    stats_fake = metric_fid.fid_features_to_statistics(FAKE.double())
    ref = metric_fid.fid_statistics_to_metric(stats_real, stats_fake, False)[metric_fid.KEY_METRIC_FID]
    assert frechet_distance(*_gaussians(REAL), *_gaussians(FAKE)) == pytest.approx(ref, rel=1e-6)


def _span_fid(a, b):
    """Exact FID of two samples with n < D, computed in their span: the trace root is the nuclear norm
    of X1 X2^T (Xi the centred features over sqrt(n - 1)), so no zero eigenvalue is ever formed."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    x1, x2 = (a - a.mean(0)) / np.sqrt(len(a) - 1), (b - b.mean(0)) / np.sqrt(len(b) - 1)
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + (x1**2).sum() + (x2**2).sum() - 2 * np.linalg.svd(x1 @ x2.T, compute_uv=False).sum())


@pytest.mark.parametrize("n1, n2, dim", [(20, 20, 64), (20, 30, 64), (100, 80, 256), (10, 12, 2048)])
def test_frechet_distance_singular_covariances_are_exact(n1, n2, dim):
    """n < D: the D - n zero eigenvalues are rounding noise; zeroed, the value is the exact one.

    sqrtm and eigvals(S1 S2) (torch-fidelity) keep the noise's square roots and read lower, by
    up to ~2e-4 relative at D = 2048 (measured), so they are held to 1e-3 only.
    """
    metric_fid = pytest.importorskip("torch_fidelity.metric_fid")
    a, b = _features(n1, seed=3, dim=dim), _features(n2, shift=0.2, seed=4, dim=dim)
    value = frechet_distance(*_gaussians(a), *_gaussians(b))
    assert value == pytest.approx(_span_fid(a, b), rel=1e-10)
    by_eigvals = metric_fid.fid_statistics_to_metric(metric_fid.fid_features_to_statistics(a.double()),
                                                     metric_fid.fid_features_to_statistics(b.double()), False)
    assert value == pytest.approx(by_eigvals[metric_fid.KEY_METRIC_FID], rel=1e-3)
    if dim <= 256:  # sqrtm at D = 2048 takes ~15 s
        assert value == pytest.approx(_reference_fid(a, b), rel=1e-3)


def test_the_distance_of_a_few_samples_to_themselves_is_zero_not_negative():
    """Ten samples of 2,048 features: 2,038 rounding-level eigenvalues used to add up to -8e-5."""
    a = _features(10, seed=5, dim=2048)
    value = frechet_distance(*_gaussians(a), *_gaussians(a))
    assert 0.0 <= value < 1e-9 * float(np.trace(np.cov(np.asarray(a, np.float64), rowvar=False)))


@pytest.mark.parametrize(("n", "seed", "dim"), [(12, 4, 16), (300, 3, 16), (10, 1, 16)])
def test_the_distance_of_samples_to_themselves_is_never_below_zero(n, seed, dim):
    """Full-rank or not, the sum cancels to rounding either side of zero; these read -1.8e-13, -4.3e-14, -1.4e-14."""
    a = _features(n, seed=seed, dim=dim)
    assert frechet_distance(*_gaussians(a), *_gaussians(a)) == 0.0


def test_frechet_distance_with_a_known_root_and_psd_sqrt():
    (mu1, s1), (mu2, s2) = _gaussians(FAKE), _gaussians(REAL)
    root = psd_sqrt(s2)
    np.testing.assert_allclose(root @ root, s2, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(root, root.T)  # symmetric, as the trace identity needs
    assert frechet_distance(mu1, s1, mu2, s2, sqrt_sigma2=root) == frechet_distance(mu1, s1, mu2, s2)
    reference = ReferenceStats(mu2, s2, len(REAL))
    assert reference.sqrt_sigma is reference.sqrt_sigma  # computed once
    np.testing.assert_array_equal(reference.sqrt_sigma, root)


def test_frechet_distance_refuses_a_covariance_that_is_not_psd():
    mu, good = np.zeros(3), np.diag([2.0, 1.0, 0.0])
    bad = np.diag([2.0, 1.0, -0.5])  # no set of features has a negative variance
    with pytest.raises(ValueError, match="second covariance is not positive semi-definite: eigenvalue -0.5"):
        frechet_distance(mu, good, mu, bad)
    with pytest.raises(ValueError, match="first covariance is not positive semi-definite"):
        frechet_distance(mu, bad, mu, good + np.eye(3))
    rounding = np.diag([2.0, 1.0, -1e-13])  # rounding-level negatives are zeros
    assert frechet_distance(mu, rounding, mu, rounding) == pytest.approx(0.0, abs=1e-12)


def test_streaming_in_batches_equals_one_update():
    whole, split = _stats(REAL), FeatureStats.empty(D)
    for i in range(0, len(REAL), 7):
        split.update(REAL[i:i + 7])
    assert split.n == whole.n == len(REAL)
    np.testing.assert_allclose(split.total, whole.total, rtol=1e-10)
    np.testing.assert_allclose(split.total_outer, whole.total_outer, rtol=1e-10)
    np.testing.assert_allclose(whole.mu, REAL.double().numpy().mean(0), rtol=1e-10)
    np.testing.assert_allclose(whole.sigma, np.cov(REAL.double().numpy(), rowvar=False), rtol=1e-9, atol=1e-12)

    one, batched = FrechetDistance(D), FrechetDistance(D)
    real = REAL[:300]
    one.update(FAKE, real=real)
    for i in range(0, 300, 7):
        batched.update(FAKE[i:i + 7], real=real[i:i + 7])
    for name in ("fake_sum", "fake_outer", "real_sum", "real_outer"):
        torch.testing.assert_close(getattr(batched, name), getattr(one, name), rtol=1e-12, atol=1e-12)
    assert batched.compute()["value"] == pytest.approx(one.compute()["value"], rel=1e-10)
    assert one.compute()["value"] == pytest.approx(_reference_fid(REAL[:300], FAKE), rel=1e-6)
    assert one.compute()["n"] == one.compute()["n_real"] == 300
    called = FrechetDistance(D)
    assert called(FAKE, real=real) is None  # forward only updates: no per-batch FID
    assert called.compute()["value"] == one.compute()["value"]


def test_saved_reference_gives_the_same_fid_as_streamed_real(tmp_path):
    meta = {"extractor_id": "inception-tf", "weights_sha256": "ab" * 32, "preprocessing": "adm-center-crop-256"}
    path = _stats(REAL[:300]).save_npz(tmp_path / "stats" / "ref.npz", **meta)
    ref = FeatureStats.load_npz(path)
    assert isinstance(ref, ReferenceStats) and ref.n == 300 and ref.meta == meta and ref.path == path
    assert not list(path.parent.glob(".*tmp"))  # the temporary file was renamed away

    gfid, rfid = FrechetDistance(D, reference=ref), FrechetDistance(D)
    gfid.update(FAKE)
    rfid.update(FAKE, real=REAL[:300])
    assert gfid.compute()["value"] == pytest.approx(rfid.compute()["value"], rel=1e-10)
    with pytest.raises(TypeError, match="positional"):  # PSNR's and SSIM's (real, fake) order here would swap n and n_real
        FrechetDistance(D).update(REAL[:300], FAKE)
    assert gfid.compute()["n_real"] == 300
    assert ref.sha256 == _stats(REAL[:300]).reference().sha256 and len(ref.sha256) == 64


def test_adm_reference_loads_and_missing_keys_are_named(tmp_path):
    mu, sigma = _gaussians(REAL)
    np.savez(tmp_path / "VIRTUAL_tiny.npz", mu=mu, sigma=sigma, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    ref = load_adm_reference(tmp_path / "VIRTUAL_tiny.npz")
    assert ref.n is None and ref.mu.dtype == np.float64
    np.testing.assert_array_equal(ref.sigma, sigma)
    gfid = FrechetDistance(D, reference=ref)
    gfid.update(FAKE)
    assert gfid.compute()["value"] == pytest.approx(_reference_fid(REAL, FAKE), rel=1e-6)
    assert gfid.compute()["n_real"] is None

    np.savez(tmp_path / "features.npz", arr_0=REAL.numpy())
    with pytest.raises(ValueError, match=r"features\.npz.*\['mu', 'sigma'\]"):
        load_adm_reference(tmp_path / "features.npz")
    with pytest.raises(ValueError, match=r"VIRTUAL_tiny\.npz.*\['n'\].*load_adm_reference"):
        FeatureStats.load_npz(tmp_path / "VIRTUAL_tiny.npz")


def _bootstrapped(fake, real=None, batch=16, reference=None, bootstrap=20, seed=0, order=None):
    metric = FrechetDistance(fake.shape[1], reference=reference, bootstrap=bootstrap, seed=seed)
    order = torch.arange(len(fake)) if order is None else order
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        metric.update(fake[idx], real=None if real is None else real[idx], index=idx)
    return metric


def test_poisson_weights_depend_only_on_the_index():
    index = torch.arange(5000)
    w = poisson_weights(7, 4, index)
    assert w.shape == (4, 5000) and (w == w.round()).all()
    perm = torch.randperm(5000, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(poisson_weights(7, 4, index[perm]), w[:, perm.numpy()])
    np.testing.assert_array_equal(poisson_weights(7, 4, index[:10]), w[:, :10])
    assert (poisson_weights(8, 4, index) != w).mean() > 0.5  # another seed, other weights
    # Poisson(1): mean 1, variance 1, P(0) = 1/e
    assert w.mean() == pytest.approx(1.0, abs=0.03) and w.var() == pytest.approx(1.0, abs=0.05)
    assert (w == 0).mean() == pytest.approx(np.exp(-1), abs=0.02)


# Bootstrap tests use D = 16, small against n: replicates hold ~63% distinct samples, and at
# n ~ D their covariances turn singular and the square root's rounding no longer allows 1e-10 comparisons.
D_BOOT = 16
REAL_BOOT, FAKE_BOOT = _features(300, seed=1, dim=D_BOOT), _features(300, shift=0.3, scale=1.3, seed=2, dim=D_BOOT)


def test_bootstrap_is_deterministic_and_independent_of_batching():
    real, fake = REAL_BOOT[:120], FAKE_BOOT[:120]
    a = _bootstrapped(fake, real, batch=5)
    b = _bootstrapped(fake, real, batch=13, order=torch.randperm(120, generator=torch.Generator().manual_seed(1)))
    np.testing.assert_allclose(a.replicate_values(), b.replicate_values(), rtol=1e-10)
    np.testing.assert_array_equal(a.replicate_values(), _bootstrapped(fake, real, batch=5).replicate_values())
    assert not np.allclose(a.replicate_values(), _bootstrapped(fake, real, batch=60, seed=1).replicate_values())

    result = a.compute()
    assert result["interval"][0] < result["interval"][1]
    assert result["bootstrap"] == 20 and result["interval_level"] == 0.95
    assert result["value"] == pytest.approx(_reference_fid(real, fake), rel=1e-6)
    assert result["bootstrap_bias"] == pytest.approx(a.replicate_values().mean() - result["value"], rel=1e-12)


def test_bootstrap_against_reference_resamples_fake_only():
    ref = _stats(REAL_BOOT).reference()
    result = _bootstrapped(FAKE_BOOT, reference=ref, bootstrap=50).compute()
    lo, hi = result["interval"]
    assert lo < result["value"] < hi and result["n"] == 300 and result["n_real"] == 300
    replicates = _bootstrapped(FAKE_BOOT, reference=ref, bootstrap=50).replicate_values()
    np.testing.assert_allclose(np.percentile(replicates, [2.5, 97.5]) - (replicates.mean() - result["value"]),
                               [lo, hi], rtol=1e-12)


def _weighted_fid(fake, w_fake, real, w_real):
    """One replicate written out: each row repeated by its integer weight, then the plain FID (numpy / scipy)."""
    return _reference_fid(np.repeat(np.asarray(fake, np.float64), w_fake.astype(int), axis=0),
                          np.repeat(np.asarray(real, np.float64), w_real.astype(int), axis=0))


def test_two_unpaired_sets_resample_each_side_on_its_own():
    """resample='sides' (two folders of different images): the real side streams apart, with its own count and its own
    weights; each replicate equals the FID of the two sets with rows repeated by their weights."""
    real, fake = REAL_BOOT[:150], FAKE_BOOT[:120]
    metric = FrechetDistance(D_BOOT, bootstrap=10, seed=3, resample="sides")
    for i in range(0, 150, 40):
        metric.update_real(real[i:i + 40], index=torch.arange(i, min(i + 40, 150)))
    for i in range(0, 120, 50):
        metric.update(fake[i:i + 50], index=torch.arange(i, min(i + 50, 120)))
    result = metric.compute()
    assert (result["n"], result["n_real"]) == (120, 150)
    assert result["value"] == pytest.approx(_reference_fid(real, fake), rel=1e-9)
    w_fake, w_real = poisson_weights(3, 10, torch.arange(120)), poisson_weights(3 | 1 << 63, 10, torch.arange(150))
    assert not np.array_equal(w_fake, w_real[:, :120])  # independent draws, not the pairs' shared ones
    by_hand = [_weighted_fid(fake, w_fake[b], real, w_real[b]) for b in range(10)]
    np.testing.assert_allclose(metric.replicate_values(), by_hand, rtol=1e-8)


def test_pairs_streamed_apart_resample_as_pairs():
    """resample='pairs' with the real side streamed by update_real gives the replicates of joint (fake, real) updates."""
    real, fake = REAL_BOOT[:100], FAKE_BOOT[:100]
    joint = _bootstrapped(fake, real, bootstrap=10)
    apart = FrechetDistance(D_BOOT, bootstrap=10)
    apart.update_real(real[50:], index=torch.arange(50, 100))
    apart.update(fake, index=torch.arange(100))
    apart.update_real(real[:50], index=torch.arange(50))
    np.testing.assert_allclose(apart.replicate_values(), joint.replicate_values(), rtol=1e-10)
    w = poisson_weights(0, 10, torch.arange(100))
    np.testing.assert_allclose(apart.replicate_values()[:3], [_weighted_fid(fake, w[b], real, w[b]) for b in range(3)],
                               rtol=1e-8)
    short = FrechetDistance(D_BOOT)
    short.update(fake)
    short.update_real(real[:60])
    with pytest.raises(ValueError, match="one real feature per fake one, got 60 real and 100 fake"):
        short.compute()


@pytest.mark.parametrize("bootstrap", [-1, 1, 3, 9])
def test_too_few_replicates_are_refused(bootstrap):
    """One replicate printed [v, v] as a "95%" interval: both percentiles fell on it."""
    with pytest.raises(ValueError, match="must be 0 \\(no interval\\) or at least 10 replicates"):
        FrechetDistance(D, bootstrap=bootstrap)


def test_resampling_arguments_are_checked():
    with pytest.raises(ValueError, match="use at most 32 replicates"):  # two streams at Inception's D
        FrechetDistance(2048, bootstrap=33)
    FrechetDistance(2048, reference=ReferenceStats(np.zeros(2048), np.eye(2048)), bootstrap=64)  # one stream: 64 fit
    with pytest.raises(ValueError, match="resample must be 'pairs'"):
        FrechetDistance(D, resample="both")
    with pytest.raises(ValueError, match="without a reference"):
        FrechetDistance(D, reference=_stats(REAL).reference()).update_real(REAL[:4])


def test_interval_is_centred_on_the_value_despite_the_resampling_bias():
    """Resampling duplicates samples: at D = 64, n = 300 the raw replicates sit wholly above the value."""
    metric = _bootstrapped(FAKE, REAL[:300], bootstrap=20)
    result, replicates = metric.compute(), metric.replicate_values()
    assert result["bootstrap_bias"] > 0 and np.percentile(replicates, 2.5) > result["value"]
    assert result["interval"][0] < result["value"] < result["interval"][1]


def test_interval_never_goes_below_zero_at_tiny_n():
    """n = 12 at D = 4: the resampling bias exceeds the replicates' low percentile; a distance is >= 0."""
    metric = _bootstrapped(_features(12, seed=2, dim=4), _features(12, seed=1, dim=4), bootstrap=50)
    result, replicates = metric.compute(), metric.replicate_values()
    assert np.percentile(replicates, 2.5) - result["bootstrap_bias"] < 0  # the unclipped end
    assert result["interval"][0] == 0.0 < result["value"] < result["interval"][1]


def test_two_ranks_sum_to_the_single_process_statistics():
    """DDP emulated: disjoint index sets on two metrics, states summed as an all-reduce would."""
    real, fake = _features(101, seed=5, dim=D_BOOT), _features(101, shift=0.2, seed=6, dim=D_BOOT)
    order = torch.randperm(101, generator=torch.Generator().manual_seed(2))
    rank0 = _bootstrapped(fake, real, batch=8, order=order[0::2])  # 51 samples
    rank1 = _bootstrapped(fake, real, batch=8, order=order[1::2])  # 50 samples
    single = _bootstrapped(fake, real, batch=10)
    rank0.merge_state(rank1)
    merged, whole = rank0.compute(), single.compute()
    assert merged["n"] == whole["n"] == 101
    assert merged["value"] == pytest.approx(whole["value"], rel=1e-10)
    np.testing.assert_allclose(rank0.replicate_values(), single.replicate_values(), rtol=1e-10)
    np.testing.assert_allclose(merged["interval"], whole["interval"], rtol=1e-10)


def test_bad_inputs_raise_clear_errors():
    metric = FrechetDistance(D)
    nan = FAKE[:4].clone()
    nan[2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"positions \[2\].*NaN"):
        metric.update(nan, real=REAL[:4])
    with pytest.raises(ValueError, match=r"must be \(B, 64\)"):
        metric.update(FAKE[:4, :32], real=REAL[:4, :32])
    with pytest.raises(ValueError, match="not both"):
        FrechetDistance(D, reference=_stats(REAL).reference()).update(FAKE[:4], real=REAL[:4])
    fake_only = FrechetDistance(D)  # without a reference and without real features there is nothing to compare with
    fake_only.update(FAKE[:4])
    with pytest.raises(ValueError, match="at least 2 samples per side.*got 4 fake and 0 real"):
        fake_only.compute()
    with pytest.raises(ValueError, match="pair row by row"):
        metric.update(FAKE[:4], real=REAL[:5])
    metric.update(FAKE[:1], real=REAL[:1])
    with pytest.raises(ValueError, match="at least 2 samples"):
        metric.compute()
    with pytest.raises(ValueError, match="index"):
        FrechetDistance(D, bootstrap=10).update(FAKE[:4], real=REAL[:4])
    with pytest.raises(ValueError, match="non-negative integers"):
        FrechetDistance(D, bootstrap=10).update(FAKE[:4], real=REAL[:4], index=torch.tensor([0, 1, -2, 3]))
    with pytest.raises(ValueError, match="GiB"):
        FrechetDistance(2048, bootstrap=100)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN or Inf"):
        frechet_distance(np.full(3, np.nan), np.eye(3), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r"sigma \(D, D\)"):
        frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))


def test_a_handful_of_samples_gives_the_fid_without_an_interval():
    """A replicate of 4 samples can draw a total weight below 2; the value stands, only its interval is left out."""
    real, fake = REAL_BOOT[:4], FAKE_BOOT[:4]
    metric = _bootstrapped(fake, real, bootstrap=200)
    with pytest.warns(UserWarning, match="FID of 4 samples is given without a bootstrap interval"):
        result = metric.compute()
    assert result["interval"] is None and result["value"] == pytest.approx(_bootstrapped(fake, real, bootstrap=0).compute()["value"])


def test_a_covariance_lost_to_cancellation_is_said_not_returned():
    """sum x x^T - n mu mu^T cancels when the mean dwarfs the spread: a constant offset of 1e6 on unit-spread features
    moved the FID by 1.5e-4 relative and 1e7 by 23%, silently. 1e6 now warns, 1e7 is refused; 1e4 (7e-8) passes."""
    import warnings

    real, fake = REAL_BOOT[:200].double(), FAKE_BOOT[:200].double()
    for offset, expect in ((1e4, None), (1e6, "keeps only about 4 significant digits"), (1e7, "ValueError")):
        metric = FrechetDistance(D_BOOT)
        metric.update(fake + offset, real=real + offset)
        if expect == "ValueError":
            with pytest.raises(ValueError, match="e\\+06 times their typical spread.*2 significant digits.*centre the"):
                metric.compute()
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = metric.compute()["value"]
        messages = [str(w.message) for w in caught]
        assert (not messages) if expect is None else any(expect in m for m in messages)
        assert value == pytest.approx(_reference_fid(real, fake), rel=1e-6 if expect is None else 1e-2)
    with pytest.raises(ValueError, match="reference features show no spread above the rounding"):
        _stats(REAL_BOOT.double() + 1e8).reference()  # the sums cancel the spread away entirely


def test_a_constant_feature_is_no_cancellation():
    """One feature without spread (a saturated unit, duplicated images) loses nothing to the sums; a per-dimension
    mean / spread test had refused this correct FID."""
    import warnings

    real, fake = REAL_BOOT[:200].double().clone(), FAKE_BOOT[:200].double().clone()
    real[:, 0], fake[:, 0] = 0.7, 0.7
    metric = FrechetDistance(D_BOOT)
    metric.update(fake, real=real)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = metric.compute()["value"]
    assert value == pytest.approx(_reference_fid(real[:, 1:], fake[:, 1:]), rel=1e-9)


def test_a_damaged_or_non_finite_statistics_file_is_named_with_the_fix(tmp_path):
    """A statistics file whose member is damaged (its CRC, found only when read) and one of NaN values: a ValueError
    naming the file and the fix; before, the first ended latentbench metrics with zipfile's BadZipFile traceback and
    the second said 'reference statistics in x.npz Gaussian: mu or sigma contains NaN or Inf'."""
    from types import SimpleNamespace

    from latentbench.benchmark.fid import load_reference_for

    extractor = SimpleNamespace(id="domain-mnist", dim=D, weights_sha256="0" * 64)
    np.savez(tmp_path / "crc.npz", mu=np.zeros(D), sigma=np.eye(D), n=np.array(10))
    data = bytearray((tmp_path / "crc.npz").read_bytes())
    at = data.index(b"sigma.npy") + 200  # inside sigma's stored bytes, past its local header and .npy header
    data[at] ^= 0xFF
    (tmp_path / "crc.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"crc.npz is not a readable .npz of statistics \(BadZipFile: Bad CRC-32 for "
                                         r"file 'sigma.npy'\); write it again with latentbench stats"):
        load_reference_for(tmp_path / "crc.npz", extractor, "")
    np.savez(tmp_path / "nan.npz", mu=np.full(D, np.nan), sigma=np.eye(D), n=np.array(10))
    with pytest.raises(ValueError, match=r"^reference statistics in \S*nan.npz: mu or sigma contains NaN or Inf; no FID "
                                         "can be computed from it: write it again with latentbench stats"):
        load_reference_for(tmp_path / "nan.npz", extractor, "")
