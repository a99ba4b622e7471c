"""MAETok: latent shapes, masking, auxiliary HOG and teacher losses, HOG targets, decoder fine-tuning, overfitting."""
import json
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from latentbench.precision import resolve_precision
from latentbench.tokenizers import create_tokenizer
from latentbench.tokenizers.hog import hog_dim, hog_features
from latentbench.tokenizers.module import AutoencoderModule


def _images(b=2, res=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, res, res, generator=g) * 2 - 1


def test_latent_shape_and_spec():
    tok = create_tokenizer("maetok-smoke").eval()
    z = tok.encode(_images(3))
    assert tok.latent_spec.shape == (8, 4) and z.shape == (3, 8, 4)
    assert tok.decode(z).shape == (3, 3, 32, 32)


def test_mask_ratio_applied_in_training_only():
    torch.manual_seed(0)
    tok = create_tokenizer("maetok-smoke", patch_size=4, mask_ratio_range=(0.4, 0.6))
    masks = tok.sample_mask(256, 64)
    fractions = masks.float().mean(dim=1)
    assert fractions.min() >= 0.4 - 1e-6 and fractions.max() <= 0.6 + 1e-6
    assert fractions.std() > 0  # drawn per sample

    seen = []
    tok.sample_mask = lambda b, n, device=None: seen.append(1) or torch.zeros(b, n, dtype=torch.bool)
    tok.train().forward_train(_images())
    tok.eval().forward_train(_images())
    assert len(seen) == 1, "the mask is sampled in training mode only"


def test_masked_tokens_change_the_latent_only_in_training():
    tok = create_tokenizer("maetok-smoke", aux_targets=())
    x = _images()
    with torch.no_grad():
        tok.eval()
        rec_eval, extra = tok.forward_train(x)
        assert extra == {}
        assert torch.equal(rec_eval, tok.decode(tok.encode(x)))
        tok.train()
        rec_train, _ = tok.forward_train(x)
    assert not torch.allclose(rec_train, rec_eval)


@pytest.mark.parametrize("kwargs, expected", [
    ({}, {"hog"}),
    ({"aux_targets": ()}, set()),
    ({"mask_ratio_range": None, "aux_targets": ()}, set()),
])
def test_aux_loss_only_with_aux_targets(kwargs, expected):
    tok = create_tokenizer("maetok-smoke", **kwargs).train()
    _, extra = tok.forward_train(_images())
    assert set(extra) == expected
    assert all(v.ndim == 0 and torch.isfinite(v) for v in extra.values())


def test_aux_loss_counts_masked_tokens_only():
    tok = create_tokenizer("maetok-smoke").train()
    x = _images()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :5] = True
    tok.sample_mask = lambda b, n, device=None: mask
    _, extra = tok.forward_train(x)
    z = tok._encode_tokens(torch.where(mask[..., None], tok.mask_token, tok.patch_embed(x)), (4, 4))
    per_token = ((tok.aux_decoders["hog"](z, (4, 4)) - hog_features(x, 8)) ** 2).mean(-1)
    assert torch.allclose(extra["hog"], per_token[mask].mean(), atol=1e-6)


def test_unknown_aux_target_raises():
    with pytest.raises(KeyError, match="dinov2-vitb14"):  # the error lists the registered teachers
        create_tokenizer("maetok-smoke", aux_targets=("hog", "dinov2"))


def test_teacher_without_weights_is_refused_not_faked(empty_caches):
    from latentbench.weights import WeightsUnavailable

    with pytest.raises(WeightsUnavailable, match="dinov2"):
        create_tokenizer("maetok-smoke", aux_targets=("hog", "dinov2-vitb14"))


def test_offline_teacher_target_on_masked_tokens(tmp_path):
    """A suite-trained frozen encoder ("domain-<source>") as auxiliary target: masked tokens only, outside the state dict."""
    from latentbench.tokenizers.teachers import normalize_targets

    name = "domain-shapes:48:20"
    tok = create_tokenizer("maetok-smoke", aux_targets=("hog", name), teacher_cache=str(tmp_path)).train()
    assert tok.loss_weights == {"hog": 1.0, name: 1.0}
    assert not any("teacher" in k or k.startswith("_") for k in tok.state_dict())
    json.dumps(tok.describe_targets())
    x = _images()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 3:9] = True
    tok.sample_mask = lambda b, n, device=None: mask
    _, extra = tok.forward_train(x)
    target = tok.aux_target(name, x)
    assert target.shape == (2, 16, tok._teachers[name].dim)
    torch.testing.assert_close(target, normalize_targets(tok._teachers[name](x, (4, 4))))
    z = tok._encode_tokens(torch.where(mask[..., None], tok.mask_token, tok.patch_embed(x)), (4, 4))
    per_token = ((tok.aux_decoders[name](z, (4, 4)) - target) ** 2).mean(-1)
    torch.testing.assert_close(extra[name], per_token[mask].mean())

    # the official code's loss on teacher features: negative cosine of the raw features, masked tokens only
    tok.teacher_loss = "cosine"
    _, extra = tok.forward_train(x)
    raw = tok._teachers[name](x, (4, 4))
    pred = tok.aux_decoders[name](z, (4, 4))
    cosine = -(torch.nn.functional.normalize(pred, dim=-1) * torch.nn.functional.normalize(raw, dim=-1)).sum(-1)
    torch.testing.assert_close(extra[name], cosine[mask].mean())
    assert -1.0 <= float(extra[name]) <= 1.0
    with pytest.raises(ValueError, match="teacher_loss must be 'mse' or 'cosine'"):
        create_tokenizer("maetok-smoke", teacher_loss="l1")


def test_hog_shape_deterministic_and_zero_on_constant():
    x = _images(2, 32)
    f = hog_features(x, 8)
    assert f.shape == (2, 16, hog_dim(8, 8)) == (2, 16, 27)
    assert torch.equal(f, hog_features(x, 8))
    assert hog_features(torch.full((1, 3, 32, 32), 0.3), 8).abs().max() == 0
    assert hog_features(x, 8, cell_size=4).shape == (2, 16, 108)


def test_hog_edge_lands_in_its_orientation_bin():
    vertical = torch.zeros(1, 3, 16, 16)
    vertical[..., 8:] = 1.0  # intensity changes along x: gradient angle 0 degrees -> bin 0
    horizontal = vertical.transpose(-1, -2)  # gradient along y: 90 degrees -> bin 4 (80-100)
    for img, bin_ in ((vertical, 0), (horizontal, 4)):
        hist = hog_features(img, 16, cell_size=16).reshape(3, 9)
        assert (hist.argmax(dim=1) == bin_).all()
        assert hist[:, [b for b in range(9) if b != bin_]].abs().max() == 0


def test_hog_matches_scikit_image():
    skimage = pytest.importorskip("skimage.feature")
    grey = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    ours = hog_features(grey.expand(1, 3, 16, 16), 8)[0, :, :9] * 3**0.5  # three equal channels
    ref = skimage.hog(grey[0, 0].double().numpy(), orientations=9, pixels_per_cell=(8, 8),
                      cells_per_block=(1, 1), block_norm="L2", feature_vector=False)
    assert torch.allclose(ours, torch.tensor(ref.reshape(4, 9)).float(), atol=1e-5)


def test_decoder_ft_freezes_encoder_and_anneals_mask():
    tok = create_tokenizer("maetok-smoke")
    tok.set_stage("decoder-ft", progress=0.25)
    assert all(not p.requires_grad for p in tok.encoder_parameters())
    assert all(p.requires_grad for p in tok.decoder.parameters())
    assert tok.current_mask_range() == pytest.approx((0.45, 0.45))  # 60% -> 0% linearly: 45% a quarter of the way
    tok.set_stage("decoder-ft", progress=0.0)
    assert tok.current_mask_range() == pytest.approx((0.6, 0.6))
    tok.set_stage("decoder-ft", progress=0.25)
    before = [p.detach().clone() for p in tok.encoder_parameters()]
    opt = torch.optim.Adam([p for p in tok.parameters() if p.requires_grad], lr=1e-2)
    rec, extra = tok.train().forward_train(_images())
    assert extra == {}, "auxiliary losses are off while fine-tuning the decoder"
    rec.square().mean().backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, tok.encoder_parameters(), strict=True))
    tok.set_stage("decoder-ft", progress=1.0)
    assert tok.current_mask_range() == (0.0, 0.0)
    tok.set_stage("ae")
    assert all(p.requires_grad for p in tok.parameters()) and tok.current_mask_range() == (0.4, 0.6)
    with pytest.raises(ValueError, match="unknown stage"):
        tok.set_stage("gan")


def test_resolution_other_than_built():
    tok = create_tokenizer("maetok-smoke").eval()
    x = _images(1, 64)
    z = tok.encode(x)
    assert z.shape == (1, 8, 4) and tok.decode(z, grid=(8, 8)).shape == (1, 3, 64, 64)


def test_module_overfits_one_batch():
    torch.manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(8, 3, 4, 4) * 2 - 1, size=32, mode="bilinear")  # smooth images
    module = AutoencoderModule("maetok-smoke", lr=3e-3, warmup_steps=1, max_steps=60, rec_loss="mse",
                               disc_weight=0.0, perceptual_weight=0.0)

    def error():
        with torch.no_grad():
            return (module.tokenizer.decode(module.tokenizer.encode(x)) - x).abs().mean().item()

    before = error()
    loader = DataLoader(TensorDataset(x, torch.zeros(8, dtype=torch.long)), batch_size=8)
    trainer = L.Trainer(max_steps=60, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, precision=resolve_precision("bf16-mixed", device="cpu").used, accelerator="cpu")
    trainer.fit(module, loader)
    assert "train/hog" in trainer.callback_metrics
    assert error() < 0.7 * before  # measured 0.56 -> 0.33: 8 x 4 latents bound the smoke size


@pytest.mark.parametrize("config, masked, targets, stages", [
    ("configs/tokenizers/ablations/maetok-ci-plain.yaml", False, [], ["ae"]),
    ("configs/tokenizers/ablations/maetok-ci-mask.yaml", True, [], ["ae"]),
    ("configs/tokenizers/ablations/maetok-ci-aux.yaml", True, ["hog", "domain-mnist"], ["ae"]),
    ("maetok", True, ["hog", "domain-mnist"], ["ae", "decoder-ft"]),  # the shipped maetok-ci: + decoder fine-tuning
])
def test_table1_ablation_rows_are_configs(config, masked, targets, stages):
    from latentbench.benchmark.spec import resolve_tokenizer
    from latentbench.benchmark.protocol import load_protocol
    from latentbench.paths import REPO_ROOT
    from latentbench.tokenizers.module import plan_stages

    arg = str(REPO_ROOT / config) if config.endswith(".yaml") else config
    spec = resolve_tokenizer(arg, load_protocol("ci"))
    assert spec.name == "maetok-ci"
    assert (spec.init_args.get("mask_ratio_range", (0.4, 0.6)) is not None) == masked
    assert list(spec.init_args.get("aux_targets", ["hog"])) == targets
    plan = plan_stages(("ae", "decoder-ft"), spec.module_args["stage_steps"], 800)
    assert [name for name, _, _ in plan] == stages
    shared = {k: v for k, v in spec.module_args.items() if k != "stage_steps"}
    assert shared == {k: v for k, v in resolve_tokenizer("maetok", load_protocol("ci")).module_args.items() if k != "stage_steps"}


def test_hog_cell_norm_is_the_official_per_channel_per_cell_target():
    # the official HOGGenerator normalises every (channel, cell) 9-bin histogram over its bins
    x = _images(2, 32)
    f = hog_features(x, 16, cell_size=8, norm="cell")  # (B, 4, 3 x 2 x 2 x 9)
    cells = f.reshape(2, 4, 3, 4, 9)  # (B, N, channel, cell, bin)
    torch.testing.assert_close(cells.norm(dim=-1), torch.ones(2, 4, 3, 4))
    # same direction per cell as the per-patch normalised feature; only the scale of each cell differs
    patch = hog_features(x, 16, cell_size=8).reshape(2, 4, 3, 4, 9)
    torch.testing.assert_close(torch.nn.functional.normalize(patch, dim=-1), cells, atol=1e-5, rtol=1e-5)
    assert hog_features(torch.full((1, 3, 32, 32), 0.3), 16, norm="cell").abs().max() == 0  # flat cells stay 0
    with pytest.raises(ValueError, match="HOG norm"):
        hog_features(x, 16, norm="block")


def test_paper_size_uses_the_official_hog_target_and_smaller_sizes_keep_theirs():
    from latentbench.tokenizers.maetok import OFFICIAL_ARCH

    assert OFFICIAL_ARCH["hog_norm"] == "cell"
    assert create_tokenizer("maetok-smoke").hog_norm == "patch"  # the smoke / ci goldens' target
    tok = create_tokenizer("maetok-smoke", hog_norm="cell").train()
    assert tok.describe_targets()["hog"]["norm"] == "cell"
    x = _images(2, 32)
    torch.testing.assert_close(tok.aux_target("hog", x), hog_features(x, 8, norm="cell"))
    with pytest.raises(ValueError, match="hog_norm"):
        create_tokenizer("maetok-smoke", hog_norm="block")


# ---- the official mask-ratio draw (maetok-b-128) ----------------------------------------------


def _uniform_mask_before(batch, tokens, lo, hi):
    """The default draw as it was before ``mask_sampling`` existed, on the global RNG."""
    ratio = lo + (hi - lo) * torch.rand(batch, 1)
    ranks = torch.rand(batch, tokens).argsort(dim=1).argsort(dim=1)
    return ranks < torch.round(ratio * tokens)


def test_default_mask_sampling_is_the_uniform_draw_bit_for_bit():
    tok = create_tokenizer("maetok-smoke", patch_size=4)
    assert tok.mask_sampling == "uniform" and create_tokenizer("maetok-ci").mask_sampling == "uniform"
    for stage, progress in (("ae", 0.0), ("decoder-ft", 0.3)):
        tok.set_stage(stage, progress)
        lo, hi = tok.current_mask_range()
        torch.manual_seed(3)
        expected = _uniform_mask_before(64, 64, lo, hi)
        torch.manual_seed(3)
        assert torch.equal(tok.sample_mask(64, 64), expected)
    with pytest.raises(ValueError, match="mask_sampling must be one of"):
        create_tokenizer("maetok-smoke", mask_sampling="beta")


def test_official_mask_ratio_is_scipys_truncated_normal():
    """The inverse CDF against scipy.stats.truncnorm((lo - hi) / 0.25, 0, loc=hi, scale=0.25): quantiles and 20k draws."""
    stats = pytest.importorskip("scipy.stats")
    from latentbench.tokenizers.maetok import official_mask_ratio

    ref = stats.truncnorm((0.4 - 0.6) / 0.25, 0, loc=0.6, scale=0.25)
    u = torch.linspace(0, 1, 101)
    torch.testing.assert_close(official_mask_ratio(u, 0.4, 0.6), torch.tensor(ref.ppf(u.double().numpy())).float(),
                               rtol=0, atol=1e-5)
    draws = official_mask_ratio(torch.rand(20000, generator=torch.Generator().manual_seed(0)), 0.4, 0.6)
    assert draws.min() >= 0.4 and draws.max() <= 0.6
    assert stats.kstest(draws.double().numpy(), ref.cdf).pvalue > 0.01
    assert abs(draws.mean().item() - ref.mean()) < 2e-3 and abs(ref.mean() - 0.505) < 1e-3  # rising towards 0.6
    assert official_mask_ratio(torch.rand(5), 0.3, 0.3).eq(0.3).all()  # a single ratio stays itself


def test_official_mask_sampling_one_ratio_per_batch_ceil_counts_and_decoder_ft_unchanged():
    from latentbench.tokenizers.maetok import official_mask_ratio

    tok = create_tokenizer("maetok-smoke", patch_size=4, mask_sampling="official")  # N = 64 tokens
    counts = []
    for seed in range(200):
        torch.manual_seed(seed)
        ratio = official_mask_ratio(torch.rand(1, 1), 0.4, 0.6).item()  # the draw sample_mask makes first
        torch.manual_seed(seed)
        mask = tok.sample_mask(16, 64)
        per_sample = mask.sum(dim=1)
        assert (per_sample == math.ceil(64 * ratio)).all(), "one ratio per batch, ceil(N * ratio) tokens"
        assert len({tuple(row.nonzero().flatten().tolist()) for row in mask}) > 1  # a permutation per sample
        counts.append(int(per_sample[0]))
    assert min(counts) >= math.ceil(0.4 * 64) and max(counts) <= math.ceil(0.6 * 64)
    assert sum(counts) / len(counts) / 64 == pytest.approx(0.505 + 0.5 / 64, abs=0.015)  # ceil adds half a token
    # decoder-ft: the fixed falling ratio, drawn as before (round, per-sample draw consumed)
    tok.set_stage("decoder-ft", progress=0.5)
    torch.manual_seed(1)
    expected = _uniform_mask_before(8, 64, 0.3, 0.3)
    torch.manual_seed(1)
    assert torch.equal(tok.sample_mask(8, 64), expected) and (expected.sum(1) == round(0.3 * 64)).all()


def test_paper_size_config_samples_the_mask_as_the_official_code():
    from latentbench.benchmark.protocol import load_protocol
    from latentbench.benchmark.spec import resolve_tokenizer

    spec = resolve_tokenizer("maetok-b-128", load_protocol("imagenet256"))
    assert spec.init_args["mask_sampling"] == "official"
    assert spec.init_args["aux_targets"] == ["hog", "maetok-dinov2-vitl", "maetok-siglip-so400m"]
    assert "mask_sampling" not in resolve_tokenizer("maetok", load_protocol("ci")).init_args


def test_sincos_latent_positions_of_an_odd_width_are_refused_at_build():
    """A sine-cosine table has dim / 2 sines and as many cosines: for an odd width it came out one column short and
    failed later at the addition, as a shape mismatch naming no option."""
    from latentbench.tokenizers.maetok import LatentPositions

    assert LatentPositions(4, 6, "sincos").table.shape == (1, 4, 6)
    with pytest.raises(ValueError, match="sine-cosine positions need an even width, got 5"):
        LatentPositions(4, 5, "sincos")
