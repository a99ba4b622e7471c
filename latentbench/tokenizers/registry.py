"""The tokenizer registry (names carry their size: ``sdvae-f8``, ``sdvae-ci``)."""
from latentbench.registry import Registry

TOKENIZERS = Registry("tokenizer")
