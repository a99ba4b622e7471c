"""What a bench run is: the tokenizer as the harness builds it (``TokenizerSpec``, from ``--tokenizer``)
and everything the run depends on (``BenchConfig``, whose hash names the run directory).

``resolve_tokenizer`` turns what the user typed (a family alias, a registered name, ``module:Class``
or a YAML file) into a spec and checks it before any data is read: the name resolves, its
arguments fit the constructor and the training module, and a user class's source file is hashed
into the run key.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import re
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from latentbench.benchmark.protocol import Protocol
from latentbench.distributed import Launch
from latentbench.fsutil import load_yaml_mapping
from latentbench.paths import CONFIG_DIR
from latentbench.precision import Precision
from latentbench.weights import sha256_file

TOKENIZER_CONFIG_DIR = CONFIG_DIR / "tokenizers"


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer as the harness builds it: registry name or ``module:Class`` plus arguments."""

    name: str
    init_args: dict[str, Any] = field(default_factory=dict)
    module_args: dict[str, Any] = field(default_factory=dict)  # training module arguments
    requested: str = ""  # what the user typed
    module: str | None = None  # training LightningModule as module:Class; None = the tokenizer's training_module,
    # else AutoencoderModule
    # sha256 of the source file of each module:Class outside the suite (a user's tokenizer and training module),
    # by module name: the commit covers the suite's own code, nothing else covers a user's, so an edited class
    # must not reuse the stages its old code measured (``user_sources``)
    sources: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "init_args": self.init_args, "module_args": self.module_args, "requested": self.requested}
        out |= {"sources": self.sources} if self.sources else {}  # absent for the suite's own: run keys stay as they were
        return out | ({"module": self.module} if self.module else {})  # absent by default: run keys stay as they were

    def module_class(self):
        from latentbench.registry import import_object
        from latentbench.tokenizers.module import AutoencoderModule

        declared = getattr(tokenizer_class(self.name), "training_module", None)
        return import_object(self.module or declared) if self.module or declared else AutoencoderModule


def tokenizer_class(name: str) -> type | None:
    """The class a registered name or ``module:Class`` builds (a factory's return annotation), or None if unknown."""

    from latentbench.tokenizers import TOKENIZERS

    try:
        factory = TOKENIZERS.get(name)
        built = factory if inspect.isclass(factory) else typing.get_type_hints(factory).get("return")
    except Exception:  # noqa: BLE001 (an unknown name, or annotations that do not resolve: the build says)
        return None
    return built if inspect.isclass(built) else None


def resolve_tokenizer(arg: str, protocol: Protocol) -> TokenizerSpec:
    """Turn ``--tokenizer`` into a spec.

    Accepts a family alias the protocol maps to a size (``sdvae`` -> ``sdvae-ci`` under ``ci``),
    a registry name, ``package.module:Class``, or a YAML file with ``name`` or ``class_path``
    plus optional ``init_args`` and ``module_args``. A registry name with a YAML file under
    configs/tokenizers/ takes its arguments from there.
    """
    path = Path(arg)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer config {path} does not exist")
        spec = _spec_from_yaml(path, requested=arg)
    else:
        name = protocol.resolve_tokenizer(arg)
        shipped = TOKENIZER_CONFIG_DIR / f"{name}.yaml"
        spec = _spec_from_yaml(shipped, requested=arg) if shipped.is_file() else TokenizerSpec(name=name, requested=arg)
    return _check_resolvable(spec, protocol)


def _check_resolvable(spec: TokenizerSpec, protocol: Protocol) -> TokenizerSpec:
    """KeyError / ImportError now, naming what is unknown, rather than when a stage first builds it; the spec with
    its arguments typed (``_check_arguments``)."""
    from latentbench.tokenizers import TOKENIZERS

    try:
        TOKENIZERS.get(spec.name)  # a registered name, or imports module:Class
    except KeyError as e:
        import difflib

        aliases = ", ".join(sorted(protocol.tokenizers))
        if protocol.tokenizers.get(spec.requested) == spec.name:  # the protocol's own map names no registered size
            raise KeyError(f"protocol {protocol.name} maps the family {spec.requested} to {spec.name!r}, which is not a "
                           f"tokenizer: {e.args[0]} Fix the protocol file's tokenizers: entry, or pass a registered "
                           "name as --tokenizer") from None
        family = difflib.get_close_matches(spec.requested, protocol.tokenizers, n=1, cutoff=0.75)  # not foo -> flowmo
        if family:  # the likeliest meant name, first and alone (the registry's own guesses are sizes of other protocols)
            first = f"unknown tokenizer {spec.name!r}."  # the registry's first sentence (a name may hold dots)
            rest = re.sub(r"^ Did you mean [^?]*\?", "", e.args[0][len(first):] if e.args[0].startswith(first) else "")
            raise KeyError(f"{first} Did you mean the family {family[0]} ({protocol.tokenizers[family[0]]} under "
                           f"{protocol.name})?{rest} Family names under protocol {protocol.name}: {aliases}.") from None
        raise KeyError(f"{e.args[0]} Family names under protocol {protocol.name}: {aliases}.") from None
    return replace(_check_arguments(spec), sources=user_sources(spec))


def user_sources(spec: TokenizerSpec) -> dict[str, str] | None:
    """sha256 of the source files of the spec's ``module:Class`` tokenizer and training module that are not the
    suite's, by module name (None: none). Part of the run key and the record: the code commit says nothing of them."""

    from latentbench.registry import import_object

    package = Path(__file__).resolve().parent.parent
    out = {}
    for path in (spec.name, spec.module):
        if not path or ":" not in path:
            continue
        try:
            source = inspect.getsourcefile(import_object(path))
        except TypeError:  # a built-in: no source file
            continue
        if source and Path(source).is_file() and not Path(source).resolve().is_relative_to(package):
            out[path.partition(":")[0]] = sha256_file(source)
    return out or None


def _check_arguments(spec: TokenizerSpec) -> TokenizerSpec:
    """ValueError naming an argument of ``init_args`` / ``module_args`` that the class does not take or of the wrong
    type, before any stage builds it (a bare TypeError from deep inside a constructor otherwise). Returns the spec
    with string values the annotation converts taken as converted: PyYAML reads ``1e-3`` (no dot) as a string.

    jsonargparse checks them against the constructor's signature and type hints, as LightningCLI does; a registered
    factory is checked against the class its return annotation names. A signature it cannot read is left to the build.
    """

    from jsonargparse import ArgumentParser

    built = tokenizer_class(spec.name)
    checks = (("init_args", built, spec.init_args, set()),
              # the harness passes these three itself (max_steps: the protocol's budget)
              ("module_args", spec.module_class(), spec.module_args, {"tokenizer", "tokenizer_args", "max_steps"}))
    typed = {}
    for key, cls, args, supplied in checks:
        if not inspect.isclass(cls):
            continue
        if not args:
            # a user's module:Class is built from init_args alone: one without them must take none it requires
            # (a registered factory supplies its class's arguments itself)
            signature = readable_signature(cls) if key == "init_args" and ":" in spec.name else None
            try:
                if signature is not None:
                    signature.bind()
            except TypeError as e:
                raise ValueError(f"tokenizer {spec.requested}: {cls.__module__}.{cls.__qualname__} cannot be built "
                                 f"without init_args ({e}): give them in a YAML file (class_path, init_args)") from None
            continue
        if not isinstance(args, dict):
            raise ValueError(f"tokenizer {spec.requested}: {key} must be a mapping of argument names to values, got {args!r}")
        parser = ArgumentParser(exit_on_error=False)
        try:
            parser.add_class_arguments(cls, key, skip=supplied)
        except Exception:  # noqa: BLE001 (a signature jsonargparse does not support: the build checks it)
            continue
        try:
            parsed = parser.parse_object({key: args}).as_dict().get(key, {})  # absent: a constructor without arguments
        except Exception as e:  # noqa: BLE001 (jsonargparse's ArgumentError, or its type errors)
            taken = ", ".join(sorted(parser.get_defaults().as_dict().get(key, {}))) or "no arguments"
            extra = " (the protocol sets the training budget)" if key == "module_args" and "max_steps" in args else ""
            raise ValueError(f"tokenizer {spec.requested}: {key} do not fit {cls.__module__}.{cls.__qualname__}{extra}: "
                             f"{' '.join(str(e).split())}. It takes: {taken}") from None
        taken = {k: _numbers_from_strings(v, parsed.get(k)) for k, v in args.items()}
        if taken != args:
            typed[key] = taken
    return replace(spec, **typed)


def readable_signature(obj: Any) -> inspect.Signature | None:
    """``obj``'s signature, or None where inspect cannot read one (some built-ins and C extensions): the build
    itself then checks the arguments."""
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def _numbers_from_strings(given: Any, parsed: Any) -> Any:
    """``given`` with each string that jsonargparse read as a number or bool (``parsed``) replaced by that value,
    in nested mappings and lists too (``loss_weights: {l1: 1e-3}``). Anything else stays as the user wrote it: the
    parsed form of other values (nested class specs, paths) is jsonargparse's, not what the constructor takes."""
    if isinstance(given, str):
        return parsed if isinstance(parsed, (bool, int, float)) else given
    if isinstance(given, dict) and isinstance(parsed, dict) and set(parsed) >= set(given):
        return {k: _numbers_from_strings(v, parsed[k]) for k, v in given.items()}
    if isinstance(given, (list, tuple)) and isinstance(parsed, (list, tuple)) and len(given) == len(parsed):
        return type(given)(_numbers_from_strings(g, p) for g, p in zip(given, parsed, strict=True))
    return given


def _spec_from_yaml(path: Path, requested: str) -> TokenizerSpec:
    raw = load_yaml_mapping(path, "tokenizer config")
    if raw.get("class_path") and raw.get("name"):
        raise ValueError(f"tokenizer config {path} has both 'name' ({raw['name']}) and 'class_path' ({raw['class_path']}): "
                         "keep one (a registered tokenizer, or module:Class)")
    # unknown keys first: a misspelt class_path or name is the likeliest reason for a config without either
    unknown = set(raw) - {"name", "class_path", "init_args", "module_args", "module"}
    if unknown:
        raise ValueError(f"tokenizer config {path} has unknown keys {sorted(unknown)} (allowed: name or class_path, "
                         "init_args, module_args, module)")
    name = raw.get("class_path") or raw.get("name")
    if not name:
        raise ValueError(f"tokenizer config {path} needs 'name' (a registered tokenizer) or 'class_path' (module:Class)")
    return TokenizerSpec(name=name, init_args=raw.get("init_args") or {}, module_args=raw.get("module_args") or {},
                         requested=requested, module=raw.get("module"))


@dataclass(frozen=True)
class BenchConfig:
    """Everything a bench run depends on; its hash names the run directory."""

    tokenizer: TokenizerSpec
    protocol: Protocol
    ckpt: str | None = None
    ckpt_sha256: str | None = None
    train_steps: int | None = None  # None = the protocol's budget
    seed: int = 0
    # how many processes run it; not part of the key: any world size gives the same numbers and
    # resumes the same run directory (training is statistically, not bitwise, the same; see README)
    launch: Launch = field(default_factory=Launch, compare=False)
    # the precisions training runs in (latentbench.precision: the protocol's, or float32 where this
    # machine has no fast bf16, or --precision); None = the protocol's. Part of the key only when
    # they differ from the protocol's, so protocol-precision runs keep their run directories.
    train_precision: Precision | None = None
    generator_precision: Precision | None = None
    # torch.compile the tokenizer's iteratively run decoder for eval and generation (bench --compile).
    # Not part of the key: compiled decoding moves pixels by < 1e-6, so done stages serve either way;
    # each stage's result lists what it compiled.
    compile: bool = field(default=False, compare=False)
    # which of the LPIPS backbones this run uses (the metric's; training's perceptual loss's) have
    # their weights on this machine (rank 0): whether training's perceptual loss is LPIPS, its
    # labelled substitute or absent, and whether the LPIPS metric is measured, depend on them, so
    # stages done without them are not reused with them. Part of the key only when some are present,
    # so offline runs keep their run directories.
    lpips_weights: tuple[str, ...] = ()
    # fingerprints of the train and eval data the run reads (the files' scan for image folders):
    # an image folder edited since must not reuse stages measured on the old files.
    data_fingerprints: tuple[str, str] | None = None

    @property
    def precision(self) -> str:
        """The tokenizer's training precision."""
        return self.train_precision.used if self.train_precision else self.protocol.train.precision

    @property
    def gen_precision(self) -> str:
        """The generator's training precision."""
        return self.generator_precision.used if self.generator_precision else self.protocol.generator.precision

    @property
    def steps(self) -> int:
        return tokenizer_steps(self.protocol, self.ckpt, self.train_steps)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "tokenizer": self.tokenizer.to_dict(), "protocol_fingerprint": self.protocol.fingerprint,
            "ckpt_sha256": self.ckpt_sha256, "train_steps": self.steps, "seed": self.seed,
        }
        if self.changed_precisions():
            out["precision"] = {"train": self.precision, "generator": self.gen_precision}
        if self.lpips_weights:
            out["lpips_weights"] = list(self.lpips_weights)
        if self.data_fingerprints:
            out["data"] = dict(zip(("train", "eval"), self.data_fingerprints, strict=True))
        return out

    def changed_precisions(self) -> dict[str, Precision]:
        """The trainings (``train``, ``generator``) that left the protocol's precision."""
        return {k: p for k, p in (("train", self.train_precision), ("generator", self.generator_precision)) if p and p.changed}

    def precision_notes(self) -> dict[str, Any] | None:
        """Where training left the protocol's precision, what it used and why (None: it did not)."""
        return {k: {"requested": p.requested, "used": p.used, "reason": p.reason}
                for k, p in self.changed_precisions().items()} or None

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def tokenizer_steps(protocol: Protocol, ckpt: str | None, train_steps: int | None) -> int:
    """The steps the tokenizer trains: none for a checkpoint, else ``--train_steps`` or the protocol's budget."""
    if ckpt is not None:
        return 0
    return protocol.train.max_steps if train_steps is None else train_steps
