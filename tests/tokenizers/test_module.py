import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from latentbench.precision import resolve_precision
from latentbench.tokenizers.module import AutoencoderModule


def _fit(module, x, steps):
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=len(x))
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, precision=resolve_precision("bf16-mixed", device="cpu").used, accelerator="cpu")
    trainer.fit(module, loader)
    return trainer


def _rec_error(module, x):
    with torch.no_grad():
        tok = module.tokenizer
        return (tok.decode(tok.encode(x)) - x).abs().mean().item()


def test_loss_decreases_when_overfitting_one_batch():
    torch.manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(8, 3, 4, 4) * 2 - 1, size=32, mode="bilinear")  # smooth images
    module = AutoencoderModule("sdvae-smoke", lr=3e-3, warmup_steps=1, max_steps=60, disc_weight=0.0, perceptual_weight=0.0)
    before = _rec_error(module, x)
    _fit(module, x, 60)
    after = _rec_error(module, x)
    assert after < 0.5 * before, (before, after)


def test_gan_phase_trains_both_networks():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    module = AutoencoderModule("sdvae-smoke", lr=1e-3, warmup_steps=1, max_steps=4, disc_start=2,
                               disc_channels=8, disc_layers=2, perceptual_weight=0.0)
    disc_before = [p.detach().clone() for p in module.discriminator.parameters()]
    trainer = _fit(module, x, 4)
    assert trainer.global_step == 4  # one optimizer step per batch, GAN or not
    assert "train/disc" in trainer.callback_metrics and "train/gan" in trainer.callback_metrics
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, module.discriminator.parameters(), strict=True))


def test_missing_lpips_weights_are_reported_not_faked(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    module = AutoencoderModule("sdvae-smoke", perceptual_weight=1.0, disc_weight=0.0)
    assert module.perceptual is None
    assert module.perceptual_status.startswith("unavailable: LPIPS-vgg needs")


def test_hparams_rebuild_module():
    module = AutoencoderModule("sdvae-smoke", tokenizer_args={"latent_channels": 2}, disc_weight=0.0)
    rebuilt = AutoencoderModule(**module.hparams)
    assert rebuilt.tokenizer.latent_spec.shape == (2, 16, 16)


def test_stage_plan_splits_the_budget_in_order():
    from latentbench.tokenizers.module import plan_stages

    assert plan_stages(("ae", "decoder-ft"), None, 100) == [("ae", 0, 100)]
    assert plan_stages(("ae", "decoder-ft"), {"ae": 0.75, "decoder-ft": 0.25}, 100) == [("ae", 0, 75), ("decoder-ft", 75, 100)]
    with pytest.raises(ValueError, match="sum to 1"):
        plan_stages(("ae", "decoder-ft"), {"ae": 0.5}, 100)
    with pytest.raises(ValueError, match="stages are"):
        plan_stages(("ae",), {"ae": 0.5, "nope": 0.5}, 100)


def test_stages_run_in_order_and_reach_the_tokenizer():
    module = AutoencoderModule("maetok-smoke", max_steps=8, disc_weight=0.0, perceptual_weight=0.0,
                               stage_steps={"ae": 0.75, "decoder-ft": 0.25})
    assert module.current_stage(0) == ("ae", 0.0) and module.current_stage(6) == ("decoder-ft", 0.0)
    assert module.current_stage(7) == ("decoder-ft", 0.5)
    x = torch.nn.functional.interpolate(torch.rand(4, 3, 4, 4) * 2 - 1, size=32, mode="bilinear")
    encoder_before = [p.detach().clone() for p in module.tokenizer.encoder_parameters()]
    _fit(module, x, 8)
    assert module.tokenizer.aux_enabled is False  # ended in decoder-ft
    # trained in "ae", frozen in "decoder-ft": the encoder moved, but not in the last steps
    assert any(not torch.equal(a, b) for a, b in zip(encoder_before, module.tokenizer.encoder_parameters(), strict=True))


def test_perceptual_fallback_is_a_labelled_substitute(monkeypatch, tmp_path):
    """Without LPIPS weights, ``perceptual_fallback`` trains with the suite's frozen-classifier feature distance, labelled."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no LPIPS backbone weights there
    module = AutoencoderModule("sdvae-smoke", perceptual_fallback="domain-shapes:48:20", disc_weight=0.0)
    assert module.perceptual_status.startswith("substitute: domain-shapes:48:20 feature distance")
    assert "not LPIPS" in module.perceptual_status
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    d = module.perceptual(x.clone().requires_grad_(True), x)
    assert d.shape == (2,) and torch.allclose(d, torch.zeros(2), atol=1e-6)  # identical images: distance 0
    rec = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    module.perceptual(rec, x).sum().backward()
    assert rec.grad.abs().sum() > 0  # differentiable in the reconstruction
    assert not any(p.requires_grad for p in module.perceptual.parameters())  # frozen network
    losses = module._reconstruction_losses(x, rec.detach(), {})
    assert set(losses) == {"rec", "perceptual"}
    with pytest.raises(ValueError, match="domain-<source>"):
        AutoencoderModule("sdvae-smoke", perceptual_fallback="vgg", disc_weight=0.0)


@pytest.mark.parametrize("name", ["rae-dinov2-b", "rae-dinov2-b-dec-l", "rae-dinov2-b-dec-xl", "rae-siglip2-b", "rae-mae-b"])
def test_rae_paper_configs_weigh_l1_as_the_official_code(name):
    # bytetriper/RAE src/train_stage1.py: rec_loss = (recon - images).abs().mean() on [0, 1] images, LPIPS on [-1, 1]:
    # the L1 of the suite's [-1, 1] images at half its weight against LPIPS (and so in the adaptive GAN weight)
    from latentbench.benchmark.protocol import load_protocol
    from latentbench.benchmark.spec import resolve_tokenizer

    spec = resolve_tokenizer(f"configs/tokenizers/{name}.yaml", load_protocol("imagenet256"))
    assert spec.module_args["rec_loss"] == "l1" and spec.module_args["rec_weight"] == 0.5
    module = AutoencoderModule("sdvae-smoke", rec_weight=0.5, perceptual_weight=0.0, disc_weight=0.0)
    x01, rec01 = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    losses = module._reconstruction_losses(x01 * 2 - 1, rec01 * 2 - 1, {})
    assert torch.allclose(losses["rec"], (rec01 - x01).abs().mean())


def test_the_discriminator_is_described_for_the_record_or_none_without_one():
    with_gan = AutoencoderModule("sdvae-smoke", disc_weight=0.25, disc_start=7, disc_channels=8, disc_layers=2)
    assert with_gan.discriminator_info == {"kind": "patchgan", "channels": 8, "layers": 2, "weight": 0.25, "start": 7}
    assert AutoencoderModule("sdvae-smoke", disc_weight=0.0).discriminator_info is None
