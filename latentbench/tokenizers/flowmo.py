"""FlowMo: "Flow to the Mode: Mode-Seeking Diffusion Autoencoders for State-of-the-Art Image
Tokenization" (Sargent et al., arXiv 2503.11056).

A transformer diffusion autoencoder without convolutions or GAN. The MMDiT encoder maps an
image to L latent tokens, quantized by lookup-free quantization (sign, ``bits`` per token);
the MMDiT decoder is a rectified-flow model of the image conditioned on those tokens, so
decoding samples: an Euler probability-flow ODE from noise on the shifted grid
t_i = (i / n)^rho, with decoder guidance against a dropped (all-zero) latent on an interval of t.

Training (``FlowMoModule`` in ``flowmo_module``):

* stage "1a" (mode matching): velocity MSE with the latent dropped for 10% of the samples,
  thick-tailed logit-normal times, a perceptual loss on the one-step prediction x0, LFQ
  entropy and commitment losses; the encoder may be frozen after a given step;
* stage "1b" (mode seeking): encoder frozen; the decoder is fine-tuned by back-propagating a
  perceptual loss through an 8-step sampler with random times, plus the flow loss.

Rectified-flow convention (FlowMo's): x_t = (1 - t) x + t eps with t = 1 pure noise and t = 0
the image; the decoder predicts the velocity v = eps - x = dx_t/dt, so one-step prediction
is x0 = x_t - t v and sampling integrates from t = 1 down to 0: x <- x - (t_i - t_{i-1}) v.

The decoder's latent input is the code with a constant-one channel appended; a dropped latent
is all zeros, that channel included (FlowMo's ``mask`` channel). Method facts:
../shared/reference/README.md; official code: kylesargent/FlowMo (read, not copied).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from latentbench.batching import chunks
from latentbench.registry import require_positive
from latentbench.tokenizers.base import LatentSpec, Tokenizer
from latentbench.tokenizers.lfq import LFQ
from latentbench.tokenizers.mmdit import FinalLayer, MMDiT, TimeEmbed
from latentbench.tokenizers.registry import TOKENIZERS
from latentbench.tokenizers.vit import PatchEmbed, unpatchify

# FlowMo's guidance interval is (0.17, 1.02) in EDM noise levels sigma; t = sigma / (1 + sigma).
GUIDANCE_INTERVAL = (0.17 / 1.17, 1.02 / 2.02)


# ---- time grids and time sampling --------------------------------------------------------------

def shifted_time_grid(steps: int, rho: float = 4.0, device=None) -> Tensor:
    """Decoding times (steps + 1,) from 1 to 0: t_i = (i / n)^rho for i = n, ..., 0 (FlowMo's "pow_0.25")."""
    i = torch.arange(steps, -1, -1, dtype=torch.float64, device=device)
    return ((i / steps) ** rho).float()


def random_time_grid(batch: int, steps: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Per-sample random times (B, steps + 1) from 1 to 0 with uniform-random increments (stage 1b)."""
    u = torch.rand(batch, steps + 1, generator=generator, device=device).cumsum(dim=1)  # (B, n+1)
    u = u - u[:, :1]
    return (u / u[:, -1:]).flip(dims=(1,))  # (B, n+1), 1 -> 0


def thick_tailed_times(batch: int, uniform_fraction: float = 0.1, generator: torch.Generator | None = None,
                       device=None) -> Tensor:
    """Training times (B,): logit-normal sigmoid(N(0, 1)), replaced by U(0, 1) for ``uniform_fraction`` of them."""
    t = torch.sigmoid(torch.randn(batch, generator=generator, device=device))
    uniform = torch.rand(batch, generator=generator, device=device)
    pick = torch.rand(batch, generator=generator, device=device) < uniform_fraction
    return torch.where(pick, uniform, t)


# ---- encoder and decoder -----------------------------------------------------------------------

class FlowMoEncoder(nn.Module):
    """Image (B, 3, H, W) -> continuous latent (B, L, bits): MMDiT over [latent queries, patches].

    ``shared_query``: FlowMo's latent stream starts from one learned vector for every token (its
    ``txt_in`` applied to zeros, i.e. that linear's bias, initialised as such: U(+-1/sqrt(bits))),
    the tokens told apart by their RoPE positions alone; False learns a query per token (N(0, 0.02)).
    """

    def __init__(self, patch_size: int, latent_tokens: int, bits: int, width: int, depth: int, heads: int,
                 mlp_ratio: float, qk_scale: str, theta: float, shared_query: bool = True):
        super().__init__()
        self.patch_size, self.latent_tokens = patch_size, latent_tokens
        self.patch_embed = PatchEmbed(patch_size, 3, width)
        if shared_query:
            bound = bits**-0.5
            self.latent_queries = nn.Parameter(torch.empty(1, 1, width).uniform_(-bound, bound))
        else:
            self.latent_queries = nn.Parameter(torch.randn(1, latent_tokens, width) * 0.02)
        self.trunk = MMDiT(width, depth, heads, mlp_ratio, modulated=False, theta=theta, qk_scale=qk_scale)
        self.head = FinalLayer(width, bits)

    def forward(self, x: Tensor) -> Tensor:
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        img = self.patch_embed(x)  # (B, N, D)
        lat = self.latent_queries.expand(x.shape[0], self.latent_tokens, -1).to(img.dtype)  # (B, L, D)
        _, lat = self.trunk(img, lat, grid)
        return self.head(lat)  # (B, L, bits)


class FlowMoDecoder(nn.Module):
    """Velocity v(x_t, t | latent): MMDiT over [latent tokens, noisy patches], adaLN on the time."""

    def __init__(self, patch_size: int, bits: int, width: int, depth: int, heads: int, mlp_ratio: float,
                 qk_scale: str, theta: float):
        super().__init__()
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, width)
        self.latent_in = nn.Linear(bits + 1, width)  # the code plus the constant "not dropped" channel
        self.time_embed = TimeEmbed(width)
        self.trunk = MMDiT(width, depth, heads, mlp_ratio, modulated=True, theta=theta, qk_scale=qk_scale)
        self.head = FinalLayer(width, 3 * patch_size**2, modulated=True)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """x_t (B, 3, H, W), t (B,), cond (B, L, bits + 1) -> velocity (B, 3, H, W)."""
        grid = (x_t.shape[-2] // self.patch_size, x_t.shape[-1] // self.patch_size)
        vec = self.time_embed(t)  # (B, D)
        img = self.patch_embed(x_t)  # (B, N, D)
        lat = self.latent_in(cond.to(self.latent_in.weight.dtype))  # (B, L, D)
        img, _ = self.trunk(img, lat.to(img.dtype), grid, vec)
        return unpatchify(self.head(img, vec), self.patch_size, grid)  # (B, 3, H, W)


@dataclass
class FlowTerms:
    """What one stage-1a forward pass gives the training module."""

    losses: dict[str, Tensor]  # unweighted: "flow" (velocity MSE), and "entropy", "commitment" in training
    x0: Tensor  # (B, 3, H, W) one-step prediction x_t - t v, for the perceptual loss
    code: Tensor  # (B, L, bits) quantized latent, never dropped (the stage-1b sampler's condition)


# ---- model -----------------------------------------------------------------------------------

class FlowMo(Tokenizer):
    """MMDiT encoder -> LFQ code (B, L, bits) of +-1 floats -> rectified-flow MMDiT decoder.

    Args:
        resolution: image size decoding produces by default (the encoder takes any multiple of the patch).
        patch_size: p of the image patches (FlowMo: 4).
        latent_tokens: L, tokens of the 1D latent (FlowMo: 256).
        bits: channels, hence bits, per token (FlowMo-Lo 18, -Hi 56).
        entropy_group: bits per sub-code of the factorized entropy loss (Lo 9, Hi 14).
        width, depth, heads: encoder size (FlowMo: 768, 8, 12).
        decoder_width, decoder_depth, decoder_heads: decoder size (FlowMo: 1152, 16, 12).
        mlp_ratio: MLP hidden width over model width.
        qk_scale: attention scale, "mup" (8 / head_dim, FlowMo) or "standard".
        rope_theta: RoPE base.
        latent_dropout: fraction of training samples whose latent is dropped (decoder guidance).
        time_uniform_fraction: fraction of training times drawn uniformly instead of logit-normal.
        sample_steps, rho: decoding grid t_i = (i / n)^rho.
        guidance: decoder guidance scale (1 disables the unconditional branch).
        guidance_interval: (lo, hi) in t where guidance applies; None applies it at every step.
        posttrain_steps: steps of the stage-1b sampler (FlowMo: 8).
        shared_latent_query: the encoder's latent tokens start from one learned vector (FlowMo), else
            from a learned query each (the CPU sizes).
    """

    stages: ClassVar[tuple[str, ...]] = ("1a", "1b")
    training_module: ClassVar[str] = "latentbench.tokenizers.flowmo_module:FlowMoModule"
    # FlowMo's weights: entropy 0.0025, commitment 0.000625 (configs/base.yaml); the flow loss is the unit.
    loss_weights: ClassVar[dict[str, float]] = {"flow": 1.0, "entropy": 0.0025, "commitment": 0.000625}
    compile_modules: ClassVar[tuple[str, ...]] = ("decoder",)  # run sample_steps times (twice where guided) per decode
    stochastic_decode: ClassVar[bool] = True  # decoding starts from noise (``generator`` or ``noise``)

    def __init__(
        self,
        resolution: int = 256,
        patch_size: int = 4,
        latent_tokens: int = 256,
        bits: int = 18,
        entropy_group: int | None = 9,
        width: int = 768,
        depth: int = 8,
        heads: int = 12,
        decoder_width: int = 1152,
        decoder_depth: int = 16,
        decoder_heads: int = 12,
        mlp_ratio: float = 4.0,
        qk_scale: str = "mup",
        rope_theta: float = 10_000.0,
        latent_dropout: float = 0.1,
        time_uniform_fraction: float = 0.1,
        sample_steps: int = 25,
        rho: float = 4.0,
        guidance: float = 1.5,
        guidance_interval: tuple[float, float] | None = GUIDANCE_INTERVAL,
        posttrain_steps: int = 8,
        shared_latent_query: bool = True,
    ):
        super().__init__()
        require_positive(resolution=resolution, patch_size=patch_size, latent_tokens=latent_tokens, bits=bits,
                         entropy_group=entropy_group, width=width, depth=depth, heads=heads, decoder_width=decoder_width,
                         decoder_depth=decoder_depth, decoder_heads=decoder_heads, mlp_ratio=mlp_ratio, rope_theta=rope_theta,
                         sample_steps=sample_steps, rho=rho, posttrain_steps=posttrain_steps)
        if resolution % patch_size:
            raise ValueError(f"resolution {resolution} is not a multiple of patch_size {patch_size}")
        if not 0 <= latent_dropout < 1 or not 0 <= time_uniform_fraction <= 1:
            raise ValueError(f"latent_dropout must be in [0, 1) and time_uniform_fraction in [0, 1], got {latent_dropout} "
                             f"and {time_uniform_fraction}")
        self.resolution, self.patch_size, self.latent_tokens, self.bits = resolution, patch_size, latent_tokens, bits
        self.latent_dropout, self.time_uniform_fraction = latent_dropout, time_uniform_fraction
        self.sample_steps, self.rho, self.guidance, self.posttrain_steps = sample_steps, rho, guidance, posttrain_steps
        self.guidance_interval = tuple(guidance_interval) if guidance_interval is not None else None
        self.encoder = FlowMoEncoder(patch_size, latent_tokens, bits, width, depth, heads, mlp_ratio, qk_scale, rope_theta,
                                     shared_latent_query)
        self.quantizer = LFQ(bits, entropy_group)
        self.decoder = FlowMoDecoder(patch_size, bits, decoder_width, decoder_depth, decoder_heads, mlp_ratio,
                                     qk_scale, rope_theta)
        self._spec = LatentSpec(shape=(latent_tokens, bits), dtype="float32", bits_per_token=bits)

    @property
    def latent_spec(self) -> LatentSpec:
        return self._spec

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters that map images to codes (frozen in stage 1b)."""
        return list(self.encoder.parameters())

    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.encoder.parameters())

    def freeze_encoder(self, frozen: bool = True) -> None:
        """Stop (or restart) training the encoder; a frozen encoder runs without autograd."""
        self.encoder.requires_grad_(not frozen)

    def set_stage(self, stage: str, progress: float = 0.0) -> None:
        """Stage "1a": everything trains (the module may freeze the encoder after a step); "1b": encoder frozen."""
        if stage not in self.stages:
            raise ValueError(f"unknown stage {stage!r}; FlowMo has {', '.join(self.stages)}")
        self.freeze_encoder(stage == "1b")

    # ---- encode / decode -----------------------------------------------------------------------

    def encode_continuous(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> the encoder's continuous output (B, L, bits)."""
        return self.encoder(x)

    def quantize(self, h: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Continuous (B, L, bits) -> (+-1 code with straight-through gradient, LFQ losses in training)."""
        return self.quantizer(h)

    def encode(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> code (B, L, bits) of +-1 floats."""
        return self.quantize(self.encode_continuous(x))[0]

    def condition(self, code: Tensor, keep: Tensor | None = None) -> Tensor:
        """Decoder latent input (B, L, bits + 1): the code and a one channel, zeroed where ``keep`` (B,) is False."""
        cond = torch.cat([code, torch.ones_like(code[..., :1])], dim=-1)  # (B, L, bits + 1)
        return cond if keep is None else cond * keep[:, None, None].to(cond.dtype)

    @property
    def decode_noise_shape(self) -> tuple[int, int, int]:
        """Shape of one image's initial decoder noise (``decode(..., noise=)``)."""
        return (3, self.resolution, self.resolution)

    def velocity(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Decoder velocity (B, 3, H, W) at noisy images x_t and times t (B,)."""
        return self.decoder(x_t, t, cond)

    def decode(self, z: Tensor, generator: torch.Generator | None = None, steps: int | None = None,
               guidance: float | None = None, size: tuple[int, int] | None = None, noise: Tensor | None = None) -> Tensor:
        """Code (B, L, bits) -> images (B, 3, H, W) in [-1, 1] by the guided probability-flow sampler.

        Args:
            z: codes from ``encode``.
            generator: seeds the initial noise; the sampler is otherwise deterministic.
            steps, guidance: override ``sample_steps`` and ``guidance``.
            size: (H, W) to decode at; default (resolution, resolution).
            noise: the initial noise (B, 3, H, W) itself, instead of drawing it from ``generator``
                (gFID draws each sample's noise from its own seed: ``decode_per_sample``).
        """
        h, w = size or (self.resolution, self.resolution)
        if noise is None:
            noise = torch.randn(z.shape[0], 3, h, w, generator=generator, device=z.device)
        times = shifted_time_grid(steps or self.sample_steps, self.rho, z.device)
        g = self.guidance if guidance is None else guidance
        cond = self.condition(z)
        # the noise is drawn for the whole batch first, so splitting it changes no image (latentbench.batching)
        return torch.cat([self.sample(cond[s], noise[s], times, guidance=g) for s in chunks(len(z), z.device)]).clamp(-1, 1).float()

    def sample(self, cond: Tensor, noise: Tensor, times: Tensor, guidance: float = 1.0, grad_checkpoint: bool = False) -> Tensor:
        """Euler integration of the probability-flow ODE from ``times[..., 0]`` (noise) to ``times[..., -1]``.

        Args:
            cond: decoder latent input (B, L, bits + 1) from ``condition``.
            noise: starting point (B, 3, H, W).
            times: decreasing grid (n + 1,) shared by the batch, or (B, n + 1) per sample.
            guidance: scale w of v_u + w (v_c - v_u) against the all-zero latent, applied where the
                step's time lies in ``guidance_interval``; needs a shared grid.
            grad_checkpoint: recompute each decoder pass in the backward pass (stage 1b memory).
        """
        b = noise.shape[0]
        if guidance != 1.0 and times.ndim != 1:
            raise ValueError("decoder guidance needs one time grid for the whole batch")
        times = times.to(noise.device).expand(b, -1) if times.ndim == 1 else times  # (B, n+1)
        x = noise
        for i in range(times.shape[1] - 1):
            t, dt = times[:, i], times[:, i] - times[:, i + 1]  # (B,), (B,)
            if self._guided(float(t[0]), guidance):
                both = self._velocity(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, torch.zeros_like(cond)]),
                                      grad_checkpoint)  # (2B, 3, H, W)
                v_c, v_u = both.chunk(2)
                v = v_u + guidance * (v_c - v_u)
            else:
                v = self._velocity(x, t, cond, grad_checkpoint)  # (B, 3, H, W)
            x = x - dt.view(-1, 1, 1, 1) * v
        return x

    def _guided(self, t: float, guidance: float) -> bool:
        if guidance == 1.0:
            return False
        return self.guidance_interval is None or self.guidance_interval[0] <= t <= self.guidance_interval[1]

    def _velocity(self, x: Tensor, t: Tensor, cond: Tensor, use_checkpoint: bool) -> Tensor:
        if use_checkpoint and torch.is_grad_enabled():
            return grad_checkpoint(self.decoder, x, t, cond, use_reentrant=False)
        return self.decoder(x, t, cond)

    # ---- training --------------------------------------------------------------------------------

    def keep_mask(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor | None:
        """Bool (B,) of samples whose latent is kept (training only); None when nothing is dropped."""
        if not self.training or self.latent_dropout == 0:
            return None
        return torch.rand(batch, generator=generator, device=device) >= self.latent_dropout

    def encode_for_training(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Code (B, L, bits) and LFQ losses; a frozen encoder runs without autograd and adds no losses."""
        if self.encoder_frozen():
            with torch.no_grad():
                return self.quantize(self.encode_continuous(x))[0], {}
        return self.quantize(self.encode_continuous(x))

    def flow_loss(self, x: Tensor, generator: torch.Generator | None = None) -> FlowTerms:
        """Stage-1a terms for images x (B, 3, H, W) in [-1, 1] (unweighted; see ``loss_weights``).

        Velocity MSE at thick-tailed logit-normal times with the latent dropped for a
        ``latent_dropout`` fraction (training mode only), the one-step prediction x0 for the
        perceptual loss, and the LFQ entropy and commitment losses.
        """
        b = x.shape[0]
        code, losses = self.encode_for_training(x)
        t = thick_tailed_times(b, self.time_uniform_fraction, generator, x.device)  # (B,)
        eps = torch.randn(x.shape, generator=generator, device=x.device)
        tt = t.view(-1, 1, 1, 1)
        x_t = (1 - tt) * x + tt * eps  # (B, 3, H, W)
        v = self.velocity(x_t, t, self.condition(code, self.keep_mask(b, generator, x.device)))
        losses = {"flow": F.mse_loss(v.float(), eps - x), **losses}
        return FlowTerms(losses=losses, x0=x_t - tt * v.float(), code=code)

    def forward_train(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One-step reconstruction x0 and the flow and LFQ loss terms (the generic trainer's view)."""
        terms = self.flow_loss(x)
        return terms.x0, terms.losses

    def posttrain_sample(self, code: Tensor, generator: torch.Generator | None = None, steps: int | None = None,
                         grad_checkpoint: bool = False, size: tuple[int, int] | None = None) -> Tensor:
        """Stage 1b: images (B, 3, H, W) sampled from ``code`` on random per-sample time grids, differentiable.

        No guidance and no latent dropout (FlowMo's ``posttrain_sample_enable_cfg: False``).
        """
        b = code.shape[0]
        h, w = size or (self.resolution, self.resolution)
        noise = torch.randn(b, 3, h, w, generator=generator, device=code.device)
        times = random_time_grid(b, steps or self.posttrain_steps, generator, code.device)
        return self.sample(self.condition(code), noise, times, grad_checkpoint=grad_checkpoint)

    def last_layer(self) -> Tensor:
        return self.decoder.head.linear.weight

    def convert_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """An official FlowMo state dict (kylesargent/FlowMo) converted to this module's keys; any other as it is."""
        from latentbench.tokenizers.flowmo_convert import (
            convert_official_state_dict,
            is_official_state_dict,
        )

        if not is_official_state_dict(state):
            return state
        return convert_official_state_dict(state, self.latent_tokens, shared_query=self.encoder.latent_queries.shape[1] == 1)


# ---- size variants ---------------------------------------------------------------------------

@TOKENIZERS.register("flowmo-lo", help="FlowMo-Lo paper size: enc 768x8, dec 1152x16, patch 4, 256 tokens x 18 bits (0.070 bpp at 256px)")
def flowmo_lo(**kw) -> FlowMo:
    return FlowMo(**kw)


@TOKENIZERS.register("flowmo-hi", help="FlowMo-Hi paper size: as Lo with 56 bits per token, entropy groups of 14 (0.219 bpp at 256px)")
def flowmo_hi(**kw) -> FlowMo:
    return FlowMo(**{"bits": 56, "entropy_group": 14, **kw})


@TOKENIZERS.register("flowmo-ci", help="CPU size for the `ci` protocol: 32px, patch 4 -> 32 tokens x 12 bits (0.375 bpp)")
def flowmo_ci(**kw) -> FlowMo:
    defaults = {"resolution": 32, "patch_size": 4, "latent_tokens": 32, "bits": 12, "entropy_group": 6,
                "width": 128, "depth": 2, "heads": 2, "decoder_width": 128, "decoder_depth": 4, "decoder_heads": 2,
                "shared_latent_query": False}
    return FlowMo(**{**defaults, **kw})


@TOKENIZERS.register("flowmo-smoke", help="tiny FlowMo for the `smoke` protocol and tests")
def flowmo_smoke(**kw) -> FlowMo:
    # patch 4 and a 64-wide decoder: a narrower one cannot carry a 4x4x3 patch's noise, and its flow loss stalls
    defaults = {"resolution": 32, "patch_size": 4, "latent_tokens": 8, "bits": 6, "entropy_group": 3, "width": 32,
                "depth": 1, "heads": 2, "decoder_width": 64, "decoder_depth": 1, "decoder_heads": 2,
                "sample_steps": 6, "posttrain_steps": 3, "shared_latent_query": False}
    return FlowMo(**{**defaults, **kw})
