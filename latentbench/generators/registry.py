"""The generator registry: networks trained on latents, names carry their size (``dit-xl-2``, ``dit-ci``).

A factory takes the latent shape of one image and the number of classes first:
``GENERATORS.create(name, input_shape=(C, h, w) or (L, C), num_classes=K, **overrides)``.
"""
from latentbench.registry import Registry

GENERATORS = Registry("generator")
