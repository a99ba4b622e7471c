"""Loading weights safely and saying plainly when they are missing.

Two rules (DESIGN.md, "Offline machines and honest fallbacks"):

* a checkpoint is read with ``safetensors`` or ``torch.load(weights_only=True)``; one that
  needs arbitrary unpickling is refused unless the user passes an explicit trust flag;
* pretrained weights that are not on disk raise :class:`WeightsUnavailable`, whose message
  names the file and where to put it. Nothing falls back to random weights silently.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch


class WeightsUnavailable(RuntimeError):
    """Pretrained weights are not on this machine; the message says which file and where."""


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint needs arbitrary unpickling, and the user did not say they trust it."""


# (real path, device, inode, size, mtime in ns) -> digest. A bench hashes the same weights in
# several stages (run key, cache keys, record); paper-scale checkpoints are hundreds of MB. A
# file rewritten in place changes its mtime or size, so a stale digest is never returned for it.
_SHA256_MEMO: dict[tuple[str, int, int, int, int], str] = {}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (remembered per process while the file is unchanged)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _SHA256_MEMO:
        return _SHA256_MEMO[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    _SHA256_MEMO[key] = digest = h.hexdigest()
    return digest


def load_checkpoint(path: str | os.PathLike, trust: bool = False) -> dict[str, Any]:
    """Read a checkpoint file into a dict without running code from it.

    Args:
        path: ``.safetensors`` file, or a torch file (``.pt``, ``.pth``, ``.ckpt``, ``.bin``).
        trust: allow full unpickling (runs code stored in the file) for torch files that
            ``weights_only`` loading rejects.

    Returns:
        The loaded object (a state dict, or a dict holding one).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust:
            raise UnsafeCheckpointError(
                f"{path} holds Python objects beyond tensors, and unpickling it could run arbitrary code. "
                "Convert it to safetensors, or, if you trust its source, pass --trust_checkpoint true. "
                f"(torch said: {str(e).splitlines()[0]})"
            ) from None
    return torch.load(path, map_location="cpu", weights_only=False)


def extract_state_dict(obj: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensor state dict inside a loaded checkpoint (plain, ``{"state_dict": ...}``, Lightning, FlowMo's EMA).

    Keys that start with ``prefix`` (e.g. ``"tokenizer."`` in a Lightning checkpoint) are
    kept with the prefix removed; when no key has it, the dict is returned as it is.
    """
    # "model_ema_state_dict": FlowMo's released files (the EMA weights, which the paper evaluates)
    for key in ("state_dict", "model_ema_state_dict", "model_state_dict", "model", "module"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if prefix and any(k.startswith(prefix) for k in obj):
        obj = {k[len(prefix):]: v for k, v in obj.items() if k.startswith(prefix)}
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"checkpoint has non-tensor entries where a state dict was expected: {bad[:5]}")
    return obj


def torch_hub_file(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps the file of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def lpips_backbone_url(net: str) -> str:
    """URL of the torchvision ImageNet weights that lpips' ``net`` backbone loads."""
    from torchvision import models

    weights = {
        "alex": models.AlexNet_Weights.IMAGENET1K_V1,
        "vgg": models.VGG16_Weights.IMAGENET1K_V1,
        "squeeze": models.SqueezeNet1_1_Weights.IMAGENET1K_V1,
    }
    if net not in weights:
        raise ValueError(f"LPIPS backbone must be one of {sorted(weights)}, got {net!r}")
    return weights[net].url


def require_lpips_weights(net: str) -> Path:
    """Path of the LPIPS backbone weights, or WeightsUnavailable saying where to put them."""
    url = lpips_backbone_url(net)
    path = torch_hub_file(url)
    if not path.is_file():
        raise WeightsUnavailable(
            f"LPIPS-{net} needs torchvision's ImageNet backbone weights, which are not on this machine: "
            f"download {url} to {path} (or point TORCH_HOME at a folder whose hub/checkpoints/ holds it)."
        )
    return path


def build_lpips(net: str = "alex"):
    """The lpips v0.1 network with its shipped linear layers; WeightsUnavailable offline."""
    require_lpips_weights(net)
    import lpips

    model = lpips.LPIPS(net=net, version="0.1", verbose=False).eval()
    return model.requires_grad_(False)
