"""The Tokenizer interface every family implements (README, "Bench your own tokenizer").

A tokenizer maps images in [-1, 1] to latents and back. Training lives in a
LightningModule wrapper (``latentbench.tokenizers.module``); the network knows nothing of
its losses except the extra terms it alone can compute (``forward_train``).

A user's own tokenizer does not need to subclass :class:`Tokenizer`: any ``nn.Module``
with ``encode``, ``decode`` and ``latent_spec`` works (``check_tokenizer`` says what is
missing); the helpers below fill in the optional parts.
"""
from __future__ import annotations

import inspect
import logging
import math
import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LatentSpec:
    """What one image becomes."""

    shape: tuple[int, ...]  # per image: (C, h, w) for 2D latents, (L, C) for 1D token latents; (L, bits) for codes
    dtype: str = "float32"  # a torch dtype's name
    # discrete tokenizers only: bits of one token's code. A discrete latent is (L, bits) of -1 / +1 per
    # bit (LFQ's binary codes; a codebook index can be given as its bits), which is what the MaskGIT
    # generator and the code statistics read.
    bits_per_token: float | None = None
    scaling_factor: float = 1.0  # latents are multiplied by this before diffusion (SD-VAE: 0.18215)

    def __post_init__(self) -> None:
        if self.bits_per_token is not None and (len(self.shape) != 2 or self.shape[1] != self.bits_per_token):
            raise ValueError(f"a discrete latent (bits_per_token={self.bits_per_token}) must have shape (L, bits) with "
                             f"bits == bits_per_token, got {tuple(self.shape)}: give a (C, h, w) code of C bits as "
                             "(h * w, C) tokens, each bit -1 or +1")

    @property
    def numel(self) -> int:
        """Latent elements per image."""
        return math.prod(self.shape)

    def bits_per_pixel(self, height: int, width: int) -> float | None:
        """Bits per pixel of the code (discrete tokenizers), None for continuous latents."""
        if self.bits_per_token is None:
            return None
        tokens = self.shape[0] if len(self.shape) == 2 else math.prod(self.shape[1:])
        return self.bits_per_token * tokens / (height * width)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form for result records."""
        return {**asdict(self), "shape": list(self.shape)}


class Tokenizer(nn.Module, ABC):
    """Base class: images in [-1, 1] <-> latents.

    Subclasses set ``stages`` (ordered training stages), ``loss_weights`` (default weights of
    the extra loss terms ``forward_train`` returns), ``compile_modules`` (submodules that
    decoding runs many times, which ``latentbench bench --compile`` compiles: ``compile_decoding``)
    and ``stochastic_decode``: True where ``decode`` draws from its ``generator`` (FlowMo), False
    where it ignores it, so batches decode whole; None (the default) infers it from ``decode``'s
    signature, as for a module that does not subclass ``Tokenizer``.
    """

    stages: tuple[str, ...] = ("ae",)
    # the LightningModule that trains it, as "module:Class", when AutoencoderModule cannot (FlowMo's flow
    # loss and stage 1b, RAE's frozen encoder and latent statistics); the bench picks it when a config
    # names none, and AutoencoderModule refuses such a tokenizer
    training_module: str | None = None
    loss_weights: dict[str, float] = {}
    compile_modules: tuple[str, ...] = ()
    stochastic_decode: bool | None = None
    # where the weights loaded at construction came from (a hub id, a folder); None: randomly
    # initialised. ``bench --train_steps 0`` without --ckpt refuses a tokenizer without them.
    pretrained_weights: str | None = None

    @abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """Encode images (B, 3, H, W) in [-1, 1] to latents (B, *latent_spec.shape)."""

    @abstractmethod
    def decode(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Decode latents to images (B, 3, H, W) in [-1, 1]; ``generator`` seeds stochastic decoders."""

    @property
    @abstractmethod
    def latent_spec(self) -> LatentSpec:
        """Shape, dtype, bits per token and scaling of one image's latent."""

    def forward_train(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Reconstruction used by the training losses, plus the tokenizer's own loss terms."""
        return self.decode(self.encode(x)), {}

    def last_layer(self) -> Tensor | None:
        """Weight of the decoder's output layer (for the adaptive GAN weight), if any."""
        return None


REQUIRED = ("encode", "decode", "latent_spec")


def compile_decoding(tokenizer: nn.Module) -> list[str]:
    """``torch.compile`` (in place, static shapes) the submodules named by ``tokenizer.compile_modules``.

    Meant for iterative decoders, which run one network many times per image (FlowMo: 25 steps,
    guided): measured on a 2-core AVX2 CPU in float32, FlowMo-ci's decoding ran 11.0-12.1 instead
    of 7.6-8.9 images/s, after a compilation of ~170 s (~20 s from TorchInductor's on-disk cache),
    with pixels moved by < 1e-6. Single-pass decoders gain little and are left alone. Compiling in
    place keeps the state-dict keys. Returns the names compiled.
    """
    names = [n for n in getattr(tokenizer, "compile_modules", ()) if isinstance(getattr(tokenizer, n, None), nn.Module)]
    if names:
        require_cxx_compiler()
        if not torch.cuda.is_available():  # a CUDA build of torch on a CPU machine warns of its missing CUDA
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    for name in names:
        getattr(tokenizer, name).compile(dynamic=False)  # a few batch shapes per run (full and last chunk, guided)
    return names


def require_cxx_compiler() -> None:
    """Raise a RuntimeError naming the fix where TorchInductor would find no C++ compiler."""
    if not _cxx_compiler():
        raise RuntimeError("--compile needs a C++ compiler for TorchInductor's kernels (g++ or clang++ on PATH, or CXX set): "
                           "install one, or run without --compile")


def _cxx_compiler() -> str | None:
    """Path of the C++ compiler TorchInductor would use ($CXX first), or None."""
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and (path := shutil.which(name)):
            return path
    return None


def check_tokenizer(obj: Any) -> None:
    """Raise TypeError naming what an object lacks to serve as a tokenizer."""
    missing = [name for name in REQUIRED if not hasattr(obj, name)]
    if not isinstance(obj, nn.Module):
        missing.append("nn.Module base class")
    if missing:
        raise TypeError(
            f"{type(obj).__module__}.{type(obj).__qualname__} is not a tokenizer: it lacks {', '.join(missing)}. "
            "Implement encode(x) -> z, decode(z) -> x and a latent_spec property (see latentbench.tokenizers.base)."
        )


@torch.no_grad()
def check_round_trip(tokenizer: nn.Module, resolution: int) -> None:
    """Encode and decode two images (again under other random states and seeds); ValueError naming what does not match
    ``latent_spec`` or the image shape, or an encode or decode that draws from the global random state.

    The leaderboard's latent column, bits per pixel, the rate-distortion plot and the generator's
    input shape are read from ``latent_spec``, so an ``encode`` whose output differs from it would
    give a row that describes another latent without any error. Run on a user's class before
    training (the suite's own are tested); random state and train/eval mode are left as they were.
    """
    name = f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}"
    spec = tokenizer.latent_spec
    if not isinstance(spec, LatentSpec):
        raise ValueError(f"{name}.latent_spec must be a latentbench.tokenizers.LatentSpec, got {type(spec).__name__} {spec!r}: "
                         "return LatentSpec(shape=(C, h, w)) (or (L, C) for tokens; (L, bits) with bits_per_token for binary codes)")
    ramp = torch.linspace(-1, 1, resolution)
    x = torch.stack([ramp.expand(3, resolution, resolution), -ramp.expand(3, resolution, resolution).transpose(1, 2)])
    training = tokenizer.training
    with torch.random.fork_rng(devices=[]):
        tokenizer.eval()
        try:
            z = tokenizer.encode(x)
            if not isinstance(z, Tensor) or tuple(z.shape) != (2, *spec.shape):
                got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
                raise ValueError(f"{name}.encode of 2 images of {resolution}x{resolution} returned {got}, but its latent_spec "
                                 f"says {tuple(spec.shape)} per image, so (2, {', '.join(map(str, spec.shape))}): the "
                                 "leaderboard's latent column, bits per pixel and the generator read latent_spec; make them agree")
            declared = getattr(torch, str(spec.dtype), None)
            if not isinstance(declared, torch.dtype) or declared != z.dtype:
                raise ValueError(f"{name}.encode returned {z.dtype} latents, but its latent_spec.dtype is {spec.dtype!r} "
                                 "(a torch dtype's name, e.g. float32)")
            if spec.bits_per_token is not None and not bool((z.abs() == 1).all()):
                raise ValueError(f"{name}.encode returned codes with values {sorted(set(z.unique()[:5].tolist()))}..., "
                                 "but a discrete latent (latent_spec.bits_per_token set) holds one -1 or +1 per bit: "
                                 "the MaskGIT generator and the code statistics read it so")
            if z.is_floating_point() and not bool(torch.isfinite(z).all()):
                raise ValueError(f"{name}.encode returned NaN or infinite latents for 2 images in [-1, 1]")
            # the latent cache, the probe and the reconstructions each encode the images once: an encoder that
            # draws from the global random state would give each of them other latents, per batch and process
            torch.rand(16)  # moves the global random state on (inside fork_rng: the caller's is untouched)
            if not torch.equal(z, tokenizer.encode(x)):
                raise ValueError(f"{name}.encode gave other latents for the same images under another random state: "
                                 "encode must be deterministic (a VAE encodes its posterior mean or mode; sample in "
                                 "forward_train for training)")
            y = decode_seeded(tokenizer, z, 0)
            if not isinstance(y, Tensor) or tuple(y.shape) != tuple(x.shape) or not y.is_floating_point():
                got = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
                raise ValueError(f"{name}.decode returned {got} for 2 images of {tuple(x.shape[1:])}: it must return float "
                                 "images of the input's shape, in [-1, 1]")
            if not bool(torch.isfinite(y).all()):
                raise ValueError(f"{name}.decode returned NaN or infinite pixels for 2 images: it must return float "
                                 "images in [-1, 1]")
            # a decoder taken as deterministic decodes whole batches: one that draws from the global random state
            # anyway would give each image noise that depends on its batch and process
            if not decodes_stochastically(tokenizer) and not torch.equal(y, decode_seeded(tokenizer, z, 1)):
                raise ValueError(f"{name}.decode gave other images under another random seed, but takes no generator: "
                                 "add an argument `generator: torch.Generator | None = None` and draw its noise from it "
                                 "(each image then gets its own seed), or make decode deterministic")
            if "generator" in inspect.signature(tokenizer.decode).parameters:  # the same generator seed, another global state
                torch.rand(16)  # moves the global random state on (inside fork_rng: the caller's is untouched)
                if not torch.equal(y, decode_seeded(tokenizer, z, 0)):
                    raise ValueError(f"{name}.decode takes a generator but draws from the global random state too (the "
                                     "same generator seed gave other images): draw every random number from the "
                                     "generator it is given")
        finally:
            tokenizer.train(training)


def forward_train(tokenizer: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """``tokenizer.forward_train(x)`` where defined, else a plain deterministic round trip."""
    if hasattr(tokenizer, "forward_train"):
        return tokenizer.forward_train(x)
    return tokenizer.decode(tokenizer.encode(x)), {}


def decodes_stochastically(tokenizer: nn.Module) -> bool:
    """Whether ``decode`` draws random numbers: the tokenizer's ``stochastic_decode``, else (a user's
    module that does not subclass ``Tokenizer``) whether its ``decode`` takes a ``generator``."""
    flag = getattr(tokenizer, "stochastic_decode", None)
    return bool(flag) if flag is not None else "generator" in inspect.signature(tokenizer.decode).parameters


def decode_seeded(tokenizer: nn.Module, z: Tensor, seed: int) -> Tensor:
    """Decode with a fixed seed, whether or not ``decode`` takes a generator."""
    if "generator" in inspect.signature(tokenizer.decode).parameters:
        generator = torch.Generator(device=z.device).manual_seed(seed)
        return tokenizer.decode(z, generator=generator)
    with torch.random.fork_rng(devices=[] if z.device.type == "cpu" else [z.device]):
        torch.manual_seed(seed)
        return tokenizer.decode(z)


def decode_per_sample(tokenizer: nn.Module, z: Tensor, seeds: list[int] | Tensor) -> Tensor:
    """Decode with sample ``i``'s decoder randomness drawn from ``seeds[i]`` alone (gFID's sample sets,
    reconstructions), so no sample depends on its batch or its process.

    A deterministic decoder (``decodes_stochastically`` false) decodes the batch as is. A
    stochastic one that takes its initial ``noise`` (FlowMo) gets per-sample seeded noise in one
    batch, drawn on the CPU whatever the device (the same noise on a GPU as on a CPU); any other
    stochastic decoder decodes one sample at a time with its own generator, on ``z``'s device.
    """
    from latentbench.generators import seeding

    params = inspect.signature(tokenizer.decode).parameters
    if not decodes_stochastically(tokenizer):  # the whole batch, under one fixed seed should it draw after all
        return decode_seeded(tokenizer, z, int(seeds[0]) if len(seeds) else 0)
    if "generator" not in params:
        raise TypeError(f"{type(tokenizer).__qualname__} sets stochastic_decode but its decode takes no generator: "
                        "add a generator argument that seeds its randomness (see latentbench.tokenizers.base.Tokenizer)")
    if "noise" in params and hasattr(tokenizer, "decode_noise_shape"):
        # drawn on the CPU and moved, as the generators' noise (transport, MaskGIT): a GPU run decodes from the noise a
        # CPU run does, not from the CUDA generator's other stream of numbers for the same seeds
        noise = seeding.randn(seeding.generators(seeds), tokenizer.decode_noise_shape)
        return tokenizer.decode(z, noise=noise.to(z.device))
    # a decoder that draws its own numbers takes a generator on the device it draws on
    return torch.cat([tokenizer.decode(z[i:i + 1], generator=g) for i, g in enumerate(seeding.generators(seeds, z.device))])
