"""RAE: "Diffusion Transformers with Representation Autoencoders" (Zheng, Ma, Tong, Xie 2025).

A frozen pretrained representation encoder (DINOv2-B with registers by default; SigLIP2-B,
MAE-B) replaces the VAE encoder; only a ViT decoder is trained. The latent is the encoder's
patch tokens after its last LayerNorm without affine parameters, class and register tokens
dropped: 768 x 16 x 16 for DINOv2-B at 224 px. It is normalised per element with the mean and
variance of the training split (``fit_normalization``; stored as buffers, so in every
checkpoint). While the decoder trains, the (raw) latents are noise-augmented,
``z + sigma * eps`` with one sigma per image (Sec. 4): sigma ~ |N(0, tau^2)| in the paper,
sigma = tau * U(0, 1) in the official code (``noise="official"``); tau = 0.8.

The encoder's weights are not part of the tokenizer's state dict (the checkpoint is the decoder
and the latent statistics, as the official release): they come from the pretrained file (or the
suite's cache) every time the tokenizer is built. A digest of them is stored instead
(``encoder_digest``), and loading a checkpoint made with other encoder weights raises.

Method facts: ../shared/reference/README.md; official code: bytetriper/RAE (not copied).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from latentbench.registry import require_positive
from latentbench.tokenizers.base import LatentSpec, Tokenizer
from latentbench.tokenizers.rae_encoders import MAERecipe, create_encoder, sincos_2d
from latentbench.tokenizers.registry import TOKENIZERS
from latentbench.tokenizers.vit import Transformer, init_vit_weights, unpatchify

NOISE_KINDS = ("paper", "official")  # sigma ~ |N(0, tau^2)| (paper, Sec. 4) | sigma = tau * U(0, 1) (official code)
ENCODER_PREFIX = "encoder."


# ---- blocks ----------------------------------------------------------------------------------

class RAEDecoder(nn.Module):
    """MAE-style ViT decoder (the official ``GeneralDecoder``): latents (B, C, h, w) -> per-patch pixels (B, h*w, 3*p*p).

    Linear in, a trainable class token (zero init) in front, fixed 2D sine-cosine positions (the
    class token's are zero), pre-norm blocks, final LayerNorm, linear to 3*p*p; the class token
    is dropped at the output. A patch's pixels are channel-major, (3, p, p), as ``vit.unpatchify``
    reads them.
    """

    def __init__(self, latent_dim: int, grid: tuple[int, int], width: int, depth: int, heads: int, patch_size: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.grid, self.patch_size = grid, patch_size
        self.embed = nn.Linear(latent_dim, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        positions = torch.cat([torch.zeros(1, width), sincos_2d(grid, width)])  # (1 + N, D)
        self.register_buffer("pos_embed", positions[None], persistent=False)  # (1, 1 + N, D)
        self.transformer = Transformer(width, depth, heads, mlp_ratio)
        self.head = nn.Linear(width, 3 * patch_size ** 2)
        self.apply(init_vit_weights)

    def forward(self, z: Tensor) -> Tensor:
        x = self.embed(z.flatten(2).transpose(1, 2))  # (B, N, D)
        x = torch.cat([self.cls_token.to(x.dtype).expand(len(x), -1, -1), x], dim=1)  # (B, 1 + N, D)
        x = self.transformer(x + self.pos_embed.to(x.dtype))  # (B, 1 + N, D)
        return self.head(x[:, 1:])  # (B, N, 3*p*p)


# ---- model -----------------------------------------------------------------------------------

class RAE(Tokenizer):
    """Frozen representation encoder -> normalised latent (B, C, h, w) -> trained ViT decoder -> image.

    Args:
        encoder: the frozen encoder (``rae_encoders.create_encoder``): ``dinov2-vitb14-reg4``
            (RAE's default), ``siglip2-vitb16``, ``mae-vitb16``, any timm ViT name, or the
            suite's own ``mae-<source>`` (a small ViT MAE-pretrained on the train split of
            ``<source>``, offline and deterministic).
        encoder_weights: local weights file; default: the Hugging Face / torch hub cache (or the
            suite's cache for ``mae-<source>``). Never downloaded: ``WeightsUnavailable`` says where to put it.
        encoder_size: side of the encoder's input; default 16 patches (224 for DINOv2's patch 14).
        random_encoder: a random-init encoder, no weights read; only for pipeline checks, and
            ``encoder_info["kind"] == "random-init"`` says so.
        encoder_recipe: ``MAERecipe`` fields for ``mae-<source>`` (its pretraining; part of its cache key).
        encoder_cache: cache root of suite-trained encoders (default: the suite's cache).
        decoder_width, decoder_depth, decoder_heads, decoder_mlp_ratio: decoder ViT size (paper: B, L, XL).
        decoder_patch: pixels per latent token side; the output is (h * p) x (w * p) (16 x 16 -> 256).
        noise: "paper" (sigma ~ |N(0, tau^2)|) or "official" (sigma = tau * U(0, 1)), or "none".
        noise_tau: tau (paper: 0.8).
        stats_eps: eps of the latent normalisation ``(z - mean) / sqrt(var + eps)`` (official: 1e-5).
    """

    stages = ("decoder",)
    training_module = "latentbench.tokenizers.rae_module:RAEModule"
    stochastic_decode = False  # a deterministic ViT decoder; ``generator`` is accepted and unused

    def __init__(
        self,
        encoder: str = "dinov2-vitb14-reg4",
        encoder_weights: str | None = None,
        encoder_size: int | None = None,
        random_encoder: bool = False,
        encoder_recipe: dict[str, Any] | None = None,
        encoder_cache: str | None = None,
        decoder_width: int = 768,
        decoder_depth: int = 12,
        decoder_heads: int = 12,
        decoder_mlp_ratio: float = 4.0,
        decoder_patch: int = 16,
        noise: str = "paper",
        noise_tau: float = 0.8,
        stats_eps: float = 1e-5,
    ):
        super().__init__()
        if noise not in NOISE_KINDS + ("none",):
            raise ValueError(f"noise must be one of {NOISE_KINDS + ('none',)}, got {noise!r}")
        if noise_tau < 0:
            raise ValueError(f"noise_tau must be >= 0, got {noise_tau}")
        require_positive(encoder_size=encoder_size, decoder_width=decoder_width, decoder_depth=decoder_depth,
                         decoder_heads=decoder_heads, decoder_mlp_ratio=decoder_mlp_ratio, decoder_patch=decoder_patch)
        self.encoder = create_encoder(encoder, encoder_weights, encoder_size, random_encoder, encoder_cache,
                                      MAERecipe(**encoder_recipe) if encoder_recipe else None)
        self.noise, self.noise_tau, self.stats_eps = noise, noise_tau, stats_eps
        c, (h, w) = self.encoder.dim, self.encoder.grid
        self.decoder_patch, self.resolution = decoder_patch, h * decoder_patch
        self.decoder = RAEDecoder(c, (h, w), decoder_width, decoder_depth, decoder_heads, decoder_patch, decoder_mlp_ratio)
        self.register_buffer("latent_mean", torch.zeros(c, h, w))
        self.register_buffer("latent_var", torch.ones(c, h, w))
        self.register_buffer("latent_stats_images", torch.zeros((), dtype=torch.int64))  # 0: not fitted yet
        digest = bytes.fromhex(self.encoder.info["weights_digest"])
        self.register_buffer("encoder_digest", torch.frombuffer(bytearray(digest), dtype=torch.uint8).clone())
        self._spec = LatentSpec(shape=(c, h, w))
        self._warned_unfitted = False
        self.register_state_dict_post_hook(_drop_encoder_weights)
        self.register_load_state_dict_pre_hook(_keep_encoder_weights)

    @property
    def latent_spec(self) -> LatentSpec:
        return self._spec

    # ---- facts for result records ----------------------------------------------------------------

    @property
    def encoder_info(self) -> dict[str, Any]:
        """What the frozen encoder is (JSON-serialisable): name, kind ("pretrained", "suite-mae",
        "random-init"), weights file and sha256, digest, preprocessing, and its training facts."""
        return dict(self.encoder.info)

    @property
    def normalization_fitted(self) -> bool:
        """Whether the per-element latent statistics have been fitted (else identity normalisation)."""
        return int(self.latent_stats_images) > 0

    def describe(self) -> dict[str, Any]:
        """Everything a result records about this RAE beyond its weights (JSON-serialisable)."""
        return {
            "encoder": self.encoder_info,
            "latent_normalization": {"fitted": self.normalization_fitted, "images": int(self.latent_stats_images),
                                     "eps": self.stats_eps, "kind": "per element (C, h, w): (z - mean) / sqrt(var + eps)"},
            "noise_augmentation": {"kind": self.noise, "tau": self.noise_tau,
                                   "sigma": {"paper": "|N(0, tau^2)|", "official": "tau * U(0, 1)", "none": "0"}[self.noise],
                                   "where": "raw latent, decoder training only"},
            "decoder": {"patch": self.decoder_patch, "resolution": self.resolution,
                        "params": sum(p.numel() for p in self.decoder.parameters())},
        }

    # ---- encode / decode -------------------------------------------------------------------------

    def normalize(self, z: Tensor) -> Tensor:
        """Raw latent -> per-element standardised latent."""
        return (z - self.latent_mean) / torch.sqrt(self.latent_var + self.stats_eps)

    def denormalize(self, z: Tensor) -> Tensor:
        """Inverse of ``normalize``."""
        return z * torch.sqrt(self.latent_var + self.stats_eps) + self.latent_mean

    def encode(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> normalised latents (B, C, h, w), never noised."""
        return self.normalize(self.encoder(x).float())  # (B, C, h, w)

    def decode(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Normalised latents (B, C, h, w) -> images (B, 3, h*p, w*p) in [-1, 1] (not clipped)."""
        pixels = self.decoder(self.denormalize(z.float()))  # (B, N, 3*p*p)
        x = unpatchify(pixels, self.decoder_patch, self.encoder.grid)  # (B, 3, H, W), the encoder's normalised pixels
        x = x * self.encoder.pixel_std.to(x.dtype) + self.encoder.pixel_mean.to(x.dtype)  # [0, 1] (official decode)
        return x * 2 - 1

    # ---- training --------------------------------------------------------------------------------

    def sample_sigma(self, batch: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        """Per-image noise scales (B,) of the configured distribution."""
        if self.noise == "paper":
            return self.noise_tau * torch.randn(batch, generator=generator, device=device).abs()
        if self.noise == "official":
            return self.noise_tau * torch.rand(batch, generator=generator, device=device)
        return torch.zeros(batch, device=device)

    def forward_train(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Reconstruction from the (in training mode: noise-augmented) latent; no extra loss terms."""
        if self.training and not self.normalization_fitted and not self._warned_unfitted:
            warnings.warn("RAE latent statistics are not fitted: training on an identity normalisation. Train with "
                          "latentbench.tokenizers.rae_module:RAEModule (fits them before the first step) or call "
                          "fit_normalization first.", stacklevel=2)
            self._warned_unfitted = True
        z = self.encoder(x).float()  # (B, C, h, w), raw
        if self.training and self.noise != "none" and self.noise_tau > 0:
            sigma = self.sample_sigma(len(z), z.device)  # (B,)
            z = z + sigma.view(-1, 1, 1, 1) * torch.randn_like(z)
        return self.decode(self.normalize(z)), {}

    @torch.no_grad()
    def fit_normalization(self, batches: Iterable, max_images: int | None = None) -> dict[str, Any]:
        """Fit the per-element mean and variance of the raw latents and store them in the buffers.

        Float32 encoder passes (autocast off) in eval mode, sums in float64; variance is the
        population one, E[z^2] - E[z]^2. Under ``torch.distributed`` each rank passes its own
        shard and the sums are all-reduced. Deterministic for a fixed batch order.

        Args:
            batches: iterable of image tensors (B, 3, H, W) in [-1, 1], or of (images, labels) pairs.
            max_images: stop after this many images (per rank); None: all.

        Returns:
            {"images": N, "mean_abs": ..., "var_mean": ...} summary facts.
        """
        device = self.latent_mean.device
        total = torch.zeros(self._spec.shape, dtype=torch.float64, device=device)
        squares = torch.zeros_like(total)
        count = torch.zeros((), dtype=torch.float64, device=device)
        with torch.autocast(device.type, enabled=False):
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                if max_images is not None:
                    x = x[:max_images - int(count)]
                z = self.encoder(x.to(device).float()).double()  # (B, C, h, w)
                total += z.sum(0)
                squares += (z * z).sum(0)
                count += len(z)
                if max_images is not None and count >= max_images:
                    break
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for t in (total, squares, count):
                torch.distributed.all_reduce(t)
        if count == 0:
            raise ValueError("fit_normalization got no images")
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0.0)
        self.latent_mean.copy_(mean.float())
        self.latent_var.copy_(var.float())
        self.latent_stats_images.fill_(int(count))
        return {"images": int(count), "mean_abs": float(mean.abs().mean()), "var_mean": float(var.mean())}

    def requires_grad_(self, requires_grad: bool = True) -> RAE:
        super().requires_grad_(requires_grad)
        self.encoder.requires_grad_(False)  # the encoder stays frozen whatever the caller asks
        return self

    def set_stage(self, stage: str, progress: float = 0.0) -> None:
        """One stage ("decoder"): the encoder is frozen throughout."""
        if stage not in self.stages:
            raise ValueError(f"unknown stage {stage!r}; RAE has {', '.join(self.stages)}")

    def last_layer(self) -> Tensor:
        return self.decoder.head.weight


def _drop_encoder_weights(module: RAE, state_dict: dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: the frozen encoder's weights are not saved (its digest is)."""
    for key in [k for k in state_dict if k.startswith(prefix + ENCODER_PREFIX)]:
        del state_dict[key]


def _keep_encoder_weights(module: RAE, state_dict: dict, prefix: str, local_metadata, strict, missing_keys,
                          unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: refuse a checkpoint of other encoder weights; keep the frozen encoder as it is."""
    stored = state_dict.get(prefix + "encoder_digest")
    if stored is not None and not torch.equal(stored.cpu(), module.encoder_digest.cpu()):
        raise ValueError(
            f"this RAE checkpoint was trained on other encoder weights (digest {bytes(stored.cpu().tolist()).hex()[:16]}) "
            f"than this tokenizer's {module.encoder_info['name']} ({module.encoder_info['weights_digest'][:16]}, "
            f"{module.encoder_info.get('weights_path')}); build the tokenizer with the encoder it was trained with"
        )
    for key, value in module.encoder.state_dict().items():
        state_dict[prefix + ENCODER_PREFIX + key] = value  # loading them again changes nothing


# ---- size variants ---------------------------------------------------------------------------

# Decoder sizes of the paper (ViT-B, -L, -XL; patch 16 on the 16 x 16 latent -> 256 px).
DECODERS = {
    "b": dict(decoder_width=768, decoder_depth=12, decoder_heads=12),
    "l": dict(decoder_width=1024, decoder_depth=24, decoder_heads=16),
    "xl": dict(decoder_width=1152, decoder_depth=28, decoder_heads=16),
}


def _paper(encoder: str, decoder: str):
    def build(**kw) -> RAE:
        return RAE(**{"encoder": encoder, **DECODERS[decoder], **kw})

    return build


TOKENIZERS.register("rae-dinov2-b", help="RAE paper: frozen DINOv2-B/14 reg4 at 224 -> 768 x 16 x 16, ViT-B decoder")(
    _paper("dinov2-vitb14-reg4", "b"))
TOKENIZERS.register("rae-dinov2-b-dec-l", help="RAE paper: DINOv2-B/14 reg4 encoder, ViT-L decoder")(
    _paper("dinov2-vitb14-reg4", "l"))
TOKENIZERS.register("rae-dinov2-b-dec-xl", help="RAE paper: DINOv2-B/14 reg4 encoder, ViT-XL decoder")(
    _paper("dinov2-vitb14-reg4", "xl"))
TOKENIZERS.register("rae-siglip2-b", help="RAE paper: frozen SigLIP2-B/16 at 256 -> 768 x 16 x 16, ViT-B decoder")(
    _paper("siglip2-vitb16", "b"))
TOKENIZERS.register("rae-mae-b", help="RAE paper: frozen MAE-B/16 at 256 -> 768 x 16 x 16, ViT-B decoder")(
    _paper("mae-vitb16", "b"))


@TOKENIZERS.register("rae-ci", help="CPU size for the `ci` protocol: suite MAE-pretrained ViT on mnist -> 128 x 8 x 8")
def rae_ci(**kw) -> RAE:
    defaults = dict(encoder="mae-mnist", decoder_width=128, decoder_depth=4, decoder_heads=4, decoder_patch=4)
    return RAE(**{**defaults, **kw})


# A seconds-long MAE pretraining: the smoke protocol exercises the path, it is not a result.
SMOKE_RECIPE = dict(width=32, depth=1, heads=2, decoder_width=16, decoder_depth=1, decoder_heads=1, batch_size=32,
                    max_steps=20, warmup_steps=2, limit=256)


@TOKENIZERS.register("rae-smoke", help="tiny RAE for the `smoke` protocol and tests (tiny suite MAE encoder)")
def rae_smoke(**kw) -> RAE:
    defaults = dict(encoder="mae-mnist", encoder_recipe=SMOKE_RECIPE, decoder_width=32, decoder_depth=1,
                    decoder_heads=2, decoder_patch=4)
    return RAE(**{**defaults, **kw})
