"""SD-VAE: the KL autoencoder of Stable Diffusion (Rombach et al. 2022), the MSE baseline.

The network is diffusers' ``AutoencoderKL``; this file adds the Tokenizer interface, the
KL term for training, size variants, and loading of the official weights
(``stabilityai/sd-vae-ft-mse`` / ``sd-vae-ft-ema``) from the hub, its cache or a local folder.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import Tensor

from latentbench.registry import require_positive
from latentbench.tokenizers.base import LatentSpec, Tokenizer
from latentbench.tokenizers.registry import TOKENIZERS
from latentbench.weights import WeightsUnavailable


class SDVAE(Tokenizer):
    """KL-regularised convolutional autoencoder with a 2D latent (C, H/f, W/f).

    Args:
        resolution: training/evaluation image size (the network itself is fully convolutional).
        block_out_channels: widths per level; ``len - 1`` downsamplings, so f = 2**(len - 1).
        layers_per_block: ResNet blocks per level.
        latent_channels: C of the latent.
        norm_num_groups: GroupNorm groups (must divide every width).
        scaling_factor: multiplies latents before diffusion (SD: 0.18215).
        pretrained: hub id (``stabilityai/sd-vae-ft-mse``) or local diffusers folder; the
            architecture arguments are then taken from its config.
    """

    stages = ("ae",)
    stochastic_decode = False  # a deterministic convolutional decoder; ``generator`` is accepted and unused
    # LDM's loss sums L1 over pixels and adds 1e-6 x KL summed over latent elements; our
    # terms are means over pixels, so the KL term is divided by the pixel count too (same ratio).
    loss_weights = {"kl": 1e-6}

    def __init__(
        self,
        resolution: int = 256,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        scaling_factor: float = 0.18215,
        pretrained: str | None = None,
    ):
        super().__init__()
        require_positive(resolution=resolution, layers_per_block=layers_per_block, latent_channels=latent_channels,
                         norm_num_groups=norm_num_groups, scaling_factor=scaling_factor,
                         **{f"block_out_channels[{i}]": c for i, c in enumerate(block_out_channels)})
        self.resolution = resolution
        if pretrained:
            self.vae = load_pretrained_vae(pretrained)
            self.pretrained_weights = pretrained
        else:
            from diffusers import AutoencoderKL

            levels = len(block_out_channels)
            self.vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * levels,
                up_block_types=("UpDecoderBlock2D",) * levels,
                block_out_channels=tuple(block_out_channels),
                layers_per_block=layers_per_block,
                latent_channels=latent_channels,
                norm_num_groups=norm_num_groups,
                sample_size=resolution,
                scaling_factor=scaling_factor,
            )
        config = self.vae.config
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self._spec = LatentSpec(
            shape=(config.latent_channels, resolution // self.downsample, resolution // self.downsample),
            scaling_factor=float(config.scaling_factor),
        )

    @property
    def latent_spec(self) -> LatentSpec:
        return self._spec

    def encode(self, x: Tensor) -> Tensor:
        """Posterior mean (the deterministic latent used for evaluation and diffusion)."""
        return self.vae.encode(x).latent_dist.mode()  # (B, C, H/f, W/f)

    def decode(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.vae.decode(z).sample  # (B, 3, H, W)

    def forward_train(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Decode a posterior sample; the KL term is per pixel (see ``loss_weights``)."""
        posterior = self.vae.encode(x).latent_dist
        rec = self.vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / x[0].numel()
        return rec, {"kl": kl}

    def last_layer(self) -> Tensor:
        return self.vae.decoder.conv_out.weight


def load_pretrained_vae(source: str):
    """diffusers ``AutoencoderKL`` from a local folder, the HF cache, or the hub.

    With ``HF_HUB_OFFLINE=1`` (or no network) a hub id that is not cached raises
    :class:`WeightsUnavailable` at once, saying how to get the files.

    Args:
        source: a local diffusers folder, or a hub id such as ``stabilityai/sd-vae-ft-mse``.
    """
    from diffusers import AutoencoderKL
    from huggingface_hub import try_to_load_from_cache

    if Path(source).exists():
        try:
            return AutoencoderKL.from_pretrained(source)
        except OSError as err:  # diffusers' "no file named config.json", a missing weights file
            raise ValueError(f"pretrained={source} is not a diffusers AutoencoderKL folder ({str(err).splitlines()[0]}): "
                             "give a folder saved by AutoencoderKL.save_pretrained (config.json and its weights), "
                             "or a hub id such as stabilityai/sd-vae-ft-mse") from err
    # the cache first, without a request; not even asked when its config is absent (else None or a "known
    # missing" sentinel), which spares diffusers' warnings on the way to the error
    if isinstance(try_to_load_from_cache(source, "config.json"), str):
        with contextlib.suppress(OSError):  # the weights file may be missing beside a cached config: then the hub
            return AutoencoderKL.from_pretrained(source, local_files_only=True)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    reason = "HF_HUB_OFFLINE is set" if offline else hub_unreachable(source)
    if reason is None:
        try:
            return AutoencoderKL.from_pretrained(source)
        except OSError as e:
            reason = str(e).splitlines()[0]
    raise WeightsUnavailable(
        f"cannot load the pretrained VAE {source!r}: it is not in the Hugging Face cache and the hub is "
        f"unreachable ({reason}). On a connected machine run "
        f"`huggingface-cli download {source}` and copy ~/.cache/huggingface/hub here, or pass a local "
        "folder saved by diffusers (AutoencoderKL.save_pretrained) as pretrained=<dir>."
    )


def hub_unreachable(repo: str) -> str | None:
    """Why the Hugging Face hub cannot serve ``repo``'s config.json now (one request), or None when it can.

    diffusers' own download retries a failed request five times with backoff (30 s without a
    network before it gives up); this single request without retries fails at once.

    Args:
        repo: a hub id.
    """
    import inspect

    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    # retry_on_errors came with huggingface_hub 1.2; before it a metadata request was not retried anyway
    once = {"retry_on_errors": False} if "retry_on_errors" in inspect.signature(get_hf_file_metadata).parameters else {}
    try:
        get_hf_file_metadata(hf_hub_url(repo, "config.json"), **once)
    except Exception as e:  # noqa: BLE001 (no network, a proxy, an HTTP error: from_pretrained would fail alike)
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


# ---- size variants -------------------------------------------------------------------------

@TOKENIZERS.register("sdvae-f8", help="SD-VAE architecture (f8, 4 ch, 83.7M params), trained from scratch")
def sdvae_f8(**kw) -> SDVAE:
    return SDVAE(**kw)


@TOKENIZERS.register("sdvae-ft-mse", help="official stabilityai/sd-vae-ft-mse weights (needs the hub or its cache)")
def sdvae_ft_mse(**kw) -> SDVAE:
    return SDVAE(pretrained=kw.pop("pretrained", "stabilityai/sd-vae-ft-mse"), **kw)


@TOKENIZERS.register("sdvae-ft-ema", help="official stabilityai/sd-vae-ft-ema weights (needs the hub or its cache)")
def sdvae_ft_ema(**kw) -> SDVAE:
    return SDVAE(pretrained=kw.pop("pretrained", "stabilityai/sd-vae-ft-ema"), **kw)


@TOKENIZERS.register("sdvae-ci", help="CPU size for the `ci` protocol: 32x32 -> 4x8x8 (f4), 0.95M params")
def sdvae_ci(**kw) -> SDVAE:
    defaults = dict(resolution=32, block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16)
    return SDVAE(**{**defaults, **kw})


@TOKENIZERS.register("sdvae-smoke", help="tiny SD-VAE for the `smoke` protocol and tests")
def sdvae_smoke(**kw) -> SDVAE:
    defaults = dict(resolution=32, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)
    return SDVAE(**{**defaults, **kw})
