"""The bench's generator stage: latent cache -> generator training -> gFID curve -> convergence steps.

For one tokenizer checkpoint (one result variant):

1. encode the protocol's train split once into the latent cache (``generators.latents``),
   keyed by the checkpoint's sha256, the data and the preprocessing;
2. train the protocol's generator on the normalised latents (DiT + flow matching for
   continuous latents, MaskGIT for discrete codes), sampling the gFID sample set with the EMA
   weights every ``eval_every`` steps. The generator's folder is keyed by the sha256 of the
   latents themselves, so two checkpoints that encode identically (FlowMo 1a and 1b: stage 1b
   freezes the encoder) train one generator;
3. decode each evaluated step's samples with this checkpoint's decoder and measure gFID against
   the protocol's reference statistics; the curve gives the convergence steps.

Each piece resumes: the cache is reused, the generator resumes from its last checkpoint, and
a finished generator training is a stored stage result.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from latentbench.benchmark.gfid import (
    measure_samples,
    plot_curves,
    reference_stats,
    steps_to_target,
)
from latentbench.distributed import (
    Launch,
    barrier,
    is_rank_zero,
    mean_over_processes,
    per_rank_batch,
    per_rank_eval_batch,
    trainer_kwargs,
)

if TYPE_CHECKING:
    from latentbench.generators.latents import LatentShards


def generator_stage(cfg, run_dir: Path, weights: Path | str | None, trust: bool, on_bad_image: str,
                    variant: str = "", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Latents, generator, gFID curve and convergence for the tokenizer checkpoint ``weights``; gFID unavailable and
    no generator trained when the protocol's FID extractor has no weights here."""
    from latentbench.benchmark.harness import _dataset, load_for_decoding
    from latentbench.benchmark.stages import Stages
    from latentbench.generators.latents import LatentNorm, NormalizedLatents
    from latentbench.generators.module import resolve_generator

    proto, spec = cfg.protocol, cfg.protocol.generator
    suffix = f"-{variant}" if variant else ""
    extractor, why = _extractor(proto, on_bad_image)
    if extractor is None:  # nothing this stage measures could be measured: its hours of generator training are not spent
        log(f"[generate{suffix}] gFID unavailable ({why}): no generator is trained")
        # stored as done, as the eval stage's unavailable rFID is: the run's weights measure both later (--ckpt)
        return {"gfid": {"unavailable": f"{why} (so the bench trained no generator; once the weights are in place, "
                                        f"--ckpt {run_dir / 'tokenizer.safetensors'} measures rFID and gFID without "
                                        "training the tokenizer again)"}, "trained": False}
    tokenizer, compiled = load_for_decoding(cfg, weights, trust)
    latent = tokenizer.latent_spec
    train = _dataset(proto, proto.data.train_split, proto.data.num_train, on_bad_image)
    start = time.perf_counter()
    shards, cache = train_latents(cfg, run_dir, tokenizer, weights, train)
    encode_s = time.perf_counter() - start

    discrete = latent.bits_per_token is not None
    gen = resolve_generator(spec.discrete if discrete else spec.continuous)
    norm = LatentNorm.of_cache("none" if discrete else spec.normalization, shards, latent.scaling_factor)
    num_classes = train.info["num_classes"]
    fields = {**_training_fields(spec), "precision": cfg.gen_precision}  # the protocol's, or latentbench.precision's fallback
    gen_key = hashlib.sha256(json.dumps({"latents": cache["latents_sha256"], "generator": gen.to_dict(), "spec": fields,
                                         "norm": norm.mode, "seed": cfg.seed}, sort_keys=True).encode()).hexdigest()[:12]
    gen_dir = run_dir / "generators" / f"{gen.name}-{gen_key}"
    gen_dir.mkdir(parents=True, exist_ok=True)
    trained = Stages(gen_dir).run("train", lambda: train_generator(gen, spec, NormalizedLatents(shards, norm), num_classes, gen_dir,
                                                                   cfg.seed, cfg.launch, cfg.gen_precision), log,
                                  label=f"generate{suffix}: train generator")

    limits = {proto.data.train_split: proto.data.num_train, proto.data.eval_split: proto.data.num_eval}
    reference = reference_stats(spec.reference, lambda split: _dataset(proto, split, limits.get(split), on_bad_image),
                                extractor, per_rank_eval_batch(proto.eval.batch_size), cache_dir=_cache_dir())
    curve, images = [], None
    for step in spec.eval_steps:
        last = step == spec.max_steps
        result, images_step = measure_samples(gen_dir / "samples" / f"step-{step:07d}", tokenizer, norm, extractor, reference,
                                              cfg.seed, per_rank_eval_batch(spec.sample_batch_size),
                                              spec.fid_bootstrap if last else 0,
                                              keep_images=2 * num_classes if last else 0, num_samples=spec.num_samples)
        log(f"  gFID at step {step}: {result['value']:.3f} ({result['n']} samples)")
        curve.append({"step": step, "value": result["value"], "interval": result["interval"], "n": result["n"]})
        images = images_step if last else images
    gfid = {**result, "extractor": extractor.describe(), "reference": {"source": spec.reference, "sha256": reference.sha256, "n": reference.n}}
    grid = None
    if is_rank_zero():
        grid = _save_grid(images, run_dir / f"samples{suffix}.png", num_classes)
        plot_curves({cfg.tokenizer.name + suffix: curve}, run_dir / f"gfid_curve{suffix}.png", label=gfid["label"],
                    target=spec.target_gfid if _number(spec.target_gfid) else None)
    return {"gfid": gfid, "curve": curve, "samples_grid": grid, "compiled": compiled,
            "convergence": {"target": spec.target_gfid,  # "baseline": resolved when the table is rendered
                            "steps_to_target": steps_to_target(curve, spec.target_gfid) if _number(spec.target_gfid) else None,
                            "budget": spec.max_steps, "baseline": proto.resolve_tokenizer(spec.baseline)},
            **_facts(gen, trained, cache, norm, encode_s, spec)}


def check_generators(proto) -> None:
    """Before training: both of the protocol's generators resolve to a registered network (KeyError / ValueError
    naming it), and where the protocol pins its generator configs (``generator_configs``), each is the one pinned
    (ValueError naming the file and both digests): an edited config would land rows its table's others do not compare to."""
    from latentbench.generators import GENERATORS
    from latentbench.generators.module import resolve_generator

    spec, pins = proto.generator, proto.generator_configs
    for kind in ("continuous", "discrete"):
        name = getattr(spec, kind)
        try:
            gen = resolve_generator(name)
            GENERATORS.get(gen.name)
        except (KeyError, ValueError, FileNotFoundError) as e:
            raise type(e)(f"the protocol's generator.{kind}: {e.args[0]}") from None
        if not pins:  # a protocol of one's own may leave its generators unpinned
            continue
        where = f"{gen.source or f'the registered generator {name}'} (generator.{kind} of protocol {proto.id})"
        if name not in pins:
            raise ValueError(f"{where} has no pin in the protocol's generator_configs, which pins {sorted(pins)}: "
                             f"add `{name}: {gen.sha256}` there")
        if gen.sha256 != pins[name]:
            raise ValueError(
                f"{where} is not the config this protocol's rows were measured with: its content hashes to "
                f"{gen.sha256[:12]}, the protocol's generator_configs pins {pins[name][:12]}. Its rows would share a table with "
                f"rows of another generator. Restore the file (`git checkout {gen.source}` in a checkout), or measure the "
                f"changed generator under a new protocol version: bump `version` and pin `{name}: {gen.sha256}`")


def train_latents(cfg, run_dir: Path, tokenizer, weights: Path | str | None, train) -> tuple[LatentShards, dict[str, Any]]:
    """The train split's latents (read lazily) and the cache's meta, from the run's latent cache (encoded on first use).

    The eval stage's linear probe and the generator stage both read them: the train split is
    encoded once per checkpoint. The key hashes the checkpoint, the dataset and the preprocessing.
    """
    from latentbench.generators.latents import CacheKey, cached_latents
    from latentbench.weights import sha256_file

    proto = cfg.protocol
    key = CacheKey(tokenizer_sha256=sha256_file(weights) if weights else f"init:{json.dumps(cfg.tokenizer.to_dict(), sort_keys=True)}",
                   dataset=train.info, preprocessing=f"resolution {proto.data.resolution}, [-1, 1]")
    return cached_latents(run_dir / "latents" / key.digest[:16], key, tokenizer, train,
                          per_rank_eval_batch(proto.eval.batch_size))


def _facts(gen, trained: dict[str, Any], cache: dict[str, Any], norm, encode_s: float, spec) -> dict[str, Any]:
    return {"generator": {**gen.to_dict(), **{k: trained[k] for k in ("describe", "params", "steps", "final_loss", "precision")}},
            "latents": {"sha256": cache["latents_sha256"], "n": cache["n"], "shape": cache["shape"], "encode_s": encode_s,
                        "normalization": norm.describe()},
            "samples": {"n": spec.num_samples, "class_sampling": spec.class_sampling},
            "generator_train_s": trained["wall_time_s"],
            # where the generator trained (its own stage, maybe resumed elsewhere): a record quotes it
            "generator_provenance": {k: trained.get(k) for k in ("provenance", "provenance_resumed")}}


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _training_fields(spec) -> dict[str, Any]:
    """The generator settings that change its training or its samples (not the target, baseline or reference)."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(spec).items() if k not in ("target_gfid", "baseline", "reference", "fid_bootstrap")}


def train_generator(gen, spec, data: Dataset, num_classes: int, out_dir: Path, seed: int,
                    launch: Launch | None = None, precision: str | None = None) -> dict[str, Any]:
    """Fit the generator on normalised latents with Lightning; sampled latents land in ``out_dir/samples``.

    ``data``: (normalised latent, label) items, e.g. ``NormalizedLatents`` over the latent cache
    (read batch by batch) or a ``TensorDataset``; its per-item shape is ``data.shape`` when it
    has one, else that of its first item.

    ``precision``: the Lightning precision to train in (None: the protocol's, ``spec.precision``).

    Under DDP each process takes ``batch_size / world size``
    latents per step from its ``DistributedSampler`` shard and samples its shard of the gFID
    sample set at every evaluation.
    """
    from safetensors.torch import save_file

    from latentbench.benchmark.evaluate import ShardSampler, world
    from latentbench.benchmark.harness import _loader, _quiet_lightning, fit_resumable, seed_process
    from latentbench.fsutil import atomic_path
    from latentbench.generators.module import GeneratorModule

    _quiet_lightning()
    seed_process(seed)
    rank, world_size = world()
    if min(len(data), spec.num_samples) < max(world_size, 1):
        raise ValueError(f"cannot train the generator: {len(data)} latents and {spec.num_samples} gFID samples for "
                         f"{world_size} processes (each trains on and samples its share; a process without one never "
                         "evaluates); give the protocol at least as many train images and num_samples as processes")
    shape = list(getattr(data, "shape", None) or data[0][0].shape)
    module = GeneratorModule(gen.name, shape, num_classes, gen.init_args, gen.transport, max_steps=spec.max_steps,
                             sample_seed=seed, num_samples=spec.num_samples, class_sampling=spec.class_sampling,
                             samples_dir=str(out_dir / "samples"), **gen.module_args)
    batch = per_rank_batch(spec.batch_size, "generator batch_size")
    # sharded by _loader, and the sample loader below by hand, so Lightning's sampler replacement is off
    loader = _loader(data, batch, True, seed, drop_last=len(data) > spec.batch_size, distributed=True)
    sample_index = DataLoader(torch.arange(spec.num_samples), batch_size=per_rank_eval_batch(spec.sample_batch_size),
                              sampler=ShardSampler(spec.num_samples, rank=None))
    trainer = fit_resumable(module, loader, sample_index, out_dir, spec.max_steps, precision or spec.precision,
                            trainer_kwargs(launch or Launch()), gradient_clip_val=module.hparams.grad_clip,
                            val_check_interval=spec.eval_every or spec.max_steps, check_val_every_n_epoch=None,
                            num_sanity_val_steps=0)
    barrier()  # every rank has written its shard of the last evaluation's samples
    missing = [s for s in spec.eval_steps if not (out_dir / "samples" / f"step-{s:07d}").is_dir()]
    if missing:
        raise RuntimeError(f"generator training in {out_dir} ended without samples for steps {missing}; "
                           f"delete {out_dir / 'checkpoints'} to retrain")
    weights = out_dir / "generator.safetensors"  # the EMA weights (EMAWeightAveraging copies them in at the end)
    state = module.generator.state_dict()
    if rank == 0:
        with atomic_path(weights) as tmp:
            save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp))
    generator = module.generator
    return {
        "steps": int(trainer.global_step),
        "precision": precision or spec.precision,
        "final_loss": mean_over_processes(trainer.callback_metrics.get("train/loss", float("nan"))),  # the whole batch's
        "params": sum(p.numel() for p in generator.parameters()),
        "describe": generator.describe() if hasattr(generator, "describe") else None,
        "weights": weights.name,
    }


def _extractor(proto, on_bad_image: str):
    """The protocol's FID extractor, or (None, why) when its weights are missing."""
    from latentbench.benchmark.harness import build_extractor

    return build_extractor(proto, _cache_dir(), on_bad_image)


def _cache_dir():
    from latentbench.paths import default_cache_dir

    return default_cache_dir()


def _save_grid(images: torch.Tensor | None, path: Path, nrow: int) -> str | None:
    """A picture of generated images in rows of ``nrow``: the number of classes K, so that under class-balanced
    sampling (sample i has class i mod K) each column is one class; under ``class_sampling: random`` it is not."""
    if images is None:
        return None
    from torchvision.utils import save_image

    from latentbench.fsutil import atomic_path

    with atomic_path(path) as tmp:
        save_image(images, str(tmp), nrow=nrow, normalize=True, value_range=(-1, 1), format="png")
    return path.name
