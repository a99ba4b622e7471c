"""Lookup-free quantization: code <-> index round trips, FlowMo's group layout, entropy loss, usage stats."""
import math

import pytest
import torch

from latentbench.tokenizers.lfq import (
    LFQ,
    CodeUsage,
    all_codes,
    bits_to_codes,
    bits_to_indices,
    code_entropy,
    codebook_usage,
    codes_to_bits,
    codes_to_indices,
    entropy_terms,
    group_indices,
    indices_to_bits,
    indices_to_codes,
    split_groups,
)


@pytest.mark.parametrize("bits", [1, 6, 18, 56, 63])
def test_codes_bits_indices_round_trip_exactly(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2, (4, 5, bits), generator=g).float() * 2 - 1
    idx = codes_to_indices(codes)
    assert idx.dtype == torch.int64 and idx.shape == (4, 5)
    assert torch.equal(indices_to_codes(idx, bits), codes)
    assert torch.equal(bits_to_codes(indices_to_bits(idx, bits)), codes)
    assert torch.equal(bits_to_indices(codes_to_bits(codes)), idx)


def test_indices_are_little_endian():
    assert codes_to_indices(torch.tensor([1.0, -1.0, -1.0])) == 1
    assert codes_to_indices(torch.tensor([-1.0, -1.0, 1.0])) == 4
    assert torch.equal(codes_to_indices(all_codes(5)), torch.arange(32))
    with pytest.raises(ValueError, match="63 bits"):
        bits_to_indices(torch.ones(64, dtype=torch.bool))


def test_groups_follow_flowmos_rearrange():
    # FlowMo: "b t (fg fh) -> b fg (t fh)" with fg = group size, then LFQ moves fg last
    b, t, bits, group = 2, 3, 18, 9
    x = torch.randn(b, t, bits)
    official = x.reshape(b, t, group, bits // group).permute(0, 2, 1, 3).reshape(b, group, -1).transpose(1, 2)  # (b, t*fh, fg)
    ours = split_groups(x, group).reshape(b, -1, group)
    assert torch.equal(ours, official)
    assert group_indices(torch.sign(x), group).shape == (b, t, 2)


def _direct_entropy_terms(h, group, temperature=0.1, eps=1e-5):
    """FlowMo's formula, written out: softmax over every code of 2 <h, c> / T."""
    x = split_groups(h, group).reshape(-1, group).double()
    logits = 2 * x @ all_codes(group).double().T / temperature
    probs, log_probs = logits.softmax(-1), logits.log_softmax(-1)
    sample = -(probs * log_probs).sum(-1).mean()
    avg = probs.mean(0)
    return sample, -(avg * torch.log(avg + eps)).sum()


@pytest.mark.parametrize("bits, group", [(4, 4), (6, 3), (8, 2)])
def test_entropy_terms_match_direct_computation(bits, group):
    h = torch.randn(3, 5, bits, generator=torch.Generator().manual_seed(0)) * 0.3
    sample, codebook = entropy_terms(h, group)
    ref_sample, ref_codebook = _direct_entropy_terms(h, group)
    assert sample.item() == pytest.approx(ref_sample.item(), abs=1e-5)
    assert codebook.item() == pytest.approx(ref_codebook.item(), abs=1e-5)
    assert 0 <= sample <= group * math.log(2) + 1e-6 and 0 <= codebook <= group * math.log(2) + 1e-6


def test_lfq_signs_straight_through_and_losses_in_training_only():
    q = LFQ(6, group_size=3)
    h = torch.randn(2, 4, 6, requires_grad=True)
    out, losses = q.train()(h)
    assert set(out.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(out, torch.where(h > 0, 1.0, -1.0))
    assert set(losses) == {"entropy", "commitment"}
    assert losses["commitment"].item() == pytest.approx(((h - out) ** 2).mean().item(), rel=1e-6)
    out.sum().backward()
    assert torch.equal(h.grad, torch.ones_like(h))  # straight-through
    assert q.eval()(h)[1] == {}
    with pytest.raises(ValueError, match="multiple"):
        LFQ(10, group_size=3)


def test_entropy_loss_rewards_confident_and_even_codes():
    q = LFQ(4, group_size=4).train()
    spread = all_codes(4)[None] * 2.0  # every code once, confidently
    collapsed = torch.full((1, 16, 4), 2.0)  # one code
    undecided = torch.zeros(1, 16, 4)
    loss = {name: q(h)[1]["entropy"].item() for name, h in (("spread", spread), ("collapsed", collapsed), ("undecided", undecided))}
    assert loss["spread"] < loss["collapsed"] and loss["spread"] < loss["undecided"]
    assert loss["spread"] == pytest.approx(-4 * math.log(2), abs=1e-3)


def test_usage_and_entropy_helpers():
    idx = torch.arange(16)
    assert codebook_usage(idx, 16) == 1.0 and code_entropy(idx, 16) == pytest.approx(4.0)
    assert codebook_usage(torch.zeros(10, dtype=torch.long), 16) == 1 / 16
    assert code_entropy(torch.zeros(10, dtype=torch.long), 16) == 0.0


def test_code_usage_metric_accumulates_over_batches():
    metric = CodeUsage(bits=6, group_size=3)
    codes = all_codes(6)  # 64 tokens: each 3-bit sub-code appears equally often in both groups
    metric.update(codes[:32])
    metric.update(codes[32:])
    out = metric.compute()
    assert out["usage"] == 1.0 and out["entropy_bits"] == pytest.approx(3.0) and out["perplexity"] == pytest.approx(8.0)
    metric.reset()
    metric.update(-torch.ones(5, 7, 6))
    assert metric.compute()["usage"] == 1 / 8 and metric.compute()["entropy_bits"] == 0.0
