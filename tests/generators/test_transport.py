"""Flow-matching transport: the time shift, time samplers, exact Gaussian flows, guidance and per-sample seeds."""
import json
import math

import pytest
import torch
from torch import nn

from latentbench.generators import seeding
from latentbench.generators.transport import (
    FlowMatching,
    GuidedVelocity,
    TimeSampler,
    Transport,
    dimension_shift,
    shift_time,
)

ALPHAS = [0.25, 1.0, 3.0, 6.93]


# ---- time shift ------------------------------------------------------------------------------

def unshift_time(t, alpha):
    """The inverse of the shift, solved by hand: t' = t / (t + alpha (1 - t))  <=>  t = alpha t' / (alpha t' + 1 - t')."""
    return alpha * t / (alpha * t + (1 - t))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_shift_and_unshift_are_inverses_and_fix_the_endpoints(alpha):
    t = torch.rand(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(unshift_time(shift_time(t, alpha), alpha), t)
    torch.testing.assert_close(shift_time(unshift_time(t, alpha), alpha), t)
    assert shift_time(torch.tensor([0.0, 1.0]), alpha).tolist() == [0.0, 1.0]
    assert unshift_time(torch.tensor([0.0, 1.0]), alpha).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("alpha", ALPHAS)
def test_shift_matches_the_noise_level_formula(alpha):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    s = 1 - t  # noise level
    torch.testing.assert_close(shift_time(t, alpha), 1 - alpha * s / (1 + (alpha - 1) * s))


def test_alpha_one_is_identity_and_alpha_above_one_adds_noise():
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    torch.testing.assert_close(shift_time(t, 1.0), t)
    assert (shift_time(t, 3.0) < t).all() and (shift_time(t, 0.5) > t).all()
    assert shift_time(0.5, 3.0) == pytest.approx(0.25)  # floats work too


def test_dimension_shift_is_rae_alpha():
    assert dimension_shift(16 * 16 * 768) == pytest.approx(math.sqrt(196608 / 4096))
    assert dimension_shift(16 * 16 * 768) == pytest.approx(6.93, abs=0.01)
    assert dimension_shift(4096) == 1.0 and dimension_shift(256, base=256) == 1.0


# ---- training times --------------------------------------------------------------------------

N_TIMES = 20_000  # standard error of a mean/median ~ 0.3 / sqrt(N) ~ 0.002; tolerances are 0.01


def test_uniform_times_have_mean_one_half():
    t = TimeSampler("uniform")(N_TIMES, generator=torch.Generator().manual_seed(0))
    assert t.shape == (N_TIMES,) and 0 <= t.min() and t.max() < 1
    assert t.mean().item() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (1.0, 0.5), (-0.5, 2.0)])
def test_logit_normal_median_is_sigmoid_of_mean(mean, std):
    t = TimeSampler("logit-normal", mean, std)(N_TIMES, generator=torch.Generator().manual_seed(0))
    assert t.median().item() == pytest.approx(torch.sigmoid(torch.tensor(mean)).item(), abs=0.01)
    logits = torch.logit(t.double())
    assert logits.std().item() == pytest.approx(std, rel=0.03)


def test_transport_shifts_the_sampled_times():
    draw = TimeSampler("uniform")(100, generator=torch.Generator().manual_seed(1))
    shifted = Transport(TimeSampler("uniform"), shift=3.0).sample_time(100, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(shifted, shift_time(draw, 3.0))


# ---- an exact flow: Gaussian noise to Gaussian data ------------------------------------------

MU, SIGMA = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64), 0.5


class GaussianVelocity(nn.Module):
    """The exact velocity ``E[x1 - x0 | x_t]`` for x0 ~ N(0, I), x1 ~ N(mu, sigma^2 I), x_t = (1 - t) x0 + t x1.

    Per dimension (x0, x1, x_t) are jointly Gaussian: ``E[x_t] = t mu``, ``Var[x_t] = (1 - t)^2 + t^2 sigma^2``,
    ``E[v] = mu`` and ``Cov(v, x_t) = t sigma^2 - (1 - t)``, so
    ``E[v | x_t] = mu + (t sigma^2 - (1 - t)) / Var[x_t] (x_t - t mu)``. Its flow maps z to ``mu + sigma z``.
    """

    def __init__(self, mu: torch.Tensor = MU, sigma: float = SIGMA):
        super().__init__()
        self.mu, self.sigma = mu, sigma

    def forward(self, x, t, y):
        t = t.to(x.dtype)[:, None]  # (B, 1)
        var = (1 - t) ** 2 + t ** 2 * self.sigma ** 2  # (B, 1)
        return self.mu + (t * self.sigma ** 2 - (1 - t)) / var * (x - t * self.mu)


def _gaussian_samples(n, steps, method, alpha):
    z = torch.randn(n, len(MU), generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # (N, D)
    y = torch.zeros(n, dtype=torch.long)
    return z, Transport(shift=alpha).sample(GaussianVelocity(), z, y, steps=steps, method=method)


@pytest.mark.parametrize("method,alpha", [("euler", 1.0), ("heun", 1.0), ("euler", 3.0), ("heun", 3.0)])
def test_sampling_reproduces_the_data_gaussian(method, alpha):
    z, x = _gaussian_samples(20_000, 100, method, alpha)
    # Statistical error: mean ~ sigma / sqrt(N) = 0.004, variance ~ sqrt(2 / N) = 1 %; Euler's bias at 100
    # steps is up to 4 % of the variance (alpha = 3), Heun's is negligible.
    torch.testing.assert_close(x.mean(0), MU, atol=0.02, rtol=0)
    torch.testing.assert_close(x.var(0), torch.full_like(MU, SIGMA ** 2), atol=0, rtol=0.07)
    path_error = (x - (MU + SIGMA * z)).abs().max().item()  # the exact flow maps z to mu + sigma z
    assert path_error < {"euler": 0.1, "heun": 0.005}[method]


@pytest.mark.parametrize("alpha", [1.0, 3.0])
def test_heun_is_more_accurate_than_euler_at_few_steps(alpha):
    z, euler = _gaussian_samples(2000, 8, "euler", alpha)
    _, heun = _gaussian_samples(2000, 8, "heun", alpha)
    target = MU + SIGMA * z  # (N, D)
    assert (heun - target).abs().mean() < (euler - target).abs().mean() / 5


def test_training_loss_of_the_exact_velocity_is_lower_than_of_zero():
    gen = torch.Generator().manual_seed(0)
    n = 4096
    x1 = MU + SIGMA * torch.randn(n, len(MU), generator=gen, dtype=torch.float64)  # (N, D)
    noise, t = torch.randn(n, len(MU), generator=gen, dtype=torch.float64), torch.rand(n, generator=gen)
    y = torch.zeros(n, dtype=torch.long)
    transport = Transport()
    exact = transport.training_losses(GaussianVelocity(), x1, y, noise=noise, t=t)["loss"]
    zero = transport.training_losses(lambda x, t, y: torch.zeros_like(x), x1, y, noise=noise, t=t)["loss"]
    assert exact < 0.5 * zero


def test_training_losses_is_a_finite_scalar_with_grad():
    net = Linear3()
    out = Transport(shift=2.0).training_losses(net, torch.randn(8, 3), torch.zeros(8, dtype=torch.long))
    assert out["loss"].shape == () and torch.isfinite(out["loss"]) and out["loss"].requires_grad
    assert out["mse"].shape == (8,) and out["t"].shape == (8,) and ((0 < out["t"]) & (out["t"] < 1)).all()
    out["loss"].backward()
    assert net.lin.weight.grad is not None and torch.isfinite(net.lin.weight.grad).all()


@pytest.mark.parametrize("layout", ["image", "tokens"])
def test_cosine_loss_is_lightningdits_velocity_direction_term(layout):
    """LightningDiT's use_cosine_loss: mean over positions of 1 - cos(v_pred, v) across the channels, added to the MSE
    with its weight; written out here by hand per position. Channels are dim 1 of (B, C, h, w), the last of (B, L, C)."""
    gen = torch.Generator().manual_seed(0)
    shape = (3, 4, 5) if layout == "image" else (6, 3)
    x1, noise = torch.randn(2, *shape, generator=gen), torch.randn(2, *shape, generator=gen)
    t, y = torch.tensor([0.3, 0.8]), torch.zeros(2, dtype=torch.long)
    pred = torch.randn(2, *shape, generator=gen)
    net = lambda x, t, y: pred  # noqa: E731 (a fixed prediction)
    flow = FlowMatching(net, shape, num_classes=1, cosine_weight=0.5)
    out = flow.transport.training_losses(net, x1, y, noise=noise, t=t)
    v = x1 - noise
    channels_last = (pred.movedim(1, -1), v.movedim(1, -1)) if layout == "image" else (pred, v)
    p, q = (a.reshape(2, -1, 3) for a in channels_last)  # (B, positions, C)
    by_hand = 1 - (p * q).sum(-1) / (p.norm(dim=-1) * q.norm(dim=-1))  # (B, positions)
    torch.testing.assert_close(out["cosine"], by_hand.mean(1))
    mse = (pred - v).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(out["mse"], mse)
    torch.testing.assert_close(out["loss"], mse.mean() + 0.5 * by_hand.mean())
    plain = FlowMatching(net, shape, num_classes=1).transport.training_losses(net, x1, y, noise=noise, t=t)
    assert "cosine" not in plain and torch.equal(plain["loss"], mse.mean())


def test_path_broadcasts_time_over_image_dims():
    x0, x1, t = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4), torch.tensor([0.25, 1.0])
    xt, v = Transport().path(x0, x1, t)
    assert torch.equal(xt[0], torch.full((3, 4, 4), 0.25)) and torch.equal(xt[1], x1[1]) and torch.equal(v, x1 - x0)


# ---- classifier-free guidance ----------------------------------------------------------------

class LabelVelocity(nn.Module):
    """v = y + 1 everywhere, recording the labels and times of every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append((t.clone(), y.clone()))
        return (y.to(x.dtype) + 1).view(-1, *[1] * (x.ndim - 1)).expand_as(x)


NULL = 3  # num_classes = 3: v_cond = y + 1 = 1 for y = 0, v_uncond = 4


def _guided_sample(steps, guidance, interval=(0.0, 1.0)):
    net, noise = LabelVelocity(), torch.randn(2, 2, 3)
    x = Transport().sample(net, noise, torch.zeros(2, dtype=torch.long), steps, "euler", guidance, interval, NULL)
    return x - noise, net.calls  # the integrated velocity


def test_guidance_one_is_the_conditional_velocity():
    moved, calls = _guided_sample(1, 1.0)
    torch.testing.assert_close(moved, torch.ones(2, 2, 3))
    assert len(calls) == 1 and calls[0][1].tolist() == [0, 0]  # no unconditional pass


def test_guidance_mixes_conditional_and_unconditional_inside_the_interval():
    w = 2.5
    moved, calls = _guided_sample(1, w)
    torch.testing.assert_close(moved, torch.full((2, 2, 3), 4 + w * (1 - 4)))
    assert calls[0][1].tolist() == [0, 0, NULL, NULL] and calls[0][0].tolist() == [0.0] * 4


def test_guidance_outside_the_interval_is_conditional_only():
    w = 2.5
    moved, _ = _guided_sample(1, w, interval=(0.5, 1.0))  # one step, evaluated at t = 0
    torch.testing.assert_close(moved, torch.ones(2, 2, 3))
    moved, calls = _guided_sample(2, w, interval=(0.5, 1.0))  # t = 0 conditional, t = 0.5 guided
    torch.testing.assert_close(moved, torch.full((2, 2, 3), 0.5 * 1 + 0.5 * (4 + w * (1 - 4))))
    assert [len(y) for _, y in calls] == [2, 4]


def test_guided_velocity_uses_the_time_of_each_call():
    v = GuidedVelocity(LabelVelocity(), torch.tensor([1]), guidance=2.0, interval=(0.2, 0.4), null_label=NULL)
    assert [v.guided(t) for t in (0.1, 0.2, 0.3, 0.4, 0.5)] == [False, True, True, True, False]


# ---- FlowMatching: the generator contract ----------------------------------------------------

class Linear3(nn.Module):
    """A tiny velocity net on (B, 3) vectors."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x, t, y):
        return self.lin(x) * t[:, None]


class TinyVelocity(nn.Module):
    """A tiny velocity net on (B, C, h, w) latents that depends on x, t and y (4 labels: 3 classes + null)."""

    def __init__(self, channels=2):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.emb = nn.Embedding(4, channels)

    def forward(self, x, t, y):
        return self.conv(x) * (1 - t)[:, None, None, None] + self.emb(y)[:, :, None, None]


SHAPE = (2, 4, 4)


def _flow(**kw):
    torch.manual_seed(0)
    return FlowMatching(TinyVelocity(), SHAPE, num_classes=3, sample_steps=3, **kw)


@pytest.mark.parametrize("method,guidance", [("euler", 1.0), ("heun", 2.0)])
def test_samples_do_not_depend_on_their_batch(method, guidance):
    flow, y, seeds = _flow(), torch.tensor([0, 1, 2, 1]), [11, 22, 33, 44]
    whole = flow.sample(y, seeds, method=method, guidance=guidance)
    assert whole.shape == (4, *SHAPE)
    halves = torch.cat([flow.sample(y[:2], seeds[:2], method=method, guidance=guidance),
                        flow.sample(y[2:], seeds[2:], method=method, guidance=guidance)])
    torch.testing.assert_close(halves, whole, atol=1e-6, rtol=0)
    perm = [2, 0, 3, 1]
    permuted = flow.sample(y[perm], [seeds[i] for i in perm], method=method, guidance=guidance)
    torch.testing.assert_close(permuted, whole[perm], atol=1e-6, rtol=0)


def test_noise_comes_from_each_samples_own_seed():
    flow = FlowMatching(lambda x, t, y: torch.zeros_like(x), SHAPE, num_classes=3, sample_steps=2)
    x = flow.sample(torch.tensor([0, 0, 1]), torch.tensor([5, 6, 5]))  # zero velocity: samples are the noise
    assert torch.equal(x[0], seeding.randn(seeding.generators([5]), SHAPE)[0])
    assert torch.equal(x[0], x[2]) and not torch.allclose(x[0], x[1])


def test_flow_matching_training_losses_and_describe():
    flow = _flow(shift="auto", shift_base=8, sampler="heun", guidance=1.5, guidance_interval=(0.1, 0.9))
    assert flow.alpha == pytest.approx(dimension_shift(math.prod(SHAPE), 8)) == 2.0
    out = flow.training_losses(torch.randn(5, *SHAPE), torch.tensor([0, 1, 2, 0, 1]))
    out["loss"].backward()
    assert flow.net.conv.weight.grad is not None
    info = json.loads(json.dumps(flow.describe()))
    assert info.pop("network")["class"] == type(flow.net).__qualname__  # a net without describe() is named
    assert info == {"time_sampler": "logit-normal", "time_mean": 0.0, "time_std": 1.0, "shift": "auto", "alpha": 2.0,
                    "shift_base": 8, "sample_steps": 3, "sampler": "heun", "guidance": 1.5,
                    "guidance_interval": [0.1, 0.9], "cosine_weight": 0.0}
    assert _flow(shift=1.5).alpha == 1.5


# ---- bad arguments -------------------------------------------------------------------------

NET = LabelVelocity()
X, Y = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)


@pytest.mark.parametrize("make,match", [
    (lambda: shift_time(0.5, 0.0), "alpha must be > 0"),
    (lambda: shift_time(0.5, -1.0), "alpha must be > 0"),
    (lambda: Transport(shift=0.0), "alpha must be > 0"),
    (lambda: Transport(cosine_weight=-1.0), "cosine_weight must be >= 0"),
    (lambda: dimension_shift(0), "positive numel"),
    (lambda: TimeSampler("beta"), "unknown time sampler 'beta'; choose one of 'uniform', 'logit-normal'"),
    (lambda: TimeSampler(std=0.0), "std > 0"),
    (lambda: Transport().sample(NET, X, Y, method="rk4"), "unknown sampling method 'rk4'"),
    (lambda: Transport().sample(NET, X, Y, steps=0), "steps >= 1"),
    (lambda: Transport().sample(NET, X, Y, interval=(0.5, 1.5)), "0 <= lo <= hi <= 1"),
    (lambda: Transport().sample(NET, X, Y, interval=(0.8, 0.2)), "0 <= lo <= hi <= 1"),
    (lambda: Transport().sample(NET, X, Y, guidance=2.0), "needs null_label"),
    (lambda: _flow(shift="big"), "'auto'"),
    (lambda: _flow(shift=-2.0), "alpha must be > 0"),
    (lambda: _flow(sampler="dopri5"), "unknown sampling method"),
    (lambda: _flow(guidance_interval=(0.0, 2.0)), "guidance interval"),
    (lambda: _flow().sample(torch.zeros(3, dtype=torch.long), [1, 2]), "one seed per label"),
])
def test_bad_arguments_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_the_uniform_time_sampler_ignores_std():
    """Its docstring says std is ignored for uniform times; it had refused std 0 as "the logit-normal sampler"'s."""
    t = TimeSampler("uniform", std=0.0)(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, TimeSampler("uniform")(4, generator=torch.Generator().manual_seed(0)))
