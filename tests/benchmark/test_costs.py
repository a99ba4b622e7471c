"""Cost columns: FLOPs of encode and decode against hand counts, parameters each pass uses."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentbench.benchmark.costs import count_pass, tokenizer_costs
from latentbench.tokenizers import create_tokenizer


class Toy(nn.Module):
    """encode: 2x2 stride-2 conv 3 -> 4 channels (8x8 -> 4x4); decode: linear 64 -> 192, reshaped to an image."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 4, 2, stride=2)
        self.dec = nn.Linear(64, 192)
        self.latent_spec = None

    def encode(self, x):
        return self.enc(x)  # (B, 4, 4, 4)

    def decode(self, z):
        return self.dec(z.flatten(1)).view(-1, 3, 8, 8)


def test_toy_counts_match_hand_counts():
    costs = tokenizer_costs(Toy(), 8)
    # conv: 4*4 outputs x 4 channels, each 3*2*2 multiply-adds; linear: 64*192 multiply-adds; 2 FLOPs each
    assert costs["encoder_gflops"] * 1e9 == pytest.approx(2 * (4 * 4 * 4) * (3 * 2 * 2))
    assert costs["decoder_gflops"] * 1e9 == pytest.approx(2 * 64 * 192)
    assert costs["decoder_gmacs"] == pytest.approx(costs["decoder_gflops"] / 2)
    assert (costs["encoder_params"], costs["decoder_params"]) == (3 * 4 * 2 * 2 + 4, 64 * 192 + 192)
    assert costs["total_params"] == costs["encoder_params"] + costs["decoder_params"]
    assert costs["resolution"] == 8 and "multiply-add" in costs["convention"]


def test_attention_is_counted():
    q = torch.rand(2, 3, 5, 8)  # (B, heads, N, d)
    _, flops, params = count_pass(lambda: F.scaled_dot_product_attention(q, q, q))
    assert flops == 2 * (2 * 3 * 5 * 5 * 8) * 2 and params == 0  # QK^T and AV


def test_shared_and_outside_parameters_count_where_used():
    class Shared(Toy):
        def __init__(self):
            super().__init__()
            self._frozen = [nn.Linear(64, 64)]  # outside the module tree, as a frozen teacher

        def encode(self, x):
            return self._frozen[0](self.enc(x).flatten(1)).view(-1, 4, 4, 4)

        def decode(self, z):
            return self.dec(self.enc.weight.sum() + z.flatten(1)).view(-1, 3, 8, 8)  # the conv weight, again

    costs = tokenizer_costs(Shared(), 8)
    assert costs["encoder_params"] == 52 + 64 * 64 + 64
    assert costs["decoder_params"] == 64 * 192 + 192 + 48
    assert costs["total_params"] == 52 + 64 * 192 + 192


@pytest.mark.parametrize("name", ["sdvae-smoke", "maetok-smoke", "flowmo-smoke", "rae-smoke"])
def test_registered_tokenizers(name):
    tok = create_tokenizer(name).train()
    flags = [p.requires_grad for p in tok.parameters()]
    costs = tokenizer_costs(tok, 32)
    assert tok.training and [p.requires_grad for p in tok.parameters()] == flags, "modes restored"
    assert costs["encoder_gflops"] > 0 and costs["decoder_gflops"] > 0
    assert 0 < costs["encoder_params"] <= costs["total_params"] and 0 < costs["decoder_params"] <= costs["total_params"]
    assert tokenizer_costs(tok, 32) == costs


@pytest.mark.slow
def test_paper_decoder_figures():
    """RAE's compute claim: SD-VAE decoder 310.4 GFLOPs (multiply-adds) vs a ViT-B decoder's 22.2 at 256 px.

    SD-VAE's decoder counts 311.1 G multiply-adds here. RAE's ViT-B figure is its linear layers
    alone (86.2M weights x 257 tokens = 22.2 G); with the attention products it is 23.35 G.
    """
    sd = tokenizer_costs(create_tokenizer("sdvae-f8"), 256)
    assert sd["decoder_gmacs"] == pytest.approx(310.4, rel=0.005)
    rae = tokenizer_costs(create_tokenizer("rae-dinov2-b", random_encoder=True), 256)
    assert rae["decoder_gmacs"] == pytest.approx(22.2 + 12 * 2 * 257 ** 2 * 768 / 1e9, rel=0.01)
