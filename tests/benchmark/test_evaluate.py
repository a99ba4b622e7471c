"""Sharded evaluation: every sample exactly once, and 2 gloo processes equal 1."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from latentbench.benchmark.evaluate import ShardSampler


@pytest.mark.parametrize("n, world_size", [(11, 3), (63, 2), (2, 4)])
def test_shards_cover_every_index_once_without_padding(n, world_size):
    shards = [list(ShardSampler(n, rank, world_size)) for rank in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))
    assert sum(len(ShardSampler(n, r, world_size)) for r in range(world_size)) == n


def test_bad_rank_raises():
    with pytest.raises(ValueError, match="outside world size"):
        ShardSampler(10, 2, 2)


def test_loader_workers_decode_in_processes_and_change_nothing(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from latentbench.benchmark.evaluate import encode_batches, loader_workers, shard_loader
    from latentbench.data import build_dataset

    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "a" / f"{i}.jpg")
    data = build_dataset(f"imagefolder:{tmp_path}", "train", 32)
    codec = torch.nn.Identity()
    codec.encode = lambda x: x[:, :, ::4, ::4]
    assert shard_loader(data, 4).num_workers == 0
    serial = [t for batch in encode_batches(codec, data, 4, progress=False) for t in batch]
    with loader_workers(2):
        assert shard_loader(data, 4).num_workers == 2
        with loader_workers(0):
            assert shard_loader(data, 4).num_workers == 0
        parallel = [t for batch in encode_batches(codec, data, 4, progress=False) for t in batch]
    assert shard_loader(data, 4).num_workers == 0  # restored
    assert len(serial) == len(parallel) == 9 and all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))
    with pytest.raises(ValueError, match="loader workers must be >= 0"):
        with loader_workers(-1):
            pass


WORKER = """
import json, sys
import lpips, torch, torch.distributed as dist
from latentbench.benchmark.evaluate import ReconstructionMetrics, gather_by_index, reconstruct
from latentbench.benchmark.extractors import DomainRecipe, create_extractor
from latentbench.benchmark.perceptual import LPIPS
from latentbench.data import build_dataset

out, cache, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
dist.init_process_group("gloo")


class PoolTokenizer(torch.nn.Module):
    # exactly batch-invariant (a float32 conv net is not, at ~1e-7), so only the sharding is tested

    def encode(self, x):
        return torch.nn.functional.avg_pool2d(x, 2)

    def decode(self, z):
        return 0.9 * torch.nn.functional.interpolate(z, scale_factor=2, mode="nearest")


tokenizer = PoolTokenizer()
torch.manual_seed(1)  # the same random LPIPS backbone in every process: tests the wiring, not the weights
perceptual = LPIPS(model=lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False))
extractor = create_extractor("domain-mnist", cache_dir=cache, recipe=DomainRecipe(max_steps=20))
metrics = ReconstructionMetrics(extractor, perceptual, bootstrap=10, seed=0)
passed = reconstruct(tokenizer, build_dataset("mnist", "val", 32, limit=63), metrics, batch_size, progress=False)
results = metrics.results()
(latents, _) = gather_by_index(passed.rows())
results["latents"] = {"sum": float(latents.double().sum()), "n": len(latents)}
if dist.get_rank() == 0:
    json.dump(results, open(out, "w"))
dist.destroy_process_group()
"""


def _run(tmp_path, nproc, batch_size, cache):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    out = tmp_path / f"out-{nproc}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(script), str(out), str(cache), str(batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_processes_equal_one_on_an_odd_sample_count(tmp_path):
    from latentbench.benchmark.extractors import DomainRecipe, create_extractor

    cache = tmp_path / "cache"
    create_extractor("domain-mnist", cache_dir=cache, recipe=DomainRecipe(max_steps=20))  # warm: ranks only load it
    one = _run(tmp_path, 1, 16, cache)
    two = _run(tmp_path, 2, 5, cache)  # another world size and another batch size
    for name in ("psnr", "ssim", "lpips"):
        assert one[name]["n"] == two[name]["n"] == 63
        # PSNR/SSIM: float64 sums, so only the summation order differs; LPIPS runs a float32 conv net,
        # whose kernels round differently for other batch compositions (~1e-8)
        assert two[name]["value"] == pytest.approx(one[name]["value"], rel=1e-9 if name != "lpips" else 1e-6)
    assert one["rfid"]["n"] == two["rfid"]["n"] == 63
    assert two["rfid"]["value"] == pytest.approx(one["rfid"]["value"], rel=1e-6)
    assert two["rfid"]["interval"] == pytest.approx(one["rfid"]["interval"], rel=1e-6)
    assert two["latents"]["n"] == 63 and two["latents"]["sum"] == pytest.approx(one["latents"]["sum"], rel=1e-9)


GATHER = """
import json, sys
import torch, torch.distributed as dist
from latentbench.benchmark.evaluate import gather_by_index

dist.init_process_group("gloo")
rank = dist.get_rank()
rows = {0: [(torch.tensor([4, 0]), torch.tensor([40.0, 0.0])), (torch.tensor([2]), torch.tensor([20.0]))],
        1: [], 2: [(torch.tensor([1, 3]), torch.tensor([10.0, 30.0]))]}[rank]  # rank 1 holds no rows
(values,) = gather_by_index(rows)
nothing = gather_by_index([])  # no rank holds any
if rank == 1:
    json.dump({"values": values.tolist(), "nothing": nothing}, open(sys.argv[1], "w"))
dist.destroy_process_group()
"""


def test_gather_by_index_orders_every_ranks_rows_and_takes_ranks_without_any(tmp_path):
    import torch

    from latentbench.benchmark.evaluate import gather_by_index

    (one,) = gather_by_index([(torch.tensor([2, 0]), torch.tensor([2.0, 0.0])), (torch.tensor([1]), torch.tensor([1.0]))])
    assert one.tolist() == [0.0, 1.0, 2.0] and gather_by_index([]) is None
    script, out = tmp_path / "gather.py", tmp_path / "gather.json"
    script.write_text(textwrap.dedent(GATHER))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", str(script), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text()) == {"values": [0.0, 10.0, 20.0, 30.0, 40.0], "nothing": None}


def test_a_stochastic_decoders_reconstructions_do_not_depend_on_the_batch_size():
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from latentbench.benchmark.evaluate import ReconstructionMetrics, gather_by_index, reconstruct

    class Noisy(nn.Module):
        def encode(self, x):
            return x

        def decode(self, z, generator=None):
            return z + 0.1 * torch.randn(z.shape, generator=generator)

    data = TensorDataset(torch.rand(7, 3, 12, 12) * 2 - 1, torch.zeros(7, dtype=torch.long))
    recs = {}
    for batch_size in (7, 3, 1):
        metrics = ReconstructionMetrics()
        passed = reconstruct(Noisy(), data, metrics, batch_size, seed=5, grid_size=7, progress=False)
        recs[batch_size] = gather_by_index(passed.grid)[1]
        assert metrics.results()["psnr"]["n"] == 7
    assert torch.equal(recs[7], recs[3]) and torch.equal(recs[7], recs[1])
    again = reconstruct(Noisy(), data, ReconstructionMetrics(), 7, seed=6, grid_size=7, progress=False)
    assert not torch.equal(gather_by_index(again.grid)[1], recs[7])  # the bench's seed still decides the noise


def test_a_decoder_that_returns_unit_range_images_is_warned_about():
    import warnings

    import torch

    from latentbench.benchmark.evaluate import ReconstructionMetrics

    real = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    unit = ReconstructionMetrics()
    unit.update(torch.arange(4), real, (real + 1) / 2)  # a sigmoid decoder's output scale
    with pytest.warns(UserWarning, match=r"every reconstruction lies in \[0, 1\] while the images reach -1.00"):
        unit.results()
    from torch import nn
    from torch.utils.data import TensorDataset

    from latentbench.benchmark.evaluate import reconstruct

    class Bytes(nn.Module):  # [0, 255] images: the bench clamps them before measuring, so they read all white
        def encode(self, x):
            return x

        def decode(self, z):
            return (z + 1) * 127.5

    bytes_ = ReconstructionMetrics()
    reconstruct(Bytes(), TensorDataset(real, torch.zeros(4, dtype=torch.long)), bytes_, 4, progress=False)
    with pytest.warns(UserWarning, match=r"every reconstruction lies in \[0, 25\d\] .* return x / 127.5 - 1 instead"):
        bytes_.results()

    class Undershoot(Bytes):  # [0, 255] images a little below 0 at the darkest pixels: still the wrong scale
        def decode(self, z):
            return (z + 1) * 127.5 - 3

    under = ReconstructionMetrics()
    reconstruct(Undershoot(), TensorDataset(real, torch.zeros(4, dtype=torch.long)), under, 4, progress=False)
    assert "return x / 127.5 - 1 instead" in under.scale_problem()
    right = ReconstructionMetrics()
    right.update(torch.arange(4), real, real * 0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        right.results()
