"""latentbench: a benchmark suite for the image tokenizers of latent diffusion."""

__version__ = "0.1.0"
