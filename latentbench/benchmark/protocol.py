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
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from latentbench.fsutil import load_yaml_mapping
from latentbench.paths import CONFIG_DIR, require_checkout

PROTOCOL_DIR = CONFIG_DIR / "protocols"
# Lightning's precision strings (lightning.fabric.connector's, which it keeps private); aliases such as "bf16" are not
# accepted because the string is part of the fingerprint: one setting, one spelling
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")
SEED_RANGE = 2**32  # numpy's and Lightning's
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a protocol name is a directory of runs/ and leaderboards/
SHA256 = re.compile(r"[0-9a-f]{64}")


# ---- field checks ------------------------------------------------------------------------------
# A protocol is checked when it is loaded, so a typo fails before hours of training rather than at the
# stage that first reads the field. Hand-written: the specs are plain frozen dataclasses (their JSON is
# the fingerprint), and YAML's own types must not be coerced (int(20.5) would silently train 20 steps).

def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the annotated type; bool is not an int, an int is a float."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, typing.get_origin(hint) or hint)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    names = {int: "an integer", float: "a number", str: "a string", type(None): "null", bool: "true or false"}
    return names.get(hint) or names.get(typing.get_origin(hint)) or ("a mapping" if typing.get_origin(hint) is dict else str(hint))


class _Checked:
    """``__post_init__`` checks every field's type, then the subclass's ``_check`` its values."""

    SECTION: ClassVar[str] = ""  # the YAML section, for messages: "train." names train.max_steps

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if not _matches(value, hints[f.name]):
                raise ValueError(f"{self.SECTION}{f.name} must be {_type_name(hints[f.name])}, got {value!r}")
        self._check()  # every section defines it

    def _require(self, ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ValueError(f"{self.SECTION}{name} must be {what}, got {getattr(self, name)!r}")

    def _positive(self, *names: str, optional: bool = False) -> None:
        for name in names:
            value = getattr(self, name)
            self._require((optional and value is None) or value > 0, name, "a positive integer" + (" or null" if optional else ""))

    def _bootstrap(self, name: str) -> None:
        from latentbench.benchmark.fid import check_bootstrap

        check_bootstrap(getattr(self, name), f"{self.SECTION}{name}")

    def _at_least_zero(self, *names: str) -> None:
        for name in names:
            self._require(getattr(self, name) >= 0, name, ">= 0")

    def _one_of(self, name: str, choices) -> None:
        self._require(getattr(self, name) in choices, name, f"one of {', '.join(choices)}")

    def _not_empty(self, *names: str) -> None:
        for name in names:
            self._require(bool(getattr(self, name)), name, "a non-empty string")


@dataclass(frozen=True)
class DataSpec(_Checked):
    SECTION: ClassVar[str] = "data."

    source: str  # see latentbench.data.describe_sources()
    train_split: str = "train"
    eval_split: str = "val"
    resolution: int = 32
    num_eval: int | None = None  # first N images of the eval split; None = all
    num_train: int | None = None  # first N images of the train split; None = all

    def _check(self) -> None:
        from latentbench.data.sources import check_source

        self._not_empty("source", "train_split", "eval_split")
        try:  # the syntax, when the file loads: a folder without its imagefolder: prefix used to stop the data scan
            check_source(self.source)
        except ValueError as e:
            raise ValueError(f"{self.SECTION}source: {e}") from None
        self._positive("resolution")
        self._positive("num_eval", "num_train", optional=True)


@dataclass(frozen=True)
class TrainSpec(_Checked):
    SECTION: ClassVar[str] = "train."

    max_steps: int = 1000  # tokenizer training budget, optimizer steps
    batch_size: int = 64
    precision: str = "bf16-mixed"  # Lightning precision; float32 where bf16 is slow here (latentbench.precision)
    num_workers: int = 0  # image-decoding worker processes of every loader of a bench; in-memory embedded data needs none

    def _check(self) -> None:
        self._at_least_zero("max_steps", "num_workers")
        self._positive("batch_size")
        self._one_of("precision", PRECISIONS)


@dataclass(frozen=True)
class EvalSpec(_Checked):
    SECTION: ClassVar[str] = "eval."

    batch_size: int = 250
    extractor: str = "inception-tf"  # FID features; embedded protocols use a suite-trained domain-<source>
    extractor_options: dict[str, Any] = field(default_factory=dict)  # domain-*: DomainRecipe fields
    fid_bootstrap: int = 0  # Poisson-bootstrap replicates for the rFID interval (memory: B * D^2 * 8 bytes * 2)
    lpips_net: str = "alex"  # LPIPS v0.1 backbone: alex or vgg
    probe_pooling: str = "flatten"  # linear probe features: flatten (every latent element) or mean (over positions)
    probe_train: int | None = None  # a seeded random subset of the train split fits the probe (None = all of it)

    def _check(self) -> None:
        from latentbench.benchmark.perceptual import LPIPS_MIN_SIDE
        from latentbench.benchmark.probe import POOLINGS

        self._positive("batch_size")
        self._positive("probe_train", optional=True)
        self._not_empty("extractor")
        self._bootstrap("fid_bootstrap")
        self._one_of("lpips_net", tuple(LPIPS_MIN_SIDE))
        self._one_of("probe_pooling", POOLINGS)


@dataclass(frozen=True)
class GeneratorSpec(_Checked):
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

    SECTION: ClassVar[str] = "generator."

    def _check(self) -> None:
        from latentbench.generators.latents import NORM_MODES

        self._at_least_zero("max_steps", "eval_every")
        self._bootstrap("fid_bootstrap")
        if self.eval_every and self.max_steps % self.eval_every:
            raise ValueError(f"generator max_steps {self.max_steps} must be a multiple of eval_every {self.eval_every} "
                             "(the curve ends at the final step)")
        self._positive("batch_size", "num_samples", "sample_batch_size")
        self._one_of("precision", PRECISIONS)
        self._one_of("normalization", tuple(NORM_MODES))
        self._one_of("class_sampling", ("balanced", "random"))
        self._not_empty("continuous", "discrete", "reference", "baseline")
        target = self.target_gfid
        self._require(target is None or target == "baseline" or not isinstance(target, str) and target > 0,
                      "target_gfid", "a positive number, 'baseline' or null")

    @property
    def eval_steps(self) -> list[int]:
        """The training steps at which gFID is measured."""
        every = self.eval_every or self.max_steps
        return list(range(every, self.max_steps + 1, every)) if self.max_steps else []


@dataclass(frozen=True)
class Protocol(_Checked):
    name: str
    version: int
    description: str
    data: DataSpec
    train: TrainSpec = field(default_factory=TrainSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    generator: GeneratorSpec = field(default_factory=GeneratorSpec)
    seed: int = 0
    tokenizers: dict[str, str] = field(default_factory=dict)  # family alias -> registered size
    # generator config name -> sha256 of its content (GeneratorConfig.sha256): the generator configs this version's rows
    # were measured with. A generator config is a file of its own, outside the fingerprint; the bench refuses one that
    # no longer matches its pin (generation.check_generators), so an edited dit-ci.yaml cannot land rows in this table
    generator_configs: dict[str, str] = field(default_factory=dict)

    def _check(self) -> None:
        self._require(bool(NAME.fullmatch(self.name)), "name", "letters, digits, '.', '_' or '-' (it names directories)")
        self._positive("version")
        self._require(0 <= self.seed < SEED_RANGE, "seed", "in [0, 2^32)")
        bad = {k: v for k, v in self.tokenizers.items() if not (isinstance(k, str) and isinstance(v, str) and v)}
        self._require(not bad, "tokenizers", "a mapping of family names to tokenizer names")
        bad = {k: v for k, v in self.generator_configs.items() if not (isinstance(k, str) and isinstance(v, str) and SHA256.fullmatch(v))}
        self._require(not bad, "generator_configs", "a mapping of generator config names to sha256 hex digests")

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of every field that can change a number.

        The description and the family aliases are left out: a row records the tokenizer
        size it resolved to, so adding an alias for a new family changes no existing number.
        The generator configs' pins are left out too: they pin what ``generator`` names (the
        bench refuses a config that differs from its pin), and pinning them later changed no row.
        """
        content = {k: v for k, v in self.to_dict().items() if k not in ("description", "tokenizers", "generator_configs")}
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


def _meant_protocol(given: str) -> str:
    """`` (did you mean --protocol ci?)`` for a missing protocol whose name is, or is close to, a shipped one's:
    ``ci.yaml`` or ``configs/protocols/smoke`` (read as a path beside the working directory, or as a name), ``smok``."""
    import difflib

    shipped = available_protocols()
    stem = Path(given).stem if Path(given).suffix in (".yaml", ".yml") else Path(given).name
    close = [stem] if stem in shipped else difflib.get_close_matches(stem, shipped, n=1, cutoff=0.6)
    return f" (did you mean --protocol {close[0]}?)" if close and close[0] != given else ""


def load_protocol(name_or_path: str) -> Protocol:
    """A shipped protocol by name (``ci``) or a YAML file by path."""
    path = Path(name_or_path)
    by_name = not path.suffix
    if by_name:
        require_checkout()
        path = PROTOCOL_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        what = f"no protocol {name_or_path!r}: expected {path}" if by_name else f"protocol file {path} does not exist"
        raise FileNotFoundError(f"{what}{_meant_protocol(name_or_path)}. Shipped protocols: {', '.join(available_protocols())}")
    raw = load_yaml_mapping(path, "protocol")
    try:
        unknown = set(raw) - {f.name for f in fields(Protocol)}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; a protocol has {', '.join(f.name for f in fields(Protocol))}")
        sections = {}
        for name, spec in (("data", DataSpec), ("train", TrainSpec), ("eval", EvalSpec), ("generator", GeneratorSpec)):
            section = raw.get(name, {}) if name != "data" else raw["data"]
            if not isinstance(section, dict):
                raise ValueError(f"{name} must be a mapping, got {section!r}")
            unknown = set(section) - {f.name for f in fields(spec)}
            if unknown:
                raise ValueError(f"{name} has unknown keys {sorted(unknown)}; its keys are {', '.join(f.name for f in fields(spec))}")
            sections[name] = spec(**section)
        return Protocol(name=raw["name"], version=raw["version"], description=raw.get("description") or "",
                        seed=raw.get("seed", 0), tokenizers=raw.get("tokenizers") or {},
                        generator_configs=raw.get("generator_configs") or {}, **sections)
    except KeyError as e:
        raise ValueError(f"protocol file {path} is malformed: it has no {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:  # TypeError: a section without one of its required keys
        raise ValueError(f"protocol file {path} is malformed: {e}") from None
