"""Tokenizer families, one file each, registered by name in ``TOKENIZERS``."""
from __future__ import annotations

from typing import Any

from torch import nn

from latentbench.tokenizers import (
    flowmo,  # noqa: F401
    maetok,  # noqa: F401
    rae,  # noqa: F401
    sdvae,  # noqa: F401  (registers the sdvae-* names)
)
from latentbench.tokenizers.base import (
    LatentSpec,
    Tokenizer,
    check_tokenizer,
    compile_decoding,
    decode_seeded,
    forward_train,
)
from latentbench.tokenizers.registry import TOKENIZERS


def create_tokenizer(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered tokenizer, or a user's class given as ``package.module:Class``."""
    tokenizer = TOKENIZERS.create(name, **kwargs)
    check_tokenizer(tokenizer)
    return tokenizer


__all__ = ["TOKENIZERS", "LatentSpec", "Tokenizer", "check_tokenizer", "compile_decoding", "create_tokenizer", "decode_seeded",
           "forward_train"]
