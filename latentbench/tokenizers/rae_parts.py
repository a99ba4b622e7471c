"""RAE's frozen-feature discriminator (optional; ``RAEModule(disc_backbone=...)``).

RAE trains its decoder against a discriminator built on a frozen DINO ViT-S, in the manner of
StyleGAN-T / Projected GANs: the frozen network's tokens at a few depths feed small trained
heads that give one logit per token. Here the backbone is any frozen encoder of
``rae_encoders.create_encoder`` (a pretrained timm ViT from local weights, e.g. DINO ViT-S
``vit_small_patch16_224.dino``, or offline the suite's ``mae-<source>``), and its heads use
GroupNorm where StyleGAN-T uses a local BatchNorm (exact under DDP and small batches, as
``parts.PatchDiscriminator``). Not implemented: StyleGAN-T's DiffAugment of the discriminator's
inputs.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from latentbench.tokenizers.rae_encoders import FrozenEncoder


def _conv(in_ch: int, out_ch: int, kernel: int) -> nn.Module:
    return spectral_norm(nn.Conv1d(in_ch, out_ch, kernel, padding=kernel // 2, padding_mode="circular"))


class TokenHead(nn.Module):
    """Per-token logits from one layer's tokens (B, D, N): 1x1 conv, a residual 9-wide conv block, 1x1 conv to one logit."""

    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.inp = nn.Sequential(_conv(dim, channels, 1), nn.GroupNorm(1, channels), nn.LeakyReLU(0.2))
        self.res = nn.Sequential(_conv(channels, channels, 9), nn.GroupNorm(1, channels), nn.LeakyReLU(0.2))
        self.out = _conv(channels, 1, 1)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.inp(tokens)  # (B, C, N)
        return self.out(h + self.res(h))  # (B, 1, N)


def spread_layers(depth: int, count: int = 4) -> tuple[int, ...]:
    """``count`` block indices spread evenly up to the last block (StyleGAN-T's DINO-S: 2, 5, 8, 11 of 12)."""
    count = min(count, depth)
    return tuple(sorted({round((i + 1) * depth / count) - 1 for i in range(count)}))


class FeatureDiscriminator(nn.Module):
    """Frozen encoder tokens at a few blocks -> trained heads -> logits (B, layers * N).

    Gradients reach the input images through the frozen network (the decoder's GAN loss), never
    its weights: ``requires_grad_`` and ``train`` act on the heads only.

    Args:
        backbone: a ``FrozenEncoder``; its input preprocessing (resize, mean/std) is used.
        layers: indices of the blocks whose outputs are read; default ``spread_layers(depth)``.
        channels: width of each head.
    """

    def __init__(self, backbone: FrozenEncoder, layers: tuple[int, ...] | None = None, channels: int = 64):
        super().__init__()
        self.backbone = backbone
        depth = len(backbone.net.blocks)
        self.layers = tuple(layers) if layers is not None else spread_layers(depth)
        if not self.layers or not all(0 <= i < depth for i in self.layers):
            raise ValueError(f"layers must index the backbone's {depth} blocks, got {self.layers}")
        self.heads = nn.ModuleList(TokenHead(backbone.dim, channels) for _ in self.layers)

    def train(self, mode: bool = True) -> FeatureDiscriminator:
        self.training = mode
        self.heads.train(mode)
        self.backbone.train(False)
        return self

    def requires_grad_(self, requires_grad: bool = True) -> FeatureDiscriminator:
        self.heads.requires_grad_(requires_grad)
        return self

    def features(self, x: Tensor) -> list[Tensor]:
        """Tokens (B, N, D) after each selected block, prefix tokens dropped; differentiable in ``x``."""
        net, seen = self.backbone.net, {}
        hooks = [net.blocks[i].register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out)) for i in self.layers]
        try:
            net.forward_features(self.backbone.pixels(x))
        finally:
            for hook in hooks:
                hook.remove()
        return [seen[i][:, net.num_prefix_tokens:] for i in self.layers]

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> logits (B, layers * N)."""
        logits = [head(tokens.transpose(1, 2)) for head, tokens in zip(self.heads, self.features(x), strict=True)]  # (B, 1, N) each
        return torch.cat(logits, dim=-1).flatten(1)
