"""MMDiT (two-stream transformer; Esser et al., SD3, 2024) parts, in the Flux layout FlowMo uses.

A block holds two streams of weights, one for image-patch tokens and one for 1D latent tokens.
Each stream normalizes its own tokens and computes its own queries, keys and values; one
attention runs over the concatenation [latent tokens, image tokens]; each stream then applies
its own output projection and MLP. Conditioned blocks (FlowMo's decoder) modulate both streams
with adaLN (shift, scale, gate per branch) from a time embedding; unconditioned blocks (the
encoder) have no modulation weights at all.

Details that follow FlowMo's code (kylesargent/FlowMo, ``models.py``; not copied): RMS norm
on queries and keys per head; attention scale 8 / head_dim (muP) by default; axial RoPE over
three axes, image patch (0, row, col) and latent token l at (l, l, l); adaLN gates start at
zero; the final layer normalizes twice around the modulation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentbench.tokenizers.vit import apply_rope, attention

# ---- positions and time -----------------------------------------------------------------------


def default_axes_dim(head_dim: int) -> tuple[int, int, int]:
    """RoPE channels per axis (token, row, col): FlowMo's 8/28/28 of 64, scaled; each even."""
    first = 2 * max(round(head_dim / 16), 1)
    row = 2 * ((head_dim - first) // 4)
    return first, row, head_dim - first - row


def token_positions(grid: tuple[int, int], latent_tokens: int, device=None) -> Tensor:
    """(L + N, 3) positions of [latent tokens, image patches]: latent l -> (l, l, l), patch -> (0, row, col)."""
    lat = torch.arange(latent_tokens, device=device, dtype=torch.float32)[:, None].expand(-1, 3)  # (L, 3)
    rows, cols = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device), indexing="ij")
    img = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()  # (N, 3)
    return torch.cat([lat, img], dim=0)


def rope_axes(positions: Tensor, axes_dim: tuple[int, ...], theta: float = 10_000.0) -> tuple[Tensor, Tensor]:
    """cos, sin tables (T, head_dim) of axial RoPE in the rotate-half layout of ``vit.apply_rope``.

    Axis a owns ``axes_dim[a] / 2`` rotation pairs with frequencies theta^(-2k / axes_dim[a]);
    pairs are concatenated over axes (Flux's ``EmbedND``). Pair j rotates channels j and
    j + head_dim / 2 (Flux pairs channels 2j and 2j + 1: the converter permutes q and k).
    """
    angles = []
    for a, dim in enumerate(axes_dim):
        freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)  # (dim/2,)
        angles.append(positions[:, a, None].double() * freqs)  # (T, dim/2)
    angles = torch.cat(angles, dim=1).float()  # (T, head_dim/2)
    angles = torch.cat([angles, angles], dim=1)  # (T, head_dim)
    return angles.cos(), angles.sin()


def timestep_embedding(t: Tensor, dim: int = 256, max_period: float = 10_000.0, scale: float = 1000.0) -> Tensor:
    """Sinusoidal embedding (B, dim) of times t in [0, 1] scaled by 1000: [cos, sin] (Flux order)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)  # (dim/2,)
    args = scale * t.float()[:, None] * freqs  # (B, dim/2)
    return torch.cat([args.cos(), args.sin()], dim=-1)


class TimeEmbed(nn.Module):
    """t (B,) -> conditioning vector (B, D): sinusoid, Linear, SiLU, Linear."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        emb = timestep_embedding(t, self.freq_dim)  # (B, freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # (B, D)


# ---- blocks -----------------------------------------------------------------------------------


class Modulation(nn.Module):
    """adaLN: conditioning (B, D) -> 6 x (B, 1, D): shift, scale, gate of the attention, then the MLP branch."""

    def __init__(self, dim: int):
        super().__init__()
        self.lin = nn.Linear(dim, 6 * dim)
        with torch.no_grad():  # gates start at zero: every block starts as the identity
            for i in (2, 5):
                self.lin.weight[i * dim:(i + 1) * dim].zero_()
                self.lin.bias[i * dim:(i + 1) * dim].zero_()

    def forward(self, cond: Tensor) -> tuple[Tensor, ...]:
        return self.lin(F.silu(cond))[:, None].chunk(6, dim=-1)


def _modulate(x: Tensor, shift: Tensor | None, scale: Tensor | None) -> Tensor:
    return x if shift is None else x * (1 + scale) + shift


class Stream(nn.Module):
    """One stream's weights in an MMDiT block: norms, qkv with per-head RMS q/k norms, projection, MLP, adaLN."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, modulated: bool = False, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        head_dim = dim // heads
        hidden = int(dim * mlp_ratio)
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.mod = Modulation(dim) if modulated else None

    def modulation(self, cond: Tensor | None) -> tuple[Tensor | None, ...]:
        """(shift1, scale1, gate1, shift2, scale2, gate2); all None without adaLN."""
        if self.mod is None:
            return (None,) * 6
        if cond is None:
            raise ValueError("a modulated MMDiT stream needs a conditioning vector")
        return self.mod(cond)

    def qkv_heads(self, x: Tensor, shift: Tensor | None, scale: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Tokens (B, T, D) -> q, k, v (B, heads, T, head_dim), q and k RMS-normalized."""
        b, t, d = x.shape
        h = _modulate(self.norm1(x), shift, scale)
        q, k, v = self.qkv(h).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, T, d_h)
        return self.q_norm(q.float()).to(v.dtype), self.k_norm(k.float()).to(v.dtype), v  # norms in float32

    def finish(self, x: Tensor, attn: Tensor, mods: tuple[Tensor | None, ...]) -> Tensor:
        """Residual attention output, then the residual MLP branch; ``attn`` is (B, T, D)."""
        _, _, gate1, shift2, scale2, gate2 = mods
        out = self.proj(attn)  # (B, T, D)
        x = x + (out if gate1 is None else gate1 * out)
        out = self.mlp(_modulate(self.norm2(x), shift2, scale2))  # (B, T, D)
        return x + (out if gate2 is None else gate2 * out)


def joint_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """Joint attention over [latent tokens, image tokens] (B, heads, T, d_h): ``vit.attention``."""
    return attention(q, k, v, scale)


class MMDiTBlock(nn.Module):
    """Two streams (``img``, ``lat``), one joint attention over [latent tokens, image tokens]."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, modulated: bool = False, qkv_bias: bool = True,
                 qk_scale: float | None = None):
        super().__init__()
        self.img = Stream(dim, heads, mlp_ratio, modulated, qkv_bias)
        self.lat = Stream(dim, heads, mlp_ratio, modulated, qkv_bias)
        self.qk_scale = qk_scale

    def forward(self, img: Tensor, lat: Tensor, rope: tuple[Tensor, Tensor], cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """img (B, N, D), lat (B, L, D); rope tables (L + N, head_dim); cond (B, D) or None."""
        mods_i, mods_l = self.img.modulation(cond), self.lat.modulation(cond)
        qi, ki, vi = self.img.qkv_heads(img, *mods_i[:2])  # (B, h, N, d_h)
        ql, kl, vl = self.lat.qkv_heads(lat, *mods_l[:2])  # (B, h, L, d_h)
        q = apply_rope(torch.cat([ql, qi], dim=2), *rope)  # (B, h, L + N, d_h)
        k = apply_rope(torch.cat([kl, ki], dim=2), *rope)  # (B, h, L + N, d_h)
        v = torch.cat([vl, vi], dim=2)  # (B, h, L + N, d_h)
        out = joint_attention(q.to(v.dtype), k.to(v.dtype), v, self.qk_scale)  # (B, h, L + N, d_h)
        out = out.transpose(1, 2).flatten(2)  # (B, L + N, D)
        n_lat = lat.shape[1]
        return self.img.finish(img, out[:, n_lat:], mods_i), self.lat.finish(lat, out[:, :n_lat], mods_l)


class MMDiT(nn.Module):
    """A stack of MMDiT blocks with axial RoPE over [latent tokens, image patches].

    Args:
        dim, depth, heads, mlp_ratio: transformer size.
        modulated: adaLN conditioning on a (B, dim) vector (the decoder); False for the encoder.
        axes_dim: RoPE channels per axis (token, row, col), summing to the head dimension.
        theta: RoPE base.
        qk_scale: "mup" for FlowMo's 8 / head_dim, "standard" for 1 / sqrt(head_dim).
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, modulated: bool = False,
                 axes_dim: tuple[int, ...] | None = None, theta: float = 10_000.0, qk_scale: str = "mup",
                 qkv_bias: bool = True):
        super().__init__()
        head_dim = dim // heads
        self.axes_dim = tuple(axes_dim) if axes_dim is not None else default_axes_dim(head_dim)
        if sum(self.axes_dim) != head_dim or any(a % 2 for a in self.axes_dim):
            raise ValueError(f"RoPE axes {self.axes_dim} must be even and sum to the head dimension {head_dim}")
        if qk_scale not in ("mup", "standard"):
            raise ValueError(f"qk_scale must be 'mup' or 'standard', got {qk_scale!r}")
        self.theta = theta
        scale = 8.0 / head_dim if qk_scale == "mup" else None
        self.blocks = nn.ModuleList(MMDiTBlock(dim, heads, mlp_ratio, modulated, qkv_bias, scale) for _ in range(depth))

    def forward(self, img: Tensor, lat: Tensor, grid: tuple[int, int], cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """img (B, N, D) on a ``grid`` of patches, lat (B, L, D) -> both streams after the last block."""
        rope = rope_axes(token_positions(grid, lat.shape[1], img.device), self.axes_dim, self.theta)
        for block in self.blocks:
            img, lat = block(img, lat, rope, cond)
        return img, lat


class FinalLayer(nn.Module):
    """Output head: LayerNorm (adaLN-modulated when given a condition), LayerNorm again, Linear.

    The second normalization after the modulation is what Flux's ``LastLayer`` (and so
    FlowMo) computes; it is kept so converted checkpoints reproduce.
    """

    def __init__(self, dim: int, out_dim: int, modulated: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(dim, 2 * dim) if modulated else None
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.ada is not None:
            shift, scale = self.ada(F.silu(cond))[:, None].chunk(2, dim=-1)  # 2 x (B, 1, D)
            x = self.norm(x) * (1 + scale) + shift
        return self.linear(self.norm(x))  # (B, T, out_dim)


def block_linear_weights(module: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of every Linear inside MMDiT blocks, by name (FlowMo keeps their norms fixed)."""
    return {f"{name}.weight": m.weight for name, m in module.named_modules()
            if isinstance(m, nn.Linear) and ".blocks." in f".{name}"}


__all__ = [
    "FinalLayer", "MMDiT", "MMDiTBlock", "Modulation", "Stream", "TimeEmbed", "block_linear_weights",
    "default_axes_dim", "joint_attention", "rope_axes", "timestep_embedding", "token_positions",
]
