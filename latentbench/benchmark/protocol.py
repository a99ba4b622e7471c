"""Protocols: versioned YAML specs of everything that can change a number.

A protocol names the data (source, splits, resolution, number of evaluation images), the
training budget every tokenizer gets, evaluation settings and seeds, and which size of each
tokenizer family it uses (``sdvae`` means ``sdvae-ci`` under ``ci``, ``sdvae-f8`` under
``imagenet256``). Its fingerprint is the sha256 of its canonical JSON; results are compared
only within one protocol name and version.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from latentbench.fsutil import load_yaml_mapping
from latentbench.paths import CONFIG_DIR, require_checkout

PROTOCOL_DIR = CONFIG_DIR / "protocols"


@dataclass(frozen=True)
class DataSpec:
    source: str  # see latentbench.data.describe_sources()
    train_split: str = "train"
    eval_split: str = "val"
    resolution: int = 32
    num_eval: int | None = None  # first N images of the eval split; None = all
    num_train: int | None = None  # first N images of the train split; None = all


@dataclass(frozen=True)
class TrainSpec:
    max_steps: int = 1000  # tokenizer training budget, optimizer steps
    batch_size: int = 64
    precision: str = "bf16-mixed"  # Lightning precision; float32 where bf16 is slow here (latentbench.precision)
    num_workers: int = 0  # image-decoding worker processes of every loader of a bench; in-memory embedded data needs none


@dataclass(frozen=True)
class EvalSpec:
    batch_size: int = 250
    extractor: str = "inception-tf"  # FID features; embedded protocols use a suite-trained domain-<source>
    extractor_options: dict[str, Any] = field(default_factory=dict)  # domain-*: DomainRecipe fields
    fid_bootstrap: int = 0  # Poisson-bootstrap replicates for the rFID interval (memory: B * D^2 * 8 bytes * 2)
    lpips_net: str = "alex"  # LPIPS v0.1 backbone: alex or vgg
    probe_pooling: str = "flatten"  # linear probe features: flatten (every latent element) or mean (over positions)
    probe_train: int | None = None  # a seeded random subset of the train split fits the probe (None = all of it)


@dataclass(frozen=True)
class GeneratorSpec:
    """The generator stage: a generator trained on each tokenizer's cached train-split latents, measured by gFID."""

    continuous: str = "dit-ci"  # generator for continuous latents: configs/generators/<name>.yaml or a registered name
    discrete: str = "maskgit-ci"  # generator for discrete codes (tokenizers whose latent_spec has bits_per_token)
    normalization: str = "channel"  # continuous latents: channel, element, scaling or none (generators.latents)
    max_steps: int = 0  # generator optimizer steps; 0 = no generator stage (no gFID)
    batch_size: int = 128
    precision: str = "bf16-mixed"
    eval_every: int = 0  # gFID every N steps (the convergence curve); 0 = once, at max_steps
    num_samples: int = 1000  # generated images per gFID evaluation
    class_sampling: str = "balanced"  # balanced: exactly num_samples / classes per class; random: a label per sample seed
    reference: str = "train"  # gFID reference statistics: a split of the protocol's data, or an .npz (ADM reference batch)
    sample_batch_size: int = 250
    fid_bootstrap: int = 0  # Poisson-bootstrap replicates for the gFID interval
    # convergence steps: the first evaluated step with gFID <= target; a number, or "baseline": the
    # baseline tokenizer's final gFID in the same table (the papers' "reaches the baseline's quality in N steps")
    target_gfid: float | str | None = None
    baseline: str = "sdvae"  # convergence speed-up is measured against this family's curve in the same table

    def __post_init__(self):
        if self.max_steps < 0 or self.eval_every < 0:
            raise ValueError(f"generator max_steps and eval_every must be >= 0, got {self.max_steps}, {self.eval_every}")
        if self.eval_every and self.max_steps % self.eval_every:
            raise ValueError(f"generator max_steps {self.max_steps} must be a multiple of eval_every {self.eval_every} "
                             "(the curve ends at the final step)")
        if isinstance(self.target_gfid, str) and self.target_gfid != "baseline":
            raise ValueError(f"generator target_gfid must be a number, 'baseline' or null, got {self.target_gfid!r}")
        if self.class_sampling not in ("balanced", "random"):
            raise ValueError(f"generator class_sampling must be 'balanced' or 'random', got {self.class_sampling!r}")

    @property
    def eval_steps(self) -> list[int]:
        """The training steps at which gFID is measured."""
        every = self.eval_every or self.max_steps
        return list(range(every, self.max_steps + 1, every)) if self.max_steps else []


@dataclass(frozen=True)
class Protocol:
    name: str
    version: int
    description: str
    data: DataSpec
    train: TrainSpec = field(default_factory=TrainSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    generator: GeneratorSpec = field(default_factory=GeneratorSpec)
    seed: int = 0
    tokenizers: dict[str, str] = field(default_factory=dict)  # family alias -> registered size

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of every field that can change a number.

        The description and the family aliases are left out: a row records the tokenizer
        size it resolved to, so adding an alias for a new family changes no existing number.
        """
        content = {k: v for k, v in self.to_dict().items() if k not in ("description", "tokenizers")}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    @property
    def id(self) -> str:
        """``name/v<version>``: the leaderboard table this protocol's results go into."""
        return f"{self.name}/v{self.version}"

    def resolve_tokenizer(self, name: str) -> str:
        """Map a family alias (``sdvae``) to this protocol's size (``sdvae-ci``)."""
        return self.tokenizers.get(name, name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def available_protocols() -> list[str]:
    """Names of the protocols shipped under configs/protocols/."""
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


def load_protocol(name_or_path: str) -> Protocol:
    """A shipped protocol by name (``ci``) or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        require_checkout()
        path = PROTOCOL_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no protocol {name_or_path!r}: expected {path}. Shipped protocols: {', '.join(available_protocols())}"
        )
    raw = load_yaml_mapping(path, "protocol")
    try:
        return Protocol(
            name=raw["name"], version=int(raw["version"]), description=raw.get("description", ""),
            data=DataSpec(**raw["data"]), train=TrainSpec(**raw.get("train", {})),
            eval=EvalSpec(**raw.get("eval", {})), generator=GeneratorSpec(**raw.get("generator", {})),
            seed=int(raw.get("seed", 0)),
            tokenizers=dict(raw.get("tokenizers", {})),
        )
    except (KeyError, TypeError, ValueError) as e:  # ValueError: a version or seed that is not an integer
        raise ValueError(f"protocol file {path} is malformed: {e}") from None
