"""DiT (Peebles & Xie, 2023) velocity networks on latents, with the LightningDiT and RAE DiT^DH options.

``net(x, t, y) -> out`` shaped like ``x``: a batch of 2D latents (B, C, h, w) or 1D token latents
(B, L, C), times t (B,) in [0, 1] and class labels y (B,) in [0, num_classes], where label
``num_classes`` is the null (unconditional) label. The network knows nothing of the transport
(``transport.py``): what it predicts (velocity) and how t is sampled live there.

Pieces, blocks -> model -> size variants -> registration:

- adaLN-Zero blocks (DiT sec. 3.2): c = time embedding + class embedding regresses shift, scale
  and gate of the attention and MLP branches; every adaLN layer and the output projection start
  at zero, so the network outputs 0 at initialisation.
- LightningDiT options (Yao et al., 2025): SwiGLU MLP, RMSNorm, RoPE; q/k normalisation (off in LightningDiT's configs).
- DiT^DH (RAE, Zheng et al., 2025 sec. 5): a wide (2048), shallow (2 blocks) head after the
  backbone, laid out as DDT's decoder: it re-embeds the noisy input at the head's width and
  modulates it per token by the backbone's output, then predicts the velocity.
- RAE's width finding (sec. 4): a DiT fits high-dimensional latents only when its width is at
  least the token dimension; narrower networks get a warning.
"""
from __future__ import annotations

import warnings
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Mlp, RmsNorm, SwiGLUPacked
from torch import Tensor, nn

from latentbench.generators import seeding
from latentbench.generators.registry import GENERATORS
from latentbench.registry import require_positive
from latentbench.tokenizers.mmdit import (
    Modulation,
    TimeEmbed,
    joint_attention,
    rope_axes,
)
from latentbench.tokenizers.rae_encoders import sincos_2d
from latentbench.tokenizers.vit import (
    apply_rope,
    init_vit_weights,
    patchify,
    rope_2d,
    sincos_1d,
    unpatchify,
)

MLPS = ("gelu", "swiglu")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("sincos", "rope", "learned", "sincos+rope")

# ---- blocks -----------------------------------------------------------------------------------


def make_norm(kind: str, dim: int, affine: bool = False) -> nn.Module:
    """LayerNorm (DiT) or RMSNorm (LightningDiT); blocks take no affine, adaLN supplies shift and scale."""
    if kind == "rmsnorm":
        return RmsNorm(dim, eps=1e-6, affine=affine)
    return nn.LayerNorm(dim, eps=1e-6, elementwise_affine=affine)


def make_mlp(kind: str, dim: int, mlp_ratio: float) -> nn.Module:
    """GELU (tanh) MLP of DiT, or LightningDiT's SwiGLU with 2/3 of the hidden width (same parameters)."""
    hidden = int(dim * mlp_ratio)
    if kind == "swiglu":
        return SwiGLUPacked(dim, 2 * int(2 * hidden / 3))  # fc1 holds value and gate: one matmul
    return Mlp(dim, hidden, act_layer=partial(nn.GELU, approximate="tanh"))


def adaln(linear: nn.Linear, cond: Tensor, chunks: int) -> tuple[Tensor, ...]:
    """adaLN parameters from a condition (B, D) shared by all tokens, or (B, N, D) per token (DiT^DH's head).

    ``mmdit.Modulation.forward`` takes only the (B, D) form, hence this thin step on its ``lin``.
    """
    out = linear(F.silu(cond))  # (B, chunks * D) or (B, N, chunks * D)
    if out.dim() == 2:
        out = out[:, None]  # (B, 1, chunks * D)
    return out.chunk(chunks, dim=-1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class SelfAttention(nn.Module):
    """Multi-head self-attention with optional per-head q/k normalisation and RoPE.

    ``vit.Attention`` has no q/k normalisation (LightningDiT's ``qk_norm``); rather than change
    that shared class, this one adds it. The product itself is ``mmdit.joint_attention``: SDPA's
    fused kernels on accelerators, plain matmuls on CPU (measured faster there).
    """

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, norm: str = "layernorm"):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = make_norm(norm, dim // heads, affine=True) if qk_norm else None
        self.k_norm = make_norm(norm, dim // heads, affine=True) if qk_norm else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d_h)
        if self.q_norm is not None:  # norms in float32
            q, k = self.q_norm(q.float()).to(v.dtype), self.k_norm(k.float()).to(v.dtype)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)  # (B, h, N, d_h)
        out = joint_attention(q, k, v)  # (B, h, N, d_h)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class DiTBlock(nn.Module):
    """adaLN-Zero block: x + gate * attn(modulate(norm(x))), then the same for the MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, mlp: str = "gelu", norm: str = "layernorm",
                 qk_norm: bool = False):
        super().__init__()
        self.norm1 = make_norm(norm, dim)
        self.attn = SelfAttention(dim, heads, qk_norm, norm)
        self.norm2 = make_norm(norm, dim)
        self.mlp = make_mlp(mlp, dim, mlp_ratio)
        self.mod = Modulation(dim)

    def forward(self, x: Tensor, cond: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x (B, N, D); cond (B, D) or (B, N, D); rope tables (N, d_h) or None."""
        shift1, scale1, gate1, shift2, scale2, gate2 = adaln(self.mod.lin, cond, 6)  # 6 x (B, 1 or N, D)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), rope)  # (B, N, D)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))  # (B, N, D)


class OutputLayer(nn.Module):
    """DiT's final layer: norm, adaLN shift and scale, linear to the per-token output.

    Not ``mmdit.FinalLayer``: that one normalises twice around the modulation (Flux's layout,
    kept for FlowMo's checkpoints) and has no RMSNorm; DiT normalises once.
    """

    def __init__(self, dim: int, out_dim: int, norm: str = "layernorm"):
        super().__init__()
        self.norm = make_norm(norm, dim)
        self.ada = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        shift, scale = adaln(self.ada, cond, 2)  # 2 x (B, 1 or N, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, N, out_dim)


class Positions(nn.Module):
    """Where tokens sit on a (gh, gw) grid (1 x L for 1D tokens): an additive table, RoPE tables, or both.

    ``sincos``: fixed 2D sine-cosine table (DiT's, row and column halves swapped: ``rae_encoders.sincos_2d``),
    1D on a 1 x L grid (MAETok's generators);
    ``learned``: a free table; ``rope``: axial 2D RoPE, or 1D RoPE over the token index;
    ``sincos+rope``: the fixed table and RoPE (LightningDiT and RAE's DiT^DH add their frozen
    ``pos_embed`` and rotate by RoPE as well). ``rope_base``: RoPE's base; None: 100 in 2D
    (``vit.rope_2d``), 10000 in 1D (LightningDiT's EVA RoPE: 10000).
    """

    def __init__(self, kind: str, grid: tuple[int, int], dim: int, heads: int, rope_base: float | None = None):
        super().__init__()
        n, one_d, head_dim = grid[0] * grid[1], grid[0] == 1, dim // heads
        for name in ("table", "cos", "sin"):
            self.register_buffer(name, None, persistent=False)
        if kind not in POSITIONS:
            raise ValueError(f"pos must be one of {POSITIONS}, got {kind!r}")
        if kind in ("sincos", "sincos+rope"):
            if dim % (2 if one_d else 4):
                raise ValueError(f"sine-cosine positions need a width divisible by {2 if one_d else 4}, got {dim}")
            table = sincos_1d(n, dim) if one_d else sincos_2d(grid, dim)  # (N, D)
            self.table = table[None]  # (1, N, D)
        elif kind == "learned":
            self.table = nn.Parameter(torch.randn(1, n, dim) * 0.02)  # (1, N, D)
        if kind in ("rope", "sincos+rope"):
            if one_d and head_dim % 2:
                raise ValueError(f"1D RoPE needs an even head dimension, got {head_dim}")
            index = torch.arange(n, dtype=torch.float32)[:, None]  # (N, 1)
            base = {} if rope_base is None else {"theta" if one_d else "base": rope_base}
            cos, sin = rope_axes(index, (head_dim,), **base) if one_d else rope_2d(grid, head_dim, **base)  # 2 x (N, d_h)
            self.cos, self.sin = cos, sin

    def forward(self, x: Tensor) -> Tensor:
        return x if self.table is None else x + self.table.to(x.dtype)  # (B, N, D)

    def rope(self) -> tuple[Tensor, Tensor] | None:
        return None if self.cos is None else (self.cos, self.sin)


class DHHead(nn.Module):
    """RAE's DiT^DH head, in DDT's decoder layout: wide, shallow adaLN blocks predicting the velocity.

    The noisy input tokens are embedded again at the head's width; each token is modulated by
    s = Linear(SiLU(backbone token + time embedding)), the backbone's output projected to the head.
    ``heads`` None: ``head_count(width)``. A backbone with a sin-cos table and RoPE gives the head
    RoPE alone, as RAE's ``DiTwDDTHead`` (its ``x_pos_embed`` is None).
    """

    def __init__(self, token_dim: int, backbone_width: int, width: int, depth: int, grid: tuple[int, int], pos: str,
                 mlp_ratio: float, mlp: str, norm: str, qk_norm: bool, heads: int | None = None,
                 rope_base: float | None = None):
        super().__init__()
        heads = heads or head_count(width)
        if width % heads:
            raise ValueError(f"head_width {width} is not divisible by head_heads {heads}")
        self.x_embed = nn.Linear(token_dim, width)
        self.pos = Positions("rope" if pos == "sincos+rope" else pos, grid, width, heads, rope_base)
        self.cond = nn.Linear(backbone_width, width)
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio, mlp, norm, qk_norm) for _ in range(depth))
        self.out = OutputLayer(width, token_dim, norm)

    def forward(self, tokens: Tensor, backbone: Tensor, t_emb: Tensor) -> Tensor:
        """tokens (B, N, token_dim) noisy input; backbone (B, N, D) output; t_emb (B, D) -> (B, N, token_dim)."""
        s = self.cond(F.silu(backbone + t_emb[:, None]))  # (B, N, W)
        x = self.pos(self.x_embed(tokens))  # (B, N, W)
        for block in self.blocks:
            x = block(x, s, self.pos.rope())  # (B, N, W)
        return self.out(x, s)  # (B, N, token_dim)


def head_count(width: int) -> int:
    """Heads of a DiT^DH head: 64 channels each where the width allows, else the largest divisor below."""
    heads = max(width // 64, 1)
    while width % heads:
        heads -= 1
    return heads


# ---- model ------------------------------------------------------------------------------------


class DiT(nn.Module):
    """Class-conditional DiT velocity network on 2D latents (B, C, h, w) or 1D token latents (B, L, C).

    Args:
        input_shape: one latent, (C, h, w) or (L, C).
        num_classes: classes; label ``num_classes`` is the null label (classifier-free guidance).
        width, depth, heads, mlp_ratio: backbone size.
        patch_size: p x p patches of a 2D latent; 1 for 1D tokens.
        mlp: "gelu" (DiT) or "swiglu" (LightningDiT).
        norm: "layernorm" (DiT) or "rmsnorm" (LightningDiT).
        pos: "sincos" (DiT), "rope", "sincos+rope" (LightningDiT) or "learned".
        rope_base: RoPE's base (``Positions``; LightningDiT: 10000); None: 100 in 2D, 10000 in 1D.
        qk_norm: normalise queries and keys per head (off in LightningDiT's configs).
        class_dropout: probability of replacing a label by the null label in training (DiT: 0.1).
        head_width, head_depth: RAE's DiT^DH head (2048 x 2 in the paper); 0 = plain DiT.
        head_heads: attention heads of the head (RAE: 16); None: 64 channels each (``head_count``).
        time_scale: t in [0, 1] is scaled by this before the sinusoidal embedding (DiT's 1000 steps).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 384, depth: int = 6,
                 heads: int = 6, patch_size: int = 1, mlp_ratio: float = 4.0, mlp: str = "gelu",
                 norm: str = "layernorm", pos: str = "sincos", qk_norm: bool = False, class_dropout: float = 0.1,
                 head_width: int = 0, head_depth: int = 2, time_scale: float = 1000.0, rope_base: float | None = None,
                 head_heads: int | None = None):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.grid, self.token_dim = token_grid(self.input_shape, patch_size)
        _check_options(width, heads, mlp, norm, pos, class_dropout)
        require_positive(depth=depth, mlp_ratio=mlp_ratio, time_scale=time_scale, rope_base=rope_base, head_heads=head_heads,
                         **({"head_depth": head_depth} if head_width else {}))
        if head_width < 0:
            raise ValueError(f"head_width must be 0 (plain DiT) or the DiT^DH head's width, got {head_width}")
        # With a DiT^DH head the head is what maps tokens to velocities, so its width is the one RAE's
        # bound applies to (RAE's DiT^DH-S guide has a 384-wide backbone on 768-d tokens).
        if head_width > 0:
            warn_narrow(head_width, self.token_dim, "head_width")
        else:
            warn_narrow(width, self.token_dim, "width")
        self.num_classes, self.patch_size = num_classes, patch_size
        self.class_dropout, self.time_scale = class_dropout, time_scale
        self.options = {"width": width, "depth": depth, "heads": heads, "mlp": mlp, "norm": norm, "pos": pos,
                        "qk_norm": qk_norm, "head": f"{head_width}x{head_depth}" if head_width > 0 else None,
                        **({"rope_base": rope_base} if rope_base is not None else {})}

        self.x_embed = nn.Linear(self.token_dim, width)  # a Linear on patchified tokens = DiT's strided conv
        self.pos = Positions(pos, self.grid, width, heads, rope_base)
        self.t_embed = TimeEmbed(width)
        self.y_embed = nn.Embedding(num_classes + 1, width)  # last row: the null label
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio, mlp, norm, qk_norm) for _ in range(depth))
        self.head = DHHead(self.token_dim, width, head_width, head_depth, self.grid, pos, mlp_ratio, mlp, norm,
                           qk_norm, head_heads, rope_base) if head_width > 0 else None
        self.out = OutputLayer(width, self.token_dim, norm) if self.head is None else None
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's: xavier linears, N(0, 0.02) label and time embeddings, every adaLN layer and the output at zero."""
        self.apply(init_vit_weights)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        for layer in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for m in self.modules():
            if isinstance(m, (Modulation, OutputLayer)):
                for p in m.parameters():
                    nn.init.zeros_(p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """x (B, C, h, w) or (B, L, C); t (B,) in [0, 1]; y (B,) labels -> velocity shaped like x."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"DiT built for latents {self.input_shape}, got a batch {tuple(x.shape)}")
        tokens = patchify(x, self.patch_size) if x.dim() == 4 else x  # (B, N, token_dim)
        # TimeEmbed's sinusoid scales t by DiT's 1000 steps; time_scale rescales on top of it.
        t_emb = self.t_embed(t * (self.time_scale / 1000.0))  # (B, D)
        c = t_emb + self.y_embed(self.drop_labels(y))  # (B, D)
        h = self.pos(self.x_embed(tokens))  # (B, N, D)
        for block in self.blocks:
            h = block(h, c, self.pos.rope())  # (B, N, D)
        out = self.out(h, c) if self.head is None else self.head(tokens, h, t_emb)  # (B, N, token_dim)
        if x.dim() == 4:
            return unpatchify(out, self.patch_size, self.grid, self.input_shape[0])  # (B, C, h, w)
        return out  # (B, L, C)

    def drop_labels(self, y: Tensor) -> Tensor:
        """DiT's LabelEmbedder dropout: in training each label becomes the null label with probability ``class_dropout``."""
        return seeding.drop_labels(y, self.class_dropout, self.num_classes) if self.training else y

    def describe(self) -> dict:
        """Architecture summary for logs and leaderboards."""
        return {"class": type(self).__name__, "input_shape": list(self.input_shape), "patch": self.patch_size,
                **self.options, "params": sum(p.numel() for p in self.parameters())}


def token_grid(input_shape: tuple[int, ...], patch_size: int) -> tuple[tuple[int, int], int]:
    """(patch grid, per-token dimension) of a latent (C, h, w) with p x p patches, or of tokens (L, C) on a 1 x L grid."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if len(input_shape) == 3:
        c, h, w = input_shape
        if h % patch_size or w % patch_size:
            raise ValueError(f"latent {h} x {w} (input_shape {input_shape}) is not divisible by patch_size {patch_size}")
        return (h // patch_size, w // patch_size), c * patch_size**2
    if len(input_shape) == 2:
        if patch_size != 1:
            raise ValueError(f"1D token latents (L, C) = {input_shape} take patch_size 1 (MAETok's generators), "
                             f"got {patch_size}")
        return (1, input_shape[0]), input_shape[1]
    raise ValueError(f"input_shape must be (C, h, w) for 2D latents or (L, C) for 1D tokens, got {input_shape}")


def _check_options(width: int, heads: int, mlp: str, norm: str, pos: str, class_dropout: float) -> None:
    require_positive(width=width, heads=heads)
    if width % heads:
        raise ValueError(f"width {width} is not divisible by {heads} heads")
    for name, value, allowed in (("mlp", mlp, MLPS), ("norm", norm, NORMS), ("pos", pos, POSITIONS)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if not 0.0 <= class_dropout <= 1.0:
        raise ValueError(f"class_dropout must be in [0, 1], got {class_dropout}")


def warn_narrow(width: int, token_dim: int, name: str) -> None:
    """RAE sec. 4: a DiT narrower than its tokens cannot fit high-dimensional latents; warn, do not refuse."""
    if width < token_dim:
        warnings.warn(f"DiT {name} {width} is below the token dimension {token_dim}: RAE (Zheng et al., 2025) finds "
                      f"the width must be at least the token dimension for the model to fit high-dimensional latents",
                      UserWarning, stacklevel=3)


# ---- size variants ----------------------------------------------------------------------------

# LightningDiT's released configs (hustvl/LightningDiT, configs/*.yaml): SwiGLU, RMSNorm, RoPE, and use_qknorm false;
# its model adds the frozen sin-cos pos_embed whether or not it uses RoPE, and its RoPE's theta is 10000
LIGHTNING = {"mlp": "swiglu", "norm": "rmsnorm", "pos": "sincos+rope", "rope_base": 10_000.0, "qk_norm": False}
# RAE's DiTwDDTHead configs (bytetriper/RAE, configs/stage2/training/ImageNet256/DiTDH-{XL,S}_DINOv2-B.yaml): the
# LightningDiT layers on backbone and head (use_swiglu, use_rmsnorm, use_rope, use_pos_embed; use_qknorm false), and
# a 2048-wide, 2-block head of 16 heads
DH_HEAD = {**LIGHTNING, "head_width": 2048, "head_depth": 2, "head_heads": 16}


def _variant(**size):
    def build(input_shape: tuple[int, ...], num_classes: int, **overrides) -> DiT:
        return DiT(input_shape, num_classes, **{**size, **overrides})

    return build


# ---- registration -----------------------------------------------------------------------------

GENERATORS.register("dit-xl-2", help="DiT-XL/2 paper size: width 1152, depth 28, 16 heads, patch 2")(
    _variant(width=1152, depth=28, heads=16, patch_size=2))
GENERATORS.register("sit-xl-2", help="SiT-XL/2: the DiT-XL/2 network; SiT differs only in the transport (transport.py)")(
    _variant(width=1152, depth=28, heads=16, patch_size=2))
GENERATORS.register("lightningdit-xl-1", help="LightningDiT-XL/1: 1152/28/16, patch 1, SwiGLU, RMSNorm, sin-cos table + RoPE (base 10000), no qk-norm")(
    _variant(width=1152, depth=28, heads=16, patch_size=1, **LIGHTNING))
GENERATORS.register("dit-dh-xl", help="RAE's DiT^DH-XL: LightningDiT-XL layers at patch 1 + a 2048-wide, 2-block, 16-head head")(
    _variant(width=1152, depth=28, heads=16, patch_size=1, **DH_HEAD))
GENERATORS.register("dit-b-2", help="DiT-B/2 paper size: width 768, depth 12, 12 heads, patch 2")(
    _variant(width=768, depth=12, heads=12, patch_size=2))
GENERATORS.register("dit-dh-s", help="RAE's DiT^DH-S (its AutoGuidance guide): 384/12/6 LightningDiT backbone + 2048 x 2 head")(
    _variant(width=384, depth=12, heads=6, patch_size=1, **DH_HEAD))
# Width 128: the widest ci latent (rae-ci, 128 x 8 x 8) has 128-d tokens at patch 1, RAE's lower bound.
GENERATORS.register("dit-ci", help="CPU size for the `ci` protocol: 128/4/2, patch 1, SwiGLU, RMSNorm (8x8 or 1D latents)")(
    _variant(width=128, depth=4, heads=2, patch_size=1, mlp="swiglu", norm="rmsnorm"))
GENERATORS.register("dit-smoke", help="tiny DiT for the `smoke` protocol and tests: 32/1/2")(
    _variant(width=32, depth=1, heads=2, patch_size=1))

__all__ = ["DHHead", "DiT", "DiTBlock", "OutputLayer", "Positions", "SelfAttention", "token_grid"]
