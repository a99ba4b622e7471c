"""A user's tokenizer class is checked once before it trains: encode and decode must agree with its latent_spec."""
import textwrap

import pytest
import torch

from latentbench.tokenizers.base import check_round_trip

MODULE = '''
import torch
from torch import nn
from latentbench.tokenizers import LatentSpec


class Good(nn.Module):  # the README's example
    def __init__(self, channels: int = 4):
        super().__init__()
        self.enc, self.dec = nn.Conv2d(3, channels, 4, stride=4), nn.ConvTranspose2d(channels, 3, 4, stride=4)

    @property
    def latent_spec(self):
        return LatentSpec(shape=(self.enc.out_channels, 8, 8))

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        return torch.tanh(self.dec(z))


class WrongShape(Good):  # declares 4x8x8, encodes 4x16x16
    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Conv2d(3, 4, 2, stride=2), nn.ConvTranspose2d(4, 3, 2, stride=2)


class TupleSpec(Good):
    @property
    def latent_spec(self):
        return (4, 8, 8)


class CodeGrid(Good):  # a (C, h, w) grid of bits: discrete latents are (L, bits)
    @property
    def latent_spec(self):
        return LatentSpec(shape=(4, 8, 8), bits_per_token=4)


class Codes(Good):  # binary codes, 64 tokens of 4 bits
    @property
    def latent_spec(self):
        return LatentSpec(shape=(64, 4), bits_per_token=4)

    def encode(self, x):
        return torch.where(self.enc(x) > 0, 1.0, -1.0).flatten(2).transpose(1, 2)  # (B, 64, 4)

    def decode(self, z):
        return super().decode(z.transpose(1, 2).reshape(-1, 4, 8, 8))


class IntSpec(Codes):
    @property
    def latent_spec(self):
        return LatentSpec(shape=(64, 4), dtype="int64", bits_per_token=4)


class NoisyDecode(Good):  # draws from the global random state without taking a generator
    def decode(self, z):
        return super().decode(z + torch.randn_like(z))


class SeededDecode(Good):  # the same, done right: per-image noise from the generator it is given
    def decode(self, z, generator=None):
        return super().decode(z + torch.randn(z.shape, generator=generator))


class GlobalNoiseWithGenerator(Good):  # takes a generator, but draws from the global random state
    def decode(self, z, generator=None):
        return super().decode(z + torch.randn_like(z))


class NotBinary(Codes):
    def encode(self, x):
        return self.enc(x).flatten(2).transpose(1, 2)


class SmallDecode(Good):
    def decode(self, z):
        return super().decode(z)[..., :16, :16]


class DoubleLatents(Good):  # declares float32 (the default), encodes float64
    def encode(self, x):
        return super().encode(x).double()


class NaNDecode(Good):
    def decode(self, z):
        return super().decode(z) * float("nan")


class NaNEncode(Good):
    def encode(self, x):
        return super().encode(x) / 0.0


class NoisyEncode(Good):  # samples its latent from the global random state
    def encode(self, x):
        z = super().encode(x)
        return z + torch.randn_like(z)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "usertok.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    return importlib.import_module("usertok")


@pytest.mark.parametrize("name, message", [
    ("WrongShape", "usertok.WrongShape.encode of 2 images of 32x32 returned (2, 4, 16, 16), but its latent_spec says (4, 8, 8)"),
    ("TupleSpec", "usertok.TupleSpec.latent_spec must be a latentbench.tokenizers.LatentSpec, got tuple (4, 8, 8)"),
    ("IntSpec", "usertok.IntSpec.encode returned torch.float32 latents, but its latent_spec.dtype is 'int64'"),
    ("CodeGrid", "a discrete latent (bits_per_token=4) must have shape (L, bits) with bits == bits_per_token, got (4, 8, 8)"),
    ("NoisyDecode", "usertok.NoisyDecode.decode gave other images under another random seed, but takes no generator"),
    ("GlobalNoiseWithGenerator", "usertok.GlobalNoiseWithGenerator.decode takes a generator but draws from the global "
                                 "random state too"),
    ("NotBinary", "but a discrete latent (latent_spec.bits_per_token set) holds one -1 or +1 per bit"),
    ("SmallDecode", "usertok.SmallDecode.decode returned (2, 3, 16, 16) torch.float32 for 2 images of (3, 32, 32)"),
    ("DoubleLatents", "usertok.DoubleLatents.encode returned torch.float64 latents, but its latent_spec.dtype is 'float32'"),
    ("NaNDecode", "usertok.NaNDecode.decode returned NaN or infinite pixels"),
    ("NaNEncode", "usertok.NaNEncode.encode returned NaN or infinite latents"),
    ("NoisyEncode", "usertok.NoisyEncode.encode gave other latents for the same images under another random state"),
])
def test_a_tokenizer_that_disagrees_with_its_latent_spec_is_named(user_module, name, message):
    with pytest.raises(ValueError) as e:
        check_round_trip(getattr(user_module, name)(), 32)
    assert message in str(e.value)


def test_binary_codes_and_a_seeded_stochastic_decoder_pass(user_module):
    check_round_trip(user_module.Codes(), 32)
    check_round_trip(user_module.SeededDecode(), 32)


def test_the_check_leaves_random_state_and_mode_as_they_were(user_module):
    tokenizer = user_module.Good().train()
    state = torch.random.get_rng_state()
    check_round_trip(tokenizer, 32)
    assert torch.equal(torch.random.get_rng_state(), state) and tokenizer.training


def test_the_bench_refuses_such_a_class_before_training(user_module, tmp_path):
    from latentbench.benchmark.harness import run_bench

    with pytest.raises(ValueError, match="returned \\(2, 4, 16, 16\\)"):
        run_bench("usertok:WrongShape", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda m: None)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "lb").exists()
