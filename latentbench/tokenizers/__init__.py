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
    """Build a registered tokenizer, or a user's class given as ``package.module:Class``.

    A registered tokenizer that a config's ``init_args`` cannot build (a negative channel count, a group count
    that does not divide the channels: torch's RuntimeError or ValueError, or an IndexError deep in a layer) is
    a ValueError naming the tokenizer and those ``init_args``; a class of the user's own raises as it does,
    with its traceback (``cli``), and so do missing weights and a dry run's ``TrainingDeferred``.
    """
    from latentbench.cachefiles import TrainingDeferred
    from latentbench.weights import CheckpointError, UnsafeCheckpointError, WeightsUnavailable

    factory = TOKENIZERS.get(name)
    try:
        tokenizer = factory(**kwargs)
    except (WeightsUnavailable, UnsafeCheckpointError, CheckpointError, TrainingDeferred):  # TrainingDeferred: a dry run's
        raise
    except (ValueError, RuntimeError, IndexError, TypeError, AssertionError, ArithmeticError) as err:
        if ":" in name or not kwargs:
            raise
        raise ValueError(f"tokenizer {name} cannot be built with init_args {kwargs}: {type(err).__name__}: {err}; fix "
                         f"those values in its config (without init_args it builds as registered)") from err
    check_tokenizer(tokenizer)
    return tokenizer


__all__ = ["TOKENIZERS", "LatentSpec", "Tokenizer", "check_tokenizer", "compile_decoding", "create_tokenizer", "decode_seeded",
           "forward_train"]
