"""Suite-trained weights in the cache: safetensors with their training facts, a JSON sidecar, hashed names.

Shared by the FID-domain classifier (``benchmark.extractors``) and RAE's MAE encoder
(``tokenizers.rae_encoders``): both are trained by the suite, deterministically, and cached
under a name that hashes everything that defines the weights.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from latentbench.fsutil import atomic_path, atomic_write_text
from latentbench.weights import sha256_file


class TrainingDeferred(RuntimeError):
    """Raised instead of training suite weights on first use inside ``training_deferred`` (``bench --dry_run``)."""

    def __init__(self, what: str, about: str, path: Path):
        super().__init__(f"{what} is not in the cache yet: a bench trains it first ({about}) into {path}")
        self.what, self.about, self.path = what, about, Path(path)


_DEFERRED = contextvars.ContextVar("latentbench_training_deferred", default=False)


@contextlib.contextmanager
def training_deferred() -> Iterator[None]:
    """Within: weights the suite trains on first use are not trained; ``announce_training`` raises ``TrainingDeferred``.

    A ``--dry_run`` checks a tokenizer by building it, and a build that reaches such weights (RAE's MAE encoder,
    MAETok's domain teacher) would otherwise train them for a minute or more, in a command that promises to run no stage."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def announce_training(what: str, about: str, path: Path) -> None:
    """Say on stderr that suite weights are being trained now (once per machine), so the first
    run's pause (and a progress bar's estimate taken across it) has a reason on screen; within
    ``training_deferred``, raise ``TrainingDeferred`` instead (the caller has trained and written nothing yet)."""
    if _DEFERRED.get():
        raise TrainingDeferred(what, about, path)
    print(f"training {what} once on this machine ({about}); later runs read {path}", file=sys.stderr, flush=True)


def save_with_facts(net: nn.Module, facts: dict[str, Any], stored: tuple[str, ...], path: Path) -> str:
    """Write weights (+ the ``stored`` facts as metadata) atomically, then a JSON sidecar; return the sha256."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"latentbench": json.dumps({k: facts[k] for k in stored}, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(tmp), metadata=metadata)
    sha = sha256_file(path)
    atomic_write_text(path.with_suffix(".json"), json.dumps(facts | {"weights_sha256": sha}, indent=2, sort_keys=True) + "\n")
    return sha


def read_stored_facts(path: Path, fmt: str, what: str) -> dict[str, Any]:
    """The facts ``save_with_facts`` stored in ``path``; a clear error if it is not a ``what`` of format ``fmt``
    (a missing path, a folder, a file cut short or of another kind: ValueError naming it, not safetensors' own)."""
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        raise ValueError(f"{what} weights {path} {'is a folder' if Path(path).is_dir() else 'does not exist'}: give the "
                         f".safetensors file the suite wrote for it, or no weights file to use (or train) the cached one")
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get("latentbench")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}; cut short by a kill or a full disk, or "
                         f"another kind of file?): give the {what} file the suite wrote, or no weights file to use (or "
                         "train) the cached one") from None
    if stored is None:
        raise ValueError(f"{path} is not a latentbench {what} (its safetensors metadata has no 'latentbench' entry)")
    facts = json.loads(stored)
    if facts.get("format") != fmt:
        raise ValueError(f"{path} holds a {what} of format {facts.get('format')!r}; this code reads {fmt!r}")
    return facts


def hashed_cache_path(cache_dir: Path, folder: str, prefix: str, source: str, key: dict[str, Any]) -> Path:
    """``<cache_dir>/<folder>/<prefix>-<source slug>-<hash of key>.safetensors``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("_")[:48]
    return Path(cache_dir) / folder / f"{prefix}-{slug}-{digest}.safetensors"
