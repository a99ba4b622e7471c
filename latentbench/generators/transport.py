"""Flow matching, kept apart from the networks (SiT's ``transport/``, DiT's ``create_diffusion``).

A velocity network is any ``nn.Module`` called as ``net(x, t, y) -> v`` with ``v`` shaped like
``x``; ``t`` is a (B,) float tensor and ``y`` (B,) int64 class labels, where the label
``num_classes`` (one past the last class) is the null label of classifier-free guidance.

Conventions:

* Time ``t`` in [0, 1]: ``t = 0`` is pure noise ``x0 ~ N(0, I)``, ``t = 1`` is data ``x1``.
  Linear path ``x_t = (1 - t) x0 + t x1`` with velocity target ``v = x1 - x0`` (rectified
  flow / SiT's linear path). Samplers integrate the ODE ``dx/dt = v(x, t)`` from t = 0 to t = 1.
* Dimension-dependent time shift (RAE, "Diffusion Transformers with Representation
  Autoencoders", after SD3 Sec. 5.3.2): with the noise level ``s = 1 - t`` the shifted level is
  ``s' = alpha s / (1 + (alpha - 1) s)`` with ``alpha = sqrt(m / base)``, ``m`` the number of
  latent elements per sample and ``base = 4096`` (RAE). ``alpha > 1`` spends more time at high
  noise; ``alpha = 1`` is the identity. Training shifts the sampled times and sampling shifts
  its uniform grid with the same ``alpha``.
* Guidance interval: ``(lo, hi)`` in the same ``t`` (0 noise, 1 data); guidance is applied
  where ``lo <= t <= hi`` and the conditional velocity is used elsewhere. RAE's and MAETok's (REPA's)
  samplers run their ``t`` from 1 (noise) to 0 (data), so an interval ``(low, high)`` from them is
  ``(1 - high, 1 - low)`` here; SiT's and LightningDiT's paths (``ICPlan``: alpha_t = t) share this ``t``.
"""
from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from latentbench.generators import seeding

# ---- time shift ------------------------------------------------------------------------------

def dimension_shift(numel: int, base: int = 4096) -> float:
    """RAE's shift ``alpha = sqrt(numel / base)`` for latents of ``numel`` elements per sample.

    Args:
        numel: latent elements per sample (e.g. 16 * 16 * 768 for RAE's DINOv2-B latents).
        base: the element count at which no shift is applied (RAE: 4096).

    Returns:
        alpha (> 0).
    """
    if numel <= 0 or base <= 0:
        raise ValueError(f"dimension_shift needs positive numel and base, got numel={numel}, base={base}")
    return math.sqrt(numel / base)


def _check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise ValueError(f"the time shift alpha must be > 0, got {alpha}")


def shift_time(t: Tensor | float, alpha: float) -> Tensor | float:
    """Shifted time: ``s' = alpha s / (1 + (alpha - 1) s)`` on the noise level ``s = 1 - t``.

    Written as ``t / (t + alpha (1 - t))`` so that t = 0 and t = 1 map to themselves exactly.

    Args:
        t: times in [0, 1] (0 noise, 1 data), a float or a tensor of any shape.
        alpha: shift (> 0); ``alpha > 1`` lowers t (more noise), ``alpha = 1`` is the identity.

    Returns:
        the shifted times, same type and shape as ``t``.
    """
    _check_alpha(alpha)
    return t / (t + alpha * (1 - t))


# ---- training times --------------------------------------------------------------------------

def _choose(enum_cls: type[enum.Enum], value: str, what: str) -> enum.Enum:
    """The member of ``enum_cls`` named by ``value``, or a ValueError listing the choices."""
    try:
        return enum_cls(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum_cls)
        raise ValueError(f"unknown {what} {value!r}; choose one of {choices}") from None


class TimeKind(str, enum.Enum):
    """Distribution of the training times (before the shift)."""

    UNIFORM = "uniform"  # t ~ U(0, 1) (SiT)
    LOGIT_NORMAL = "logit-normal"  # t = sigmoid(N(mean, std)): weight on the middle of the path (SD3 Sec. 3.1)


class TimeSampler:
    """Draws training times in [0, 1] (0 noise, 1 data); the transport shifts them afterwards.

    Args:
        kind: ``"uniform"`` or ``"logit-normal"``.
        mean, std: location and scale of the logit-normal's normal (ignored for uniform).
    """

    def __init__(self, kind: str = "logit-normal", mean: float = 0.0, std: float = 1.0):
        self.kind = _choose(TimeKind, kind, "time sampler")
        if self.kind is TimeKind.LOGIT_NORMAL and not std > 0:
            raise ValueError(f"the logit-normal time sampler needs std > 0, got {std}")
        self.mean, self.std = float(mean), float(std)

    def __call__(self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
        """(n,) float32 times, drawn from ``generator`` when one is given."""
        if self.kind is TimeKind.UNIFORM:
            return torch.rand(n, device=device, generator=generator)
        return torch.sigmoid(self.mean + self.std * torch.randn(n, device=device, generator=generator))

    def describe(self) -> dict:
        """Settings, for result records."""
        return {"kind": self.kind.value, "mean": self.mean, "std": self.std}


# ---- sampling --------------------------------------------------------------------------------

class Method(str, enum.Enum):
    """ODE integrator of the sampler."""

    EULER = "euler"  # x += h v(x, t): first order, one net call per step (RAE: 50 steps)
    HEUN = "heun"  # Euler predictor, trapezoid corrector: second order, two calls per step (the last one at t = 1)


def check_sampling(steps: int, method: str, interval: Sequence[float]) -> Method:
    """Validates sampler settings (raises ValueError); returns the integrator."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"sampling needs an integer steps >= 1, got {steps!r}")
    if len(interval) != 2 or not 0.0 <= interval[0] <= interval[1] <= 1.0:
        raise ValueError(f"guidance interval must be (lo, hi) with 0 <= lo <= hi <= 1, got {tuple(interval)}")
    return _choose(Method, method, "sampling method")


class GuidedVelocity:
    """``v(x, t)`` of a network with classifier-free guidance inside a time interval.

    Args:
        net: velocity network ``net(x, t, y)``.
        y: (B,) class labels.
        guidance: scale w; ``v = v_uncond + w (v_cond - v_uncond)``, 1 = conditional only.
        interval: (lo, hi) times where guidance applies (conditional velocity elsewhere).
        null_label: the unconditional label (needed when w != 1).
    """

    def __init__(self, net: nn.Module, y: Tensor, guidance: float = 1.0, interval: Sequence[float] = (0.0, 1.0),
                 null_label: int | None = None):
        if guidance != 1.0 and null_label is None:
            raise ValueError(f"guidance {guidance} != 1 needs null_label (the unconditional class, num_classes)")
        self.net, self.y, self.guidance, self.interval = net, y, float(guidance), tuple(interval)
        self.y_null = None if null_label is None else torch.full_like(y, null_label)  # (B,)

    def guided(self, t: float) -> bool:
        """Whether guidance applies at time t."""
        return self.guidance != 1.0 and self.interval[0] <= t <= self.interval[1]

    def __call__(self, x: Tensor, t: float) -> Tensor:
        tb = torch.full((len(x),), t, device=x.device)  # (B,)
        if not self.guided(t):
            return self.net(x, tb, self.y)
        v_cond, v_uncond = self.net(torch.cat([x, x]), torch.cat([tb, tb]), torch.cat([self.y, self.y_null])).chunk(2)
        return v_uncond + self.guidance * (v_cond - v_uncond)


Velocity = Callable[[Tensor, float], Tensor]


def euler_step(v: Velocity, x: Tensor, t0: float, t1: float) -> Tensor:
    """One Euler step of ``dx/dt = v`` from t0 to t1."""
    return x + (t1 - t0) * v(x, t0)


def heun_step(v: Velocity, x: Tensor, t0: float, t1: float) -> Tensor:
    """One Heun step: Euler predictor, trapezoid corrector.

    The last step's corrector calls v at t = 1, where the linear path's velocity is well defined
    (``E[x1 - x0 | x1]``). Not skipping it matters under a shift: alpha > 1 makes the last interval
    the longest (alpha = 3, 8 steps: [0.7, 1]), and an Euler-only last step there left a Gaussian
    toy problem 8x less accurate than a full Heun step.
    """
    d0 = v(x, t0)
    x_pred = x + (t1 - t0) * d0
    return x + (t1 - t0) * 0.5 * (d0 + v(x_pred, t1))


Step = Callable[[Velocity, Tensor, float, float], Tensor]
STEPS: dict[Method, Step] = {Method.EULER: euler_step, Method.HEUN: heun_step}


# ---- the process -----------------------------------------------------------------------------

def _expand(t: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) in x's dtype, to broadcast over x's non-batch dims."""
    return t.to(x.dtype).view(-1, *[1] * (x.ndim - 1))


class Transport:
    """The linear flow-matching path with a time shift: training losses and ODE sampling.

    Args:
        time_sampler: training-time distribution (default logit-normal(0, 1)).
        shift: alpha of ``shift_time`` used in training and sampling (1 = no shift).
        cosine_weight: weight of LightningDiT's velocity-direction loss, ``1 - cos(v_pred, v_target)``
            over the channels at each latent position, averaged, added to the mean squared error
            (LightningDiT: 1.0; 0 = plain flow matching, as SiT and RAE).
        channel_dim: the channel dimension of a batch, where the cosine is taken: 1 for (B, C, h, w),
            2 for (B, L, C) tokens.
    """

    def __init__(self, time_sampler: TimeSampler | None = None, shift: float = 1.0, cosine_weight: float = 0.0,
                 channel_dim: int = 1):
        _check_alpha(shift)
        if not cosine_weight >= 0:
            raise ValueError(f"cosine_weight must be >= 0, got {cosine_weight}")
        self.time_sampler = time_sampler or TimeSampler()
        self.alpha = float(shift)
        self.cosine_weight, self.channel_dim = float(cosine_weight), channel_dim

    def path(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_t, v_target)`` of the linear path: ``x_t = (1 - t) x0 + t x1``, ``v = x1 - x0``; t is (B,)."""
        tb = _expand(t, x1)  # (B, 1, ..., 1)
        return (1 - tb) * x0 + tb * x1, x1 - x0

    def sample_time(self, n: int, device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> Tensor:
        """(n,) shifted training times."""
        return shift_time(self.time_sampler(n, device, generator), self.alpha)

    def training_losses(self, net: nn.Module, x1: Tensor, y: Tensor, noise: Tensor | None = None,
                        t: Tensor | None = None) -> dict[str, Tensor]:
        """Velocity-matching loss of ``net`` on data ``x1``.

        Args:
            net: velocity network ``net(x, t, y)``.
            x1: (B, ...) data (latents).
            y: (B,) class labels.
            noise: (B, ...) x0; drawn from N(0, I) when None.
            t: (B,) times; drawn from the time sampler and shifted when None.

        Returns:
            ``loss`` (scalar: the mean squared error, plus ``cosine_weight`` times the mean cosine
            term), ``mse`` (B,) per sample, ``t`` (B,) the times used, and ``cosine`` (B,) per sample
            when ``cosine_weight`` > 0.
        """
        noise = torch.randn_like(x1) if noise is None else noise
        t = self.sample_time(len(x1), x1.device) if t is None else t
        xt, target = self.path(noise, x1, t)  # (B, ...)
        pred = net(xt, t, y)
        mse = (pred - target).pow(2).flatten(1).mean(1)  # (B,)
        if not self.cosine_weight:
            return {"loss": mse.mean(), "mse": mse, "t": t}
        cosine = (1 - F.cosine_similarity(pred, target, dim=self.channel_dim)).flatten(1).mean(1)  # (B,)
        return {"loss": mse.mean() + self.cosine_weight * cosine.mean(), "mse": mse, "cosine": cosine, "t": t}

    def timesteps(self, steps: int) -> list[float]:
        """The ``steps + 1`` sampling times: a uniform grid on [0, 1] mapped through ``shift_time``."""
        return shift_time(torch.linspace(0, 1, steps + 1, dtype=torch.float64), self.alpha).tolist()

    @torch.no_grad()
    def sample(self, net: nn.Module, noise: Tensor, y: Tensor, steps: int = 50, method: str = "euler",
               guidance: float = 1.0, interval: Sequence[float] = (0.0, 1.0), null_label: int | None = None) -> Tensor:
        """Integrates ``dx/dt = v`` from noise (t = 0) to data (t = 1).

        Args:
            net: velocity network ``net(x, t, y)``.
            noise: (B, ...) x0.
            y: (B,) class labels.
            steps: integration steps (Heun calls the net twice per step).
            method: ``"euler"`` or ``"heun"``.
            guidance: classifier-free guidance scale (1 = none).
            interval: (lo, hi) times where guidance applies.
            null_label: the unconditional label, required when guidance != 1.

        Returns:
            (B, ...) samples x1.
        """
        step = STEPS[check_sampling(steps, method, interval)]
        v = GuidedVelocity(net, y, guidance, interval, null_label)
        ts = self.timesteps(steps)
        x = noise
        for t0, t1 in itertools.pairwise(ts):
            x = step(v, x, t0, t1)
        return x


# ---- the generator the harness sees ----------------------------------------------------------

def resolve_shift(shift: float | str, numel: int, base: int = 4096) -> float:
    """alpha from a ``shift`` setting: ``"auto"`` = ``dimension_shift(numel, base)``, a number is used as is."""
    if isinstance(shift, str):
        if shift != "auto":
            raise ValueError(f"shift must be a number > 0 or 'auto', got {shift!r}")
        return dimension_shift(numel, base)
    _check_alpha(shift)
    return float(shift)


class FlowMatching(nn.Module):
    """A velocity network plus a ``Transport``: the generator contract (``training_losses``, ``sample``).

    Args:
        net: velocity network ``net(x, t, y)``.
        input_shape: one latent's shape, (C, h, w) or (L, C).
        num_classes: number of classes; label ``num_classes`` is the null label of guidance.
        time_sampler, time_mean, time_std: training-time distribution (``TimeSampler``).
        shift: alpha of the time shift, or ``"auto"`` for ``dimension_shift(prod(input_shape), shift_base)``.
        shift_base: RAE's base element count (4096).
        sample_steps, sampler: default integration steps and method (``"euler"`` or ``"heun"``).
        guidance, guidance_interval: default classifier-free guidance scale and its (lo, hi) times.
        cosine_weight: LightningDiT's velocity-direction loss weight (``Transport``); 0 = none.
    """

    def __init__(self, net: nn.Module, input_shape: tuple[int, ...], num_classes: int,
                 time_sampler: str = "logit-normal", time_mean: float = 0.0, time_std: float = 1.0,
                 shift: float | str = "auto", shift_base: int = 4096, sample_steps: int = 50, sampler: str = "euler",
                 guidance: float = 1.0, guidance_interval: tuple[float, float] = (0.0, 1.0), cosine_weight: float = 0.0):
        super().__init__()
        check_sampling(sample_steps, sampler, guidance_interval)
        self.net, self.input_shape, self.num_classes = net, tuple(input_shape), num_classes
        self.shift, self.shift_base = shift, shift_base
        self.alpha = resolve_shift(shift, math.prod(self.input_shape), shift_base)
        # the channels are the last dimension of (L, C) tokens and the first of (C, h, w) (or any other) latents
        self.transport = Transport(TimeSampler(time_sampler, time_mean, time_std), self.alpha, cosine_weight,
                                   channel_dim=2 if len(self.input_shape) == 2 else 1)
        self.sample_steps, self.sampler = sample_steps, sampler
        self.guidance, self.guidance_interval = float(guidance), tuple(guidance_interval)

    def training_losses(self, z: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Flow-matching loss on (B, *input_shape) latents ``z`` with (B,) labels ``y`` (see ``Transport``)."""
        return self.transport.training_losses(self.net, z, y)

    def noise(self, seeds: Tensor | Sequence[int], device: torch.device | str) -> Tensor:
        """(B, *input_shape) initial noise, row i drawn on the CPU from a generator seeded by seeds[i] alone."""
        return seeding.randn(seeding.generators(seeds), self.input_shape).to(device)

    def sample(self, y: Tensor, seeds: Tensor | Sequence[int], steps: int | None = None, guidance: float | None = None,
               method: str | None = None) -> Tensor:
        """Samples latents; sample i depends only on y[i] and seeds[i], not on the rest of its batch.

        Args:
            y: (B,) class labels.
            seeds: B per-sample seeds (``seeding.sample_seed``).
            steps, guidance, method: overrides of ``sample_steps``, ``guidance``, ``sampler``.

        Returns:
            (B, *input_shape) latents.
        """
        if len(seeds) != len(y):
            raise ValueError(f"sample needs one seed per label, got {len(seeds)} seeds for {len(y)} labels")
        return self.transport.sample(
            self.net, self.noise(seeds, y.device), y, self.sample_steps if steps is None else steps,
            method or self.sampler, self.guidance if guidance is None else guidance, self.guidance_interval,
            null_label=self.num_classes)

    def describe(self) -> dict:
        """The network's description (when it has one) and the transport settings, for result records (JSON-serialisable)."""
        ts = self.transport.time_sampler.describe()
        net = self.net.describe() if hasattr(self.net, "describe") else {"class": type(self.net).__qualname__}
        return {"network": net, "time_sampler": ts["kind"], "time_mean": ts["mean"], "time_std": ts["std"], "shift": self.shift,
                "alpha": self.alpha, "shift_base": self.shift_base, "sample_steps": self.sample_steps,
                "sampler": self.sampler, "guidance": self.guidance, "guidance_interval": list(self.guidance_interval),
                "cosine_weight": self.transport.cosine_weight}
