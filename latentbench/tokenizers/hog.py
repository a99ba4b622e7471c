"""Histogram-of-oriented-gradients targets per patch (MaskFeat / MAETok's HOG target).

Per colour channel: central-difference gradients ([-1, 0, 1], reflect padding, so border
gradients across the image edge are 0 as in scikit-image), unsigned orientation in [0, 180)
degrees hard-binned into ``bins`` equal bins weighted by gradient magnitude, averaged over
``cell x cell`` pixel cells. A patch's feature is the concatenation (channel, cell, bin) of
its cells' histograms, L2-normalised per patch (a constant patch gives exactly 0), or with
``norm="cell"`` every (channel, cell) histogram L2-normalised over its bins, as MaskFeat's and
MAETok's ``HOGGenerator`` (``F.normalize(out, p=2, dim=2)`` over the bins): a patch's feature
then has norm sqrt(channels x cells) wherever no cell is flat, and faint cells weigh as much as
strong ones.
MaskFeat soft-weights the cell with a Gaussian window; a box average is used here (simpler,
and with one cell per patch and a grey image it equals scikit-image's ``hog`` with L2 block
norm up to the factor sqrt(3) of the three equal channels).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def hog_dim(patch_size: int, cell_size: int, bins: int = 9, channels: int = 3) -> int:
    """Length of one patch's HOG feature."""
    return channels * bins * (patch_size // cell_size) ** 2


@torch.no_grad()
def hog_features(x: Tensor, patch_size: int, cell_size: int | None = None, bins: int = 9, eps: float = 1e-6,
                 norm: str = "patch") -> Tensor:
    """HOG feature of every patch, row-major over the patch grid.

    Args:
        x: images (B, C, H, W); H and W multiples of ``patch_size``.
        patch_size: side of a patch (the tokenizer's p).
        cell_size: side of a histogram cell; must divide ``patch_size``; default min(8, p).
        bins: orientation bins over 0-180 degrees.
        eps: added to the patch norm (``norm="patch"``; "cell" uses ``F.normalize``'s 1e-12, as MaskFeat).
        norm: "patch" (one L2 norm over the patch's whole feature) or "cell" (per channel and cell,
            over the bins: the official MAETok / MaskFeat target).

    Returns:
        (B, N, C * bins * (p / cell)^2) float32 features, N = (H / p) * (W / p).
    """
    if norm not in ("patch", "cell"):
        raise ValueError(f"HOG norm must be 'patch' or 'cell', got {norm!r}")
    cell = cell_size or min(8, patch_size)
    if patch_size % cell:
        raise ValueError(f"cell_size {cell} must divide patch_size {patch_size}")
    b, c, h, w = x.shape
    x = x.float().reshape(b * c, 1, h, w)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")  # (BC, 1, H+2, W+2)
    gx = padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]  # (BC, 1, H, W)
    gy = padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]  # (BC, 1, H, W)
    magnitude = torch.sqrt(gx**2 + gy**2)  # (BC, 1, H, W)
    degrees = torch.rad2deg(torch.atan2(gy, gx)) % 180.0  # (BC, 1, H, W) unsigned orientation
    index = (degrees / (180.0 / bins)).floor().long().clamp_(0, bins - 1)  # (BC, 1, H, W)
    hist = torch.zeros(b * c, bins, h, w, device=x.device).scatter_(1, index, magnitude)  # (BC, bins, H, W)
    hist = F.avg_pool2d(hist, cell)  # (BC, bins, H/cell, W/cell)
    if norm == "cell":  # each histogram over its bins; a flat cell stays 0
        hist = F.normalize(hist, p=2, dim=1)
    k = patch_size // cell
    gh, gw = h // patch_size, w // patch_size
    hist = hist.reshape(b, c, bins, gh, k, gw, k)  # (B, C, bins, gh, k, gw, k)
    feats = hist.permute(0, 3, 5, 1, 4, 6, 2).reshape(b, gh * gw, c * k * k * bins)  # (B, N, D_hog)
    return feats if norm == "cell" else feats / (feats.norm(dim=-1, keepdim=True) + eps)


__all__ = ["hog_dim", "hog_features"]
