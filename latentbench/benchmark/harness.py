"""The bench harness: train (or load) a tokenizer, reconstruct, measure, record.

``run_bench`` runs four stages in a run directory; each stage writes its result to
``<run_dir>/stages/<stage>.json`` when it finishes, so rerunning the same command skips
finished stages and resumes an interrupted training from its last checkpoint:

    train     Lightning fit on the protocol's train split -> tokenizer.safetensors
              (skipped with --ckpt, or --train_steps 0 for pretrained weights)
    eval      reconstruct the eval split: PSNR, SSIM, LPIPS, rFID, a reconstruction grid; the
              linear probe on the latents (the train split's from the latent cache, which the eval
              stage writes for the generate stage, in protocols with a generator)
    generate  train the protocol's generator on the cached latents: gFID curve, convergence
              steps, a sample grid (protocols with a generator)
    record    store the JSON record; its row is then appended to leaderboards/<protocol>/v<N>/
              and the table re-rendered

A tokenizer with several variants (FlowMo's 1a and 1b) runs eval, generate and record once per
variant, with the variant as the stages' suffix.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
import warnings
from dataclasses import replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Subset

from latentbench.benchmark.datanotes import check_same_classes, data_notes, ignored_notes, split_notes
from latentbench.benchmark.evaluate import Indexed, ShardSampler, loader_workers, not_finite_as_unavailable
from latentbench.benchmark.leaderboard import SCHEMA_VERSION, append_record
from latentbench.benchmark.machine_load import (
    OtherCpuUse,
    advise_once,
    busy_now_note,
    is_busy,
    since_process_start,
)
from latentbench.benchmark.protocol import Protocol, load_protocol
from latentbench.benchmark.spec import BenchConfig, TokenizerSpec, readable_signature, resolve_tokenizer, tokenizer_steps
from latentbench.benchmark.stages import Stages, stages_provenance
from latentbench.cachefiles import TrainingDeferred, training_deferred
from latentbench.distributed import (
    Launch,
    broadcast,
    is_rank_zero,
    mean_over_processes,
    per_rank_batch,
    per_rank_eval_batch,
    require_agreement,
    run_on_rank_zero,
    trainer_kwargs,
    world_size,
)
from latentbench.fsutil import atomic_path, atomic_write_text
from latentbench.paths import LEADERBOARD_DIR, RUNS_DIR, display_path
from latentbench.precision import resolve_precision
from latentbench.tokenizers import compile_decoding
from latentbench.tokenizers.base import require_cxx_compiler
from latentbench.weights import extract_state_dict, load_checkpoint, sha256_file

VAL_HOLDOUT = 16  # training-time validation (modules that early-stop) holds out every 16th train image


# ---- training ----------------------------------------------------------------------------------

class StepProgress(Callback):
    """One progress bar over all training steps, with the loss.

    Hand-written because Lightning's own bars count batches per epoch, which for a
    step-budgeted run on a small dataset restart every few seconds.
    """

    def on_train_start(self, trainer, pl_module) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, desc="train", unit="step", dynamic_ncols=True,
                        disable=trainer.global_rank > 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.bar.update(trainer.global_step - self.bar.n)
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self.bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)

    def on_train_end(self, trainer, pl_module) -> None:
        self.bar.close()


class SigtermInterrupts(Callback):
    """SIGTERM in a fit raises as outside it (``signals.Terminated``, handled as Ctrl-C), without Lightning's
    handler, which on several processes broadcasts from inside the signal handler (``latentbench.signals``)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Put ours back as soon as Lightning installs its handler (``Trainer._run`` calls its signal connector's
        ``register_signal_handlers`` after the setup hooks): ``on_train_start`` comes only once the loaders are set up
        and a sanity check has run, a window in which a SIGTERM went through Lightning's handler."""
        from latentbench.signals import reinstall

        connector = getattr(trainer, "_signal_connector", None)  # Lightning's internals: on_train_start still covers
        register = getattr(connector, "register_signal_handlers", None)  # a Lightning without them
        if register is None or getattr(register, "reinstalls", False):
            return

        def register_then_reinstall() -> None:
            register()
            reinstall()

        register_then_reinstall.reinstalls = True  # type: ignore[attr-defined]  (once per trainer, whatever fits follow)
        connector.register_signal_handlers = register_then_reinstall

    def on_train_start(self, trainer, pl_module) -> None:  # Lightning has installed its handler by now
        from latentbench.signals import reinstall

        reinstall()


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()  # an interrupt's (Ctrl-C's, SIGTERM's) own line is the command's (cli._interrupted)
        return "Tip:" not in message and "Detected KeyboardInterrupt, attempting graceful shutdown" not in message


def _quiet_lightning() -> None:
    """Drop Lightning's advertising tips, its line on an interrupted fit, a known deprecation warning from its own code, its eval-mode alarm, and
    its resuming alarms.

    The suite keeps frozen networks in eval mode on purpose (RAE's encoder, LPIPS and its substitutes,
    teachers, feature discriminators' backbones): Lightning's "Found N module(s) in eval mode at the
    start of training ... may lead to unexpected behavior" would only alarm. A resumed training finds its
    checkpoint folder full, and resumes inside an epoch exactly (``resume.ExactResume``), which Lightning's
    "your dataloader is not resumable ... unreliable results" does not know.
    """
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropLightningTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def _loader(dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0, drop_last: bool = False,
            distributed: bool = False) -> DataLoader:
    """A training loader; ``distributed``: under several processes each takes its part of every epoch.

    The sampler is built here, not injected by Lightning: Lightning seeds its ``DistributedSampler``
    from ``PL_GLOBAL_SEED``, which ``seed_process`` sets per rank, so ranks would shuffle
    differently and draw overlapping parts. Every rank shuffles with ``seed``; their parts are disjoint
    and equal (the sampler drops the remainder rather than repeating images to pad the last rank).

    Worker processes change no number: they are started again each epoch, not kept (``persistent_workers``), as
    each epoch's new iterator draws its worker seed from the shuffle's generator (from the global stream under
    DDP, where each rank's training noise comes from), as it does without workers.
    """
    from torch.utils.data import SequentialSampler

    from latentbench.benchmark.resume import ResumableDistributedSampler, ResumableRandomSampler
    from latentbench.distributed import rank, world_size

    if distributed and world_size() > 1:
        sampler = ResumableDistributedSampler(dataset, world_size(), rank(), shuffle=shuffle, seed=seed, drop_last=True)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last)
    # the sampler and the loader share one generator, as DataLoader(shuffle=True, generator=) builds them
    generator = torch.Generator().manual_seed(seed)
    sampler = ResumableRandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator,
                      num_workers=num_workers, drop_last=drop_last)


_SHARED_DATASETS: dict[tuple, Any] | None = None  # inside a bench (``_one_build_per_split``): built datasets by key


def _dataset(protocol: Protocol, split: str, limit: int | None, on_bad_image: str):
    """The protocol's ``split``; inside a bench, built once and shared by the stages.

    Every stage reads the train split (the class check, training, the probe, the generator stage
    and its reference statistics: five builds per bench), and building an image folder decodes
    every file once (its scan), so a bench shares what it built.
    """
    from latentbench.data import build_dataset
    from latentbench.data.encoded import collective_scan

    spec = protocol.data
    key = (spec.source, split, spec.resolution, on_bad_image, limit)
    if _SHARED_DATASETS is not None and key in _SHARED_DATASETS:
        return _SHARED_DATASETS[key]
    with collective_scan():  # every rank builds it here: a multi-process bench splits the scan between them
        data = build_dataset(spec.source, split, spec.resolution, on_bad_image=on_bad_image, limit=limit)
    names = data.info["class_names"]
    # The probe and gFID's class-balanced samples count every class, so a class the split never shows would be
    # sampled from a generator that never saw it. Image folders and hf datasets list their files class by class,
    # so their first N can leave whole classes out (the embedded MNIST's limits take the digits in turn, so 10 or
    # more images hold them all); and without a limit, an hf label feature can name classes no row has, and
    # --on_bad_image skip can drop every file of a class.
    shown = set(data.targets)
    missing = [name for label, name in enumerate(names) if label not in shown]
    if len(names) > 1 and missing:
        which = f"{len(missing)} of the {len(names)} classes ({', '.join(map(str, missing[:5]))}{', ...' if len(missing) > 5 else ''})"
        if limit and len(data) >= limit:  # the limit cut classes off
            raise ValueError(
                f"{spec.source} [{split}]: the protocol's limit of {limit} images (num_train / num_eval) takes the first "
                f"{limit} readable images in the source's order, which leave out {which}: raise the limit, or set it to "
                "null to read the whole split")
        raise ValueError(
            f"{spec.source} [{split}]: {which} have no readable image, yet the linear probe and gFID's class-balanced "
            "sample set count every class: give every class images, or relabel the data with only the classes it "
            "holds (an hf dataset: cast its label column to a ClassLabel of those names)")
    if _SHARED_DATASETS is not None:
        _SHARED_DATASETS[key] = data
    return data


@contextlib.contextmanager
def _one_build_per_split():
    """Share built datasets within one bench only; outside it (and in the next bench) files are read as they are then."""
    global _SHARED_DATASETS
    before, _SHARED_DATASETS = _SHARED_DATASETS, {}
    try:
        yield
    finally:
        _SHARED_DATASETS = before


def seed_process(seed: int) -> None:
    """Seed this process: ``seed`` on rank 0 (so 1 process is unchanged), ``seed + rank`` elsewhere.

    Each rank draws its own training noise; models start equal anyway (DDP copies rank 0's
    parameters and buffers to every rank when it wraps the module).
    """
    import lightning as L

    from latentbench.distributed import rank

    L.seed_everything(seed + rank(), workers=True, verbose=False)


def _held_out(data, module, name: str, eval_batch: int) -> tuple[Subset, DataLoader, int]:
    """(the train split without every ``VAL_HOLDOUT``-th image, a loader of the held-out images validated, their number).

    The module may pick how many of the held-out images it validates (``validation_images``), the first ones; the
    loader gives each of them once over all ranks, with its index (its decoder seed), no padding, so the validated
    images are the same on any number of processes (as evaluation's; Lightning's ``limit_val_batches`` would count
    batches per process, whose size depends on it).
    """
    held = list(range(VAL_HOLDOUT - 1, len(data), VAL_HOLDOUT))
    validated = held[:getattr(module, "validation_images", len)(held)]
    if len(validated) < world_size():  # a process without one would skip the validation's collectives and hang
        fix = (f"give the protocol at least {VAL_HOLDOUT * world_size()} train images" if len(validated) == len(held)
               else f"validate at least {world_size()} of them (val_images)")
        raise ValueError(f"{name} validates while training on every {VAL_HOLDOUT}th train image: {len(validated)} "
                         f"held-out images for {world_size()} processes; {fix} or use fewer processes")
    train = Subset(data, sorted(set(range(len(data))) - set(held)))
    loader = DataLoader(Indexed(Subset(data, validated)), batch_size=per_rank_eval_batch(eval_batch),
                        sampler=ShardSampler(len(validated), rank=None))
    return train, loader, len(validated)


def train_stage(cfg: BenchConfig, run_dir: Path, on_bad_image: str) -> dict[str, Any]:
    """Fit the tokenizer with Lightning; resume from the last checkpoint if one exists.

    Under DDP each process takes ``batch_size / world size`` images per step, its disjoint part
    of each epoch's shuffle (``_loader``); rank 0 writes the weights.
    """
    from safetensors.torch import save_file

    proto, spec = cfg.protocol, cfg.tokenizer
    _quiet_lightning()
    seed_process(cfg.seed)
    data = _dataset(proto, proto.data.train_split, proto.data.num_train, on_bad_image)
    module = spec.module_class()(spec.name, spec.init_args, max_steps=cfg.steps, **spec.module_args)
    # A module that validates while training (FlowMo's early stopping of stage 1b) gets every
    # VAL_HOLDOUT-th image of the *train* split, held out of training; the eval split, which the
    # reported metrics use, is never seen before evaluation.
    validates = hasattr(module, "trainer_kwargs")
    train_data, val_loader, validated = data, None, 0
    if validates:
        train_data, val_loader, validated = _held_out(data, module, spec.name, proto.eval.batch_size)
    batch = per_rank_batch(proto.train.batch_size, "train batch_size")
    loader = _loader(train_data, batch, True, cfg.seed, proto.train.num_workers, drop_last=len(train_data) > proto.train.batch_size,
                     distributed=True)
    loop = module.trainer_kwargs() if validates else {"num_sanity_val_steps": 0, "limit_val_batches": 0}
    trainer = fit_resumable(
        module, loader, val_loader, run_dir, cfg.steps, cfg.precision,
        # tokenizer steps can leave parameters without a gradient (a GAN before disc_start, MAETok's auxiliary
        # heads, FlowMo's encoder frozen in stage 1b); a module that never does may set ddp_find_unused_parameters = False
        trainer_kwargs(cfg.launch, find_unused_parameters=getattr(module, "ddp_find_unused_parameters", True)),
        checkpoint_every=max(cfg.steps // 5, 1), **loop)
    # Modules with several results (FlowMo: without and with post-training) name each state; the last is the run's.
    states = module.stage_weights() if hasattr(module, "stage_weights") else {"": module.tokenizer.state_dict()}
    # each process logged its share's loss: the record's is the whole last batch's (every process takes part)
    final_loss = mean_over_processes(trainer.callback_metrics.get("train/loss", float("nan")))
    if not is_rank_zero():
        return {}  # rank 0 writes the weights; Stages.run hands its result to every rank
    variants = {}
    for i, (variant, state) in enumerate(states.items()):
        path = run_dir / ("tokenizer.safetensors" if i == len(states) - 1 else f"tokenizer-{variant}.safetensors")
        with atomic_path(path) as tmp:
            save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp))
        variants[variant] = str(path.relative_to(run_dir))
    weights = run_dir / "tokenizer.safetensors"
    return {
        "variants": variants if len(variants) > 1 or "" not in variants else None,
        "early_stopping": getattr(module, "early_stopping", None),
        "normalization": getattr(module, "normalization", None),  # RAE: latent statistics fitted on the train split
        "discriminator": getattr(module, "discriminator_info", None),
        "validation_images": validated,
        "steps": int(trainer.global_step),
        "precision": cfg.precision,
        "perceptual": module.perceptual_status,
        "stages": [{"name": name, "steps": end - start} for name, start, end in module.stage_plan],
        "targets": module.tokenizer.describe_targets() if hasattr(module.tokenizer, "describe_targets") else None,
        "final_loss": final_loss,
        "weights": str(weights.relative_to(run_dir)),
        "weights_sha256": sha256_file(weights),
        "data": data.info,
    }


def fit_resumable(module, loader: DataLoader, val_loader: DataLoader | None, out_dir: Path, max_steps: int, precision: str,
                  strategy: dict[str, Any], checkpoint_every: int | None = None, **trainer_args: Any):
    """Fit ``module`` for ``max_steps`` optimizer steps with Lightning, resuming from ``out_dir/checkpoints/last.ckpt``
    where an earlier attempt left one (``resume_from``); returns the trainer.

    What the tokenizer's and the generator's trainings share: ``strategy`` (``distributed.trainer_kwargs``), one
    progress bar over all steps (``StepProgress``), TensorBoard logs in ``out_dir/tensorboard/train``, the last
    checkpoint kept (every ``checkpoint_every`` steps; None: Lightning's default), exact resumption inside an epoch
    (``ExactResume``), SIGTERM handled as outside the fit (``SigtermInterrupts``), and no sampler replaced (the
    loaders shard themselves: ``_loader``). ``trainer_args``: the training's own ``L.Trainer`` arguments.
    """
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from latentbench.benchmark.resume import ExactResume, ResumableCheckpoint

    ckpt_dir = out_dir / "checkpoints"
    trainer = L.Trainer(
        max_steps=max_steps, max_epochs=-1, precision=precision, accelerator="auto", **strategy,
        logger=TensorBoardLogger(str(out_dir), name="tensorboard", version="train"),
        callbacks=[ResumableCheckpoint(dirpath=ckpt_dir, filename="last", every_n_train_steps=checkpoint_every,
                                       save_top_k=1, enable_version_counter=False), StepProgress(), ExactResume(loader),
                   SigtermInterrupts()],
        enable_progress_bar=False, log_every_n_steps=min(10, len(loader)), enable_model_summary=False,
        default_root_dir=str(out_dir), use_distributed_sampler=False, **trainer_args,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=val_loader, ckpt_path=resume_from(ckpt_dir / "last.ckpt"))
    return trainer


def load_tokenizer(spec: TokenizerSpec, weights: str | Path | None, trust: bool = False):
    """Build the tokenizer of ``spec`` and load ``weights`` (safetensors, or a weights-only torch file)."""
    from latentbench.tokenizers import create_tokenizer

    with torch.random.fork_rng(devices=[]):  # the same initial weights in every process (and every run)
        torch.manual_seed(0)
        tokenizer = create_tokenizer(spec.name, **spec.init_args)
    if weights is not None:
        state = extract_state_dict(load_checkpoint(weights, trust=trust), prefix="tokenizer.")
        if hasattr(tokenizer, "convert_state_dict"):  # official checkpoints of a family (e.g. MAETok's)
            state = tokenizer.convert_state_dict(state)
        try:
            result = tokenizer.load_state_dict(state, strict=False)
        except RuntimeError as e:  # strict=False still raises on a tensor of another shape
            mismatched = [line.strip() for line in str(e).splitlines() if "size mismatch" in line]
            raise ValueError(f"checkpoint {weights} does not fit tokenizer {spec.name}: "
                             f"{'; '.join(mismatched[:3]) or e} (is it the right tokenizer and size? a YAML's init_args "
                             "build another size)") from None
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"checkpoint {weights} does not fit tokenizer {spec.name}: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]} (is it the right tokenizer and size?)"
            )
    return tokenizer.eval()


def load_for_decoding(cfg: BenchConfig, weights: str | Path | None, trust: bool = False):
    """``load_tokenizer`` for the stages that decode, on this process's compute device (its GPU, else
    the CPU), its iterative decoder compiled under ``cfg.compile``.

    Returns (tokenizer, names of the compiled submodules: ``compile_decoding``).
    """
    from latentbench.distributed import compute_device

    tokenizer = load_tokenizer(cfg.tokenizer, weights, trust).to(compute_device())
    return tokenizer, compile_decoding(tokenizer) if cfg.compile else []


def reading_protocol_data(proto: Protocol, on_bad_image: str):
    """Context in which a ``domain-<source>`` classifier of the protocol's own data (FID extractor, MAETok teacher,
    perceptual substitute) reads it as the bench does: its split names (an hf dataset's "validation") and its
    unreadable-image policy."""
    from latentbench.benchmark.extractors import bench_data_reading

    return bench_data_reading(proto.data.source, (proto.data.train_split, proto.data.eval_split), on_bad_image)


def build_extractor(proto: Protocol, cache_dir: str | Path | None = None, on_bad_image: str = "error"):
    """The protocol's FID feature extractor, or (None, the reason) when its weights are missing; a domain classifier
    of the protocol's data trains on its splits with the bench's ``on_bad_image``."""
    from latentbench.benchmark.extractors import DOMAIN_PREFIX, DomainRecipe, create_extractor
    from latentbench.distributed import compute_device
    from latentbench.weights import WeightsUnavailable

    options = dict(proto.eval.extractor_options)
    if proto.eval.extractor.startswith(DOMAIN_PREFIX) and options:
        options = {"recipe": DomainRecipe(**options)}
    try:
        with reading_protocol_data(proto, on_bad_image):
            extractor, why = create_extractor(proto.eval.extractor, cache_dir=cache_dir, **options).to(compute_device()), None
    except WeightsUnavailable as e:
        extractor, why = None, str(e)
    require_agreement("found" if why is None else "missing", f"the {proto.eval.extractor} extractor's weights", _SAME_FILES)
    return extractor, why


_SAME_FILES = ("every process must find the same weight files: put them on every node (the cache folder, "
               "LATENTBENCH_CACHE, and TORCH_HOME) or on a shared filesystem")


def build_metrics(proto: Protocol, seed: int, cache_dir: str | Path | None = None, on_bad_image: str = "error"):
    """The protocol's reconstruction metrics; a metric whose weights are missing is reported unavailable."""
    from latentbench.benchmark.evaluate import ReconstructionMetrics
    from latentbench.benchmark.perceptual import LPIPS
    from latentbench.distributed import compute_device
    from latentbench.weights import WeightsUnavailable

    unavailable, lpips = {}, None
    try:
        lpips = LPIPS(net=proto.eval.lpips_net)
    except WeightsUnavailable as e:
        unavailable["lpips"] = str(e)
    require_agreement("found" if lpips is not None else "missing", "LPIPS's weights", _SAME_FILES)
    extractor, why = build_extractor(proto, cache_dir, on_bad_image)
    if extractor is None:
        unavailable["rfid"] = why
    return ReconstructionMetrics(extractor, lpips, bootstrap=proto.eval.fid_bootstrap, seed=seed, unavailable=unavailable,
                                 device=compute_device())


def probe_train_subset(dataset, n: int | None, seed: int):
    """A seeded random subset of ``n`` images (all of them when n is None or larger)."""
    if n is None or n >= len(dataset):
        return dataset
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return Subset(dataset, indices.tolist())


def eval_stage(cfg: BenchConfig, run_dir: Path, weights: str | Path | None, trust: bool, on_bad_image: str,
               cache_dir: str | Path | None = None, grid_name: str = "reconstructions.png") -> dict[str, Any]:
    """Reconstruct the eval split, measure it, and fit the linear probe on the latents' pooled features."""
    from torchvision.utils import save_image

    from latentbench.benchmark.evaluate import encode_batches, gather_by_index, reconstruct
    from latentbench.benchmark.probe import pool, probe_features

    proto = cfg.protocol
    tokenizer, compiled = load_for_decoding(cfg, weights, trust)
    data = _dataset(proto, proto.data.eval_split, proto.data.num_eval, on_bad_image)
    metrics = build_metrics(proto, cfg.seed, cache_dir, on_bad_image)
    batch = per_rank_eval_batch(proto.eval.batch_size)
    pooling = proto.eval.probe_pooling
    discrete = tokenizer.latent_spec.bits_per_token is not None  # codes are kept whole for their statistics
    passed = reconstruct(tokenizer, data, metrics, batch, cfg.seed, features=None if discrete else partial(_cpu_pool, pooling=pooling))
    originals, recs = gather_by_index(passed.grid)  # every rank's share of the picture
    grid = torch.cat([originals, recs]).clamp(-1, 1)
    if is_rank_zero():
        with atomic_path(run_dir / grid_name) as tmp:
            save_image(grid, tmp, nrow=len(grid) // 2, normalize=True, value_range=(-1, 1), format="png")
    results = metrics.results()
    test_f, test_y = gather_by_index(passed.rows())
    codes = code_statistics(tokenizer, [test_f], proto.data.resolution)
    test_f = pool(test_f, pooling) if discrete else test_f

    start = time.perf_counter()
    train = _dataset(proto, proto.data.train_split, proto.data.num_train, on_bad_image)
    if proto.generator.max_steps > 0:  # the generator stage caches the whole split's latents: encode it once, here
        from latentbench.benchmark.generation import train_latents

        shards, _ = train_latents(cfg, run_dir, tokenizer, weights, train)
    if data.info["num_classes"] < 2:  # a folder without class sub-folders is one class: there is nothing to tell apart
        results["probe"] = {"unavailable": f"{proto.data.source} has one class, and a linear probe needs at least 2 (give "
                                           "its images class sub-folders to measure one)"}
    else:
        if proto.generator.max_steps > 0:
            rows = torch.as_tensor(list(probe_train_subset(range(len(shards)), proto.eval.probe_train, cfg.seed)),
                                   dtype=torch.long)
            train_f = torch.cat([pool(z, pooling) for z in shards.chunks(index=rows)])  # only the probe's subset is read
            train_y = shards.labels[rows]
        else:
            subset = probe_train_subset(train, proto.eval.probe_train, cfg.seed)
            train_f, train_y = gather_by_index((i, pool(z, pooling), y) for i, z, y in encode_batches(tokenizer, subset, batch))
        probe = probe_features(train_f, train_y, test_f, test_y, num_classes=data.info["num_classes"], pooling=pooling)
        results["probe"] = {"value": probe.pop("top1"), "n": probe["n_test"], **probe}
    return {
        "metrics": results,
        "throughput_img_s": passed.throughput(),
        "probe_s": time.perf_counter() - start,
        "data": data.info,
        "grid": grid_name,
        "codes": codes,
        "compiled": compiled,
        # what the row's reader must know (a decoder on the wrong scale): the record and the table keep it
        "warnings": [w for w in (metrics.scale_warning,) if w],
    }


def _cpu_pool(z: torch.Tensor, pooling: str) -> torch.Tensor:
    """Probe features of a batch, pooled on the CPU as the train split's are (a GPU's reduction order differs)."""
    from latentbench.benchmark.probe import pool

    return pool(z.float().cpu(), pooling)


def code_statistics(tokenizer, latents: list[torch.Tensor], resolution: int) -> dict[str, Any] | None:
    """Bits per pixel, sub-codebook usage and code entropy of a discrete tokenizer's eval codes; None if continuous."""
    spec = tokenizer.latent_spec
    if spec.bits_per_token is None:
        return None
    from latentbench.tokenizers.lfq import CodeUsage

    quantizer = getattr(tokenizer, "quantizer", None)
    bits = int(spec.bits_per_token)
    usage = CodeUsage(bits, getattr(quantizer, "group_size", None))
    for z in latents:
        usage.update(z.float().sign().reshape(-1, bits))  # (B*L, bits) of +-1
    return {"bits_per_pixel": spec.bits_per_pixel(resolution, resolution), "bits_per_token": bits, **usage.compute()}


def _costs(tokenizer: torch.nn.Module, resolution: int) -> dict[str, Any] | None:
    """Encoder / decoder GMACs and parameters per image (``benchmark.costs``); None, with the reason logged, if uncountable."""
    from latentbench.benchmark.costs import tokenizer_costs

    try:
        return tokenizer_costs(tokenizer, resolution)
    except Exception as e:  # a user's tokenizer the FLOP counter cannot trace must not lose its row
        logging.getLogger(__name__).warning("cost count failed for %s: %s", type(tokenizer).__name__, e)
        return None


def _params(module: torch.nn.Module) -> dict[str, int]:
    return {"total": sum(p.numel() for p in module.parameters())}


def build_record(cfg: BenchConfig, run_dir: Path, train: dict | None, evaluation: dict, weights: str | Path | None, trust: bool,
                 generation: dict[str, Any] | None = None) -> dict[str, Any]:
    """One leaderboard row with its provenance."""
    tokenizer = load_tokenizer(cfg.tokenizer, weights, trust)
    proto = cfg.protocol
    stages = {"train": train, "eval": evaluation, "generate": generation}
    wall = {name: stage["wall_time_s"] for name, stage in stages.items() if stage is not None}
    metrics = dict(evaluation["metrics"])
    if generation is not None:
        metrics["gfid"] = generation["gfid"]
    # stages stored before non-finite values became reasons (evaluate.not_finite_as_unavailable) still give a row
    metrics = {name: not_finite_as_unavailable(name, m) for name, m in metrics.items()}
    return {
        "schema": SCHEMA_VERSION,
        "id": uuid.uuid4().hex,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # a row run at another --seed or --train_steps is marked so in its table (leaderboard.row_name)
        "protocol": {"name": proto.name, "version": proto.version, "fingerprint": proto.fingerprint, "description": proto.description,
                     "seed": proto.seed, "train_steps": proto.train.max_steps},
        "tokenizer": {
            **cfg.tokenizer.to_dict(),
            "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
            "latent": tokenizer.latent_spec.to_dict(),
            "params": _params(tokenizer),
            "costs": _costs(tokenizer, proto.data.resolution),
            "describe": tokenizer.describe() if hasattr(tokenizer, "describe") else None,
            "checkpoint": {"path": cfg.ckpt, "sha256": cfg.ckpt_sha256} if cfg.ckpt else
                          {"path": display_path(weights), "sha256": sha256_file(weights)} if train else None,
            "trained_steps": train["steps"] if train else 0,
            # evaluated as built (--train_steps 0): where its weights came from (_require_built_weights)
            **({"pretrained_weights": getattr(tokenizer, "pretrained_weights", None)} if not (train or cfg.ckpt) else {}),
        },
        # max_steps: the budget it trained on (trained_steps is less where a module stopped early)
        "training": {**{k: train.get(k) for k in ("precision", "perceptual", "final_loss", "stages", "targets", "early_stopping",
                                                  "validation_images", "normalization", "discriminator")},
                     "max_steps": cfg.steps} if train else None,
        "precision_changed": cfg.precision_notes(),
        "data": {"eval": evaluation["data"], "train": train["data"] if train else None,
                 # train and eval read from the same images (split_notes said so at the bench; the table notes it)
                 **({"same_images": True} if train and split_notes(train["data"], evaluation["data"]) else {})},
        "metrics": metrics,
        # None also when the stage trained no generator (its extractor's weights missing: gFID unavailable, said why)
        "generation": {k: v for k, v in generation.items() if k not in GENERATION_NOT_RECORDED}
                      if generation and generation.get("trained", True) else None,
        "throughput_img_s": evaluation["throughput_img_s"],
        # submodules torch.compile'd for decoding (bench --compile), per stage; None: none
        "compiled": {k: v for k, v in (("eval", evaluation.get("compiled")), ("generate", (generation or {}).get("compiled")))
                     if v} or None,
        "codes": evaluation.get("codes"),
        **({"warnings": evaluation["warnings"]} if evaluation.get("warnings") else {}),  # absent when there are none
        "seeds": {"bench": cfg.seed},
        "run_dir": display_path(run_dir),
        "distributed": cfg.launch.to_dict(),
        "provenance": stages_provenance({"train": train, "eval": evaluation,
                                         "generator train": (generation or {}).get("generator_provenance"),
                                         "generate": generation}),
        "wall_time_s": wall,
        # other processes' use of the machine's CPU while each stage ran (machine_load.OtherCpuUse); None: not measured
        "machine_load": {name: stage.get("machine_load") for name, stage in stages.items() if stage is not None},
    }


# generator-stage fields the record keeps elsewhere (metrics, wall times, compiled, provenance) or not at all
GENERATION_NOT_RECORDED = ("gfid", "wall_time_s", "machine_load", "compiled", "provenance", "provenance_resumed", "generator_provenance")
def run_bench(
    tokenizer: str,
    protocol: str = "ci",
    ckpt: str | None = None,
    trust_checkpoint: bool = False,
    train_steps: int | None = None,
    seed: int | None = None,
    on_bad_image: str = "error",
    runs_dir: str | Path = RUNS_DIR,
    leaderboard_dir: str | Path = LEADERBOARD_DIR,
    log: Callable[[str], None] = print,
    launch: Launch | None = None,
    precision: str = "auto",
    compile: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Bench one tokenizer under one protocol; returns the record written to the leaderboard.

    ``precision``: ``auto`` trains in the protocol's precision, or in float32 where this machine
    runs bf16 far slower (``latentbench.precision``); a Lightning precision string forces it.
    ``compile``: ``torch.compile`` the tokenizer's iterative decoder for evaluation and
    generation (``latentbench.tokenizers.compile_decoding``).
    ``dry_run``: run every check, then log what the bench would run (``plan``) and return it,
    without running a stage or writing into the run or leaderboard directories; in this one
    process, whatever ``launch`` asks for.

    With ``launch`` of several processes (started by ``latentbench bench --devices N``, torchrun
    or srun) every rank calls this; the stages shard their work, rank 0 writes.
    """
    from latentbench.distributed import process_group, resolve_launch

    launch = resolve_launch(launch or Launch())
    # the process group is left before returning: see distributed.destroy_process_group
    group = contextlib.nullcontext() if dry_run else process_group(launch)
    with group, _one_build_per_split(), contextlib.ExitStack() as scope:
        if not is_rank_zero():
            log = _silent
        proto = load_protocol(protocol)
        # evaluation's loaders (reconstruction, encoding, reference statistics) decode images in as many
        # worker processes as training's
        scope.enter_context(loader_workers(proto.train.num_workers))
        scope.enter_context(reading_protocol_data(proto, on_bad_image))  # classifiers built by training modules too
        # other processes' CPU use while the bench prepares: said before the stages, not after an hour of slow training
        preparing = scope.enter_context(OtherCpuUse(measure=launch.world_size == 1 and not dry_run))
        advise_once(reset=True)  # this bench's first busy warning says what to do
        spec = resolve_tokenizer(tokenizer, proto)
        if compile:  # fail before hours of training, not at the eval stage
            require_cxx_compiler()
        _check_bench_arguments(ckpt, train_steps, seed)
        ckpt_sha = sha256_file(ckpt) if ckpt else None
        deferred = _check_tokenizer_loads(spec, ckpt, trust_checkpoint, proto.data.resolution, dry_run)
        # rank 0's hardware decides for all ranks: one run trains in one precision
        precisions = broadcast(tuple(resolve_precision(p, precision) for p in (proto.train.precision, proto.generator.precision)))
        cfg = BenchConfig(spec, proto, ckpt, ckpt_sha, None if ckpt else train_steps, proto.seed if seed is None else seed, launch, *precisions,
                          compile=compile)
        cfg = replace(cfg, lpips_weights=broadcast(lpips_weights_present(lpips_nets_used(cfg))))
        _check_before_stages(cfg, Path(leaderboard_dir), launch.world_size if dry_run else None)
        # the data is part of the key (a rerun after the folder changed would otherwise print the old numbers)
        data = _scan_splits(proto, on_bad_image)
        _check_data_for_the_stages(proto, *data)
        cfg = replace(cfg, data_fingerprints=tuple(info["fingerprint"] for info in data))
        # each process hashed its own copy of the data and of a user's class: another copy on another node would
        # give its ranks another run directory (and numbers of other code)
        require_agreement(cfg.key, "the run key (configuration, data and code hashes)",
                          "every node must read the same data and run the same code")
        for line in [line for info in data for line in data_notes(info)] + split_notes(*data):
            log(line)
        run_dir = Path(runs_dir) / proto.name / f"v{proto.version}" / f"{spec.name.replace(':', '.')}-{cfg.key}"
        if dry_run:
            from latentbench.benchmark.plan import plan

            if deferred is not None:
                log(f"dry run: {deferred}; a dry run does not train it, so the tokenizer was checked only up to there")
            return plan(cfg, run_dir, Path(leaderboard_dir), data, log)
        scope.enter_context(_held(run_dir))
        if is_rank_zero():
            atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=1, sort_keys=True))
        log(f"bench {spec.name} ({spec.requested}) under {proto.id} on {launch.world_size} process(es); run directory {run_dir}")
        for line in precision_lines(cfg):
            log(line)
        stages = Stages(run_dir)
        if not stages.dir.is_dir() or not any(stages.dir.iterdir()):  # a fresh run: what to expect (a rerun resumes)
            from latentbench.benchmark.plan import expected_time_line

            if (expected := expected_time_line(cfg, Path(leaderboard_dir))) is not None:
                log(expected)
        # since the command started (its imports take seconds) where the CLI marked it, else since run_bench began; not
        # for a finished run, whose rerun runs no stage
        if (preparing.measure and is_busy(busy := since_process_start() or preparing.so_far(), min_cpu_s=0.2)
                and not _finished(stages)):
            log(f"warning: {busy_now_note(busy)}")
        return _run_stages(stages, cfg, run_dir, trust_checkpoint, on_bad_image, Path(leaderboard_dir), log)


def _check_tokenizer_loads(spec: TokenizerSpec, ckpt: str | None, trust: bool, resolution: int,
                           dry_run: bool = False) -> TrainingDeferred | None:
    """Build the tokenizer once before any stage where that can fail: an unreadable or mismatched ``ckpt`` stops the
    bench here, not at its eval stage, ``init_args`` a registered tokenizer's constructor refuses (the ValueError of
    ``create_tokenizer``) stop it before a run directory exists (and ``--dry_run`` with them), and a user's class
    (``module:Class``) must encode and decode as its ``latent_spec`` says (``check_round_trip``) before it trains.

    ``init_args`` alone are checked on rank 0 (its error stops every rank: ``run_on_rank_zero``): a paper size with
    its teachers is hundreds of millions of parameters, which every rank builds again for training anyway. Not on
    the meta device: constructors load or train what they are built on (RAE's encoder, MAETok's teachers), into
    caches on disk that the train stage's build reads.

    With ``dry_run``, weights the suite would train on first use for that build are not trained (``training_deferred``):
    the build stops there and the ``TrainingDeferred`` is returned, for the plan to say so; else None."""
    if not (ckpt or spec.init_args or ":" in spec.name):
        return None
    try:
        with training_deferred() if dry_run else contextlib.nullcontext():
            _build_to_check(spec, ckpt, trust, resolution)
    except TrainingDeferred as deferred:
        return deferred
    return None


def _build_to_check(spec: TokenizerSpec, ckpt: str | None, trust: bool, resolution: int) -> None:
    if not (ckpt or ":" in spec.name):
        def build() -> None:  # built and dropped: only its errors matter
            load_tokenizer(spec, None)

        run_on_rank_zero(build)
        return
    tokenizer = load_tokenizer(spec, ckpt, trust)
    if ":" in spec.name:
        from latentbench.tokenizers.base import check_round_trip

        check_round_trip(tokenizer, resolution)


def _check_before_stages(cfg: BenchConfig, leaderboard_dir: Path, processes: int | None) -> None:
    """The checks of the configuration that would otherwise fail only after hours of stages: the table takes the
    protocol's rows, the generators resolve, weights that are not random, batches this world size divides (``processes``:
    the one about to run; None: the process group's), and the FID extractor."""
    from latentbench.benchmark.leaderboard import check_table_accepts

    proto = cfg.protocol
    check_table_accepts(leaderboard_dir, proto.name, proto.version, proto.fingerprint)
    if proto.generator.max_steps > 0:
        from latentbench.benchmark.generation import check_generators

        check_generators(proto)
    if cfg.steps == 0 and cfg.ckpt is None:  # never bench random weights as a row
        _require_built_weights(cfg.tokenizer)
    check_training_batches(proto, cfg.steps, processes, cfg.tokenizer)
    check_extractor(proto)


def _run_stages(stages: Stages, cfg: BenchConfig, run_dir: Path, trust_checkpoint: bool, on_bad_image: str,
                leaderboard_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Train (unless the run evaluates ``cfg.ckpt`` or built weights), then eval, generate and record each result of the
    training (``_bench_variant``); the last result's record."""
    train = None
    weights: str | Path | None = cfg.ckpt
    if cfg.steps > 0:
        train = stages.run("train", lambda: train_stage(cfg, run_dir, on_bad_image), log)
        weights = run_dir / train["weights"]
        run_on_rank_zero(lambda: _check_trained_weights(run_dir, train, stages, cfg))
    variants = (train or {}).get("variants") or {"": weights}
    records = [_bench_variant(stages, cfg, run_dir, train, variant, weights if variant == "" else run_dir / path,
                              trust_checkpoint, on_bad_image, leaderboard_dir, log)
               for variant, path in variants.items()]  # one row per result (FlowMo: without and with post-training)
    return records[-1]


@contextlib.contextmanager
def _held(run_dir: Path):
    """Hold ``run_dir`` for this bench (rank 0 takes its lock); a second bench of the same run is refused.

    Two benches in one run directory would train into the same checkpoint, each store its own
    record and both append a row of the run. The lock is the operating system's: a killed bench
    holds it no longer.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(run_dir / ".lock"))

    def take() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise ValueError(f"another bench of this run is running in {run_dir} (it holds {lock.lock_file}): let it "
                               "finish, then rerun this command, which finds its stages done") from None

    run_on_rank_zero(take)
    try:
        yield
    finally:
        if lock.is_locked:
            lock.release()


def precision_lines(cfg: BenchConfig) -> list[str]:
    """A line for each precision the trainings left the protocol's for; one when both changed alike."""
    changed = cfg.changed_precisions()
    return [f"precision: {' and '.join({'train': 'tokenizer'}.get(k, k) for k, q in changed.items() if q == p)} training "
            f"in {p.used}, not the protocol's {p.requested}: {p.reason}" for p in dict.fromkeys(changed.values())]


def _check_bench_arguments(ckpt: str | None, train_steps: int | None, seed: int | None) -> None:
    """FileNotFoundError / ValueError for command-line values a bench cannot use, before anything is read or written."""
    if ckpt and not Path(ckpt).is_file():
        raise FileNotFoundError(f"--ckpt {ckpt} is not a file: pass a tokenizer checkpoint (.safetensors, a torch "
                                "file, or a Lightning .ckpt)")
    if train_steps is not None and train_steps < 0:
        raise ValueError(f"--train_steps must be >= 0, got {train_steps}")
    if ckpt and train_steps:  # it would be ignored, and its run key would add a second row of the same numbers
        raise ValueError(f"--train_steps {train_steps} has no effect with --ckpt: a checkpoint is evaluated as it is, "
                         "not trained further; drop --train_steps")
    if seed is not None and not 0 <= seed < 2**32:  # numpy's and Lightning's seed range
        raise ValueError(f"--seed must be in [0, 2^32), got {seed}")


def check_extractor(proto: Protocol) -> None:
    """KeyError / ValueError naming an ``eval.extractor`` that does not resolve, ``eval.extractor_options`` it does
    not take, or a bootstrap (``eval.fid_bootstrap``, ``generator.fid_bootstrap``) its features would need more memory
    for than ``FrechetDistance`` allows, before training: the eval and generator stages build it only after the
    tokenizer (and the generator) have trained."""
    dim = _checked_extractor_dim(proto)
    if dim is None:  # a user's extractor, whose width is known once it is built
        return
    from latentbench.benchmark.fid import check_bootstrap_memory

    check_bootstrap_memory(proto.eval.fid_bootstrap, dim, 2, "eval.fid_bootstrap")  # rFID: reconstructions and images
    if proto.generator.max_steps > 0:
        check_bootstrap_memory(proto.generator.fid_bootstrap, dim, 1, "generator.fid_bootstrap")  # against a reference


def _checked_extractor_dim(proto: Protocol) -> int | None:
    """``check_extractor``'s resolution of the extractor: its feature dimension where known before it is built."""
    import inspect

    from latentbench.benchmark.extractors import DOMAIN_PREFIX, EXTRACTORS, DomainRecipe
    from latentbench.data import build_dataset

    name, options = proto.eval.extractor, dict(proto.eval.extractor_options)
    if name.startswith(DOMAIN_PREFIX):  # build_extractor's and create_extractor's order: a recipe, then the source
        try:
            recipe = DomainRecipe(**options)
        except TypeError as e:
            raise ValueError(f"eval.extractor_options {options} do not fit {name}'s training recipe ({e}): it takes "
                             f"{', '.join(inspect.signature(DomainRecipe).parameters)}") from None
        source = name[len(DOMAIN_PREFIX):]
        if name not in EXTRACTORS and source != proto.data.source:  # the protocol's own: _check_data_for_the_stages
            try:
                classes = build_dataset(source, "train", proto.data.resolution, limit=1).info["num_classes"]  # one file read at most
            except ValueError as e:
                raise ValueError(f"eval.extractor {name} is a classifier trained on the data source {source!r}, "
                                 f"which does not resolve: {e}") from None
            if classes < 2:
                from latentbench.benchmark.extractors import one_class_error

                raise one_class_error(source)
        return recipe.feature_dim
    factory = EXTRACTORS.get(name)  # KeyError naming the registered ones, or ImportError for module:Class
    if "cache_dir" in options:
        raise ValueError("eval.extractor_options may not set cache_dir (the bench passes it: LATENTBENCH_CACHE sets it)")
    signature = readable_signature(factory)  # None: one inspect cannot read, which the build checks
    try:
        if signature is not None:
            signature.bind(**{"weights": None, **options}, cache_dir=None)  # as create_extractor builds it
    except TypeError as e:
        raise ValueError(f"eval.extractor_options {options} do not fit the {name} extractor: {e}") from None
    dim = getattr(factory, "dim", None)  # a class attribute (InceptionTF, DinoV2), not an instance's
    return dim if isinstance(dim, int) and not isinstance(dim, bool) else None


def _check_data_for_the_stages(proto: Protocol, train: dict[str, Any], evaluation: dict[str, Any]) -> None:
    """The scanned splits suit every stage (same classes; the generator's class-balanced sample set): checked before
    hours of training."""
    check_same_classes(train, evaluation)
    if proto.eval.extractor == f"domain-{proto.data.source}" and train["num_classes"] < 2:  # before training, not at eval
        from latentbench.benchmark.extractors import one_class_error

        raise one_class_error(proto.data.source)
    for info, limit, name in ((train, proto.data.num_train, "num_train"), (evaluation, proto.data.num_eval, "num_eval")):
        found = info["n"] + info.get("n_skipped", 0)  # skipped files are counted and named apart (data_notes)
        if limit is not None and found < limit:  # a row must not claim images it was not measured on
            left_out = "".join(f" ({note})" for note in ignored_notes(info))  # images of a format not read, say
            raise ValueError(f"the protocol's data.{name} is {limit}, but the {info['split']} split of {info['source']} "
                             f"has {found} images{left_out}: its rows would carry the fingerprint of a {limit}-image "
                             f"protocol; set data.{name} to {found} or null (all of them), or complete the split")
    if proto.generator.max_steps > 0:
        from latentbench.generators.module import sample_labels

        if proto.generator.class_sampling == "balanced":
            sample_labels(torch.arange(1), train["num_classes"], proto.generator.num_samples, "balanced")


def _bench_variant(stages: Stages, cfg: BenchConfig, run_dir: Path, train: dict[str, Any] | None, variant: str,
                   weights: str | Path | None, trust_checkpoint: bool, on_bad_image: str, leaderboard_dir: Path,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """The eval, generate (protocols with a generator) and record stages of one result of the run; its record.

    ``variant`` is "" for a tokenizer with one result, else its name (FlowMo: "1a", "1b"), which
    suffixes the stage names; ``weights`` are that result's.
    """
    suffix = f"-{variant}" if variant else ""
    evaluation = stages.run(f"eval{suffix}", lambda: eval_stage(
        cfg, run_dir, weights, trust_checkpoint, on_bad_image, grid_name=f"reconstructions{suffix}.png"), log)
    generation = None
    if cfg.protocol.generator.max_steps > 0:
        from latentbench.benchmark.generation import generator_stage

        generation = stages.run(f"generate{suffix}", lambda: generator_stage(
            cfg, run_dir, weights, trust_checkpoint, on_bad_image, variant, log), log)
    recorded = stages.run(f"record{suffix}", lambda: run_on_rank_zero(lambda: _record_stage(
        cfg, run_dir, train, evaluation, weights, trust_checkpoint, variant, generation)), log)
    run_on_rank_zero(lambda: _ensure_recorded(recorded["record"], run_dir, leaderboard_dir, evaluation, generation, log))
    return recorded["record"]


def _finished(stages: Stages) -> bool:
    """Whether the run's last result is recorded (its stages all stored), as this process finds the run directory
    (no collective: it may be asked on one rank alone)."""
    variants = (stages.get("train") or {}).get("variants") or {"": None}
    last = list(variants)[-1]
    return stages.get(f"record-{last}" if last else "record") is not None


def _check_trained_weights(run_dir: Path, train: dict[str, Any], stages: Stages, cfg: BenchConfig) -> None:
    """ValueError unless the train stage's weights are on disk as it stored them while a later stage has to read
    them: a file deleted, cut short or replaced since would fail there or be measured as this run's. A finished
    run needs them no more (its rerun appends its stored record to another table)."""
    later = ["eval", "record"] + (["generate"] if cfg.protocol.generator.max_steps > 0 else [])
    variants = train.get("variants") or {}
    if all(stages.get(f"{name}-{v}" if v else name) is not None for name in later for v in variants or [""]):
        return
    from latentbench.generators.latents import open_safetensors

    fix = (f"delete {run_dir / 'stages/train.json'} to write them again from checkpoints/last.ckpt (or the run "
           "directory to train again)")
    weights = run_dir / train["weights"]
    paths = [run_dir / p for p in variants.values()] + [weights]
    missing = [p for p in paths if not p.is_file()]
    changed = not missing and sha256_file(weights) != train["weights_sha256"]
    if missing or changed:
        what = f"{missing[0]} is missing" if missing else f"{weights} is not the file it trained (its sha256 changed)"
        raise ValueError(f"the finished train stage's weights: {what}; {fix}")
    for path in paths:  # the other results' files (FlowMo's tokenizer-1a) have no stored sha256: one cut short fails here
        with open_safetensors(path, f"the finished train stage's weights; {fix}") as f:
            f.keys()


def resume_from(last: Path) -> str | None:
    """``last`` as Lightning's ``ckpt_path`` when it exists; ValueError naming it when it is not a readable checkpoint.

    A torch checkpoint is a zip archive; one cut short (a kill or a full disk during its save)
    fails its central directory or a member's CRC, which Lightning reports as a bare OSError.
    """
    import zipfile

    if not last.exists():
        return None
    try:
        with zipfile.ZipFile(last) as archive:
            member = archive.testzip()  # the first member whose CRC fails, else None
        bad = member and f"its member {member} fails its CRC"
    except (zipfile.BadZipFile, OSError) as err:
        bad = str(err)
    if bad is not None:
        raise ValueError(f"cannot resume from {last}: it is not a readable checkpoint ({bad}; cut short by a kill or a "
                         "full disk during its save?): delete it to restart this training from step 0")
    return str(last)


def _scan_splits(proto: Protocol, on_bad_image: str) -> list[dict[str, Any]]:
    """The train and eval splits' infos; unreadable files of both are named in one error (not one split per rerun)."""
    from latentbench.data import BadImageError

    infos, errors = [], []
    for split, limit in ((proto.data.train_split, proto.data.num_train), (proto.data.eval_split, proto.data.num_eval)):
        try:
            infos.append(_dataset(proto, split, limit, on_bad_image).info)
        except BadImageError as e:
            errors.append((split, e))
    if not errors:
        return infos
    (split, first), rest = errors[0], [(s, e) for s, e in errors[1:] if e.path != errors[0][1].path]
    if not rest:
        raise first
    also = "; ".join(f"the {s} split has unreadable files too: {e.path} ({e.reason})" for s, e in rest)
    raise BadImageError(first.path, f"{first.reason} [{split} split]; {also}", first.advice)


def lpips_nets_used(cfg: BenchConfig) -> set[str]:
    """The LPIPS backbones a run uses: the protocol's metric's, and training's perceptual loss's when it trains with one."""
    import inspect

    nets = {cfg.protocol.eval.lpips_net}
    if cfg.steps > 0:
        names = ("perceptual_weight", "perceptual_net", "posttrain_perceptual_weight", "stage_steps")
        defaults = {}  # the module's defaults, from the first class in its MRO that names each argument
        for klass in reversed(cfg.tokenizer.module_class().__mro__):
            params = inspect.signature(klass.__init__).parameters
            defaults |= {k: params[k].default for k in names if k in params}
        args = {**defaults, **cfg.tokenizer.module_args}
        weights = [args.get("perceptual_weight") or 0]
        if ((args.get("stage_steps") or {}).get("1b") or 0) > 0:  # FlowMo's stage 1b scores its samples with it too
            weights.append(args.get("posttrain_perceptual_weight") or 0)
        if max(weights) > 0 and args.get("perceptual_net"):
            nets.add(args["perceptual_net"])
    return nets


def lpips_weights_present(nets: set[str] | tuple[str, ...] = ("alex", "squeeze", "vgg")) -> tuple[str, ...]:
    """Those of the LPIPS backbones ``nets`` whose torchvision weights are in this machine's torch hub cache
    (where ``require_lpips_weights`` looks) and match their published hash."""
    from latentbench.weights import WeightsUnavailable, require_lpips_weights

    present = []
    for net in sorted(nets):
        try:
            require_lpips_weights(net)
        except WeightsUnavailable:
            continue
        present.append(net)
    return tuple(present)


def check_training_batches(proto: Protocol, tokenizer_steps: int, processes: int | None = None,
                           spec: TokenizerSpec | None = None) -> None:
    """ValueError unless this world size divides the global batch of every training the bench runs.

    Checked before any stage: the generator's batch would otherwise fail after the tokenizer trained.

    Args:
        proto: the protocol, whose batch sizes are global.
        tokenizer_steps: the tokenizer's training steps (0: it does not train).
        processes: the world size; default: the process group's.
        spec: the tokenizer, whose training module may have global batch sizes of its own
            (``global_batches``: FlowMo's ``posttrain_batch``).
    """
    if tokenizer_steps > 0:
        per_rank_batch(proto.train.batch_size, "train batch_size", processes)
        own = getattr(spec.module_class(), "global_batches", None) if spec is not None else None
        for name, n in (own(spec.module_args) if own else {}).items():
            per_rank_batch(n, f"{spec.name}'s module_args.{name}", processes)
    if proto.generator.max_steps > 0:
        per_rank_batch(proto.generator.batch_size, "generator batch_size", processes)


def check_before_launch(tokenizer: str, protocol: str, ckpt: str | None, train_steps: int | None, seed: int | None,
                        processes: int) -> None:
    """The checks of ``run_bench`` that need only the command line, for the process that launches ``processes``.

    Each launched process runs them again; failing here says it once, before the launch.

    Args:
        tokenizer: ``--tokenizer``.
        protocol: ``--protocol``.
        ckpt: ``--ckpt``.
        train_steps: ``--train_steps``.
        seed: ``--seed``.
        processes: the world size about to be launched.
    """
    proto = load_protocol(protocol)
    _check_bench_arguments(ckpt, train_steps, seed)
    check_training_batches(proto, tokenizer_steps(proto, ckpt, train_steps), processes, resolve_tokenizer(tokenizer, proto))
    if proto.generator.max_steps > 0:
        from latentbench.benchmark.generation import check_generators

        check_generators(proto)


def _require_built_weights(spec: TokenizerSpec) -> None:
    """ValueError unless the tokenizer as built carries weights it loaded (``pretrained_weights``), not random ones."""
    tokenizer = load_tokenizer(spec, None)  # loads them now: missing files stop the bench here, not at the eval stage
    if not getattr(tokenizer, "pretrained_weights", None):
        raise ValueError(
            f"--train_steps 0 benches {spec.name} as built, but it loads no pretrained weights (its weights would be "
            "random, and a row of random weights is not a result): pass --ckpt FILE with trained weights, a tokenizer "
            "that loads them (sdvae-ft-mse, or init_args: {pretrained: DIR}), or leave --train_steps out to train it. "
            "A tokenizer of your own that loads weights in __init__ says so by setting self.pretrained_weights = <source>."
        )


def _ensure_recorded(record: dict[str, Any], run_dir: Path, leaderboard_dir: Path, evaluation: dict[str, Any],
                     generation: dict[str, Any] | None, log: Callable[[str], None]) -> None:
    """Append a finished run's row to ``leaderboard_dir``'s table if it is not there.

    The record stage runs once per run directory and only stores the record; this appends it.
    A rerun that names another ``--leaderboard_dir`` (or finds its row gone from the table, or
    was killed before appending) gets the same row, same id, in the table it names, and a table
    that has the id already gets nothing but a re-render (the run may have been killed after its
    row landed but before the README.md and plots were written).
    """
    from latentbench.benchmark.leaderboard import read_records, rerender, table_dir

    proto = record["protocol"]
    record = {**record, "generation": _with_curve(record.get("generation"))}
    directory = table_dir(leaderboard_dir, proto["name"], proto["version"])
    if any(r["id"] == record["id"] for r in read_records(directory)):
        rerender(directory)  # a writer killed between its row and the table's README.md left the README without it
        log(f"[record] row {record['id'][:12]} is in {directory} already: nothing appended, table re-rendered")
        return
    _append_with_grids(record, run_dir, leaderboard_dir, evaluation, generation, if_absent=True)
    log(f"[record] row {record['id'][:12]} appended to {directory}")


def _silent(message: str) -> None:
    """Ranks other than 0 print nothing: one process speaks for the run."""


def _copy_grids(record: dict[str, Any], run_dir: Path, leaderboard_dir: Path, *names: str | None) -> list[Path]:
    """Copy the run's reconstruction and sample pictures beside the table, named by the record id."""
    import shutil

    from latentbench.benchmark.leaderboard import GRID_DIR, grid_names, table_dir

    proto = record["protocol"]
    target = table_dir(leaderboard_dir, proto["name"], proto["version"]) / GRID_DIR
    copied = []
    for name, dst in zip(names, grid_names(record), strict=True):
        if name and (run_dir / name).exists():
            target.mkdir(parents=True, exist_ok=True)
            with atomic_path(target / dst) as tmp:
                shutil.copyfile(run_dir / name, tmp)
            copied.append(target / dst)
    return copied


def _record_stage(cfg, run_dir, train, evaluation, weights, trust, variant: str = "",
                  generation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's record, stored as the stage's result before any table sees it (``_ensure_recorded`` appends it).

    Stored first, appended second: a process killed between the two leaves a stored record whose
    id the rerun finds missing from the table and appends, once. Appending first left a row whose
    random id no stored record knew, and the rerun appended a second row of the same run.
    """
    from latentbench.benchmark.schema import validate_record

    generation = _with_curve(generation)
    record = build_record(cfg, run_dir, train, evaluation, weights, trust, generation)
    if variant:
        record["tokenizer"]["variant"] = variant
    validate_record(record)  # a record no table takes is not stored as done: the rerun after the fix builds it anew
    return {"record": record}


def _with_curve(generation: dict[str, Any] | None) -> dict[str, Any] | None:
    """A trained generator's stage result or record part with its gFID curve: versions that trained a generator
    without an extractor stored none, and the record schema requires one (empty)."""
    if generation is None or not generation.get("trained", True) or "curve" in generation:
        return generation
    return {**generation, "curve": []}


def _append_with_grids(record: dict[str, Any], run_dir: Path, leaderboard_dir: Path, evaluation: dict[str, Any],
                       generation: dict[str, Any] | None, if_absent: bool = False) -> Path:
    """Copy the run's pictures beside the table and append the row (``append_record``); the table directory."""
    copied = _copy_grids(record, run_dir, leaderboard_dir, evaluation.get("grid"), (generation or {}).get("samples_grid"))
    try:
        return append_record(leaderboard_dir, record, if_absent=if_absent)
    except BaseException:
        for path in copied:  # no picture without its row
            path.unlink(missing_ok=True)
        raise
