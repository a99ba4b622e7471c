"""Generators trained on cached latents: DiT/SiT/LightningDiT backbones (``dit``), the flow-matching
transport (``transport``), MaskGIT for discrete codes (``maskgit``), registered by name in ``GENERATORS``."""
from latentbench.generators import (
    dit,  # noqa: F401  (registers the dit-* names)
    maskgit,  # noqa: F401  (registers the maskgit-* names)
)
from latentbench.generators.registry import GENERATORS

__all__ = ["GENERATORS"]
