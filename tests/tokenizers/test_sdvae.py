import pytest
import torch

from latentbench.tokenizers import create_tokenizer
from latentbench.weights import WeightsUnavailable


def test_ci_size_is_f4_with_4_channels():
    tok = create_tokenizer("sdvae-ci")
    assert tok.latent_spec.shape == (4, 8, 8)
    assert tok.latent_spec.scaling_factor == pytest.approx(0.18215)


def test_sd_config_matches_stable_diffusion():
    tok = create_tokenizer("sdvae-f8")
    assert tok.latent_spec.shape == (4, 32, 32)
    assert tuple(tok.vae.config.block_out_channels) == (128, 256, 512, 512)
    assert 83e6 < sum(p.numel() for p in tok.parameters()) < 84e6  # SD-VAE: 83.65M parameters


def test_pretrained_loads_from_local_diffusers_folder(tmp_path):
    src = create_tokenizer("sdvae-smoke")
    src.vae.save_pretrained(tmp_path / "vae")
    tok = create_tokenizer("sdvae-ft-mse", pretrained=str(tmp_path / "vae"), resolution=32)
    assert list(src.state_dict()) == list(tok.state_dict())  # zip below would stop at the shorter one
    for (k, a), (_, b) in zip(src.state_dict().items(), tok.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_a_local_folder_that_is_no_diffusers_vae_is_named_with_the_fix(tmp_path):
    # before: diffusers' bare OSError, which the CLI printed as a traceback
    (tmp_path / "vae").mkdir()
    with pytest.raises(ValueError, match=r"is not a diffusers AutoencoderKL folder \(.*config\.json.*save_pretrained"):
        create_tokenizer("sdvae-ft-mse", pretrained=str(tmp_path / "vae"))


def test_pretrained_hub_id_offline_fails_with_instructions(monkeypatch, empty_caches):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="huggingface-cli download stabilityai/sd-vae-ft-mse"):
        create_tokenizer("sdvae-ft-mse")


def test_pretrained_hub_id_without_network_fails_at_once(monkeypatch, empty_caches):
    """Not cached and the hub unreachable: one request without retries, not diffusers' five with backoff (30 s)."""
    import huggingface_hub
    from diffusers import AutoencoderKL

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    requests = []

    def unreachable(url, retry_on_errors=True, **kwargs):  # huggingface_hub >= 1.2's keyword
        requests.append({"retry_on_errors": retry_on_errors, **kwargs})
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    monkeypatch.setattr(AutoencoderKL, "from_pretrained", lambda *a, **k: pytest.fail(f"diffusers asked ({k})"))
    with pytest.raises(WeightsUnavailable, match=r"not in the Hugging Face cache and the hub is unreachable "
                                                 r"\(\[Errno -2\] Name or service not known\)\. On a connected machine"):
        create_tokenizer("sdvae-ft-mse")
    assert requests == [{"retry_on_errors": False}]


def test_an_older_huggingface_hub_without_retry_on_errors_still_downloads(monkeypatch, empty_caches):
    """huggingface_hub < 1.2 has no retry_on_errors: the probe must not pass it (a TypeError there read as
    "the hub is unreachable" and no download was ever tried)."""
    import huggingface_hub
    from diffusers import AutoencoderKL

    import latentbench.tokenizers.sdvae as sdvae

    def old_signature(url, token=None, proxies=None, timeout=10):  # 0.x: no **kwargs, no retry_on_errors
        return None

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", old_signature)
    monkeypatch.setattr(AutoencoderKL, "from_pretrained", lambda source, **k: "vae")
    assert sdvae.load_pretrained_vae("stabilityai/sd-vae-ft-mse") == "vae"


def test_pretrained_hub_id_downloads_when_the_hub_answers(monkeypatch, empty_caches):
    import huggingface_hub
    from diffusers import AutoencoderKL

    import latentbench.tokenizers.sdvae as sdvae

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **kwargs: None)
    loads = []
    monkeypatch.setattr(AutoencoderKL, "from_pretrained", lambda source, **k: loads.append((source, k)) or "vae")
    assert sdvae.load_pretrained_vae("stabilityai/sd-vae-ft-mse") == "vae"
    assert loads == [("stabilityai/sd-vae-ft-mse", {})]


def test_kl_term_is_per_pixel_and_positive():
    tok = create_tokenizer("sdvae-smoke")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    _, extra = tok.forward_train(x)
    # the closed form of KL(N(mu, var) || N(0, 1)), summed over the latent, averaged over the batch, per input value
    with torch.no_grad():
        dist = tok.vae.encode(x).latent_dist
    closed = 0.5 * (dist.mean ** 2 + dist.var - 1 - dist.logvar).sum(dim=(1, 2, 3)).mean() / x[0].numel()
    assert extra["kl"] > 0
    torch.testing.assert_close(extra["kl"].detach(), closed, rtol=1e-5, atol=0)


@pytest.mark.parametrize("init_args, said", [
    ({"latent_channels": -4}, "ValueError: latent_channels must be positive, got -4"),  # torch said "negative dimension -8"
    ({"norm_num_groups": 3}, "ValueError: num_channels (8) must be divisible by num_groups (3)"),
    ({"block_out_channels": []}, "IndexError: tuple index out of range"),
])
def test_init_args_that_cannot_build_the_tokenizer_are_named(init_args, said):
    """A config's init_args that torch cannot build: a ValueError naming the tokenizer, the init_args and torch's
    words; before, torch's RuntimeError / IndexError ended the bench's train stage with a traceback (exit 1)."""
    with pytest.raises(ValueError) as err:
        create_tokenizer("sdvae-smoke", **init_args)
    assert str(err.value).startswith(f"tokenizer sdvae-smoke cannot be built with init_args {init_args}: {said}")
    assert str(err.value).endswith("fix those values in its config (without init_args it builds as registered)")
