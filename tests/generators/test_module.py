"""GeneratorModule: class-balanced labels, EMA, overfitting, and sample sets independent of the world size."""
import inspect

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from latentbench.benchmark.evaluate import ShardSampler
from latentbench.generators.latents import LatentShards, ShardWriter
from latentbench.generators.module import (
    GENERATOR_CONFIG_DIR,
    GeneratorModule,
    build_generator,
    resolve_generator,
    sample_labels,
    sample_seeds,
)

SHAPES = {"dit-smoke": [4, 4, 4], "maskgit-smoke": [8, 6]}


def test_balanced_labels_give_exactly_n_over_k_per_class_on_any_sharding():
    n, k = 60, 10
    for world_size in (1, 2, 7):
        labels = torch.cat([sample_labels(torch.tensor(list(ShardSampler(n, r, world_size))), k, n) for r in range(world_size)])
        assert torch.bincount(labels, minlength=k).tolist() == [n // k] * k
    with pytest.raises(ValueError, match="divisible by the 10 classes"):
        sample_labels(torch.arange(5), 10, 55)


def test_random_labels_follow_the_sample_not_the_batch():
    idx = torch.arange(40)
    labels = sample_labels(idx, 10, 40, mode="random", seed=3)
    assert torch.equal(sample_labels(idx[25:], 10, 40, mode="random", seed=3), labels[25:])
    assert len(labels.unique()) > 3 and labels.max() < 10


def test_an_unknown_class_sampling_is_refused_not_taken_for_random():
    with pytest.raises(ValueError, match="class_sampling must be 'balanced' or 'random', got 'balance'"):
        sample_labels(torch.arange(10), 10, 10, mode="balance")


@pytest.mark.parametrize("decay", [1.0, -0.5])
def test_an_ema_decay_outside_0_1_is_refused(decay):
    # decay 1 kept the initial weights as the average for ever: every sample came from the untrained network
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        GeneratorModule("dit-smoke", SHAPES["dit-smoke"], num_classes=3, ema_decay=decay)


def _module(name, **kw):
    torch.manual_seed(0)
    shape = SHAPES[name]
    return GeneratorModule(name, shape, num_classes=3, num_samples=9, **({"transport": {"sample_steps": 3}} if name.startswith("dit") else {}), **kw)


def _codes(n, shape):
    return torch.randint(0, 2, (n, *shape)).float() * 2 - 1


def _latents(name, n):
    return _codes(n, SHAPES[name]) if name.startswith("maskgit") else torch.randn(n, *SHAPES[name])


@pytest.mark.parametrize("name", ["dit-smoke", "maskgit-smoke"])
def test_tiny_generator_overfits_a_few_latents(name):
    module = _module(name)
    z, y = _latents(name, 4), torch.tensor([0, 1, 2, 0])
    opt = torch.optim.Adam(module.generator.parameters(), lr=3e-3)
    losses = []
    for step in range(150):
        torch.manual_seed(step % 4)  # a fixed handful of noise/time (mask) draws to memorise
        loss = module.generator.training_losses(z, y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.3 * sum(losses[:10]) / 10


class _Trajectory(Callback):
    def __init__(self):
        self.params = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.params.append([p.detach().clone() for p in pl_module.parameters()])


def test_ema_weights_follow_the_ema_rule_and_are_what_training_leaves():
    decay = 0.8
    module = _module("dit-smoke", ema_decay=decay, lr=1e-2)
    data = DataLoader(TensorDataset(torch.randn(16, 4, 4, 4), torch.randint(0, 3, (16,))), batch_size=4)
    trajectory = _Trajectory()
    trainer = L.Trainer(max_steps=5, callbacks=[trajectory], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, data)
    ema = trajectory.params[0]  # AveragedModel's first update copies the weights
    for params in trajectory.params[1:]:
        ema = [decay * e + (1 - decay) * p for e, p in zip(ema, params, strict=True)]
    for got, want in zip(module.parameters(), ema, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert any(not torch.allclose(p, q) for p, q in zip(module.parameters(), trajectory.params[-1], strict=True))


def test_ema_leaves_constant_buffers_exact():
    """MaskGIT's int64 sub-token offsets (513 apart at 18 bits) survive EMA at the paper decay, in training and after."""
    torch.manual_seed(0)
    module = GeneratorModule("maskgit-smoke", [4, 18], num_classes=3, num_samples=9, ema_decay=0.9999)
    offsets = module.generator.offsets.clone()
    assert offsets.tolist() == [0, 513]
    seen = []

    class Check(Callback):
        def on_validation_epoch_start(self, trainer, pl_module):  # the EMA weights are swapped in to sample
            seen.append(pl_module.generator.offsets.clone())

    data = DataLoader(TensorDataset(_codes(16, [4, 18]), torch.randint(0, 3, (16,))), batch_size=4)
    trainer = L.Trainer(max_steps=4, callbacks=[Check()], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, val_check_interval=2, num_sanity_val_steps=0)
    trainer.fit(module, data, DataLoader(torch.arange(9), batch_size=9))
    assert len(seen) == 2 and all(torch.equal(o, offsets) for o in seen)
    assert torch.equal(module.generator.offsets, offsets)


def _sample_shard(rank, world_size, name, out, init):
    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world_size)
    module = _module(name).eval()
    index = torch.tensor(list(ShardSampler(9, rank, world_size)))
    z, y = module.sample(index)
    with ShardWriter(out, rank, world_size) as writer:
        writer.add(index, z, y)
    if world_size > 1:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["dit-smoke", "maskgit-smoke"])
def test_sample_set_is_the_same_on_one_and_two_processes(tmp_path, name):
    """Per-sample seeds: 9 samples (odd) drawn by 2 gloo processes equal those drawn by 1."""
    _sample_shard(0, 1, name, tmp_path / "one", None)
    ctx = mp.get_context("fork")  # the worker lives in this test file, which spawn cannot import
    procs = [ctx.Process(target=_sample_shard, args=(r, 2, name, tmp_path / "two", tmp_path / "pg")) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    z1, y1 = LatentShards(tmp_path / "one").read_all()
    z2, y2 = LatentShards(tmp_path / "two").read_all()
    assert torch.equal(y1, y2) and len(z1) == 9
    torch.testing.assert_close(z1, z2, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(z1[0], z1[3])  # same class (0), different seeds: different samples


@pytest.mark.parametrize("name", ["dit-smoke", "maskgit-smoke"])
def test_cpu_sampling_in_chunks_changes_no_sample(monkeypatch, name):
    import latentbench.batching as batching

    module = _module(name).eval()
    index = torch.arange(7)
    with torch.no_grad():
        whole, y = module.sample(index)  # one pass: 7 < the default chunk of 64
        monkeypatch.setattr(batching, "CPU_CHUNK", 3)  # passes of 3, 3 and 1 samples, each seeded by its own index
        sizes = []
        sample = module.generator.sample
        monkeypatch.setattr(module.generator, "sample", lambda y, *a, **k: sizes.append(len(y)) or sample(y, *a, **k))
        split, y_split = module.sample(index)
    assert sizes == [3, 3, 1] and torch.equal(y, y_split)
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-5)
    assert batching.chunks(7, "cuda") == [slice(0, 7)]  # GPUs take the batch whole


def test_sample_seeds_are_distinct_per_index():
    seeds = sample_seeds(torch.arange(1000), 0)
    assert len(set(seeds)) == 1000 and sample_seeds(torch.tensor([5]), 0)[0] == seeds[5]


SHIPPED_SHAPES = {"maskgit": (32, 12), "dit-dh": (768, 16, 16)}


@pytest.mark.parametrize("path", sorted(GENERATOR_CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_generator_config_builds(path):
    """Paper sizes on the meta device (no memory), with the contract the harness needs."""
    gen = resolve_generator(path.stem)
    assert gen.source.endswith(f"{path.stem}.yaml")
    shape = next((v for k, v in SHIPPED_SHAPES.items() if gen.name.startswith(k)), (4, 8, 8))
    with torch.device("meta"):
        net = build_generator(gen.name, shape, 10, gen.init_args, gen.transport)
    assert hasattr(net, "training_losses") and hasattr(net, "sample") and net.describe()
    assert set(gen.module_args) <= set(inspect.signature(GeneratorModule).parameters)


def test_paper_generator_configs_follow_the_official_training_configs():
    """RAE's DiT-DH-XL clips at 1.0 with beta2 0.95, EMA 0.9995 and its lr decay; LightningDiT does not clip and adds
    the cosine loss; the CPU configs do neither."""
    from latentbench.generators.module import GeneratorModule, resolve_generator

    rae, lightning, ci = (resolve_generator(n) for n in ("dit-dh-xl", "lightningdit-xl-1", "dit-ci"))
    assert rae.module_args["grad_clip"] == 1.0 and rae.module_args["ema_decay"] == 0.9995
    assert rae.module_args["betas"] == lightning.module_args["betas"] == [0.9, 0.95]
    assert rae.module_args["final_lr"] == 2e-5 and "cosine_weight" not in rae.transport
    assert "grad_clip" not in lightning.module_args and lightning.transport["cosine_weight"] == 1.0
    assert "grad_clip" not in ci.module_args and "final_lr" not in ci.module_args
    with pytest.raises(ValueError, match="grad_clip must be > 0"):
        GeneratorModule("dit-smoke", [4, 8, 8], 10, grad_clip=0.0)


def test_learning_rate_schedule_warmup_then_rae_linear_decay():
    """RAE's schedule (optim_utils.build_scheduler, linear, no warmup from zero): lr held, then linear to final_lr
    between decay_start and decay_end of max_steps, then held; without final_lr: warmup then constant."""
    from types import SimpleNamespace

    from latentbench.generators.module import GeneratorModule, lr_factor

    rae = SimpleNamespace(lr=2e-4, final_lr=2e-5, decay_start=0.1, decay_end=0.6, max_steps=1000, warmup_steps=0)
    factors = [lr_factor(s, rae) for s in (0, 100, 350, 600, 999)]
    assert factors == pytest.approx([1.0, 1.0, 0.55, 0.1, 0.1])
    plain = SimpleNamespace(lr=1e-4, final_lr=None, warmup_steps=4, max_steps=1000)
    assert [lr_factor(s, plain) for s in (0, 3, 500)] == [0.25, 1.0, 1.0]
    both = SimpleNamespace(**{**vars(rae), "warmup_steps": 50})  # a warmup ending before the decay: each in turn
    assert [lr_factor(s, both) for s in (0, 49, 100, 350, 999)] == pytest.approx([0.02, 1.0, 1.0, 0.55, 0.1])
    module = GeneratorModule("dit-smoke", [4, 8, 8], 10, max_steps=1000, lr=2e-4, final_lr=2e-5, decay_start=0.1,
                             decay_end=0.6)
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    for _ in range(350):
        sched.optimizer.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(2e-4 * 0.55)
    with pytest.raises(ValueError, match="decay_start < decay_end"):
        GeneratorModule("dit-smoke", [4, 8, 8], 10, final_lr=1e-5, decay_start=0.5, decay_end=0.2)


@pytest.mark.parametrize("text, message", [
    ("- name: dit\n", "must hold a mapping of keys (name: ..., ...), not a list"),  # was TypeError: unhashable type
    ("name: dit\ninit_args: {depth: 2}\ninit_args: {depth: 4}\n", "line 3, column 1: 'init_args' is given twice"),
    ("name: dit\nbad: [1\n", "line 3, column 1: expected ',' or ']'"),
])
def test_a_malformed_generator_config_is_one_line_naming_it(tmp_path, text, message):
    """A generator config is read as protocols and tokenizer configs are (``load_yaml_mapping``): a list crashed with
    a TypeError, a key given twice took its last value silently, and a syntax error was PyYAML's four lines."""
    path = tmp_path / "gen.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        resolve_generator(str(path))
    assert str(err.value).startswith(f"generator config {path} ") and message in str(err.value)
