"""Vision-transformer parts shared by the ViT tokenizers: patch embedding, 2D RoPE, 1D/2D
position tables and a pre-norm transformer block on ``F.scaled_dot_product_attention``.

Sequences are laid out with the image (patch) tokens first, so a block applies RoPE to the
first ``n_rope`` tokens of the sequence and leaves the rest (1D latent tokens) untouched.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
    """Fixed sine-cosine table (length, dim) of the Transformer (Vaswani et al. 2017) in MAE's layout: the sines of
    the dim/2 frequencies 10000^(-2i/dim), then their cosines (not interleaved)."""
    if dim % 2:
        raise ValueError(f"sine-cosine positions need an even width, got {dim}")
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
            cos, sin = rope  # (N_rope, d_h), or (h, N_rope, d_h) per head (mixed RoPE)
            m = cos.shape[-2]
            q = torch.cat([apply_rope(q[:, :, :m], cos, sin), q[:, :, m:]], dim=2)  # (B, h, N, d_h)
            k = torch.cat([apply_rope(k[:, :, :m], cos, sin), k[:, :, m:]], dim=2)  # (B, h, N, d_h)
        out = attention(q, k, v)  # (B, h, N, d_h)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """softmax(q k^T scale) v over (B, heads, T, d_h): fused SDPA on accelerators, two matmuls on CPU.

    Hand-written for the CPU because both of SDPA's CPU kernels lose there at these sizes
    (tens to hundreds of tokens): its flash kernel's backward is slower than two bf16 matmuls,
    and its math kernel adds a fully-masked-row check (``aten::all``, 2.5% of a maetok-ci step).
    Measured, bf16 autocast, batch 64, 2 cores: maetok-ci 0.62 s flash / 0.56 s math per step;
    flowmo-ci 0.49-0.50 s explicit / 0.64-0.68 s SDPA. Elsewhere SDPA's fused kernels keep the
    (T, T) matrix out of memory, which the paper sizes (thousands of tokens) need.

    Numerics differ between the two paths under bf16 autocast: CPU autocast leaves ``softmax`` in
    bf16, so here the attention weights are bf16, where SDPA's kernels accumulate in float32. The
    committed `ci` rows were measured with this path as it is.
    """
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    attn = (q @ k.transpose(-1, -2) * scale).softmax(dim=-1)  # (B, h, T, T)
    return attn.to(v.dtype) @ v  # (B, h, T, d_h)


def rope_mixed_init(head_dim: int, heads: int, base: float = 10.0, generator: torch.Generator | None = None) -> Tensor:
    """Initial learnable frequencies (2, heads * head_dim/2) of RoPE-Mixed (Heo et al., ECCV 2024).

    Per head a random direction phi: pair j of the first half turns with frequency
    m_j (cos phi, sin phi) along (x, y), pair j of the second half with m_j (-sin phi, cos phi),
    where m_j = base^(-4j / head_dim). Row 0 holds the x (column) components, row 1 the y (row) ones.
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}")
    mag = base ** (-torch.arange(0, head_dim, 4, dtype=torch.float32) / head_dim)  # (d/4,)
    phi = torch.rand(heads, 1, generator=generator) * 2 * torch.pi  # (h, 1)
    fx = torch.cat([mag * phi.cos(), mag * (phi + torch.pi / 2).cos()], dim=1)  # (h, d/2)
    fy = torch.cat([mag * phi.sin(), mag * (phi + torch.pi / 2).sin()], dim=1)  # (h, d/2)
    return torch.stack([fx.reshape(-1), fy.reshape(-1)])  # (2, h * d/2)


def rope_mixed(freqs: Tensor, grid: tuple[int, int], heads: int) -> tuple[Tensor, Tensor]:
    """cos, sin tables (heads, N, head_dim) in the rotate-half layout from RoPE-Mixed frequencies (2, heads * d/2).

    Position (row r, column c) of pair j turns by c * fx_j + r * fy_j, computed in float32.
    """
    rows, cols = torch.meshgrid(torch.arange(grid[0], device=freqs.device), torch.arange(grid[1], device=freqs.device),
                                indexing="ij")
    fx, fy = freqs.float().reshape(2, heads, -1)  # 2 x (h, d/2)
    angles = cols.reshape(1, -1, 1) * fx[:, None] + rows.reshape(1, -1, 1) * fy[:, None]  # (h, N, d/2)
    angles = torch.cat([angles, angles], dim=-1)  # (h, N, d)
    return angles.cos(), angles.sin()


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (CaiT; DINOv2's ``ls1``/``ls2``)."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma.to(x.dtype)


class TailModulation(nn.Module):
    """Shift and scale of the last L tokens from a condition (B, L, C) (MoVQ-style, as MAETok's decoder).

    ``x * scale + shift`` on the tail only. Built with PyTorch's default initialisation; ``zero_init_modulations``
    sets its layer to zero, as MAETok's (``MAETok`` calls it after its ViT initialisation).
    """

    def __init__(self, cond_dim: int, dim: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, chunks * dim))

    def params(self, cond: Tensor) -> tuple[Tensor, ...]:
        return self.adaLN_modulation(cond).chunk(self.chunks, dim=-1)  # chunks x (B, L, D)

    @staticmethod
    def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        n = x.shape[1] - shift.shape[1]
        return torch.cat([x[:, :n], x[:, n:] * scale.to(x.dtype) + shift.to(x.dtype)], dim=1)  # (B, N + L, D)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    Options: ``layer_scale`` (init value of DINOv2-style LayerScale), ``cond_dim`` (MoVQ-style
    modulation of the last L tokens' normalised input by a (B, L, cond_dim) condition; the
    norms then have no affine parameters, as MAETok's decoder blocks).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, layer_scale: float | None = None,
                 cond_dim: int | None = None):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        affine = cond_dim is None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=affine)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=affine)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.modulation = TailModulation(cond_dim, dim, 4) if cond_dim is not None else None

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None, cond: Tensor | None = None) -> Tensor:
        h1 = self.norm1(x)  # (B, N, D)
        if self.modulation is not None:
            shift1, scale1, shift2, scale2 = self.modulation.params(cond)  # 4 x (B, L, D)
            h1 = self.modulation.modulate(h1, shift1, scale1)
        x = x + self.ls1(self.attn(h1, rope))  # (B, N, D)
        h2 = self.norm2(x)
        if self.modulation is not None:
            h2 = self.modulation.modulate(h2, shift2, scale2)
        return x + self.ls2(self.mlp(h2))  # (B, N, D)


class Transformer(nn.Module):
    """A stack of ``Block`` with a final LayerNorm.

    Args:
        dim, depth, heads, mlp_ratio: size.
        layer_scale, cond_dim: per-block options (see ``Block``).
        rope_mixed: learnable RoPE-Mixed frequencies per block (``rope_freqs``, shape
            (2, depth, heads * head_dim/2) as MAETok's ``freqs``) instead of the fixed axial
            tables the caller passes; ``forward`` then needs ``grid``.
        rope_base: base of the RoPE-Mixed initial frequencies.
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, layer_scale: float | None = None,
                 cond_dim: int | None = None, rope_mixed: bool = False, rope_base: float = 10.0):
        super().__init__()
        self.heads = heads
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, layer_scale, cond_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=cond_dim is None)
        self.norm_modulation = TailModulation(cond_dim, dim, 2) if cond_dim is not None else None
        self.rope_freqs = None
        if rope_mixed:
            self.rope_freqs = nn.Parameter(torch.stack([rope_mixed_init(dim // heads, heads, rope_base) for _ in range(depth)], dim=1))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None, cond: Tensor | None = None,
                grid: tuple[int, int] | None = None) -> Tensor:
        for i, block in enumerate(self.blocks):
            tables = rope_mixed(self.rope_freqs[:, i], grid, self.heads) if self.rope_freqs is not None else rope
            x = block(x, tables, cond)  # (B, N, D)
        x = self.norm(x)
        if self.norm_modulation is not None:
            x = self.norm_modulation.modulate(x, *self.norm_modulation.params(cond))
        return x


def zero_init_modulations(module: nn.Module) -> None:
    """Start every ``TailModulation`` at zero output (MAETok's initialisation of its MoVQ layers)."""
    for m in module.modules():
        if isinstance(m, TailModulation):
            nn.init.zeros_(m.adaLN_modulation[-1].weight)
            nn.init.zeros_(m.adaLN_modulation[-1].bias)


def init_vit_weights(module: nn.Module) -> None:
    """ViT/MAE initialisation: xavier-uniform linears, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


__all__ = [
    "Attention", "Block", "LayerScale", "PatchEmbed", "TailModulation", "Transformer", "apply_rope", "init_vit_weights",
    "patchify", "resize_grid_embed", "rope_2d", "rope_mixed", "rope_mixed_init", "sincos_1d", "unpatchify",
    "zero_init_modulations",
]
