"""FlowMo: latent, sampler grid and guidance, time sampling, flow loss, stages 1a/1b, early stopping, converter."""
import math
import re
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from latentbench.precision import resolve_precision
from latentbench.tokenizers import compile_decoding, create_tokenizer, decode_seeded
from latentbench.tokenizers.flowmo import (
    GUIDANCE_INTERVAL,
    FlowMo,
    random_time_grid,
    shifted_time_grid,
    thick_tailed_times,
)
from latentbench.tokenizers.flowmo_convert import (
    UNUSED,
    convert_official_state_dict,
    flowmo_from_official,
    official_config,
)
from latentbench.tokenizers.flowmo_module import FlowMoModule


def _images(b=2, res=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, res, res, generator=g) * 2 - 1


def _smooth_images(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(b, 3, 4, 4, generator=g) * 2 - 1, size=32, mode="bilinear")


def _fit(module, x, steps, val=None, **trainer_kw):
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=len(x))
    val_loader = None if val is None else DataLoader(  # (indices, images, labels), as the harness's held-out loader
        TensorDataset(torch.arange(len(val)), val, torch.zeros(len(val), dtype=torch.long)), batch_size=len(val))
    kw = {"num_sanity_val_steps": 0, "limit_val_batches": 0 if val is None else None, **trainer_kw}
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, precision=resolve_precision("bf16-mixed", device="cpu").used, accelerator="cpu", **kw)
    trainer.fit(module, loader, val_loader)
    return trainer


# ---- latent ---------------------------------------------------------------------------------

def test_latent_is_plus_minus_one_with_spec_and_bits_per_pixel():
    tok = create_tokenizer("flowmo-smoke").eval()
    z = tok.encode(_images(3))
    assert z.shape == (3, 8, 6) and z.dtype == torch.float32
    assert set(z.unique().tolist()) <= {-1.0, 1.0}
    spec = tok.latent_spec
    assert spec.shape == (8, 6) and spec.bits_per_token == 6
    assert spec.bits_per_pixel(32, 32) == pytest.approx(8 * 6 / 1024)
    assert create_tokenizer("flowmo-ci").latent_spec.bits_per_pixel(32, 32) == pytest.approx(32 * 12 / 1024)


@pytest.mark.parametrize("name, bits, bpp", [("flowmo-lo", 18, 0.0703), ("flowmo-hi", 56, 0.2188)])
def test_paper_sizes_bit_rates(name, bits, bpp):
    with torch.device("meta"):  # shapes only: the paper sizes hold ~0.9B parameters
        tok = create_tokenizer(name)
    assert tok.latent_spec.shape == (256, bits)
    assert tok.latent_spec.bits_per_pixel(256, 256) == pytest.approx(bpp, abs=1e-4)
    assert tok.quantizer.group_size == {18: 9, 56: 14}[bits]


# ---- decoding ---------------------------------------------------------------------------------

def test_decoding_is_seeded():
    tok = create_tokenizer("flowmo-smoke").eval()
    with torch.no_grad():
        z = tok.encode(_images(2))
        a, b, c = (decode_seeded(tok, z, seed=s) for s in (0, 0, 1))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.shape == (2, 3, 32, 32) and a.abs().max() <= 1


def test_cpu_decoding_in_chunks_changes_no_image(monkeypatch):
    import latentbench.batching as batching

    tok = create_tokenizer("flowmo-smoke").eval()
    with torch.no_grad():
        z = tok.encode(_images(5))
        whole = decode_seeded(tok, z, seed=3)  # 5 images, one pass (the default chunk is 64)
        monkeypatch.setattr(batching, "CPU_CHUNK", 2)  # passes of 2, 2 and 1 images; the noise is drawn for all 5 first
        sizes = []
        sample = tok.sample
        monkeypatch.setattr(tok, "sample", lambda cond, *a, **k: sizes.append(len(cond)) or sample(cond, *a, **k))
        split = decode_seeded(tok, z, seed=3)
    assert sizes == [2, 2, 1]
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-5)


@pytest.mark.slow  # ~50 s on a 2-core CPU with an empty TorchInductor cache (its C++ kernels); the harness test covers the wiring
def test_compiled_decoding_matches_eager_and_keeps_the_state_dict():
    tok = create_tokenizer("flowmo-smoke", guidance=1.0).eval()  # unguided: one graph to compile (~half the time)
    keys = list(tok.state_dict())
    with torch.no_grad():
        z = tok.encode(_images(3))
        eager = decode_seeded(tok, z, seed=1)
        assert compile_decoding(tok) == ["decoder"]
        compiled = decode_seeded(tok, z, seed=1)
    assert tok.decoder._compiled_call_impl is not None  # nn.Module.compile: compiled in place
    assert list(tok.state_dict()) == keys  # no _orig_mod. prefix: checkpoints load either way
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)


def test_compiling_needs_a_cxx_compiler(monkeypatch, tmp_path):
    import latentbench.tokenizers.base as base
    from latentbench.benchmark.harness import run_bench

    monkeypatch.setattr(base, "_cxx_compiler", lambda: None)
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler.*without --compile"):
        compile_decoding(create_tokenizer("flowmo-smoke"))
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler"):  # the bench stops before training
        run_bench("flowmo", "smoke", compile=True, runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    assert not (tmp_path / "runs").exists()
    assert compile_decoding(create_tokenizer("sdvae-smoke")) == []  # single-pass decoders: nothing to compile


def test_shifted_time_grid():
    t = shifted_time_grid(25, rho=4)
    assert t.shape == (26,) and t[0] == 1 and t[-1] == 0
    i = torch.arange(25, -1, -1, dtype=torch.float64)
    assert torch.allclose(t.double(), (i / 25) ** 4, atol=1e-7)
    # FlowMo's "pow_0.25" schedule, written as its code computes it
    official = torch.arange(0, 26).flip(0) ** (1 / 0.25) / 25 ** (1 / 0.25)
    assert torch.allclose(t, official.float(), atol=1e-7)
    assert (t[:-1] > t[1:]).all()


def test_random_time_grid_is_monotone_per_sample():
    t = random_time_grid(5, 8, torch.Generator().manual_seed(0))
    assert t.shape == (5, 9)
    assert torch.allclose(t[:, 0], torch.ones(5)) and torch.allclose(t[:, -1], torch.zeros(5))
    assert (t[:, :-1] > t[:, 1:]).all()
    assert not torch.allclose(t[0], t[1])


def _count_decoder_batches(tok, **decode_kw):
    sizes = []
    forward = tok.decoder.forward
    tok.decoder.forward = lambda x, t, cond: sizes.append(len(x)) or forward(x, t, cond)
    with torch.no_grad():
        tok.decode(-torch.ones(2, 8, 6), generator=torch.Generator().manual_seed(0), **decode_kw)
    return sizes


def test_guidance_runs_the_dropped_latent_only_inside_its_interval():
    tok = create_tokenizer("flowmo-smoke", sample_steps=6).eval()
    lo, hi = GUIDANCE_INTERVAL
    assert (lo, hi) == pytest.approx((0.17 / 1.17, 1.02 / 2.02))  # FlowMo's (0.17, 1.02) in EDM sigma
    guided = [lo <= t <= hi for t in shifted_time_grid(6, 4)[:-1].tolist()]  # [F, T, T, F, F, F]
    assert sum(guided) == 2
    assert _count_decoder_batches(tok) == [4 if g else 2 for g in guided]  # both branches in one batch
    assert _count_decoder_batches(tok, guidance=1.0) == [2] * 6
    tok.guidance_interval = None
    assert _count_decoder_batches(tok) == [4] * 6


def test_guidance_extrapolates_from_the_all_zero_latent():
    tok = create_tokenizer("flowmo-smoke", sample_steps=1, guidance_interval=None).eval()
    z = torch.ones(2, 8, 6)
    cond = tok.condition(z)
    null = torch.zeros_like(cond)
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = tok.sample(cond, noise, shifted_time_grid(1), guidance=1.5)
        t = torch.ones(2)
        v = tok.velocity(noise, t, null) + 1.5 * (tok.velocity(noise, t, cond) - tok.velocity(noise, t, null))
    assert torch.allclose(out, noise - v, atol=1e-5)


# ---- training pieces --------------------------------------------------------------------------

def test_thick_tailed_times_mix_logit_normal_and_uniform():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    t = thick_tailed_times(n, 0.1, g)
    assert t.min() >= 0 and t.max() <= 1
    normal = torch.distributions.Normal(0.0, 1.0)
    for q in (0.01, 0.1, 0.3, 0.5, 0.9, 0.99):  # CDF of 0.9 logit-normal + 0.1 uniform
        expected = 0.9 * normal.cdf(torch.tensor(math.log(q / (1 - q)))).item() + 0.1 * q
        assert (t <= q).float().mean().item() == pytest.approx(expected, abs=0.004)
    def tails(s):
        return ((s < 0.02) | (s > 0.98)).float().mean().item()

    assert tails(t) == pytest.approx(0.1 * 0.04, abs=0.001)  # uniform part fills the tails
    assert tails(thick_tailed_times(n, 0.0, g)) < 2e-4  # plain logit-normal hardly reaches them


def test_flow_loss_is_zero_for_the_true_velocity():
    tok = create_tokenizer("flowmo-smoke").train()
    x = _images(4)
    tok.velocity = lambda x_t, t, cond: (x_t - x) / t.view(-1, 1, 1, 1)  # v = eps - x, recovered from x_t
    terms = tok.flow_loss(x, generator=torch.Generator().manual_seed(0))
    assert terms.losses["flow"].item() < 1e-8
    assert torch.allclose(terms.x0, x, atol=1e-5)
    assert set(terms.losses) == {"flow", "entropy", "commitment"}


def test_latent_dropout_only_in_training():
    tok = create_tokenizer("flowmo-smoke", latent_dropout=0.5)
    keep = tok.train().keep_mask(10_000, torch.Generator().manual_seed(0))
    assert keep.float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert tok.eval().keep_mask(10_000) is None
    cond = tok.condition(torch.ones(3, 8, 6), keep=torch.tensor([True, False, True]))
    assert cond[1].abs().max() == 0, "a dropped latent is all zeros, its one channel included"
    assert torch.equal(cond[0, :, -1], torch.ones(8))
    # what the decoder sees in flow_loss
    seen = []
    velocity = tok.velocity
    tok.velocity = lambda x_t, t, cond: seen.append(cond) or velocity(x_t, t, cond)
    tok.eval().flow_loss(_images(64))
    assert all(c.abs().flatten(1).amax(1).min() > 0 for c in seen), "no latent is dropped in eval mode"
    tok.train().flow_loss(_images(64))
    assert (seen[-1].abs().flatten(1).amax(1) == 0).any()


def test_stage_1b_freezes_the_encoder_and_the_encoder_runs_without_autograd():
    tok = create_tokenizer("flowmo-smoke")
    tok.set_stage("1b")
    assert tok.encoder_frozen() and all(p.requires_grad for p in tok.decoder.parameters())
    terms = tok.train().flow_loss(_images())
    assert not terms.code.requires_grad and set(terms.losses) == {"flow"}
    sample = tok.posttrain_sample(terms.code, grad_checkpoint=True)
    sample.square().mean().backward()
    assert all(p.grad is None for p in tok.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tok.decoder.parameters())
    tok.set_stage("1a")
    assert not tok.encoder_frozen()
    with pytest.raises(ValueError, match="unknown stage"):
        tok.set_stage("ae")


def test_stage_1a_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    x = _smooth_images(8)
    module = FlowMoModule("flowmo-smoke", lr=3e-3, warmup_steps=1, max_steps=40, perceptual_weight=0.0)

    def flow_loss():  # fixed times and noise, no dropout
        tok = module.tokenizer.eval()
        with torch.no_grad():
            loss = tok.flow_loss(x.repeat(8, 1, 1, 1), generator=torch.Generator().manual_seed(1)).losses["flow"].item()
        tok.train()
        return loss

    before = flow_loss()
    trainer = _fit(module, x, 40)
    after = flow_loss()
    assert {"train/flow", "train/entropy", "train/commitment"} <= set(trainer.callback_metrics)
    assert after < 0.6 * before, (before, after)  # measured 1.50 -> 0.38


def test_the_weights_a_checkpoint_holds_have_their_norms_fixed():
    """The norms are fixed with the optimizer step: a checkpoint (Lightning saves it in the callbacks'
    on_train_batch_end, before the module's) holds the weights the next step reads, so a resumed run reads them too."""
    from lightning.pytorch.callbacks import Callback

    from latentbench.tokenizers.mmdit import block_linear_weights

    torch.manual_seed(0)
    module = FlowMoModule("flowmo-smoke", lr=3e-3, warmup_steps=1, max_steps=3, perceptual_weight=0.0)
    initial = {k: w.detach().norm().item() for k, w in block_linear_weights(module.tokenizer).items()}
    seen = []

    class AsACheckpointSeesThem(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append({k: w.detach().norm().item() for k, w in block_linear_weights(pl_module.tokenizer).items()})

    _fit(module, _smooth_images(4), 3, callbacks=[AsACheckpointSeesThem()])
    assert len(seen) == 3 and all(norms == pytest.approx(initial, rel=1e-5) for norms in seen)


@pytest.mark.parametrize("reset", [True, False])
@pytest.mark.parametrize("freeze", ["1b", "after"])
def test_adam_starts_afresh_where_the_encoder_freezes(monkeypatch, tmp_path, reset, freeze):
    """As FlowMo rebuilds its optimizer over the decoder when the encoder freezes (stage 1b, or
    ``freeze_encoder_after`` in 1a): a decoder weight's Adam step count restarts there; the encoder's stops."""
    from lightning.pytorch.callbacks import Callback

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no LPIPS weights: stage 1b uses its pixel fallback
    torch.manual_seed(0)
    kw = ({"stage_steps": {"1a": 0.5, "1b": 0.5}, "posttrain_batch": 2} if freeze == "1b"
          else {"freeze_encoder_after": 0.5})
    module = FlowMoModule("flowmo-smoke", lr=1e-3, warmup_steps=1, max_steps=6, perceptual_weight=0.0,
                          reset_optimizer_at_freeze=reset, **kw)
    assert module.encoder_freeze_step() == 3
    dec, enc = module.tokenizer.decoder.head.linear.weight, module.tokenizer.encoder.head.linear.weight
    counts = []

    class AdamSteps(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            state = trainer.optimizers[0].state
            counts.append(tuple(int(state[p]["step"]) if p in state else 0 for p in (dec, enc)))

    _fit(module, _smooth_images(4), 6, callbacks=[AdamSteps()])
    assert [d for d, _ in counts] == ([1, 2, 3, 1, 2, 3] if reset else [1, 2, 3, 4, 5, 6])
    assert [e for _, e in counts] == ([1, 2, 3, 0, 0, 0] if reset else [1, 2, 3, 3, 3, 3])


def test_a_run_resumed_after_the_freeze_keeps_its_optimizer_state(tmp_path):
    torch.manual_seed(0)
    args = {"lr": 1e-3, "warmup_steps": 1, "max_steps": 6, "perceptual_weight": 0.0, "freeze_encoder_after": 0.5}
    module = FlowMoModule("flowmo-smoke", **args)
    trainer = _fit(module, _smooth_images(4), 4)
    trainer.save_checkpoint(tmp_path / "step4.ckpt")
    x = _smooth_images(4)
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=len(x))
    trainer = L.Trainer(max_steps=6, max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, precision=resolve_precision("bf16-mixed", device="cpu").used,
                        accelerator="cpu", limit_val_batches=0)
    resumed = FlowMoModule("flowmo-smoke", **args)
    trainer.fit(resumed, loader, ckpt_path=tmp_path / "step4.ckpt")
    dec = resumed.tokenizer.decoder.head.linear.weight
    assert int(trainer.optimizers[0].state[dec]["step"]) == 3  # steps 3, 4, 5 since the freeze at step 3: not reset again


def test_stages_encoder_bit_identical_in_1b_and_early_stopping_state(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no LPIPS weights: stage 1b uses its pixel fallback
    torch.manual_seed(0)
    x = _smooth_images(4)
    module = FlowMoModule("flowmo-smoke", lr=1e-3, warmup_steps=1, max_steps=6, perceptual_weight=0.0,
                          stage_steps={"1a": 0.5, "1b": 0.5}, posttrain_batch=2, patience=10)
    assert module.current_stage(2) == ("1a", 2 / 3) and module.current_stage(3) == ("1b", 0.0)
    assert "pixel MSE" in module.perceptual_status
    encoder_init = [p.detach().clone() for p in module.tokenizer.encoder.parameters()]
    trainer = _fit(module, x, 6, val=x, **{**module.trainer_kwargs(), "val_check_interval": 1})
    assert trainer.global_step == 6 and "train/sample_pixel_mse" in trainer.callback_metrics
    assert 0 < trainer.callback_metrics["val/code_usage"] <= 1 and "val/code_entropy_bits" in trainer.callback_metrics
    weights = module.stage_weights()
    assert set(weights) == {"1a", "1b"}
    enc = [k for k in weights["1a"] if k.startswith("encoder.")]
    assert any(not torch.equal(weights["1a"][k], p) for k, p in zip(enc, encoder_init, strict=True)), "1a trained the encoder"
    assert all(torch.equal(weights["1a"][k], weights["1b"][k]) for k in enc), "1b changed the encoder"
    es = module.early_stopping
    assert es["evaluations"] == 4  # after steps 3 (the 1a baseline), 4, 5, 6
    best = es["best_step"]
    assert best in (3, 4, 5, 6) and "best validated decoder" in es["status"]
    if best == 3:  # 1b never beat the end of 1a: the 1a decoder is what remains, and the record says so
        assert all(torch.equal(weights["1a"][k], weights["1b"][k]) for k in weights["1a"])
        assert es["kept"] == "stage 1a's decoder: no stage-1b validation beat it"
    else:
        assert es["kept"] == f"stage 1b's decoder of step {best}"


def test_early_stopping_keeps_the_best_decoder_and_stops():
    module = FlowMoModule("flowmo-smoke", max_steps=10, stage_steps={"1a": 0.5, "1b": 0.5}, perceptual_weight=0.0, patience=2)
    module._trainer = SimpleNamespace(should_stop=False, global_step=5, sanity_checking=False)
    decoder = module.tokenizer.decoder
    module._early_stopping_update(20.0)
    best = {k: v.clone() for k, v in decoder.state_dict().items()}
    for score in (19.0, 18.0):
        with torch.no_grad():
            next(decoder.parameters()).add_(1.0)
        module._trainer.global_step += 1
        module._early_stopping_update(score)
    assert module._trainer.should_stop
    assert module.early_stopping["best"] == 20.0 and module.early_stopping["stopped_at"] == 7
    assert all(torch.equal(v, best[k]) for k, v in decoder.state_dict().items())
    module.on_train_end()  # the best was the first 1b validation, at the start of 1b: the end of 1a
    assert module.early_stopping["kept"] == "stage 1a's decoder: no stage-1b validation beat it"


def test_validations_can_be_limited_to_some_images():
    """At paper size the held-out split is 1/16 of ImageNet's train set: a validation decodes its first images (the
    harness shards them over the processes, tests/benchmark/test_harness.py), not batches per process."""
    assert "limit_val_batches" not in FlowMoModule("flowmo-smoke", val_images=512).trainer_kwargs()
    assert FlowMoModule("flowmo-smoke").validation_images(list(range(80))) == 80
    assert FlowMoModule("flowmo-smoke", val_images=512).validation_images(list(range(80))) == 80
    assert FlowMoModule("flowmo-smoke", val_images=9).validation_images(list(range(80))) == 9
    with pytest.raises(ValueError, match="val_images is a number of held-out images >= 1"):
        FlowMoModule("flowmo-smoke", val_images=0)


def test_a_flowmo_tokenizer_is_not_trained_as_a_plain_autoencoder():
    """FlowMo's flow loss and stage 1b are FlowMoModule's; AutoencoderModule would train it with a GAN and L1."""
    from latentbench.benchmark.spec import TokenizerSpec
    from latentbench.tokenizers.module import AutoencoderModule

    with pytest.raises(ValueError, match="flowmo-smoke trains with latentbench.tokenizers.flowmo_module:FlowMoModule"):
        AutoencoderModule("flowmo-smoke")
    assert TokenizerSpec("flowmo-lo").module_class() is FlowMoModule  # a config without `module:` gets it


def test_missing_lpips_falls_back_to_a_labelled_pixel_loss(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    module = FlowMoModule("flowmo-smoke", stage_steps={"1a": 0.9, "1b": 0.1})
    assert module.perceptual is None
    assert module.perceptual_status.startswith("unavailable: LPIPS-vgg needs")
    assert "pixel MSE" in module.perceptual_status
    only_1a = FlowMoModule("flowmo-smoke")
    assert "pixel MSE" not in only_1a.perceptual_status
    assert FlowMoModule("flowmo-smoke", perceptual_weight=0.0).perceptual_status == "off"


def test_perceptual_substitute_serves_both_stages_when_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    stub = torch.nn.Module()
    stub.forward = lambda rec, x: (rec - x).abs().flatten(1).mean(1)
    monkeypatch.setattr("latentbench.tokenizers.module.AutoencoderModule._build_perceptual",
                        staticmethod(lambda weight, net, fallback=None: (stub, f"substitute: {fallback}")))
    module = FlowMoModule("flowmo-smoke", stage_steps={"1a": 0.5, "1b": 0.5}, max_steps=2, perceptual_fallback="domain-mnist")
    assert module.perceptual is stub and module.perceptual_status == "substitute: domain-mnist"
    x = _images(2)
    module._trainer = SimpleNamespace(global_step=1)
    assert set(module._posttrain_losses(x, module.tokenizer.encode(x))) == {"sample_perceptual"}


def test_posttrain_batch_is_split_over_the_processes_as_the_batch(monkeypatch, tmp_path):
    """``posttrain_batch`` counts images of the global batch, as the protocol's batch size: on W processes each
    samples its 1/W share (of its batch_size / W images), so stage 1b samples as many images per step on any W."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no LPIPS weights: stage 1b uses its pixel fallback
    module = FlowMoModule("flowmo-smoke", stage_steps={"1a": 0.5, "1b": 0.5}, max_steps=2, posttrain_batch=4)
    sampled, sample = [], module.tokenizer.posttrain_sample
    monkeypatch.setattr(module.tokenizer, "posttrain_sample", lambda code, **kw: sampled.append(len(code)) or sample(code, **kw))
    x = _images(8)
    for world in (1, 2, 4):
        module._trainer = SimpleNamespace(global_step=1, world_size=world)
        share = x[:len(x) // world]  # this process's part of the batch of 8
        module._posttrain_losses(share, module.tokenizer.encode(share))
    assert sampled == [4, 2, 1]
    module._trainer = SimpleNamespace(world_size=3)
    with pytest.raises(ValueError, match="posttrain_batch 4 is not divisible by the 3 processes"):
        module.on_fit_start()  # before the first step, not when stage 1b starts


def test_module_hparams_rebuild_and_stage_lr():
    module = FlowMoModule("flowmo-smoke", tokenizer_args={"bits": 9, "entropy_group": 3}, lr=1e-3, posttrain_lr=2e-4,
                          warmup_steps=4, max_steps=100, stage_steps={"1a": 0.8, "1b": 0.2}, freeze_encoder_after=0.5)
    rebuilt = FlowMoModule(**module.hparams)
    assert rebuilt.tokenizer.latent_spec.shape == (8, 9)
    assert module._lr_lambda(0) == 0.25 and module._lr_lambda(10) == 1.0 and module._lr_lambda(80) == pytest.approx(0.2)
    assert not module._encoder_frozen_at(49) and module._encoder_frozen_at(50)
    assert module.stage_start("1b") == 80


# ---- official checkpoint conversion --------------------------------------------------------------

P, RES, L_TOK, BITS = 4, 16, 4, 6
SIZES = {"encoder": (64, 2, 32, BITS, BITS), "decoder": (128, 2, 64, BITS + 1, BITS + 1)}  # width, depth, head dim, in, out


def _official_state_dict(sizes=SIZES, patch=P, seed=0, meta=False):
    """Random weights under the key names and shapes of kylesargent/FlowMo's ``FlowMo`` (``models.py``)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.empty(*shape, device="meta") if meta else torch.randn(*shape, generator=g) * 0.2

    sd = {}
    for part, (w, depth, hd, c_in, c_out) in sizes.items():
        def lin(name, o, i, part=part):
            sd.update({f"{part}.{name}.weight": r(o, i), f"{part}.{name}.bias": r(o)})

        lin("img_in", w, 3 * patch * patch)
        lin("txt_in", w, c_in)
        lin("time_in.in_layer", w, 256)
        lin("time_in.out_layer", w, w)
        for i in range(depth):
            for s in ("img", "txt"):
                b = f"double_blocks.{i}.{s}"
                lin(f"{b}_mod.lin", 6 * w, w)
                lin(f"{b}_attn.qkv", 3 * w, w)
                sd[f"{part}.{b}_attn.norm.query_norm.scale"] = 1 + r(hd)
                sd[f"{part}.{b}_attn.norm.key_norm.scale"] = 1 + r(hd)
                lin(f"{b}_attn.proj", w, w)
                lin(f"{b}_mlp.0", 4 * w, w)
                lin(f"{b}_mlp.2", w, 4 * w)
        lin("final_layer_img.linear", 3 * patch * patch, w)
        lin("final_layer_img.adaLN_modulation.1", 2 * w, w)
        lin("final_layer_txt.linear", c_out, w)
        lin("final_layer_txt.adaLN_modulation.1", 2 * w, w)
    return sd


def _ref_flux(sd, part, img, txt, t):
    """Flux forward of FlowMo's code, written out from its equations: returns (image output, latent output)."""
    w, depth, hd, _, _ = SIZES[part]
    heads = w // hd

    def lin(x, name):
        return F.linear(x, sd[f"{part}.{name}.weight"], sd[f"{part}.{name}.bias"])

    def ln(x):
        return F.layer_norm(x, (w,), eps=1e-6)

    b, n, gh = img.shape[0], (RES // P) ** 2, RES // P
    img = lin(img.reshape(b, 3, gh, P, gh, P).permute(0, 2, 4, 3, 5, 1).reshape(b, n, P * P * 3), "img_in")
    txt = lin(txt, "txt_in")
    vec = None
    if t is not None:
        half = 128
        args = 1000 * t[:, None] * torch.exp(-math.log(10000) * torch.arange(half) / half)
        vec = lin(F.silu(lin(torch.cat([args.cos(), args.sin()], -1), "time_in.in_layer")), "time_in.out_layer")
    # RoPE: latent l at (l, l, l), patch at (0, row, col); adjacent channel pairs rotate
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gh), indexing="ij")
    ids = torch.cat([torch.arange(L_TOK)[:, None].expand(-1, 3), torch.stack([0 * rows, rows, cols], -1).reshape(-1, 3)]).double()
    axes = (hd // 8, 7 * hd // 16, 7 * hd // 16)
    ang = torch.cat([ids[:, a, None] * 10000.0 ** (-torch.arange(0, d, 2).double() / d) for a, d in enumerate(axes)], 1).float()

    def rope(x):
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack([ang.cos() * x0 - ang.sin() * x1, ang.sin() * x0 + ang.cos() * x1], -1).flatten(-2)

    def rms(x, scale):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * scale

    for i in range(depth):
        streams = {"txt": txt, "img": img}
        mods, qkv = {}, {}
        for s, x in streams.items():
            pre = f"double_blocks.{i}.{s}"
            mods[s] = (0, 0, 1, 0, 0, 1) if vec is None else lin(F.silu(vec), f"{pre}_mod.lin")[:, None].chunk(6, -1)
            h = (1 + mods[s][1]) * ln(x) + mods[s][0]
            q, k, v = lin(h, f"{pre}_attn.qkv").reshape(b, -1, 3, heads, hd).permute(2, 0, 3, 1, 4)
            qkv[s] = (rms(q, sd[f"{part}.{pre}_attn.norm.query_norm.scale"]),
                      rms(k, sd[f"{part}.{pre}_attn.norm.key_norm.scale"]), v)
        q, k, v = (torch.cat([qkv["txt"][j], qkv["img"][j]], 2) for j in range(3))
        att = F.scaled_dot_product_attention(rope(q), rope(k), v, scale=8.0 / hd).transpose(1, 2).flatten(2)
        out = {"txt": att[:, :L_TOK], "img": att[:, L_TOK:]}
        for s, x in streams.items():
            pre = f"double_blocks.{i}.{s}"
            _, _, g1, sh2, sc2, g2 = mods[s]
            x = x + g1 * lin(out[s], f"{pre}_attn.proj")
            x = x + g2 * lin(F.gelu(lin((1 + sc2) * ln(x) + sh2, f"{pre}_mlp.0"), approximate="tanh"), f"{pre}_mlp.2")
            streams[s] = x
        txt, img = streams["txt"], streams["img"]

    def last(x, name):
        if vec is not None:
            shift, scale = lin(F.silu(vec), f"{name}.adaLN_modulation.1")[:, None].chunk(2, -1)
            x = (1 + scale) * ln(x) + shift
        return lin(ln(x), f"{name}.linear")

    pixels = last(img, "final_layer_img").reshape(b, gh, gh, P, P, 3).permute(0, 5, 1, 3, 2, 4).reshape(b, 3, RES, RES)
    return pixels, last(txt, "final_layer_txt")


def test_converter_reproduces_the_official_forward():
    sd = _official_state_dict()
    cfg = official_config(sd, resolution=RES, latent_tokens=L_TOK, entropy_group=3)
    assert cfg["patch_size"] == P and cfg["bits"] == BITS and (cfg["width"], cfg["heads"]) == (64, 2)
    assert (cfg["decoder_width"], cfg["decoder_heads"], cfg["decoder_depth"]) == (128, 2, 2)
    tok = flowmo_from_official(sd, resolution=RES, latent_tokens=L_TOK, entropy_group=3)
    x = _images(2, RES)
    with torch.no_grad():
        _, ref_code = _ref_flux(sd, "encoder", x, torch.zeros(2, L_TOK, BITS), None)
        assert torch.allclose(tok.encode_continuous(x), ref_code, atol=1e-4)
        code = torch.sign(ref_code)
        cond = torch.cat([code, torch.ones_like(code[..., :1])], -1)
        x_t, t = _images(2, RES, seed=1), torch.tensor([0.3, 0.8])
        ref_v, _ = _ref_flux(sd, "decoder", x_t, cond, t)
        assert torch.allclose(tok.velocity(x_t, t, cond), ref_v, atol=1e-4)
        # FlowMo's one shared latent query; per-token queries (the CPU sizes) hold it in every row, to the same codes
        per_token = flowmo_from_official(sd, resolution=RES, latent_tokens=L_TOK, entropy_group=3, shared_latent_query=False)
        assert tok.encoder.latent_queries.shape == (1, 1, 64) and per_token.encoder.latent_queries.shape == (1, L_TOK, 64)
        assert torch.allclose(per_token.encode_continuous(x), ref_code, atol=1e-4)


def test_converter_names_unmapped_and_missing_keys():
    sd = _official_state_dict()
    converted = convert_official_state_dict(sd, latent_tokens=L_TOK)
    used = [k for k in sd if not any(re.fullmatch(p, k) for p in UNUSED)]
    assert len(converted) == len(used)  # every used official key has exactly one counterpart
    with pytest.raises(KeyError, match=r"encoder\.quant_conv\.weight"):
        convert_official_state_dict({**sd, "encoder.quant_conv.weight": torch.zeros(1)}, latent_tokens=L_TOK)
    incomplete = {k: v for k, v in sd.items() if k != "decoder.double_blocks.1.img_mlp.2.bias"}
    with pytest.raises(KeyError, match=r"decoder\.trunk\.blocks\.1\.img\.mlp\.2\.bias"):
        flowmo_from_official(incomplete, resolution=RES, latent_tokens=L_TOK, entropy_group=3)
    ddp = {f"module.{k}": v for k, v in sd.items()}
    assert convert_official_state_dict(ddp, latent_tokens=L_TOK).keys() == converted.keys()


@pytest.mark.parametrize("name, bits", [("flowmo-lo", 18), ("flowmo-hi", 56)])
def test_registered_paper_sizes_fit_the_released_checkpoints(name, bits):
    # released sizes (configs/base.yaml): patch 4, 256 tokens, encoder dit_b width 4 (768, 12 heads,
    # 8 blocks), decoder mup_width 6 (1152, 12 heads, 16 blocks); the encoder's latent input is bits wide
    sizes = {"encoder": (768, 8, 64, bits, bits), "decoder": (1152, 16, 96, bits + 1, bits + 1)}
    official = _official_state_dict(sizes, patch=4, meta=True)
    cfg = official_config(official)
    with torch.device("meta"):
        tok = create_tokenizer(name)
        inferred = FlowMo(**cfg)
    assert cfg["entropy_group"] == tok.quantizer.group_size and cfg["mlp_ratio"] == 4.0
    ours = tok.state_dict()
    converted = convert_official_state_dict(official)
    for other in (inferred.state_dict(), converted):
        assert other.keys() == ours.keys()
        assert all(other[k].shape == ours[k].shape for k in ours)
    assert tok.decoder.trunk.axes_dim == (12, 42, 42) and tok.encoder.trunk.axes_dim == (8, 28, 28)
    assert ours["encoder.latent_queries"].shape == (1, 1, 768)  # FlowMo's shared query (txt_in's bias)


def test_convert_state_dict_hook_passes_our_own_state_dicts_through():
    sd = _official_state_dict()
    tok = create_tokenizer("flowmo-smoke", resolution=RES, latent_tokens=L_TOK, bits=BITS, width=64, heads=2, depth=2,
                           decoder_width=128, decoder_heads=2, decoder_depth=2)
    tok.load_state_dict(tok.convert_state_dict(sd), strict=True)
    own = tok.state_dict()
    assert tok.convert_state_dict(own) is own
