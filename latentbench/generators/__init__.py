"""Diffusion generators trained on cached latents (DiT/SiT backbones, transport, MaskGIT).

Empty until the generators issue lands; the harness benches reconstruction only until then.
"""
