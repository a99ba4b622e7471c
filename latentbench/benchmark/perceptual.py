"""LPIPS (Zhang et al. 2018, v0.1) as a torchmetrics metric under the suite's conventions.

* Inputs are float images in [-1, 1], shape (B, 3, H, W), the tokenizer interface's range.
  A batch that is plainly in [0, 1] is refused rather than measured: LPIPS of [0, 1] images
  read as [-1, 1] is a silently wrong number (the most common LPIPS bug in published code).
* Like every other metric (README, "Metrics"), LPIPS sees the uint8-rounded
  images: ``to_uint8`` (round, clamp), then back to [-1, 1] as ``q / 127.5 - 1``. The number
  is the one of the PNGs a user would save; it differs from LPIPS of the raw floats by far
  less than model differences (about 1e-4 on typical reconstructions).
* Version 0.1 with its shipped linear layers; the backbone (``"alex"`` default, ``"vgg"``)
  is the attribute ``net`` and belongs in the result's label (``LPIPS-alex``). Its ImageNet
  weights come from torchvision's download cache; without them construction raises
  :class:`~latentbench.weights.WeightsUnavailable`, never a metric from random weights.
* Per-image distances, summed in float64 states that all-reduce by summation. The network is
  a frozen submodule (eval mode, no gradients), not a metric state: it is neither synced
  nor reset.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from latentbench.benchmark.metrics import (
    _PerImageMean,
    check_finite,
    check_pair,
    to_uint8,
)
from latentbench.weights import WeightsUnavailable, build_lpips, require_lpips_weights

RANGE_TOLERANCE = 1e-3  # decoders that end in tanh or a clamp overshoot by float error only
LPIPS_MIN_SIDE = {"alex": 31, "vgg": 16}  # smallest side the backbone's pooling leaves non-empty (measured)


def lpips_status(net: str = "alex") -> str:
    """``"lpips-<net>"`` when the backbone weights are on this machine, else ``"unavailable: <reason>"``.

    Args:
        net: LPIPS backbone, ``"alex"`` or ``"vgg"``.

    Returns:
        A status string for result records.
    """
    try:
        require_lpips_weights(net)
    except WeightsUnavailable as e:
        return f"unavailable: {e}"
    return f"lpips-{net}"


def check_lpips_inputs(real: Tensor, fake: Tensor, net: str = "alex") -> None:
    """Raise ValueError unless both are (B, 3, H, W) batches, large enough for ``net``, of uint8
    images or of finite floats in [-1, 1].

    uint8 images are unambiguous. Float batches are also refused when every value lies in
    [0, 1] (a [0, 1] image passed by mistake); a batch of only bright [-1, 1] images would trip
    that too, which is why the suite's own callers pass the uint8 images they already have.
    """
    for x in (real, fake):
        if x.dtype != torch.uint8 and not torch.is_floating_point(x):
            raise ValueError(f"LPIPS inputs must be uint8 images or floats in [-1, 1], got {x.dtype}: "
                             "pass x.to(torch.uint8) for 0..255 values")
    if real.dtype != fake.dtype:
        raise ValueError(f"LPIPS inputs must share one dtype, got {real.dtype} and {fake.dtype}")
    check_pair(real, fake)
    if real.shape[1] != 3:
        raise ValueError(f"LPIPS inputs must have 3 channels, got shape {tuple(real.shape)}")
    smallest = LPIPS_MIN_SIDE.get(net, 0)
    if min(real.shape[-2:]) < smallest:
        raise ValueError(f"LPIPS-{net} needs images of at least {smallest}x{smallest} px (its backbone pools them "
                         f"away below that), got {tuple(real.shape[-2:])}: use larger images or leave LPIPS out")
    if real.dtype == torch.uint8:
        return
    stats = torch.stack([*torch.aminmax(real.detach()), *torch.aminmax(fake.detach())]).tolist()  # one host sync
    if not all(map(math.isfinite, stats)):  # aminmax propagates NaN; check_finite names the positions
        check_finite(real)
        check_finite(fake)
    real_min, real_max, fake_min, fake_max = stats
    if min(real_min, fake_min) < -1 - RANGE_TOLERANCE or max(real_max, fake_max) > 1 + RANGE_TOLERANCE:
        raise ValueError(f"LPIPS inputs must be in [-1, 1], got values in [{min(real_min, fake_min):.4g}, "
                         f"{max(real_max, fake_max):.4g}]")
    nontrivial = real_max > real_min or fake_max > fake_min  # a constant batch proves nothing
    if nontrivial and min(real_min, fake_min) >= 0 and max(real_max, fake_max) <= 1:
        raise ValueError("LPIPS inputs must be in [-1, 1]; these look like [0, 1] images: pass x * 2 - 1")


def quantize(x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """[-1, 1] floats (or uint8 images) -> the uint8-rounded image, mapped back to [-1, 1] as ``q / 127.5 - 1``."""
    return to_uint8(x).to(dtype).div_(127.5).sub_(1.0)


class LPIPS(_PerImageMean):
    """Mean per-image LPIPS v0.1 distance of uint8-rounded images in [-1, 1] (lower is better).

    Args:
        net: backbone, ``"alex"`` (the lpips package's default, recommended by its authors
            as a metric) or ``"vgg"``. Kept as ``self.net`` for result labels (``LPIPS-alex``).
        model: an ``lpips.LPIPS`` instance to use instead of building one (tests, or a
            network already loaded); it is put in eval mode with gradients off.
        **kwargs: passed to :class:`torchmetrics.Metric` (``sync_on_compute`` and so on).

    Raises:
        WeightsUnavailable: ``model`` is None and the backbone's ImageNet weights are not in
            torchvision's cache (the message names the file and where to put it).
    """

    higher_is_better = False
    is_differentiable = False

    def __init__(self, net: str = "alex", model: nn.Module | None = None, **kwargs):
        super().__init__(**kwargs)
        if model is None:
            model = build_lpips(net)
        elif getattr(model, "pnet_type", net) != net or getattr(model, "version", "0.1") != "0.1":
            raise ValueError(f"injected model is LPIPS-{getattr(model, 'pnet_type', '?')} v{getattr(model, 'version', '?')}, "
                             f"expected LPIPS-{net} v0.1")
        self.net = net
        self.model = model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPS:
        """Switch the metric's mode; the network stays in eval mode (its dropout must stay off)."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def per_image(self, real: Tensor, fake: Tensor) -> Tensor:
        """LPIPS distance of each image pair, shape (B,): uint8 images, or floats in [-1, 1]."""
        check_lpips_inputs(real, fake, self.net)
        dtype = next(self.model.parameters()).dtype
        with torch.autocast(real.device.type, enabled=False):  # a bf16 eval loop must not lower the metric's precision
            return self.model(quantize(real, dtype), quantize(fake, dtype)).flatten()
