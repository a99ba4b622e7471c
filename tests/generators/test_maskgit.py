"""MaskGIT over LFQ codes: sub-token factorisation, the cosine schedule, masking, per-sample seeds, guidance, overfitting."""
import json
import math

import pytest
import torch

from latentbench.generators.maskgit import (
    MaskGIT,
    codes_to_subtokens,
    default_splits,
    mask_ratio,
    random_mask,
    subtokens_to_codes,
    unmasking_schedule,
)
from latentbench.generators.registry import GENERATORS
from latentbench.tokenizers.lfq import all_codes, codes_to_indices


def _codes(n, shape, seed=0):
    return torch.randint(0, 2, (n, *shape), generator=torch.Generator().manual_seed(seed)).float() * 2 - 1


def _model(shape=(8, 6), num_classes=3, **kw):
    torch.manual_seed(0)
    return MaskGIT(shape, num_classes, **{"width": 32, "depth": 1, "heads": 2, **kw}).eval()


# ---- codes <-> sub-tokens --------------------------------------------------------------------

@pytest.mark.parametrize("bits,splits", [(6, 1), (6, 2), (6, 3), (12, 2), (18, 2), (18, 3), (56, 7)])
def test_codes_and_subtokens_round_trip_exactly(bits, splits):
    codes = _codes(64, (5, bits))
    idx = codes_to_subtokens(codes, splits)
    assert idx.shape == (64, 5, splits) and idx.dtype == torch.int64
    assert idx.min() >= 0 and idx.max() < 2 ** (bits // splits)
    assert torch.equal(subtokens_to_codes(idx, bits), codes)
    every = torch.arange(2 ** (bits // splits))[:, None].expand(-1, splits)  # every sub-token at every position
    assert torch.equal(codes_to_subtokens(subtokens_to_codes(every, bits), splits), every)


def test_one_split_is_the_lfq_index():
    codes = all_codes(6)
    assert torch.equal(codes_to_subtokens(codes, 1)[:, 0], codes_to_indices(codes))


def test_indivisible_bits_raise():
    with pytest.raises(ValueError, match="do not split"):
        codes_to_subtokens(_codes(2, (4, 12)), 5)
    with pytest.raises(ValueError, match="do not split"):
        MaskGIT((4, 18), 2, width=32, depth=1, heads=2, splits=4)


def test_default_splits_keep_the_vocabulary_at_most_4096():
    assert [default_splits(b) for b in (6, 12, 18, 56)] == [1, 1, 2, 7]
    assert MaskGIT((4, 18), 2, width=32, depth=1, heads=2).vocab == 512


# ---- schedule ----------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [7, 10])
@pytest.mark.parametrize("steps", [1, 2, 8])
def test_sampler_follows_the_cosine_schedule_and_unmasks_everything(length, steps):
    model = _model((length, 6))
    codes, trace = model.sample(torch.tensor([0, 1, 2]), [1, 2, 3], steps=steps, return_trace=True)
    assert codes.shape == (3, length, 6) and set(codes.unique().tolist()) <= {-1.0, 1.0}
    assert trace.shape == (steps, 3) and (trace[-1] == 0).all()
    expected = unmasking_schedule(length, steps)
    assert (trace == torch.tensor(expected)[:, None]).all()
    left = length
    for k, n in enumerate(expected):  # the formula, or one fewer than before; one at least until the last step (MaskGIT)
        planned = math.floor(length * math.cos(math.pi / 2 * (k + 1) / steps))
        assert n == (0 if k == steps - 1 else max(min(planned, left - 1), 1))
        assert n < left or n == left == 1
        left = n


def test_schedule_ratios():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(mask_ratio(t, "cosine"), torch.cos(t * math.pi / 2))
    torch.testing.assert_close(mask_ratio(t, "linear"), 1 - t)
    with pytest.raises(ValueError, match="mask schedule"):
        mask_ratio(t, "cubic")
    assert unmasking_schedule(10, 8) == [9, 8, 7, 6, 5, 3, 1, 0]  # floor(10 cos) = 9, 9, 8, 7, 5, 3, 1, 0
    # fewer tokens than steps: the official max(1, min(unknown - 1, mask_len)) keeps one masked until the last step
    # (the code before emptied it at the fifth: [2, 1, 0, 0, 0, 0, 0, 0], three idle steps)
    assert unmasking_schedule(3, 8) == [2, 1, 1, 1, 1, 1, 1, 0]


# ---- training ----------------------------------------------------------------------------------

def test_random_mask_masks_ceil_ratio_tokens_and_at_least_one():
    mask = random_mask(torch.tensor([0.0, 1e-9, 0.5, 0.51, 1.0]), 10)
    assert mask.sum(1).tolist() == [1, 1, 5, 6, 10]


def test_training_losses_mask_tokens_and_give_gradients():
    model = _model(class_dropout=0.0).train()
    seen = {}
    model.register_forward_pre_hook(lambda m, args: seen.update(idx=args[0], y=args[1]))
    z, y = _codes(16, (8, 6)), torch.arange(16) % 3
    out = model.training_losses(z, y)
    masked = seen["idx"] == model.mask_id  # (B, L, S)
    assert (masked.all(-1) == masked.any(-1)).all()  # a token is masked whole
    assert (masked.all(-1).sum(1) >= 1).all()
    unmasked = ~masked.any(-1)
    assert torch.equal(seen["idx"][unmasked], codes_to_subtokens(z, 1)[unmasked])
    assert torch.equal(seen["y"], y)
    assert torch.isfinite(out["loss"]) and 0 <= out["accuracy"] <= 1
    out["loss"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head.weight.grad.abs().sum() > 0


def test_class_dropout_one_makes_every_training_label_null():
    model = _model(class_dropout=1.0).train()
    seen = {}
    model.register_forward_pre_hook(lambda m, args: seen.update(y=args[1]))
    model.training_losses(_codes(8, (8, 6)), torch.zeros(8, dtype=torch.long))
    assert (seen["y"] == 3).all()
    model.eval().training_losses(_codes(8, (8, 6)), torch.zeros(8, dtype=torch.long))
    assert (seen["y"] == 0).all()  # no dropout outside training


@pytest.mark.parametrize("dropout", [1.5, -0.1])
def test_a_class_dropout_outside_0_1_is_refused_as_dits(dropout):
    # 1.5 nulled every label as 1.0 does, without a word that the value was no probability
    with pytest.raises(ValueError, match=r"class_dropout must be in \[0, 1\]"):
        _model(class_dropout=dropout)


# ---- per-sample seeds --------------------------------------------------------------------------

def test_samples_follow_their_seed_not_their_batch():
    model = _model(splits=2)
    y, seeds = torch.tensor([0, 1, 2, 0]), [11, 22, 33, 44]
    whole = model.sample(y, seeds, steps=4)
    halves = torch.cat([model.sample(y[:2], seeds[:2], steps=4), model.sample(y[2:], seeds[2:], steps=4)])
    assert torch.equal(whole, halves)
    perm = [3, 1, 0, 2]
    assert torch.equal(model.sample(y[perm], [seeds[i] for i in perm], steps=4), whole[perm])
    other = model.sample(y, [55, 66, 77, 88], steps=4)
    assert all(not torch.equal(other[i], whole[i]) for i in range(4))


def test_guided_sampling_is_seeded_per_sample_too():
    model = _model()
    y, seeds = torch.tensor([0, 1, 2]), [5, 6, 7]
    whole = model.sample(y, seeds, steps=3, guidance=2.0)
    assert torch.equal(model.sample(y[1:], seeds[1:], steps=3, guidance=2.0), whole[1:])


# ---- guidance ----------------------------------------------------------------------------------

def _stub(model, table, calls):
    def forward(idx, y):
        calls.append(len(y))
        return table[y].expand(-1, *idx.shape[1:], -1)  # (B, L, S, V): a fixed logit row per label
    model.forward = forward


def test_guidance_one_is_the_conditional_path():
    model = _model()
    idx = torch.full((4, 8, 1), model.mask_id)
    y = torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(model.guided_logits(idx, y, 1.0), model(idx, y), rtol=0, atol=0)
    calls = []
    _stub(model, torch.randn(4, 1, 1, model.vocab), calls)
    model.sample(y, [1, 2, 3, 4], steps=2, guidance=1.0)
    assert calls == [4, 4]  # never the doubled batch


def test_guidance_combines_conditional_and_null_logits_from_one_doubled_batch():
    model = _model()
    table = torch.randn(4, 1, 1, model.vocab)  # rows 0-2: classes, row 3: null
    calls = []
    _stub(model, table, calls)
    idx, y = torch.full((2, 8, 1), model.mask_id), torch.tensor([2, 0])
    out = model.guided_logits(idx, y, 3.0)
    expected = table[3] + 3.0 * (table[y] - table[3])  # (B, 1, 1, V)
    torch.testing.assert_close(out, expected.expand_as(out))
    assert calls == [4]


# ---- registry and overfitting -------------------------------------------------------------------

@pytest.mark.parametrize("name,shape", [("maskgit-smoke", (8, 6)), ("maskgit-ci", (32, 12))])
def test_registered_sizes_build_and_describe(name, shape):
    model = GENERATORS.create(name, input_shape=shape, num_classes=3, sample_steps=2)
    info = json.loads(json.dumps(model.describe()))
    assert info["input_shape"] == list(shape) and info["sample_steps"] == 2 and info["params"] > 0
    assert model.sample(torch.tensor([0, 1]), [0, 1]).shape == (2, *shape)
    assert "maskgit-l" in GENERATORS.names() and "not fully specify" in GENERATORS.help("maskgit-l")


def test_tiny_maskgit_overfits_one_sequence_per_class():
    torch.manual_seed(0)
    # 4 heads: with 2, a position sometimes stalls ignoring the class token (1 in ~20 seeds at 150 steps)
    model = MaskGIT((8, 6), 2, width=32, depth=1, heads=4, splits=2, class_dropout=0.0)
    targets = _codes(2, (8, 6), seed=3)  # one code sequence per class
    y = torch.arange(32) % 2
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(150):
        loss = model.training_losses(targets[y], y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    samples = model.eval().sample(torch.tensor([0, 1, 1, 0]), [1, 2, 3, 4], temperature=0.01)
    assert torch.equal(samples, targets[[0, 1, 1, 0]])
    assert torch.equal(model.sample(torch.tensor([1]), [9], temperature=0.0), targets[[1]])
