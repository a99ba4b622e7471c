"""MAETok: "Masked Autoencoders Are Effective Tokenizers for Diffusion Models" (Chen et al., ICML 2025).

A plain (no KL, no quantizer) ViT autoencoder with L learnable 1D latent tokens. While
training, a random 40-60% of the image tokens entering the encoder are replaced by a learnable
mask token; the pixel decoder still reconstructs the whole image, and shallow auxiliary
decoders predict target features (HOG here) of the masked tokens from the latents alone.
Stage "decoder-ft" freezes the encoder and fine-tunes the pixel decoder while the mask ratio
falls linearly to 0. The ratio is drawn per sample, uniformly, by default;
``mask_sampling="official"`` (maetok-b-128) draws one per batch from the official code's
truncated normal. Method facts: ../shared/reference/README.md; official code:
Hhhhhhao/continuous_tokenizer (not copied).

Table 1 ablation by config: ``mask_ratio_range=None, aux_targets=()`` (plain AE);
``mask_ratio_range=(0.4, 0.6), aux_targets=()`` (+mask modeling); the defaults (+aux HOG);
then stage "decoder-ft" (+decoder fine-tuning).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentbench.registry import require_positive
from latentbench.tokenizers.base import LatentSpec, Tokenizer
from latentbench.tokenizers.hog import hog_dim, hog_features
from latentbench.tokenizers.registry import TOKENIZERS
from latentbench.tokenizers.teachers import create_teacher, normalize_targets
from latentbench.tokenizers.vit import (
    PatchEmbed,
    Transformer,
    init_vit_weights,
    resize_grid_embed,
    rope_2d,
    sincos_1d,
    unpatchify,
    zero_init_modulations,
)

AUX_TARGETS = ("hog",)  # computed here; any other name is a frozen teacher of latentbench.tokenizers.teachers
MASK_SAMPLINGS = ("uniform", "official")
OFFICIAL_MASK_SCALE = 0.25  # the official encoder's truncated normal: its scale, fixed in its code


def official_mask_ratio(u: Tensor, lo: float, hi: float, scale: float = OFFICIAL_MASK_SCALE) -> Tensor:
    """The official encoder's mask ratio from uniform draws ``u`` in [0, 1): N(hi, scale^2) truncated to [lo, hi].

    The official code draws ``scipy.stats.truncnorm((lo - hi) / scale, 0, loc=hi, scale=scale)``
    (its ``token_drop`` and ``token_drop_max``: 0.4 and 0.6), whose density rises towards ``hi``
    (mean about 0.505 for 0.4-0.6). Here by inverse CDF on torch's RNG, so no scipy at train time:
    ``hi + scale * ndtri(ndtr(a) + u * (1/2 - ndtr(a)))`` with ``a = (lo - hi) / scale``, clamped
    to [lo, hi] against rounding. Same shape, dtype and device as ``u``.
    """
    a = torch.tensor((lo - hi) / scale, dtype=u.dtype, device=u.device)
    low = torch.special.ndtr(a)  # the standard normal's CDF at the lower bound; at the upper (0) it is 1/2
    z = torch.special.ndtri(low + u * (0.5 - low))  # standard normal truncated to [a, 0]
    return (hi + scale * z).clamp(lo, hi)


# ---- blocks ----------------------------------------------------------------------------------

class LatentPositions(nn.Module):
    """1D absolute positions of the L latent tokens: learned, or fixed sine-cosine."""

    def __init__(self, length: int, dim: int, kind: str = "learned"):
        super().__init__()
        if kind == "learned":
            self.table = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        elif kind == "sincos":
            self.register_buffer("table", sincos_1d(length, dim)[None], persistent=False)
        else:
            raise ValueError(f"latent positions must be 'learned' or 'sincos', got {kind!r}")

    def forward(self, tokens: Tensor) -> Tensor:
        return tokens + self.table.to(tokens.dtype)  # (B, L, D)


class QueryDecoder(nn.Module):
    """ViT over [per-patch learnable queries, projected latent tokens]; returns the query outputs.

    Serves both the pixel decoder and the shallow auxiliary decoders. The learned query grid is
    resampled bicubically when the input grid differs from the one it was built for; queries
    carry 2D RoPE (fixed axial, or learnable RoPE-Mixed), latent tokens 1D absolute positions.
    With ``movq`` every block's normalised latent tokens are also shifted and scaled by the
    raw latent (MAETok's MoVQ decoder blocks). With ``cls_token`` a learned class token joins
    the sequence (the official decoder is a timm ViT with one, ``dec_cls_token``): no position,
    no modulation, not an output.
    """

    def __init__(self, latent_tokens: int, latent_channels: int, grid: tuple[int, int], width: int, depth: int,
                 heads: int, out_dim: int, latent_pos: str = "learned", rope_base: float = 100.0,
                 rope: str = "axial", movq: bool = False, cls_token: bool = False):
        super().__init__()
        self.grid, self.heads, self.rope_base = grid, heads, rope_base
        self.queries = nn.Parameter(torch.randn(1, grid[0] * grid[1], width) * 0.02)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 1e-6) if cls_token else None  # timm's class-token init
        self.latent_in = nn.Linear(latent_channels, width)
        self.latent_pos = LatentPositions(latent_tokens, width, latent_pos)
        self.transformer = Transformer(width, depth, heads, cond_dim=latent_channels if movq else None,
                                       rope_mixed=rope == "mixed", rope_base=rope_base)
        self.head = nn.Linear(width, out_dim)

    def forward(self, z: Tensor, grid: tuple[int, int]) -> Tensor:
        n = grid[0] * grid[1]
        queries = resize_grid_embed(self.queries, self.grid, grid).expand(z.shape[0], -1, -1)  # (B, N, D)
        latents = self.latent_pos(self.latent_in(z))  # (B, L, D)
        rope = None if self.transformer.rope_freqs is not None else rope_2d(
            grid, queries.shape[-1] // self.heads, self.rope_base, z.device)
        cond = z if self.transformer.norm_modulation is not None else None
        # [queries, (class token), latents]: RoPE rotates the first N tokens and MoVQ modulates the
        # last L, so the class token between them gets neither, as in the official [class, queries, latents]
        prefix = [self.cls_token.to(latents.dtype).expand(z.shape[0], -1, -1)] if self.cls_token is not None else []
        x = self.transformer(torch.cat([queries.to(latents.dtype), *prefix, latents], dim=1), rope, cond, grid)  # (B, N [+1] + L, D)
        return self.head(x[:, :n])  # (B, N, out_dim)


# ---- model -----------------------------------------------------------------------------------

class MAETok(Tokenizer):
    """ViT encoder with 1D latent tokens -> latents (B, L, C); ViT pixel decoder with image queries.

    The decoder's output is linear (no tanh), as MAE-style pixel decoders; reconstructions are
    not clipped to [-1, 1] inside the network (evaluation clamps where it needs to).

    Args:
        resolution: image size the query grid is built for (other multiples of the patch work).
        patch_size: p of the image patches.
        width, depth, heads: encoder ViT size.
        latent_tokens: L, the number of 1D latent tokens.
        latent_channels: C, the width of one latent token.
        decoder_width, decoder_depth, decoder_heads: pixel decoder size (default: the encoder's).
        latent_pos: "learned" or "sincos" 1D positions of the latent tokens.
        rope_base: base of the 2D RoPE on image tokens.
        mask_ratio_range: (lo, hi) fraction of image tokens masked while training, drawn as
            ``mask_sampling`` says; None trains a plain autoencoder.
        mask_sampling: how stage "ae" draws the ratio: "uniform", one ratio per sample ~ U(lo, hi),
            round(N * ratio) tokens masked; or "official", the official encoder's: ONE ratio per
            batch from N(hi, 0.25^2) truncated to [lo, hi] (``official_mask_ratio``), ceil(N *
            ratio) tokens of every sample (maetok-b-128's). Stage "decoder-ft" masks its fixed,
            falling ratio either way.
        aux_targets: names of the features the auxiliary decoders predict for masked tokens;
            () disables them. "hog" (computed here), or a frozen teacher of
            ``latentbench.tokenizers.teachers`` ("dinov2-vitb14", "siglip-b16", or the official
            code's "maetok-dinov2-vitl" and "maetok-siglip-so400m" (maetok-b-128's), when their
            weights are on the machine; "domain-<source>", the suite's own offline encoder).
            Teacher targets are standardised per token (LayerNorm without affine).
        aux_width, aux_depth, aux_heads: size of each auxiliary decoder (paper: 3 layers).
        hog_cell: HOG cell size (default min(8, patch_size)).
        hog_norm: HOG target normalisation, "patch" (one L2 norm per patch) or "cell" (each channel's
            and cell's histogram over its bins, the official ``HOGGenerator``; maetok-b-128's default).
        teacher_cache: cache directory of suite-trained teachers (default: the suite's cache).
        cls_token: add a class token to the encoder's sequence (the official encoder is a timm
            DINOv2 ViT, which has one; it is not part of the latent).
        abs_pos: learned absolute positions on the encoder's [class,] image tokens (timm's
            ``pos_embed``), on top of RoPE.
        layer_scale: init value of LayerScale in the encoder blocks (DINOv2: 1e-5); None: none.
        rope: "axial" (fixed 2D RoPE tables) or "mixed" (learnable RoPE-Mixed frequencies per
            block and head, as the official code's ``rope_mixed``), in encoder and decoders.
        movq: MoVQ-style modulation of the latent tokens in every decoder block by the raw latent.
        decoder_cls_token: a class token in the pixel decoder's sequence (the official code's
            ``dec_cls_token``, True by default there); the auxiliary decoders have none.
        teacher_loss: loss of the teacher-feature targets (DINOv2, SigLIP, domain-*) on masked tokens:
            "mse" on the standardised features (the reference notes, and the committed `ci` rows), or
            "cosine", the negative cosine similarity the official training code uses; HOG is MSE either way.
    """

    stages = ("ae", "decoder-ft")
    stochastic_decode = False  # a deterministic pixel decoder; ``generator`` is accepted and unused
    # The reference notes give MSE for the auxiliary targets but no weight: 1.0 per target (set
    # in __init__; AutoencoderModule's loss_weights overrides them).
    loss_weights: dict[str, float] = {}

    def __init__(
        self,
        resolution: int = 256,
        patch_size: int = 16,
        width: int = 768,
        depth: int = 12,
        heads: int = 12,
        latent_tokens: int = 128,
        latent_channels: int = 32,
        decoder_width: int | None = None,
        decoder_depth: int | None = None,
        decoder_heads: int | None = None,
        latent_pos: str = "learned",
        rope_base: float = 100.0,
        mask_ratio_range: tuple[float, float] | None = (0.4, 0.6),
        mask_sampling: str = "uniform",
        aux_targets: tuple[str, ...] = ("hog",),
        aux_width: int | None = None,
        aux_depth: int = 3,
        aux_heads: int | None = None,
        hog_cell: int | None = None,
        hog_norm: str = "patch",
        teacher_cache: str | None = None,
        cls_token: bool = False,
        abs_pos: bool = False,
        layer_scale: float | None = None,
        rope: str = "axial",
        movq: bool = False,
        decoder_cls_token: bool = False,
        teacher_loss: str = "mse",
    ):
        super().__init__()
        if teacher_loss not in ("mse", "cosine"):
            raise ValueError(f"teacher_loss must be 'mse' or 'cosine', got {teacher_loss!r}")
        self.teacher_loss = teacher_loss
        aux_targets = tuple(aux_targets)
        # Frozen teachers live outside the module tree: not trained, not in the state dict, not
        # moved by .to() (forward moves them to the input's device).
        self._teachers = {name: create_teacher(name, cache_dir=teacher_cache) for name in aux_targets if name not in AUX_TARGETS}
        if aux_targets and mask_ratio_range is None:
            raise ValueError("aux_targets predict masked tokens: set mask_ratio_range or aux_targets=()")
        if mask_ratio_range is not None and not 0 <= mask_ratio_range[0] <= mask_ratio_range[1] < 1:
            raise ValueError(f"mask_ratio_range must satisfy 0 <= lo <= hi < 1, got {mask_ratio_range}")
        if mask_sampling not in MASK_SAMPLINGS:
            raise ValueError(f"mask_sampling must be one of {MASK_SAMPLINGS}, got {mask_sampling!r}")
        self.mask_sampling = mask_sampling
        if rope not in ("axial", "mixed"):
            raise ValueError(f"rope must be 'axial' or 'mixed', got {rope!r}")
        require_positive(resolution=resolution, patch_size=patch_size, width=width, depth=depth, heads=heads,
                         latent_tokens=latent_tokens, latent_channels=latent_channels, decoder_width=decoder_width,
                         decoder_depth=decoder_depth, decoder_heads=decoder_heads, rope_base=rope_base, aux_width=aux_width,
                         aux_heads=aux_heads, hog_cell=hog_cell)
        if resolution % patch_size:
            raise ValueError(f"resolution {resolution} is not a multiple of patch_size {patch_size}")
        self.resolution, self.patch_size, self.heads, self.rope_base = resolution, patch_size, heads, rope_base
        self.mask_ratio_range = tuple(mask_ratio_range) if mask_ratio_range is not None else None
        self.mask_scale = 1.0  # set_stage("decoder-ft", progress) anneals it to 0
        self.finetuning_decoder = False  # stage "decoder-ft": encoder frozen, auxiliary losses off, mask annealed
        self.hog_cell = hog_cell or min(8, patch_size)
        if hog_norm not in ("patch", "cell"):
            raise ValueError(f"hog_norm must be 'patch' or 'cell', got {hog_norm!r}")
        self.hog_norm = hog_norm
        grid = (resolution // patch_size, resolution // patch_size)
        dec_w, dec_d, dec_h = decoder_width or width, decoder_depth or depth, decoder_heads or heads
        # encoder
        self.grid = grid
        self.patch_embed = PatchEmbed(patch_size, 3, width)
        self.mask_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.02) if cls_token else None
        self.pos_embed = nn.Parameter(torch.randn(1, int(cls_token) + grid[0] * grid[1], width) * 0.02) if abs_pos else None
        self.latent_queries = nn.Parameter(torch.randn(1, latent_tokens, width) * 0.02)
        self.latent_pos = LatentPositions(latent_tokens, width, latent_pos)
        self.encoder = Transformer(width, depth, heads, layer_scale=layer_scale, rope_mixed=rope == "mixed",
                                   rope_base=rope_base)
        self.to_latent = nn.Linear(width, latent_channels)
        # pixel decoder and auxiliary decoders
        self.decoder = QueryDecoder(latent_tokens, latent_channels, grid, dec_w, dec_d, dec_h,
                                    3 * patch_size**2, latent_pos, rope_base, rope, movq, decoder_cls_token)
        self.aux_decoders = nn.ModuleDict({
            name: QueryDecoder(latent_tokens, latent_channels, grid, aux_width or dec_w, aux_depth,
                               aux_heads or dec_h, self._target_dim(name), latent_pos, rope_base, rope, movq)
            for name in aux_targets
        })
        self.apply(init_vit_weights)
        zero_init_modulations(self)
        self._spec = LatentSpec(shape=(latent_tokens, latent_channels))
        self.loss_weights = {name: 1.0 for name in aux_targets}

    def _target_dim(self, name: str) -> int:
        return hog_dim(self.patch_size, self.hog_cell) if name == "hog" else self._teachers[name].dim

    def describe_targets(self) -> dict[str, dict]:
        """What each auxiliary target is (for result records): HOG's parameters or the teacher's facts."""
        return {name: dict(kind="hog", patch=self.patch_size, cell=self.hog_cell, bins=9, norm=self.hog_norm) if name == "hog"
                else self._teachers[name].describe() for name in self.aux_decoders}

    @property
    def latent_spec(self) -> LatentSpec:
        return self._spec

    def encoder_modules(self) -> list[nn.Module]:
        """Modules that map images to latents (frozen in stage "decoder-ft")."""
        return [self.patch_embed, self.latent_pos, self.encoder, self.to_latent]

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoder: mask token, latent queries, class token and positions included."""
        params = [p for p in (self.mask_token, self.latent_queries, self.cls_token, self.pos_embed) if p is not None]
        return params + [p for m in self.encoder_modules() for p in m.parameters()]

    # ---- encode / decode -----------------------------------------------------------------------

    def _grid(self, x: Tensor) -> tuple[int, int]:
        return x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size

    def _encode_tokens(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """Image tokens (B, N, D), possibly masked -> latents (B, L, C)."""
        b = tokens.shape[0]
        prefix = []
        if self.cls_token is not None:
            prefix = [self.cls_token.to(tokens.dtype).expand(b, -1, -1)]  # (B, 1, D)
        if self.pos_embed is not None:  # timm's pos_embed: [class position,] patch grid
            k = int(self.cls_token is not None)
            grid_pos = resize_grid_embed(self.pos_embed[:, k:], self.grid, grid).to(tokens.dtype)  # (1, N, D)
            tokens = tokens + grid_pos
            if prefix:
                prefix = [prefix[0] + self.pos_embed[:, :1].to(tokens.dtype)]
        latents = self.latent_pos(self.latent_queries.expand(b, -1, -1))  # (B, L, D)
        # Sequence [image tokens, (class token), latent tokens]: RoPE needs the image tokens first;
        # attention is order-free otherwise, so the class token's place does not matter.
        rope = None if self.encoder.rope_freqs is not None else rope_2d(
            grid, tokens.shape[-1] // self.heads, self.rope_base, tokens.device)
        x = self.encoder(torch.cat([tokens, *prefix, latents.to(tokens.dtype)], dim=1), rope, grid=grid)  # (B, N [+1] + L, D)
        return self.to_latent(x[:, -latents.shape[1]:])  # (B, L, C)

    def encode(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W) -> latents (B, L, C); never masked."""
        return self._encode_tokens(self.patch_embed(x), self._grid(x))  # (B, L, C)

    def decode(self, z: Tensor, generator: torch.Generator | None = None, grid: tuple[int, int] | None = None) -> Tensor:
        """Latents (B, L, C) -> images (B, 3, H, W); ``grid`` defaults to the built resolution's."""
        grid = grid or (self.resolution // self.patch_size,) * 2
        pixels = self.decoder(z, grid)  # (B, N, 3*p*p)
        return unpatchify(pixels, self.patch_size, grid)  # (B, 3, H, W)

    # ---- training --------------------------------------------------------------------------------

    @property
    def aux_enabled(self) -> bool:
        """Whether the auxiliary losses are on: in every stage but decoder-ft."""
        return not self.finetuning_decoder

    def current_mask_range(self) -> tuple[float, float] | None:
        """Mask-ratio range in force now, None when not masking.

        Stage "ae": the configured range (40-60%), drawn from as ``mask_sampling`` says. Stage
        "decoder-ft": one ratio, the range's top times ``mask_scale``, so it falls linearly from 60%
        to 0% (the paper's schedule).
        """
        if self.mask_ratio_range is None:
            return None
        lo, hi = self.mask_ratio_range
        if self.finetuning_decoder:
            return hi * self.mask_scale, hi * self.mask_scale
        return lo, hi

    def sample_mask(self, batch: int, tokens: int, device=None) -> Tensor:
        """Boolean mask (B, N), True = masked, on a random permutation of every sample's tokens.

        ``mask_sampling`` "uniform" (and stage "decoder-ft" either way): each sample's ratio ~
        U(current range), round(N * ratio) tokens. "official" in stage "ae": one ratio for the
        batch from the official truncated normal, ceil(N * ratio) tokens of every sample, as the
        official encoder (``int(np.ceil(seq_len * mask_rate))``).
        """
        lo, hi = self.current_mask_range()
        if self.mask_sampling == "official" and not self.finetuning_decoder:
            ratio = official_mask_ratio(torch.rand(1, 1, device=device), lo, hi)  # (1, 1): one per batch
            count = torch.ceil(ratio * tokens)  # (1, 1)
        else:
            ratio = lo + (hi - lo) * torch.rand(batch, 1, device=device)  # (B, 1)
            count = torch.round(ratio * tokens)  # (B, 1)
        ranks = torch.rand(batch, tokens, device=device).argsort(dim=1).argsort(dim=1)  # (B, N) random permutation
        return ranks < count  # (B, N)

    def forward_train(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Masked encoding (in training mode), full reconstruction, and auxiliary losses on masked tokens."""
        grid = self._grid(x)
        tokens = self.patch_embed(x)  # (B, N, D)
        mask = None
        if self.training and self.mask_ratio_range is not None and self.mask_scale > 0:
            mask = self.sample_mask(tokens.shape[0], tokens.shape[1], x.device)  # (B, N)
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)  # (B, N, D)
        z = self._encode_tokens(tokens, grid)  # (B, L, C)
        rec = unpatchify(self.decoder(z, grid), self.patch_size, grid)  # (B, 3, H, W)
        losses = {}
        if mask is not None and mask.any() and self.aux_enabled:
            for name, aux in self.aux_decoders.items():
                pred = aux(z, grid).float()  # (B, N, D_t)
                cosine = name != "hog" and self.teacher_loss == "cosine"  # the official code's teacher loss
                target = self.aux_target(name, x, standardise=not cosine)  # (B, N, D_t)
                if cosine:  # of the raw features, as the official code (standardising would re-centre them)
                    per_token = -(F.normalize(pred, dim=-1) * F.normalize(target, dim=-1)).sum(dim=-1)  # (B, N)
                else:
                    per_token = ((pred - target) ** 2).mean(dim=-1)  # (B, N)
                losses[name] = per_token[mask].mean()
        return rec, losses

    def aux_target(self, name: str, x: Tensor, standardise: bool = True) -> Tensor:
        """Target features (B, N, D_t) of every image token, without gradient; a teacher's standardised per token
        unless ``standardise`` is False (the cosine loss reads their direction)."""
        if name == "hog":
            return hog_features(x, self.patch_size, self.hog_cell, norm=self.hog_norm)  # (B, N, D_hog)
        teacher = self._teachers[name].to(x.device)
        features = teacher(x.float(), self._grid(x))  # (B, N, D_t)
        return normalize_targets(features) if standardise else features

    def set_stage(self, stage: str, progress: float = 0.0) -> None:
        """Configure a training stage; ``progress`` in [0, 1] is the fraction of the stage done.

        "ae": everything trains at the full mask ratio. "decoder-ft": encoder (with mask token and
        latent queries) and auxiliary decoders frozen, auxiliary losses off, mask ratio the
        range's top times (1 - progress), so it falls linearly from 60% to 0% (the paper's).
        """
        if stage not in self.stages:
            raise ValueError(f"unknown stage {stage!r}; MAETok has {', '.join(self.stages)}")
        finetune = stage == "decoder-ft"
        for p in self.encoder_parameters() + list(self.aux_decoders.parameters()):
            p.requires_grad_(not finetune)
        self.finetuning_decoder = finetune
        self.mask_scale = 1.0 - min(max(progress, 0.0), 1.0) if finetune else 1.0

    def last_layer(self) -> Tensor:
        return self.decoder.head.weight

    def convert_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """An official MAETok state dict converted to this module's keys; any other state dict as it is."""
        from latentbench.tokenizers.maetok_convert import (
            convert_official_state_dict,
            is_official_state_dict,
        )

        return convert_official_state_dict(state, self)[0] if is_official_state_dict(state) else state


# ---- size variants ---------------------------------------------------------------------------

# The official architecture (configs/maetok-b-*.yaml of the official code): the encoder is a timm
# DINOv2-style ViT-B (class token, learned positions, LayerScale 1e-5), RoPE-Mixed with base 10
# in encoder and decoders, MoVQ decoder blocks, and a class token in the pixel decoder (the
# official ``dec_cls_token`` default; a checkpoint built with it carries ``decoder.model.cls_token``,
# and the converter follows that key). ``convert_official_state_dict`` loads its weights. The HOG
# target is normalised per channel and cell over its 9 bins, as the official ``HOGGenerator``
# (MaskFeat's; a 16-pixel patch's 108 values are 3 channels x 2 x 2 cells x 9 bins).
OFFICIAL_ARCH = dict(cls_token=True, abs_pos=True, layer_scale=1e-5, rope="mixed", rope_base=10.0, movq=True,
                     decoder_cls_token=True, hog_norm="cell")


@TOKENIZERS.register("maetok-b-128", help="MAETok paper size: ViT-B enc/dec, patch 16, 256px -> 128 x 32 tokens")
def maetok_b_128(**kw) -> MAETok:
    return MAETok(**{**OFFICIAL_ARCH, **kw})


@TOKENIZERS.register("maetok-ci", help="CPU size for the `ci` protocol: 32px, patch 4 -> 32 x 8 tokens")
def maetok_ci(**kw) -> MAETok:
    defaults = dict(resolution=32, patch_size=4, width=128, depth=4, heads=2, latent_tokens=32, latent_channels=8,
                    aux_width=64, aux_depth=3, aux_heads=1)
    return MAETok(**{**defaults, **kw})


@TOKENIZERS.register("maetok-smoke", help="tiny MAETok for the `smoke` protocol and tests")
def maetok_smoke(**kw) -> MAETok:
    defaults = dict(resolution=32, patch_size=8, width=32, depth=1, heads=2, latent_tokens=8, latent_channels=4,
                    aux_width=16, aux_depth=1, aux_heads=1)
    return MAETok(**{**defaults, **kw})
