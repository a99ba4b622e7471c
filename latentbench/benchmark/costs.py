"""Compute cost of a tokenizer: FLOPs of encoding and of decoding one image, and the parameters each uses.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one real pass (batch 1,
eval mode, no gradient, attention on SDPA's math kernel so that every backend is counted the
same way): matrix products, convolutions and attention, at 2 FLOPs per multiply-add.
Elementwise operations, normalisations and resampling are not counted. A stochastic or
multi-step decoder is counted for what ``decode`` does (FlowMo: its whole sampler, with a fixed seed).

Papers that count with fvcore count one multiply-add as one "FLOP": RAE's "decoder 22.2 vs
SD-VAE 310.4 GFLOPs" are multiply-adds, comparable with the ``*_gmacs`` values here (half the
``*_gflops``).

The parameters a pass uses are those that appear as an argument of a torch operation during it
(a ``TorchFunctionMode`` watches), so the encoder/decoder split needs nothing from the tokenizer,
counts parameters held outside its module tree (frozen teachers), and counts shared ones in both.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import FlopCounterMode

from latentbench.tokenizers.base import decode_seeded

CONVENTION = ("FlopCounterMode (torch): matmul, convolution, attention; 2 FLOPs per multiply-add; "
              "gmacs = gflops / 2 (fvcore's 'FLOPs', the papers' convention)")


class ParameterUse(TorchFunctionMode):
    """Records every ``nn.Parameter`` passed to a torch function while active (``seen``: id -> parameter)."""

    def __init__(self):
        super().__init__()
        self.seen: dict[int, nn.Parameter] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for leaf in pytree.tree_leaves((args, kwargs)):
            if isinstance(leaf, nn.Parameter):
                self.seen[id(leaf)] = leaf
        return func(*args, **kwargs)

    @property
    def numel(self) -> int:
        """Elements of the parameters seen, each counted once."""
        return sum(p.numel() for p in self.seen.values())


def count_pass(fn: Callable[[], Any]) -> tuple[Any, int, int]:
    """Run ``fn()``; return (its result, FLOPs counted, elements of the parameters it used)."""
    with ParameterUse() as use, FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        out = fn()
    return out, counter.get_total_flops(), use.numel


def _device(module: nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def tokenizer_costs(tokenizer: nn.Module, resolution: int, seed: int = 0) -> dict[str, Any]:
    """Encoder and decoder cost of one ``resolution`` x ``resolution`` image.

    Args:
        tokenizer: any tokenizer (``encode``, ``decode``); left in the train/eval mode it was in.
        resolution: image side; the input is a seeded random image in [-1, 1] on the tokenizer's device.
        seed: seed of the input image and of a stochastic decoder.

    Returns:
        ``encoder_gflops``, ``decoder_gflops`` (2 FLOPs per multiply-add), ``encoder_gmacs``,
        ``decoder_gmacs`` (multiply-adds, the papers' "GFLOPs"), ``encoder_params``,
        ``decoder_params`` (parameters each pass uses), ``total_params`` (all of the module's),
        ``resolution`` and ``convention`` (how it was counted, in words).
    """
    device = _device(tokenizer)
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(1, 3, resolution, resolution, generator=generator) * 2 - 1).to(device)
    was_training = tokenizer.training
    # FlopCounterMode's module tracker hooks module inputs that require grad, and fails on a view
    # of a parameter made under no_grad (it still requires grad, with no grad_fn): freeze meanwhile.
    flags = {p: p.requires_grad for p in tokenizer.parameters()}
    tokenizer.eval().requires_grad_(False)
    try:
        with torch.no_grad():
            z, enc_flops, enc_params = count_pass(lambda: tokenizer.encode(x))
            _, dec_flops, dec_params = count_pass(lambda: decode_seeded(tokenizer, z, seed))
    finally:
        tokenizer.train(was_training)
        for p, flag in flags.items():
            p.requires_grad_(flag)
    return {
        "encoder_gflops": enc_flops / 1e9, "decoder_gflops": dec_flops / 1e9,
        "encoder_gmacs": enc_flops / 2e9, "decoder_gmacs": dec_flops / 2e9,
        "encoder_params": enc_params, "decoder_params": dec_params,
        "total_params": sum(p.numel() for p in tokenizer.parameters()),
        "resolution": resolution, "convention": CONVENTION,
    }


__all__ = ["CONVENTION", "ParameterUse", "count_pass", "tokenizer_costs"]
