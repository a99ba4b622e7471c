"""Training a generator on cached latents: configs, the LightningModule, EMA and sampling during training.

A generator config (``configs/generators/<name>.yaml``) names a registered network and holds
only what differs from its defaults::

    name: dit-ci                 # GENERATORS registry
    init_args: {...}             # network arguments
    transport: {...}             # FlowMatching arguments (continuous latents only)
    module_args: {lr: ..., ema_decay: ...}

``GeneratorModule`` trains ``training_losses(z, y)`` of the built generator with AdamW and a
linear warmup; Lightning's ``EMAWeightAveraging`` keeps the EMA weights, swaps them in for
validation and copies them into the model when training ends, so every sample (during
training and after) comes from the EMA weights. Validation is sampling: at every
``eval_every`` steps each rank samples its shard of the gFID sample set (sample ``i`` has
label ``sample_labels(i)`` and seed ``sample_seed(seed, i)``) and writes the latents to
``<samples_dir>/step-<N>/``; ``benchmark.gfid`` decodes and measures them afterwards, so
any decoder of the same latents (FlowMo's 1a and 1b) gets its own curve from one training.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from latentbench.batching import chunks
from latentbench.generators import seeding
from latentbench.fsutil import load_yaml_mapping
from latentbench.paths import CONFIG_DIR, display_path
from latentbench.registry import require_positive

GENERATOR_CONFIG_DIR = CONFIG_DIR / "generators"


@dataclass(frozen=True)
class GeneratorConfig:
    """A generator as the harness builds it."""

    name: str
    init_args: dict[str, Any] = field(default_factory=dict)
    transport: dict[str, Any] = field(default_factory=dict)
    module_args: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the YAML file it came from, if any

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "init_args": self.init_args, "transport": self.transport,
                "module_args": self.module_args, "source": self.source}

    @property
    def sha256(self) -> str:
        """sha256 of the canonical JSON of what builds and trains it (not where it was read from): a protocol's pin."""
        content = {k: v for k, v in self.to_dict().items() if k != "source"}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def resolve_generator(arg: str) -> GeneratorConfig:
    """A shipped config name (``dit-ci``), a YAML path, or a bare registered name."""
    path = Path(arg)
    if path.suffix not in (".yaml", ".yml"):
        path = GENERATOR_CONFIG_DIR / f"{arg}.yaml"
        if not path.is_file():
            return GeneratorConfig(name=arg)
    if not path.is_file():
        raise FileNotFoundError(f"generator config {path} does not exist")
    raw = load_yaml_mapping(path, "generator config")
    unknown = set(raw) - {"name", "init_args", "transport", "module_args"}
    if unknown or "name" not in raw:
        raise ValueError(f"generator config {path} needs 'name' and may have init_args, transport, module_args; "
                         f"unknown keys: {sorted(unknown)}")
    return GeneratorConfig(raw["name"], raw.get("init_args") or {}, raw.get("transport") or {},
                           raw.get("module_args") or {}, source=display_path(path))


def build_generator(name: str, input_shape: tuple[int, ...], num_classes: int, init_args: dict[str, Any] | None = None,
                    transport: dict[str, Any] | None = None) -> nn.Module:
    """The registered network; a velocity network (no ``training_losses`` of its own) is wrapped in FlowMatching."""
    from latentbench.generators import GENERATORS
    from latentbench.generators.transport import FlowMatching

    net = GENERATORS.create(name, input_shape=tuple(input_shape), num_classes=num_classes, **(init_args or {}))
    if hasattr(net, "training_losses"):  # MaskGIT: its own masking process
        if transport:
            raise ValueError(f"generator {name} has its own training process; drop the transport arguments {sorted(transport)}")
        return net
    return FlowMatching(net, tuple(input_shape), num_classes, **(transport or {}))


def sample_labels(index: Tensor, num_classes: int, num_samples: int, mode: str = "balanced", seed: int = 0) -> Tensor:
    """Class label of each gFID sample index.

    ``balanced``: index i has class i mod K, so any num_samples divisible by K gives exactly
    num_samples / K per class whatever the sharding. ``random``: a label drawn from a generator of its
    own for index i (seeded ``sample_seed(seed + 1, i)``, apart from the sample's noise, ``sample_seeds``).
    """
    if mode not in ("balanced", "random"):
        raise ValueError(f"class_sampling must be 'balanced' or 'random', got {mode!r}")
    if mode == "balanced":
        if num_samples % num_classes:
            raise ValueError(f"class-balanced sampling needs num_samples ({num_samples}) divisible by the "
                             f"{num_classes} classes; change num_samples or use class_sampling: random")
        return index.long() % num_classes
    gens = seeding.generators([seeding.sample_seed(seed + 1, int(i)) for i in index])
    return torch.stack([torch.randint(num_classes, (), generator=g) for g in gens])


def sample_seeds(index: Tensor, seed: int) -> list[int]:
    """The seed of each gFID sample index (``seeding.sample_seed``)."""
    return [seeding.sample_seed(seed, int(i)) for i in index]


def lr_factor(step: int, hp) -> float:
    """The learning rate of optimizer step ``step`` over ``hp.lr``: linear warmup over ``hp.warmup_steps``, then
    constant, or with ``hp.final_lr`` a linear decay between ``hp.decay_start`` and ``hp.decay_end`` of
    ``hp.max_steps`` (RAE's schedule). The two multiply: a warmup that ran into the decay would scale it (RAE's
    config has no warmup; no shipped config has both)."""
    factor = min(1.0, (step + 1) / max(int(hp.warmup_steps), 1))
    if hp.final_lr is None:
        return factor
    start, end = hp.decay_start * hp.max_steps, hp.decay_end * hp.max_steps
    progress = min(max((step - start) / max(end - start, 1), 0.0), 1.0)
    return factor * (1 - progress * (1 - hp.final_lr / hp.lr))


class GeneratorModule(L.LightningModule):
    """Trains a generator's ``training_losses`` on (normalised latent, label) batches; samples in validation.

    Args:
        generator: registered network name.
        input_shape: one latent's shape, (C, h, w) or (L, C).
        num_classes: number of classes (the null label for guidance is ``num_classes``).
        init_args, transport: network and FlowMatching arguments.
        max_steps: optimizer steps (sets the schedule).
        lr, weight_decay, betas, warmup_steps: AdamW with linear warmup, then constant (DiT/SiT).
        final_lr, decay_start, decay_end: a linear decay of the learning rate from ``lr`` to
            ``final_lr`` between these fractions of ``max_steps``, constant after it (RAE: 2e-4 ->
            2e-5 from epoch 40 to 800 of 1400); None: no decay.
        ema_decay: EMA decay of the sampled weights (0 disables EMA).
        grad_clip: clip the gradients' global norm to this (RAE: 1.0); None: no clipping.
        sample_seed, num_samples, class_sampling: the gFID sample set (see ``sample_labels``).
        samples_dir: where validation writes sampled latents; None = keep nothing.
    """

    def __init__(self, generator: str, input_shape: list[int], num_classes: int, init_args: dict | None = None,
                 transport: dict | None = None, max_steps: int = 1000, lr: float = 1e-4, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), warmup_steps: int = 0, ema_decay: float = 0.9999,
                 grad_clip: float | None = None, final_lr: float | None = None, decay_start: float = 0.0, decay_end: float = 1.0,
                 sample_seed: int = 0, num_samples: int = 1000, class_sampling: str = "balanced", samples_dir: str | None = None):
        super().__init__()
        require_positive(lr=lr, max_steps=max_steps, num_samples=num_samples)
        if not 0 <= ema_decay < 1:  # 1 would sample the initial weights for ever, never the trained ones
            raise ValueError(f"ema_decay must be in [0, 1) (0 disables EMA), got {ema_decay}")
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 (or null for no clipping), got {grad_clip}")
        if final_lr is not None and not (final_lr >= 0 and 0 <= decay_start < decay_end <= 1):
            raise ValueError(f"a learning-rate decay needs final_lr >= 0 and 0 <= decay_start < decay_end <= 1 (fractions of "
                             f"max_steps), got final_lr={final_lr}, decay_start={decay_start}, decay_end={decay_end}")
        self.save_hyperparameters()
        self.generator = build_generator(generator, tuple(input_shape), num_classes, init_args, transport)
        self._samples = None  # this rank's ShardWriter while sampling

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        z, y = batch
        out = self.generator.training_losses(z, y)
        self.log_dict({f"train/{k}": v.mean() for k, v in out.items() if torch.is_tensor(v) and v.numel() <= z.shape[0]},
                      prog_bar=False)
        return out["loss"]

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(self.generator.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, hp))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_callbacks(self):
        from lightning.pytorch.callbacks import EMAWeightAveraging

        # use_buffers=False: only parameters are averaged. Generators keep constants in buffers (MaskGIT's
        # int64 sub-token offsets, DiT's position table); averaged, an int64 buffer is truncated back
        # (0.9999 * 513 + 0.0001 * 513 -> 512), which fed the sampled model wrong embedding rows
        return [EMAWeightAveraging(decay=self.hparams.ema_decay, use_buffers=False)] if self.hparams.ema_decay > 0 else []

    # ---- sampling (validation) -------------------------------------------------------------------

    def sample(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Latents (normalised space) and labels of gFID samples ``index``."""
        hp = self.hparams
        y = sample_labels(index, hp.num_classes, hp.num_samples, hp.class_sampling, hp.sample_seed).to(self.device)
        seeds = sample_seeds(index, hp.sample_seed)  # one per sample: splitting the batch changes no sample
        return torch.cat([self.generator.sample(y[s], seeds[s]) for s in chunks(len(y), self.device)]), y

    def on_validation_epoch_start(self) -> None:
        if self.hparams.samples_dir:
            from latentbench.benchmark.evaluate import world
            from latentbench.generators.latents import ShardWriter

            # written part by part: no rank holds its whole share; an interrupted evaluation's parts are replaced
            self._samples = ShardWriter(samples_step_dir(self.hparams.samples_dir, self.global_step), *world())

    def validation_step(self, index: Tensor, batch_idx: int) -> None:
        z, y = self.sample(index)
        if self._samples is not None:
            self._samples.add(index, z, y)

    def on_validation_epoch_end(self) -> None:
        if self._samples is not None:
            self._samples.close()
        self._samples = None


def samples_step_dir(samples_dir: str | Path, step: int) -> Path:
    """Folder of the latents sampled at training step ``step``."""
    return Path(samples_dir) / f"step-{step:07d}"

