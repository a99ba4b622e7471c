"""Lookup-free quantization (LFQ; Yu et al., "Language Model Beats Diffusion", ICLR 2024), as FlowMo uses it.

Every channel of a token is quantized to its sign, so a token of ``bits`` channels is one of
2**bits codes with no codebook lookup. Gradients pass straight through. Two auxiliary losses:

* commitment: MSE between the continuous channels and their (detached) signs;
* factorized entropy: the token's bits are split into groups of ``group_size`` bits, each group a
  sub-code of a 2**group_size codebook; the loss is the mean per-sample entropy of the soft
  code assignment minus the entropy of the assignment averaged over the batch (and over all
  groups, which share one sub-codebook). Minimising it makes each assignment confident and
  the codebook used evenly. The soft assignment is ``softmax(2 <h, c> / temperature)``
  over the sub-codebook's codes ``c`` in {-1, 1}^group_size, temperature 0.1, as in FlowMo's code.

Bit layout. A code is a float tensor of +-1 with the bits last (..., bits). Its integer index
is little-endian: ``sum_j [code_j > 0] 2**j``. Groups follow FlowMo's layout: with
``G = bits // group_size`` groups, group ``g`` holds the channels ``g, g + G, g + 2G, ...``
(FlowMo's ``"b t (fg fh) -> b fg (t fh)"`` rearrange with ``fg = group_size``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

# ---- codes <-> bits <-> indices -------------------------------------------------------------


def codes_to_bits(codes: Tensor) -> Tensor:
    """+-1 codes (..., n) -> bool bits (..., n); a channel is 1 where it is positive."""
    return codes > 0


def bits_to_codes(bits: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Bool bits (..., n) -> +-1 codes (..., n)."""
    return bits.to(dtype) * 2 - 1


def bits_to_indices(bits: Tensor) -> Tensor:
    """Bool bits (..., n) -> int64 indices (...), little-endian; n <= 63."""
    n = bits.shape[-1]
    if n > 63:
        raise ValueError(f"an int64 index holds at most 63 bits, got {n}")
    weights = 2 ** torch.arange(n, device=bits.device, dtype=torch.int64)  # (n,)
    return (bits.to(torch.int64) * weights).sum(-1)


def indices_to_bits(indices: Tensor, n: int) -> Tensor:
    """int64 indices (...) -> bool bits (..., n); the inverse of ``bits_to_indices``."""
    weights = 2 ** torch.arange(n, device=indices.device, dtype=torch.int64)  # (n,)
    return (indices[..., None] & weights) != 0


def codes_to_indices(codes: Tensor) -> Tensor:
    """+-1 codes (..., n) -> int64 indices (...)."""
    return bits_to_indices(codes_to_bits(codes))


def indices_to_codes(indices: Tensor, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """int64 indices (...) -> +-1 codes (..., n)."""
    return bits_to_codes(indices_to_bits(indices, n), dtype)


def split_groups(x: Tensor, group_size: int) -> Tensor:
    """Channels (..., bits) -> groups (..., G, group_size) in FlowMo's strided layout (see module doc)."""
    bits = x.shape[-1]
    if bits % group_size:
        raise ValueError(f"{bits} bits do not split into groups of {group_size}")
    return x.unflatten(-1, (group_size, bits // group_size)).transpose(-1, -2)  # (..., G, g)


def group_indices(codes: Tensor, group_size: int) -> Tensor:
    """+-1 codes (..., bits) -> int64 sub-code indices (..., G) of each group."""
    return codes_to_indices(split_groups(codes, group_size))


def all_codes(n: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Every +-1 code of n bits, row i being the code of index i: (2**n, n)."""
    return indices_to_codes(torch.arange(2**n, device=device), n, dtype)


# ---- losses ---------------------------------------------------------------------------------


def entropy_terms(h: Tensor, group_size: int, codebook: Tensor | None = None, temperature: float = 0.1,
                  eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """(mean per-sample entropy, entropy of the mean assignment) of the soft sub-code assignment, in nats.

    Args:
        h: continuous channels (..., bits), before quantization.
        group_size: bits per sub-code; every group of every token is one sample.
        codebook: ``all_codes(group_size)``, passed in to reuse a buffer.
        temperature: softmax temperature of the logits ``2 <h, c>``.
        eps: added inside the log of the mean assignment (FlowMo's value).

    The per-sample entropy factorizes over bits (the logits are a sum over bits), so it is
    computed from per-bit probabilities; the batch entropy needs the full 2**group_size
    distribution.
    """
    x = split_groups(h.float(), group_size).reshape(-1, group_size)  # (M, g), M = samples x groups
    codebook = all_codes(group_size, device=x.device) if codebook is None else codebook.float()
    # p(bit = +1) = sigmoid(4 h / T): the softmax over codes of sum_j 2 h_j c_j / T factorizes
    a = 4 * x / temperature  # (M, g)
    bit_entropy = F.softplus(a) - a * torch.sigmoid(a)  # binary entropy of sigmoid(a), in nats
    sample_entropy = bit_entropy.sum(-1).mean()
    probs = torch.softmax(2 * x @ codebook.T / temperature, dim=-1)  # (M, 2**g)
    avg = probs.mean(0)  # (2**g,)
    codebook_entropy = -(avg * torch.log(avg + eps)).sum()
    return sample_entropy, codebook_entropy


def entropy_loss(h: Tensor, group_size: int, codebook: Tensor | None = None, temperature: float = 0.1) -> Tensor:
    """Factorized LFQ entropy loss: per-sample entropy minus codebook (batch) entropy."""
    sample, codebook_entropy = entropy_terms(h, group_size, codebook, temperature)
    return sample - codebook_entropy


def commitment_loss(h: Tensor, codes: Tensor) -> Tensor:
    """MSE between continuous channels and their detached +-1 codes."""
    return F.mse_loss(h.float(), codes.detach().float())


# ---- quantizer --------------------------------------------------------------------------------


class LFQ(nn.Module):
    """Sign quantizer with a straight-through gradient; entropy and commitment losses in training.

    Args:
        bits: channels (bits) per token.
        group_size: bits per entropy sub-code (FlowMo-Lo: 18 bits in groups of 9; Hi: 56 in 14).
        temperature: softmax temperature of the entropy loss's soft assignment.
    """

    def __init__(self, bits: int, group_size: int | None = None, temperature: float = 0.1):
        super().__init__()
        group_size = group_size or bits
        if bits % group_size:
            raise ValueError(f"bits {bits} must be a multiple of the entropy group size {group_size}")
        if group_size > 16:
            raise ValueError(f"entropy group size {group_size} needs a 2**{group_size} codebook; use groups of <= 16 bits")
        self.bits, self.group_size, self.temperature = bits, group_size, temperature
        self.register_buffer("codebook", all_codes(group_size), persistent=False)  # (2**g, g)

    @property
    def groups(self) -> int:
        return self.bits // self.group_size

    def quantize(self, h: Tensor) -> Tensor:
        """+-1 signs of (..., bits) channels (0 maps to -1, as in FlowMo)."""
        return torch.where(h > 0, 1.0, -1.0).to(h.dtype)

    def forward(self, h: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Continuous (B, L, bits) -> (straight-through codes (B, L, bits), losses); losses only in training."""
        codes = self.quantize(h)
        losses = {}
        if self.training:
            losses["entropy"] = entropy_loss(h, self.group_size, self.codebook, self.temperature)
            losses["commitment"] = commitment_loss(h, codes)
        return h + (codes - h).detach(), losses


# ---- usage statistics -----------------------------------------------------------------------


def codebook_usage(indices: Tensor, codebook_size: int) -> float:
    """Fraction of the ``codebook_size`` codes that occur at least once in ``indices``."""
    return indices.unique().numel() / codebook_size


def code_entropy(indices: Tensor, codebook_size: int) -> float:
    """Entropy in bits of the empirical distribution of ``indices`` over ``codebook_size`` codes."""
    counts = torch.bincount(indices.flatten(), minlength=codebook_size).double()
    return _entropy_bits(counts)


def _entropy_bits(counts: Tensor) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum()) if p.numel() else 0.0


class CodeUsage(Metric):
    """Sub-code usage and entropy accumulated over batches (an epoch), DDP-reducible.

    Counts every group of every token as one draw from the shared 2**group_size sub-codebook.
    ``compute()`` returns usage (fraction of sub-codes seen), entropy in bits per group (at
    most ``group_size``) and its perplexity.
    """

    full_state_update = False

    def __init__(self, bits: int, group_size: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.bits, self.group_size = bits, group_size or bits
        if self.bits % self.group_size or self.group_size > 24:
            raise ValueError(f"bits {bits} must split into groups of at most 24 bits, got group_size {self.group_size}")
        self.add_state("counts", torch.zeros(2**self.group_size, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, codes: Tensor) -> None:
        """Codes (..., bits) of +-1."""
        idx = group_indices(codes.detach(), self.group_size).flatten()
        self.counts += torch.bincount(idx, minlength=self.counts.numel()).to(self.counts)

    def compute(self) -> dict[str, float]:
        entropy = _entropy_bits(self.counts)
        return {
            "usage": float((self.counts > 0).double().mean()),
            "entropy_bits": entropy,
            "max_entropy_bits": float(self.group_size),
            "perplexity": 2.0**entropy,
        }


__all__ = [
    "LFQ", "CodeUsage", "all_codes", "bits_to_codes", "bits_to_indices", "code_entropy", "codebook_usage",
    "codes_to_bits", "codes_to_indices", "commitment_loss", "entropy_loss", "entropy_terms", "group_indices",
    "indices_to_bits", "indices_to_codes", "split_groups",
]
