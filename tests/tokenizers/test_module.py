import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from latentbench.tokenizers.module import AutoencoderModule


def _fit(module, x, steps):
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=len(x))
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, precision="bf16-mixed", accelerator="cpu")
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
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, module.discriminator.parameters()))


def test_missing_lpips_weights_are_reported_not_faked(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    module = AutoencoderModule("sdvae-smoke", perceptual_weight=1.0, disc_weight=0.0)
    assert module.perceptual is None
    assert module.perceptual_status.startswith("unavailable: LPIPS-vgg needs")


def test_hparams_rebuild_module():
    module = AutoencoderModule("sdvae-smoke", tokenizer_args={"latent_channels": 2}, disc_weight=0.0)
    rebuilt = AutoencoderModule(**module.hparams)
    assert rebuilt.tokenizer.latent_spec.shape == (2, 16, 16)
