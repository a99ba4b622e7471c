"""Loading weights safely and saying plainly when they are missing.

Two rules (README, "Checkpoints and pretrained weights"):

* a checkpoint is read with ``safetensors`` or ``torch.load(weights_only=True)``; one that
  needs arbitrary unpickling is refused unless the user passes an explicit trust flag;
* pretrained weights that are not on disk raise :class:`WeightsUnavailable`, whose message
  names the file and where to put it. Nothing falls back to random weights silently.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
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


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as one (empty, cut short, not a checkpoint)."""


def load_checkpoint(path: str | os.PathLike, trust: bool = False,
                    trust_hint: str | None = "if you trust its source, pass --trust_checkpoint true") -> dict[str, Any]:
    """Read a checkpoint file into a dict without running code from it.

    Args:
        path: ``.safetensors`` file, or a torch file (``.pt``, ``.pth``, ``.ckpt``, ``.bin``).
        trust: allow full unpickling (runs code stored in the file) for torch files that
            ``weights_only`` loading rejects.
        trust_hint: how the caller's user allows that (None: the command has no such option).

    Returns:
        The loaded object (a state dict, or a dict holding one).

    Raises:
        CheckpointError: the file is not a readable checkpoint (named, with its size).
        UnsafeCheckpointError: a torch file that needs full unpickling, without ``trust``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as e:
            raise _unreadable(path, e, "a .safetensors file") from None
    if not _looks_like_torch_file(path):  # torch's weights-only loader calls anything else "unsafe"
        raise _unreadable(path, None, "a torch file (torch.save)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust:
            fix = "Convert it to safetensors" + (f", or, {trust_hint}" if trust_hint else "")
            lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(e).splitlines()]
            said = next((line for line in lines if line.startswith("WeightsUnpickler error")), lines[0] if lines else "")
            raise UnsafeCheckpointError(
                f"{path} holds Python objects beyond tensors, and unpickling it could run arbitrary code. {fix}. "
                f"(torch said: {said})"
            ) from None
    except Exception as e:  # a damaged file raises whatever torch's unpickler or zip reader hit (EOFError, KeyError, ...)
        raise _unreadable(path, e, "a torch file (torch.save)") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise _unreadable(path, e, "a torch file (torch.save)") from None


def _looks_like_torch_file(path: Path) -> bool:
    """A ``torch.save`` file: a zip archive (since torch 1.6) or a pickle (the legacy format starts with PROTO)."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(2)
    return zipfile.is_zipfile(path) or (len(head) == 2 and head[0] == 0x80 and head[1] >= 2)


def _unreadable(path: Path, error: Exception | None, expected: str) -> CheckpointError:
    size = path.stat().st_size
    why = ""
    if error is not None:
        first = str(error).splitlines()[0] if str(error) else ""
        why = f": {type(error).__name__}{': ' + first if first else ''}"
    return CheckpointError(f"cannot read checkpoint {path} ({size} bytes) as {expected}{why}. The file is empty, cut short "
                           "(an interrupted download?) or not a checkpoint; download or export it again")


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


def check_published_hash(path: Path, url: str, what: str) -> None:
    """WeightsUnavailable unless ``path``'s sha256 starts with the hash in its published name.

    torch hub names a file ``<name>-<first hex digits of its sha256>.<ext>`` and checks that
    only while downloading (``check_hash``); a file copied in by hand, cut short or replaced is
    checked here, before a metric is computed from it.
    """
    match = torch.hub.HASH_REGEX.search(path.name)
    if match is None or not match.group(1):
        return
    expected, digest = match.group(1), sha256_file(path)
    if not digest.startswith(expected):
        size = path.stat().st_size
        raise WeightsUnavailable(
            f"{what} needs {path.name} as published, but the file at {path} ({size:,} bytes) is not it: its sha256 "
            f"starts {digest[:len(expected)]}, the published file's {expected} (a download cut short, an empty "
            f"file or other weights). Delete it and download {url} to {path}."
        )


def require_lpips_weights(net: str) -> Path:
    """Path of the LPIPS backbone weights (checked against their published hash), or WeightsUnavailable
    saying where to put them."""
    url = lpips_backbone_url(net)
    path = torch_hub_file(url)
    if not path.is_file():
        raise WeightsUnavailable(
            f"LPIPS-{net} needs torchvision's ImageNet backbone weights, which are not on this machine: "
            f"download {url} to {path} (or point TORCH_HOME at a folder whose hub/checkpoints/ holds it)."
        )
    check_published_hash(path, url, f"LPIPS-{net}")
    return path


def build_lpips(net: str = "alex"):
    """The lpips v0.1 network with its shipped linear layers; WeightsUnavailable offline."""
    require_lpips_weights(net)
    import lpips

    model = lpips.LPIPS(net=net, version="0.1", verbose=False).eval()
    return model.requires_grad_(False)
