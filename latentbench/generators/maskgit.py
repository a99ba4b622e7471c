"""MaskGIT (Chang et al., "MaskGIT: Masked Generative Image Transformer", CVPR 2022) over LFQ codes.

A latent is a float tensor (B, L, bits) of +-1 LFQ codes (``tokenizers/lfq.py``). A code of 18
bits is one of 2**18 tokens, too many for one softmax, so each token is factorised into
``splits`` sub-tokens of ``bits / splits`` bits (Open-MAGVIT2's token factorisation), each an
index into its own vocabulary of ``V = 2**(bits / splits)``. The sub-tokens are LFQ's entropy
groups (``lfq.split_groups``: sub-token ``s`` holds the channels ``s, s + splits, ...``), so with
FlowMo's groups (Lo: 18 bits, groups of 9) each sub-token is a code the entropy loss spread evenly.

Network: a bidirectional transformer (``vit.Transformer``) over [class token, L tokens] with
learned 1D positions. A token's input is the sum of its sub-token embeddings (one table per
sub-position, each with a [MASK] row); a masked token has every sub-token masked. One linear
head per sub-token gives logits (B, L, splits, V).

Training (Sec. 3.1): per sample a mask ratio ``r = gamma(u)``, ``u ~ U(0, 1)``, masks
``ceil(r L)`` (at least one) tokens at random; cross-entropy on the masked tokens' sub-tokens.

Sampling (Sec. 3.2): start all-masked; at step k of K predict every masked token, sample its
sub-tokens, and keep masked the ``n(k) = floor(L gamma((k + 1) / K))`` least confident of them
(0 after the last step, at least one new token per step). Confidence is the sampled sub-tokens'
summed log-probability (untempered) plus Gumbel noise scaled by ``choice_temperature (1 - (k + 1) / K)``,
MaskGIT's annealed "choice temperature" (its code: 4.5). Every random number of sample i comes
from a generator seeded by seeds[i] alone (``seeding``), so a sample does not depend on its batch.
"""
from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentbench.generators import seeding
from latentbench.generators.registry import GENERATORS
from latentbench.generators.transport import _choose
from latentbench.registry import require_positive
from latentbench.tokenizers.lfq import group_indices, indices_to_codes
from latentbench.tokenizers.vit import Transformer, init_vit_weights

MAX_VOCAB_BITS = 12  # default factorisation: the fewest splits whose sub-vocabulary has at most 2**12 = 4096 entries

# ---- codes <-> sub-tokens --------------------------------------------------------------------


def sub_bits(bits: int, splits: int) -> int:
    """Bits per sub-token; a ValueError unless ``splits`` divides ``bits``."""
    if splits < 1 or bits % splits:
        raise ValueError(f"{bits} bits per token do not split into {splits} sub-tokens of equal size")
    return bits // splits


def default_splits(bits: int, max_vocab_bits: int = MAX_VOCAB_BITS) -> int:
    """The fewest splits dividing ``bits`` with at most ``max_vocab_bits`` bits per sub-token (12 -> 1, 18 -> 2)."""
    return next(s for s in range(1, bits + 1) if bits % s == 0 and bits // s <= max_vocab_bits)


def codes_to_subtokens(codes: Tensor, splits: int) -> Tensor:
    """+-1 codes (..., bits) -> int64 sub-token indices (..., splits), in [0, 2**(bits / splits))."""
    return group_indices(codes, sub_bits(codes.shape[-1], splits))


def subtokens_to_codes(indices: Tensor, bits: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """int64 sub-token indices (..., splits) -> +-1 codes (..., bits); the inverse of ``codes_to_subtokens``."""
    groups = indices_to_codes(indices, sub_bits(bits, indices.shape[-1]), dtype)  # (..., S, bits / S)
    return groups.transpose(-1, -2).flatten(-2)  # (..., bits), undoing lfq.split_groups' strided layout


# ---- mask schedule ---------------------------------------------------------------------------


class MaskSchedule(str, enum.Enum):
    """gamma: the fraction of tokens masked at progress t in [0, 1] (MaskGIT Sec. 3.3)."""

    COSINE = "cosine"  # cos(pi t / 2): MaskGIT's choice, few tokens decoded early
    LINEAR = "linear"  # 1 - t
    SQUARE = "square"  # 1 - t^2


def mask_ratio(t: Tensor, schedule: MaskSchedule | str = "cosine") -> Tensor:
    """gamma(t) of the schedule, elementwise on a tensor of progress values in [0, 1]."""
    schedule = _choose(MaskSchedule, schedule, "mask schedule")
    if schedule is MaskSchedule.COSINE:
        return torch.cos(t * (math.pi / 2))
    return 1 - t if schedule is MaskSchedule.LINEAR else 1 - t**2


def unmasking_schedule(length: int, steps: int, schedule: MaskSchedule | str = "cosine") -> list[int]:
    """Tokens still masked after each of ``steps`` decoding steps of ``length`` tokens.

    ``floor(length * gamma((k + 1) / steps))``, at least one token fewer than the step before, but
    at least one until the last step, after which none: MaskGIT's ``max(1, min(unknown - 1, mask_len))``.
    (Fewer tokens than steps leaves one masked across the late steps, not the last steps idle.)
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"sampling needs an integer steps >= 1, got {steps!r}")
    t = torch.arange(1, steps + 1, dtype=torch.float64, device="cpu") / steps  # (K,) bookkeeping: CPU even under a meta/cuda default device
    planned = torch.floor(length * mask_ratio(t, schedule)).long().tolist()
    counts, left = [], length
    for k, n in enumerate(planned):
        left = 0 if k == steps - 1 else max(min(n, left - 1), 1)
        counts.append(left)
    return counts


def random_mask(ratio: Tensor, length: int) -> Tensor:
    """(B, length) bool mask with ``ceil(ratio_i * length)`` (at least 1) positions of row i chosen at random."""
    n = torch.ceil(ratio * length).long().clamp(1, length)  # (B,)
    ranks = torch.rand(len(ratio), length, device=ratio.device).argsort(1).argsort(1)  # (B, L): a random permutation
    return ranks < n[:, None]  # (B, L)


# ---- sampling helpers ------------------------------------------------------------------------


def sample_categorical(logits: Tensor, temperature: float, u: Tensor) -> Tensor:
    """Indices (...) drawn from softmax(logits (..., V) / temperature) by inverse CDF of uniforms u (...).

    ``temperature <= 0`` takes the argmax (greedy).
    """
    if temperature <= 0:
        return logits.argmax(-1)
    cdf = torch.softmax(logits.float() / temperature, dim=-1).cumsum(-1)  # (..., V)
    target = (u * cdf[..., -1]).unsqueeze(-1)  # (..., 1); scaled so rounding in the cumsum cannot overshoot
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(logits.shape[-1] - 1)


def gumbel(u: Tensor) -> Tensor:
    """Standard Gumbel noise from uniforms in [0, 1)."""
    tiny = torch.finfo(u.dtype).tiny
    return -torch.log(-torch.log(u.clamp(tiny, 1 - 1e-7)))


# ---- model -----------------------------------------------------------------------------------


class MaskGIT(nn.Module):
    """Class-conditional MaskGIT over (L, bits) LFQ codes; the generator contract (``training_losses``, ``sample``).

    Args:
        input_shape: (L, bits) of one latent.
        num_classes: number of classes; label ``num_classes`` is the null label of guidance.
        width, depth, heads: transformer size.
        splits: sub-tokens per token (must divide bits); default ``default_splits(bits)``.
        class_dropout: probability of the null label in training (classifier-free guidance).
        sample_steps: default decoding steps K.
        temperature: default sampling temperature of the sub-tokens (0 = greedy).
        guidance: default classifier-free guidance scale (1 = conditional only).
        mask_schedule: gamma of training and sampling (``MaskSchedule``).
        choice_temperature: scale of the Gumbel noise on the confidences, annealed by (1 - (k + 1) / K)
            (MaskGIT's code: 4.5; 0 = keep the most confident tokens deterministically).
    """

    def __init__(self, input_shape: tuple[int, int], num_classes: int, width: int = 256, depth: int = 4,
                 heads: int = 4, splits: int | None = None, class_dropout: float = 0.1, sample_steps: int = 8,
                 temperature: float = 1.0, guidance: float = 1.0, mask_schedule: str = "cosine",
                 choice_temperature: float = 4.5):
        super().__init__()
        length, bits = input_shape
        require_positive(width=width, depth=depth, heads=heads, splits=splits)
        if not 0.0 <= class_dropout <= 1.0:  # as DiT's
            raise ValueError(f"class_dropout must be in [0, 1], got {class_dropout}")
        self.input_shape, self.num_classes = (int(length), int(bits)), num_classes
        self.splits = splits or default_splits(bits)
        self.vocab = 2 ** sub_bits(bits, self.splits)
        self.mask_id = self.vocab  # the extra row of every sub-token table
        self.width, self.depth, self.heads = width, depth, heads
        self.class_dropout, self.sample_steps = class_dropout, sample_steps
        self.temperature, self.guidance, self.choice_temperature = temperature, guidance, choice_temperature
        self.mask_schedule = _choose(MaskSchedule, mask_schedule, "mask schedule")
        unmasking_schedule(length, sample_steps, self.mask_schedule)  # validates sample_steps

        self.token_embed = nn.Embedding(self.splits * (self.vocab + 1), width)  # one (V + 1)-row table per sub-position
        self.register_buffer("offsets", torch.arange(self.splits) * (self.vocab + 1), persistent=False)  # (S,)
        self.class_embed = nn.Embedding(num_classes + 1, width)  # last row: null label
        self.pos_embed = nn.Parameter(torch.zeros(1, length + 1, width))  # class token + L tokens
        self.transformer = Transformer(width, depth, heads)
        self.head = nn.Linear(width, self.splits * self.vocab)  # S heads of V logits, side by side
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """ViT initialisation of the linears; truncated normal (std 0.02) embeddings, as MaskGIT's BERT."""
        self.apply(init_vit_weights)
        for table in (self.token_embed.weight, self.class_embed.weight, self.pos_embed):
            nn.init.trunc_normal_(table, std=0.02)

    def forward(self, idx: Tensor, y: Tensor) -> Tensor:
        """Sub-tokens (B, L, S) with ``mask_id`` where masked, labels (B,) -> logits (B, L, S, V)."""
        x = self.token_embed(idx + self.offsets).sum(2)  # (B, L, D)
        x = torch.cat([self.class_embed(y)[:, None], x], dim=1) + self.pos_embed  # (B, 1 + L, D)
        x = self.transformer(x)[:, 1:]  # (B, L, D)
        return self.head(x).unflatten(-1, (self.splits, self.vocab))  # (B, L, S, V)

    # ---- training --------------------------------------------------------------------------------

    def drop_labels(self, y: Tensor) -> Tensor:
        """Labels with each replaced by the null label with probability ``class_dropout`` (training only)."""
        return seeding.drop_labels(y, self.class_dropout, self.num_classes) if self.training else y

    def training_losses(self, z: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Masked-token cross-entropy.

        Args:
            z: (B, L, bits) +-1 codes.
            y: (B,) class labels.

        Returns:
            ``loss`` (mean over the masked sub-tokens) and ``accuracy`` (fraction of masked
            tokens whose sub-tokens are all predicted right by the argmax).
        """
        target = codes_to_subtokens(z, self.splits)  # (B, L, S)
        ratio = mask_ratio(torch.rand(len(z), device=z.device), self.mask_schedule)  # (B,)
        mask = random_mask(ratio, self.input_shape[0])  # (B, L)
        logits = self(target.masked_fill(mask[..., None], self.mask_id), self.drop_labels(y))  # (B, L, S, V)
        logits, target = logits[mask].float(), target[mask]  # (M, S, V), (M, S)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
        accuracy = (logits.argmax(-1) == target).all(-1).float().mean()
        return {"loss": loss, "accuracy": accuracy.detach()}

    # ---- sampling --------------------------------------------------------------------------------

    def guided_logits(self, idx: Tensor, y: Tensor, guidance: float) -> Tensor:
        """Float logits (B, L, S, V); ``uncond + guidance (cond - uncond)`` from one doubled batch unless guidance is 1."""
        if guidance == 1:
            return self(idx, y).float()
        null = torch.full_like(y, self.num_classes)  # (B,)
        cond, uncond = self(torch.cat([idx, idx]), torch.cat([y, null])).float().chunk(2)  # 2 x (B, L, S, V)
        return uncond + guidance * (cond - uncond)

    def decode_step(self, idx: Tensor, y: Tensor, gens: Sequence[torch.Generator], keep_masked: int, noise: float,
                    guidance: float, temperature: float) -> Tensor:
        """One parallel decoding step: sample every masked token, re-mask the ``keep_masked`` least confident.

        Args:
            idx: (B, L, S) sub-tokens, ``mask_id`` where masked (the same number of masked tokens per row).
            y: (B,) labels.
            gens: per-sample generators (``seeding.generators``), drawn from on the CPU.
            keep_masked: tokens left masked after this step.
            noise: scale of the Gumbel noise added to the confidences.
            guidance, temperature: classifier-free guidance scale and sampling temperature.

        Returns:
            (B, L, S) sub-tokens; tokens unmasked before stay as they were.
        """
        length, s = idx.shape[1:]
        masked = idx[..., 0] == self.mask_id  # (B, L)
        logits = self.guided_logits(idx, y, guidance)  # (B, L, S, V)
        sampled = sample_categorical(logits, temperature, seeding.rand(gens, (length, s)).to(idx.device))  # (B, L, S)
        logp = logits.log_softmax(-1).gather(-1, sampled[..., None]).squeeze(-1).sum(-1)  # (B, L)
        confidence = logp + noise * gumbel(seeding.rand(gens, (length,)).to(idx.device))  # (B, L)
        confidence = confidence.masked_fill(~masked, math.inf)  # decoded tokens are never re-masked
        still_masked = confidence.argsort(1).argsort(1) < keep_masked  # (B, L): the least confident
        reveal = (masked & ~still_masked)[..., None]  # (B, L, 1)
        return torch.where(reveal, sampled, idx)  # (B, L, S)

    @torch.no_grad()
    def sample(self, y: Tensor, seeds: Tensor | Sequence[int], steps: int | None = None, guidance: float | None = None,
               temperature: float | None = None, return_trace: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Iterative parallel decoding; sample i depends only on y[i] and seeds[i], not on the rest of its batch.

        Args:
            y: (B,) class labels.
            seeds: B per-sample seeds (``seeding.sample_seed``).
            steps, guidance, temperature: overrides of ``sample_steps``, ``guidance``, ``temperature``.
            return_trace: also return the number of masked tokens per sample after each step.

        Returns:
            (B, L, bits) +-1 float codes; with ``return_trace`` also a (K, B) int64 tensor of masked counts.
        """
        if len(seeds) != len(y):
            raise ValueError(f"sample needs one seed per label, got {len(seeds)} seeds for {len(y)} labels")
        steps = self.sample_steps if steps is None else steps
        guidance = self.guidance if guidance is None else guidance
        temperature = self.temperature if temperature is None else temperature
        gens = seeding.generators(seeds)
        length, bits = self.input_shape
        idx = torch.full((len(y), length, self.splits), self.mask_id, dtype=torch.long, device=y.device)  # (B, L, S)
        trace = []
        for k, keep in enumerate(unmasking_schedule(length, steps, self.mask_schedule)):
            if (idx == self.mask_id).any():  # the same count in every row, so no row's draws depend on the batch
                noise = self.choice_temperature * (1 - (k + 1) / steps)
                idx = self.decode_step(idx, y, gens, keep, noise, guidance, temperature)
            trace.append((idx[..., 0] == self.mask_id).sum(1))  # (B,)
        codes = subtokens_to_codes(idx, bits)  # (B, L, bits)
        return (codes, torch.stack(trace)) if return_trace else codes

    def describe(self) -> dict:
        """Settings and size, for result records (JSON-serialisable)."""
        return {"class": type(self).__name__, "input_shape": list(self.input_shape), "splits": self.splits,
                "vocab": self.vocab, "width": self.width, "depth": self.depth, "heads": self.heads,
                "params": sum(p.numel() for p in self.parameters()), "class_dropout": self.class_dropout,
                "sample_steps": self.sample_steps, "temperature": self.temperature, "guidance": self.guidance,
                "mask_schedule": self.mask_schedule.value, "choice_temperature": self.choice_temperature}


# ---- size variants ---------------------------------------------------------------------------


@GENERATORS.register("maskgit-l", help="paper size: width 1024, depth 24, heads 16 (FlowMo-Lo: 256 tokens x 18 bits -> "
                                       "2 sub-tokens of 512); the FlowMo paper does not fully specify its MaskGIT, "
                                       "so this size is an assumption")
def maskgit_l(input_shape: tuple[int, int], num_classes: int, **kw) -> MaskGIT:
    return MaskGIT(input_shape, num_classes, **{"width": 1024, "depth": 24, "heads": 16, **kw})


@GENERATORS.register("maskgit-ci", help="CPU size for the `ci` protocol (flowmo-ci's 32 tokens x 12 bits): "
                                        "width 192, depth 4, heads 3")
def maskgit_ci(input_shape: tuple[int, int], num_classes: int, **kw) -> MaskGIT:
    return MaskGIT(input_shape, num_classes, **{"width": 192, "depth": 4, "heads": 3, **kw})


@GENERATORS.register("maskgit-smoke", help="tiny MaskGIT for the `smoke` protocol and tests: width 32, depth 1, heads 2")
def maskgit_smoke(input_shape: tuple[int, int], num_classes: int, **kw) -> MaskGIT:
    return MaskGIT(input_shape, num_classes, **{"width": 32, "depth": 1, "heads": 2, **kw})


__all__ = [
    "MaskGIT", "MaskSchedule", "codes_to_subtokens", "default_splits", "gumbel", "mask_ratio", "random_mask",
    "sample_categorical", "sub_bits", "subtokens_to_codes", "unmasking_schedule",
]
