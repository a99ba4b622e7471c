"""Vision-transformer parts shared by the ViT tokenizers: patch embedding, 2D RoPE, 1D/2D
position tables and a pre-norm transformer block on ``F.scaled_dot_product_attention``.

Sequences are laid out with the image (patch) tokens first, so a block applies RoPE to the
first ``n_rope`` tokens of the sequence and leaves the rest (1D latent tokens) untouched.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens (B, N, D), row-major over the patch grid."""

    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


def unpatchify(tokens: Tensor, patch_size: int, grid: tuple[int, int], channels: int = 3) -> Tensor:
    """Per-patch pixel vectors (B, N, p*p*C) -> image (B, C, H, W); inverse of ``F.unfold`` ordering."""
    b, gh, gw, p = tokens.shape[0], grid[0], grid[1], patch_size
    x = tokens.reshape(b, gh, gw, channels, p, p)  # (B, gh, gw, C, p, p)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, gh * p, gw * p)  # (B, C, H, W)


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """Image (B, C, H, W) -> per-patch pixel vectors (B, N, C*p*p) in the ``unpatchify`` layout."""
    b, c, h, w = x.shape
    p = patch_size
    x = x.reshape(b, c, h // p, p, w // p, p)  # (B, C, gh, p, gw, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)  # (B, N, C*p*p)


def sincos_1d(length: int, dim: int) -> Tensor:
    """Fixed sine-cosine table (length, dim) of the Transformer (Vaswani et al. 2017)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]  # (L, 1)
    freqs = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))  # (D/2,)
    angles = pos * freqs  # (L, D/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (L, D)


def resize_grid_embed(embed: Tensor, src: tuple[int, int], dst: tuple[int, int]) -> Tensor:
    """Bicubic resampling of a per-patch table (1, gh*gw, D) to another grid (timm's pos-embed resampling)."""
    if src == dst:
        return embed
    d = embed.shape[-1]
    grid = embed.reshape(1, src[0], src[1], d).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    grid = F.interpolate(grid.float(), size=dst, mode="bicubic", align_corners=False).to(embed.dtype)
    return grid.permute(0, 2, 3, 1).reshape(1, dst[0] * dst[1], d)  # (1, N', D)


def rope_2d(grid: tuple[int, int], head_dim: int, base: float = 100.0, device=None) -> tuple[Tensor, Tensor]:
    """cos, sin tables (N, head_dim) of axial 2D RoPE: a quarter of the frequencies per axis and pair half.

    Rotate-half layout: channel i is paired with i + head_dim/2; the first head_dim/4 pairs rotate
    with the row index, the next head_dim/4 with the column index. ``base`` 100 suits patch
    grids of tens of positions (1D RoPE's 10000 is meant for thousands).
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = base ** (-torch.arange(quarter, dtype=torch.float32, device=device) / quarter)  # (d/4,)
    rows, cols = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device), indexing="ij")
    angles = torch.cat([rows.reshape(-1, 1) * freqs, cols.reshape(-1, 1) * freqs], dim=1)  # (N, d/2)
    angles = torch.cat([angles, angles], dim=1)  # (N, d)
    return angles.cos(), angles.sin()


def apply_rope(t: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, heads, N, d) queries or keys by the (N, d) tables."""
    t1, t2 = t.chunk(2, dim=-1)
    rotated = torch.cat([-t2, t1], dim=-1)  # (B, h, N, d)
    return (t * cos + rotated * sin).to(t.dtype)


class Attention(nn.Module):
    """Multi-head self-attention; RoPE on the first ``n_rope`` tokens' queries and keys."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d_h)
        if rope is not None:
            cos, sin = rope
            m = cos.shape[0]
            q = torch.cat([apply_rope(q[:, :, :m], cos, sin), q[:, :, m:]], dim=2)  # (B, h, N, d_h)
            k = torch.cat([apply_rope(k[:, :, :m], cos, sin), k[:, :, m:]], dim=2)  # (B, h, N, d_h)
        with _cpu_math_attention(x.device):
            out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d_h)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


def _cpu_math_attention(device: torch.device):
    """On CPU, SDPA's math kernel (matmuls that hit AMX under bf16 autocast) rather than its flash one.

    Measured on maetok-ci (96 tokens, batch 64, bf16 autocast, 2-core AMX CPU): a training step
    takes 0.56 s with the math kernel and 0.62 s with the flash kernel, whose backward dominates.
    """
    return sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext()


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), rope)  # (B, N, D)
        return x + self.mlp(self.norm2(x))  # (B, N, D)


class Transformer(nn.Module):
    """A stack of ``Block`` with a final LayerNorm."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, rope)  # (B, N, D)
        return self.norm(x)


def init_vit_weights(module: nn.Module) -> None:
    """ViT/MAE initialisation: xavier-uniform linears, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


__all__ = [
    "Attention", "Block", "PatchEmbed", "Transformer", "apply_rope", "init_vit_weights", "patchify",
    "resize_grid_embed", "rope_2d", "sincos_1d", "unpatchify",
]
