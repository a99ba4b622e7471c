"""RAE: frozen encoder, dropped prefix tokens, latent statistics in the checkpoint, noise augmentation,
local timm weights, the suite's MAE-pretrained encoder, decoder overfitting."""
import json
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from latentbench.tokenizers import create_tokenizer
from latentbench.tokenizers import rae_encoders as re_
from latentbench.tokenizers.rae import DECODERS, RAE, SMOKE_RECIPE
from latentbench.tokenizers.rae_encoders import (
    FrozenEncoder,
    MAERecipe,
    build_mae_encoder,
    create_encoder,
)
from latentbench.tokenizers.rae_module import RAEModule
from latentbench.weights import WeightsUnavailable, sha256_file

TINY_MAE = MAERecipe(width=16, depth=1, heads=1, decoder_width=8, decoder_depth=1, decoder_heads=1, batch_size=16,
                     max_steps=3, warmup_steps=1, limit=64)  # a second, not a useful encoder


def _images(b=2, res=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, res, res, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def smoke():
    """A fresh rae-smoke tokenizer per call (its tiny MAE encoder is pre-trained once, in the session cache)."""
    return lambda **kw: create_tokenizer("rae-smoke", **kw)


@pytest.fixture(scope="module")
def tiny_timm_file(tmp_path_factory):
    """timm's 0.3M-parameter ``test_vit`` (patch 16, one class token) saved as safetensors, 10x10 positions."""
    import timm
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("timm") / "model.safetensors"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=160)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches."""
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


# ---- the frozen encoder ---------------------------------------------------------------------------

def test_frozen_encoder_no_gradient_bit_identical_and_stats_fitted_before_training(smoke, tmp_path):
    """Lightning training of RAEModule: encoder untouched, decoder trained, statistics fitted over the split first."""
    images = _images(24, seed=1)
    module = RAEModule("rae-smoke", max_steps=3, lr=1e-2, warmup_steps=1, perceptual_weight=0.0, disc_weight=0.0)
    tok = module.tokenizer
    assert not tok.normalization_fitted
    encoder_before = {k: v.clone() for k, v in tok.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in tok.decoder.state_dict().items()}
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, DataLoader(TensorDataset(images, torch.zeros(24)), batch_size=8, shuffle=True,
                                   generator=torch.Generator().manual_seed(0)))
    assert all(p.grad is None and not p.requires_grad for p in tok.encoder.parameters())
    assert all(torch.equal(v, encoder_before[k]) for k, v in tok.encoder.state_dict().items())
    assert not tok.encoder.training, "the encoder stays in eval mode while the decoder trains"
    assert any(not torch.equal(v, decoder_before[k]) for k, v in tok.decoder.state_dict().items())
    # statistics over the whole training split, before the first step (in dataset order)
    assert module.normalization["images"] == 24 == int(tok.latent_stats_images)
    with torch.no_grad():
        raw = tok.encoder(images)
    torch.testing.assert_close(tok.latent_mean, raw.mean(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(tok.latent_var, raw.var(0, unbiased=False), rtol=1e-4, atol=1e-5)

    # ... and they round-trip through the Lightning checkpoint into a freshly built tokenizer
    from latentbench.benchmark.harness import TokenizerSpec, load_tokenizer

    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = load_tokenizer(TokenizerSpec("rae-smoke"), tmp_path / "last.ckpt")
    for name in ("latent_mean", "latent_var", "latent_stats_images"):
        assert torch.equal(getattr(loaded, name), getattr(tok, name))
    x = _images(3, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(loaded.encode(x)), tok.eval().decode(tok.encode(x)))

    # a training resumed from it records the statistics pass this run made, not "fitted before this run"
    resumed = RAEModule("rae-smoke", max_steps=3, lr=1e-2, warmup_steps=1, perceptual_weight=0.0, disc_weight=0.0)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    resumed.load_state_dict(checkpoint["state_dict"])
    resumed.on_load_checkpoint(checkpoint)
    resumed.on_train_start()
    assert resumed.normalization == module.normalization and "mean_abs" in resumed.normalization


def test_stats_images_counts_over_all_processes(smoke):
    """``stats_images`` is the number of images over the whole world: each rank takes its share of the first ones."""
    from types import SimpleNamespace

    module = RAEModule("rae-smoke", max_steps=1, stats_images=10, stats_batch_size=4)
    data = TensorDataset(torch.arange(24.0), torch.zeros(24))
    seen = []
    for rank in range(3):
        loader = DataLoader(data, batch_size=8)
        module._trainer = SimpleNamespace(train_dataloader=loader, world_size=3, global_rank=rank)
        seen += [int(v) for x, _ in module._stats_loader() for v in x]
    assert sorted(seen) == list(range(10))
    module._trainer = SimpleNamespace(train_dataloader=DataLoader(data, batch_size=8), world_size=1, global_rank=0)
    assert [int(v) for x, _ in module._stats_loader() for v in x] == list(range(10))


def test_encoder_is_frozen_even_when_asked(smoke):
    tok = smoke()
    tok.train().requires_grad_(True)
    assert not tok.encoder.training and not any(p.requires_grad for p in tok.encoder.parameters())
    assert all(p.requires_grad for p in tok.decoder.parameters())
    assert not tok.encoder.net.norm.elementwise_affine, "RAE reads the last LayerNorm without its affine parameters"


def test_prefix_tokens_dropped_and_last_norm_without_affine():
    """Class + 4 register tokens dropped: an h x w grid of pre-norm tokens, LayerNorm without affine."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, img_size=56,
                                embed_dim=48, depth=2, num_heads=2)
    torch.nn.init.normal_(net.norm.weight, 1.0, 0.5)  # an affine the encoder must ignore
    x = _images(2, 40)
    pixels = (F.interpolate((x + 1) / 2, size=56, mode="bicubic", align_corners=False) - 0.5) / 0.25
    with torch.no_grad():
        eps, net.norm = net.norm.eps, torch.nn.Identity()
        pre_norm = net.forward_features(pixels)  # (B, 5 + 16, 48)
        net.norm = torch.nn.LayerNorm(48, eps=eps)
    enc = FrozenEncoder(net, 56, (0.5,) * 3, (0.25,) * 3, {"name": "test"})
    z = enc(x)
    assert z.shape == (2, 48, 4, 4) and enc.grid == (4, 4) and enc.info["dropped_prefix_tokens"] == 5
    expected = F.layer_norm(pre_norm[:, 5:], (48,), eps=eps).transpose(1, 2).reshape(2, 48, 4, 4)
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("patch, size, grid", [(14, None, (16, 16)), (16, None, (16, 16)), (14, 56, (4, 4))])
def test_grid_follows_patch_and_input_size(monkeypatch, patch, size, grid):
    """Default input: 16 patches per side (224 for patch 14, 256 for patch 16), as RAE's 16 x 16 latent."""
    model = "vit_small_patch14_reg4_dinov2.lvd142m" if patch == 14 else "test_vit.r160_in1k"
    kw = dict(embed_dim=32, depth=1, num_heads=2) if patch == 14 else {}
    import timm

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, **k: real(name, **{**k, **kw}))
    enc = create_encoder(model, input_size=size, random_init=True)
    assert enc.grid == grid and enc.input_size == (size or 16 * patch)
    assert enc(_images(1, 32)).shape == (1, enc.dim, *grid)


# ---- weights: local timm file, suite MAE, random only when asked -----------------------------------

def test_local_timm_weights_file_loads(tiny_timm_file):
    enc = create_encoder("test_vit.r160_in1k", weights=tiny_timm_file, input_size=64)
    from safetensors.torch import load_file

    stored = load_file(str(tiny_timm_file))
    assert enc.info["kind"] == "pretrained" and enc.info["weights_sha256"] == sha256_file(tiny_timm_file)
    assert torch.equal(enc.net.blocks[0].attn.qkv.weight, stored["blocks.0.attn.qkv.weight"])
    assert enc.net.pos_embed.shape[1] == 1 + 16, "positions resampled from 10x10 to the 4x4 grid at load"
    tok = RAE(encoder="test_vit.r160_in1k", encoder_weights=str(tiny_timm_file), encoder_size=64, decoder_width=32,
              decoder_depth=1, decoder_heads=2, decoder_patch=8)
    assert tok.latent_spec.shape == (64, 4, 4) and tok.resolution == 32
    assert tok.encode(_images(2, 32)).shape == (2, 64, 4, 4) and tok.decode(tok.encode(_images(2))).shape == (2, 3, 32, 32)
    json.dumps(tok.describe())


def test_missing_pretrained_weights_are_refused_not_faked(empty_caches):
    with pytest.raises(WeightsUnavailable) as err:
        create_tokenizer("rae-dinov2-b")
    message = str(err.value)
    assert "vit_base_patch14_reg4_dinov2.lvd142m" in message and "dinov2_vitb14_reg4_pretrain.pth" in message
    assert "random_encoder=True" in message and "mae-<source>" in message
    with pytest.raises(WeightsUnavailable, match="nope.safetensors does not exist"):
        create_encoder("siglip2-vitb16", weights=empty_caches / "nope.safetensors")


def test_random_encoder_only_when_asked_and_labelled():
    tok = RAE(encoder="test_vit.r160_in1k", random_encoder=True, encoder_size=32, decoder_width=32, decoder_depth=1,
              decoder_heads=2, decoder_patch=16)
    info = tok.describe()["encoder"]
    assert info["kind"] == "random-init" and info["pretrained"] is False and info["weights_path"] is None
    suite = create_encoder("mae-mnist", random_init=True, recipe=TINY_MAE)
    assert suite.info["kind"] == "random-init" and "training" not in suite.info


def test_mae_pretraining_is_deterministic_and_cached(tmp_path, monkeypatch, capsys):
    rng = torch.random.get_rng_state()
    _, facts, path = build_mae_encoder("mnist", cache_dir=tmp_path / "a", recipe=TINY_MAE)
    assert f"training the mae-mnist encoder RAE reads once on this machine (about 60 s on a 2-core CPU for mnist); " \
           f"later runs read {path}" in capsys.readouterr().err
    assert torch.equal(torch.random.get_rng_state(), rng), "pretraining must not move the global RNG"
    assert facts["steps"] == 3 and facts["train_images"] == 64 and math.isfinite(facts["val_masked_loss"])
    assert json.loads(path.with_suffix(".json").read_text())["weights_sha256"] == sha256_file(path)

    monkeypatch.setattr(re_, "train_mae_encoder", lambda *a: pytest.fail("the second call must load the cache"))
    _, _, again = build_mae_encoder("mnist", cache_dir=tmp_path / "a", recipe=TINY_MAE)
    assert again == path and sha256_file(again) == sha256_file(path)
    monkeypatch.undo()

    _, _, other = build_mae_encoder("mnist", cache_dir=tmp_path / "b", recipe=TINY_MAE)
    assert other.name == path.name and sha256_file(other) == sha256_file(path), "same recipe, same bytes"
    enc = create_encoder("mae-mnist", weights=path)
    assert enc.info["kind"] == "suite-mae" and enc.info["training"]["recipe"]["width"] == 16
    with pytest.raises(ValueError, match="not 'shapes'"):
        build_mae_encoder("shapes", weights=path)


# ---- latent statistics ------------------------------------------------------------------------------

def test_normalization_round_trips_through_state_dict_and_safetensors(smoke, tmp_path):
    from safetensors.torch import save_file

    from latentbench.benchmark.harness import TokenizerSpec, load_tokenizer

    tok = smoke().eval()
    batches = [_images(5, seed=s) for s in range(3)]
    facts = tok.fit_normalization(iter(batches))
    assert facts["images"] == 15 and tok.normalization_fitted
    with torch.no_grad():
        z = tok.encode(batches[0])
        raw = torch.cat([tok.encoder(b) for b in batches])
    assert tuple(z.shape[1:]) == tok.latent_spec.shape
    torch.testing.assert_close(tok.latent_var, raw.var(0, unbiased=False), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(tok.denormalize(tok.normalize(raw)), raw, rtol=1e-5, atol=1e-5)

    state = tok.state_dict()
    assert not any(k.startswith("encoder.") for k in state), "the frozen encoder's weights are not saved"
    assert {"latent_mean", "latent_var", "latent_stats_images", "encoder_digest"} <= set(state)
    path = tmp_path / "tokenizer.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = load_tokenizer(TokenizerSpec("rae-smoke"), path)  # strict: no missing or unexpected keys
    assert torch.equal(loaded.latent_var, tok.latent_var) and int(loaded.latent_stats_images) == 15
    with torch.no_grad():
        assert torch.equal(loaded.encode(batches[0]), z)

    limited = smoke().fit_normalization(iter(batches), max_images=7)
    assert limited["images"] == 7


def test_checkpoint_of_other_encoder_weights_is_refused(smoke):
    state = smoke().state_dict()
    other = smoke(random_encoder=True)
    with pytest.raises(ValueError, match="other encoder weights"):
        other.load_state_dict(state)


def test_unfitted_statistics_warn_in_training(smoke):
    tok = smoke().train()
    with pytest.warns(UserWarning, match="not fitted"):
        tok.forward_train(_images())


# ---- noise augmentation -----------------------------------------------------------------------------

def test_noise_only_in_training(smoke):
    tok = smoke()
    tok.fit_normalization([_images(8, seed=3)])
    x = _images()
    with torch.no_grad():
        rec_eval, extra = tok.eval().forward_train(x)
        assert extra == {} and torch.equal(rec_eval, tok.decode(tok.encode(x)))
        z_eval = tok.encode(x)
        tok.train()
        assert torch.equal(tok.encode(x), z_eval), "encode is never noised"
        rec_train, _ = tok.forward_train(x)
    assert not torch.allclose(rec_train, rec_eval)
    none = smoke(noise="none")
    none.fit_normalization([_images(8, seed=3)])
    none.load_state_dict(tok.state_dict())
    with torch.no_grad():
        assert torch.equal(none.train().forward_train(x)[0], rec_eval)


def test_noise_is_added_per_image_to_the_raw_latent(smoke):
    tok = smoke(noise="official", noise_tau=0.5).train()
    tok.fit_normalization([_images(8, seed=3)])
    x = _images(4)
    seen = []
    decode = tok.decode
    tok.decode = lambda z, generator=None: seen.append(z) or decode(z)
    torch.manual_seed(7)
    with torch.no_grad():
        tok.forward_train(x)
        raw = tok.encoder(x)
    torch.manual_seed(7)
    sigma = 0.5 * torch.rand(4)
    expected = tok.normalize(raw + sigma.view(-1, 1, 1, 1) * torch.randn_like(raw))
    torch.testing.assert_close(seen[0], expected)


@pytest.mark.parametrize("kind, mean, std", [
    ("paper", 0.8 * math.sqrt(2 / math.pi), 0.8 * math.sqrt(1 - 2 / math.pi)),  # |N(0, tau^2)|: half-normal
    ("official", 0.4, 0.8 / math.sqrt(12)),  # tau * U(0, 1)
])
def test_sigma_distribution(smoke, kind, mean, std):
    tok = smoke(noise=kind)
    sigma = tok.sample_sigma(200_000, generator=torch.Generator().manual_seed(0))
    assert sigma.shape == (200_000,) and sigma.min() >= 0
    assert sigma.mean().item() == pytest.approx(mean, abs=0.005) and sigma.std().item() == pytest.approx(std, abs=0.005)
    if kind == "official":
        assert sigma.max() <= 0.8
    else:  # half-normal: P(sigma > tau) = P(|N| > 1) = 0.3173
        assert (sigma > 0.8).float().mean().item() == pytest.approx(0.3173, abs=0.005)


def test_bad_noise_option_raises(smoke):
    with pytest.raises(ValueError, match="noise must be"):
        smoke(noise="gaussian")


# ---- training -------------------------------------------------------------------------------------

def test_loss_falls_when_overfitting_one_batch(smoke):
    from latentbench.data import build_dataset

    data = build_dataset("mnist", "train", 32, limit=8)
    x = torch.stack([data[i][0] for i in range(8)])
    torch.manual_seed(0)
    tok = smoke()
    tok.fit_normalization([x])
    opt = torch.optim.Adam([p for p in tok.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(40):
        rec, _ = tok.train().forward_train(x)
        loss = F.l1_loss(rec, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::8]


def test_registered_sizes_and_harness_aliases():
    from latentbench.benchmark.spec import resolve_tokenizer
    from latentbench.benchmark.protocol import load_protocol
    from latentbench.tokenizers import TOKENIZERS

    assert {"rae-dinov2-b", "rae-dinov2-b-dec-l", "rae-dinov2-b-dec-xl", "rae-ci", "rae-smoke"} <= set(TOKENIZERS.names())
    assert DECODERS["b"]["decoder_width"] == 768 and DECODERS["xl"]["decoder_depth"] == 28
    for protocol, name in (("ci", "rae-ci"), ("smoke", "rae-smoke"), ("imagenet256", "rae-dinov2-b")):
        spec = resolve_tokenizer("rae", load_protocol(protocol))
        assert spec.name == name and spec.module == "latentbench.tokenizers.rae_module:RAEModule"
    assert SMOKE_RECIPE["max_steps"] <= 20


def test_smoke_bench_writes_a_row(tmp_path):
    """The whole harness on rae-smoke: train (statistics, decoder), evaluate, record."""
    from latentbench.benchmark.harness import run_bench

    record = run_bench("rae", protocol="smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    assert record["tokenizer"]["name"] == "rae-smoke" and record["tokenizer"]["latent"]["shape"] == [32, 8, 8]
    assert math.isfinite(record["metrics"]["psnr"]["value"])


# ---- frozen-feature discriminator -------------------------------------------------------------------

def test_feature_discriminator_trains_heads_only(tmp_path):
    from latentbench.tokenizers.rae_parts import FeatureDiscriminator, spread_layers

    assert spread_layers(12) == (2, 5, 8, 11) and spread_layers(2) == (0, 1)
    backbone = create_encoder("mae-mnist", cache_dir=tmp_path, recipe=TINY_MAE)
    disc = FeatureDiscriminator(backbone, channels=8).train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    x = _images(3).requires_grad_(True)
    logits = disc(x)
    assert logits.shape == (3, 1 * 64), "one logit per token of each selected block"
    disc.requires_grad_(False)
    logits.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0, "the GAN loss reaches the images through the frozen net"
    disc.requires_grad_(True)
    assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    disc(_images(3)).mean().backward()
    opt.step()
    assert all(p.grad is None for p in backbone.parameters())
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())


def test_rae_module_with_feature_discriminator_steps(tmp_path):
    module = RAEModule("rae-smoke", max_steps=2, warmup_steps=1, perceptual_weight=0.0, disc_weight=0.75, disc_start=0,
                       disc_channels=8, disc_backbone="mae-mnist",
                       disc_backbone_args={"cache_dir": str(tmp_path), "recipe": TINY_MAE.__dict__})
    assert module.discriminator_info["kind"] == "frozen-feature"
    json.dumps(module.discriminator_info)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, DataLoader(TensorDataset(_images(8), torch.zeros(8)), batch_size=4))
    assert "train/gan" in trainer.callback_metrics and torch.isfinite(trainer.callback_metrics["train/disc"])


def test_a_file_pretrained_in_float32_for_a_bf16_recipe_is_accepted(tmp_path, monkeypatch):
    """On a CPU without fast bf16 the recipe's bf16-mixed trains in 32-true, and the file (the cache's own) says 32-true:
    passing it back with that recipe (rae-smoke's encoder_recipe) was refused over the precision the suite chose."""
    from dataclasses import asdict, replace

    from latentbench.precision import Precision

    monkeypatch.setattr(re_, "resolve_precision", lambda requested, device=None: Precision(requested, "32-true", "no bf16"))
    _, facts, path = build_mae_encoder("mnist", cache_dir=tmp_path, recipe=TINY_MAE)
    assert facts["recipe"]["precision"] == "32-true" and TINY_MAE.precision == "bf16-mixed"
    monkeypatch.undo()
    _, again, _ = build_mae_encoder("mnist", weights=path, recipe=TINY_MAE)
    assert again["recipe"] == facts["recipe"]
    build_mae_encoder("mnist", weights=path, recipe=replace(TINY_MAE, precision="32-true"))
    with pytest.raises(ValueError, match="was pre-trained with recipe"):  # another field, or a precision it cannot give
        build_mae_encoder("mnist", weights=path, recipe=replace(TINY_MAE, max_steps=4))
    with pytest.raises(ValueError, match="was pre-trained with recipe"):
        build_mae_encoder("mnist", weights=path, recipe=replace(TINY_MAE, precision="16-mixed"))
    assert asdict(TINY_MAE) != facts["recipe"]  # the refusal before compared these
