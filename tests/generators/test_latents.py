"""The latent cache: normalisation, shards readable by any world size, keys, refusal of broken caches."""
import pytest
import torch
from torch.utils.data import TensorDataset

from latentbench.generators.latents import (
    CacheKey,
    LatentNorm,
    cached_latents,
    latents_sha256,
    load_cache,
    read_shards,
    write_shard,
)


@pytest.mark.parametrize("shape, channel_axis", [((4, 3, 5), 0), ((6, 8), 1)])
def test_channel_norm_standardises_each_channel(shape, channel_axis):
    z = torch.randn(200, *shape) * torch.linspace(0.5, 3, shape[channel_axis]).reshape(
        (-1, 1, 1) if channel_axis == 0 and len(shape) == 3 else (1, -1)) + 2.0
    norm = LatentNorm.fit("channel", z)
    out = norm.normalize(z)
    dims = tuple(d for d in range(out.ndim) if d != channel_axis + 1)
    torch.testing.assert_close(out.mean(dims), torch.zeros(shape[channel_axis]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dims), torch.ones(shape[channel_axis]), atol=1e-4, rtol=0)
    torch.testing.assert_close(norm.denormalize(out), z, atol=1e-5, rtol=1e-5)


def test_element_scaling_and_none_norms():
    z = torch.randn(300, 2, 3) * 5 + torch.arange(6.0).reshape(2, 3)
    element = LatentNorm.fit("element", z).normalize(z)
    torch.testing.assert_close(element.mean(0), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(element.std(0), torch.ones(2, 3), atol=1e-4, rtol=0)
    torch.testing.assert_close(LatentNorm.fit("scaling", z, scaling_factor=0.18215).normalize(z), z * 0.18215)
    assert torch.equal(LatentNorm.fit("none", z).normalize(z), z)
    with pytest.raises(ValueError, match="unknown latent normalisation 'batch'.*channel"):
        LatentNorm.fit("batch", z)


def test_norm_round_trips_through_state_dict():
    norm = LatentNorm.fit("channel", torch.randn(50, 4, 2, 2))
    back = LatentNorm.from_state("channel", norm.state_dict())
    assert torch.equal(back.shift, norm.shift) and torch.equal(back.scale, norm.scale)


def test_shards_from_two_ranks_read_as_one(tmp_path):
    z, y = torch.randn(7, 3), torch.arange(7)
    for rank in range(2):
        idx = torch.arange(rank, 7, 2)
        write_shard(tmp_path, rank, 2, idx, z[idx], y[idx])
    z2, y2 = read_shards(tmp_path)
    assert torch.equal(z2, z) and torch.equal(y2, y)


def test_incomplete_or_overlapping_shards_are_refused(tmp_path):
    z, y = torch.randn(4, 3), torch.arange(4)
    write_shard(tmp_path, 0, 2, torch.tensor([0, 2]), z[[0, 2]], y[[0, 2]])
    with pytest.raises(ValueError, match="incomplete or mixed"):
        read_shards(tmp_path)
    write_shard(tmp_path, 1, 2, torch.tensor([0, 2]), z[[0, 2]], y[[0, 2]])  # rank 1 wrote rank 0's rows
    with pytest.raises(ValueError, match="exactly once"):
        read_shards(tmp_path)


class _Doubler(torch.nn.Module):
    calls = 0

    def encode(self, x):
        _Doubler.calls += 1
        return x * 2


def _dataset(n=10):
    data = TensorDataset(torch.randn(n, 3, 2, 2), torch.arange(n) % 3)
    data.info = {"source": "toy", "n": n}
    return data


def test_cache_encodes_once_and_is_keyed(tmp_path):
    data = _dataset()
    key = CacheKey("abc", data.info, "res 2")
    z, y, meta = cached_latents(tmp_path, key, _Doubler(), data, batch_size=4)
    calls = _Doubler.calls
    z2, y2, meta2 = cached_latents(tmp_path, key, _Doubler(), data, batch_size=4)
    assert _Doubler.calls == calls  # read, not re-encoded
    assert torch.equal(z, z2) and torch.equal(z, data.tensors[0] * 2) and torch.equal(y2, data.tensors[1])
    assert meta["latents_sha256"] == latents_sha256(z, y) == meta2["latents_sha256"]
    assert load_cache(tmp_path, CacheKey("other-checkpoint", data.info, "res 2")) is None
    cached_latents(tmp_path, CacheKey("other-checkpoint", data.info, "res 2"), _Doubler(), data, batch_size=4)
    assert _Doubler.calls > calls  # a different checkpoint re-encodes
