"""The latent cache: normalisation, shards readable by any world size, keys, refusal of broken caches."""
import pickle

import pytest
import torch
from torch.utils.data import TensorDataset

from latentbench.generators.latents import (
    CacheKey,
    LatentNorm,
    LatentShards,
    NormalizedLatents,
    ShardWriter,
    cached_latents,
    load_cache,
    summarize,
)


def fit(mode, z, scaling_factor=1.0):
    """The normalisation ``mode`` of latents (a tensor, or its chunks), from the statistics a cache stores."""
    summary = summarize([z] if isinstance(z, torch.Tensor) else z, hash=False)
    return LatentNorm.from_statistics(mode, summary.statistics(), summary.shape, scaling_factor)


def write_shard(directory, rank, world_size, index, z, y):
    with ShardWriter(directory, rank, world_size) as writer:
        writer.add(index, z, y)


def read_shards(directory):
    return LatentShards(directory).read_all()


def sha256(z, y):
    return summarize([z]).sha256(y)


@pytest.mark.parametrize("shape, channel_axis", [((4, 3, 5), 0), ((6, 8), 1)])
def test_channel_norm_standardises_each_channel(shape, channel_axis):
    z = torch.randn(200, *shape) * torch.linspace(0.5, 3, shape[channel_axis]).reshape(
        (-1, 1, 1) if channel_axis == 0 and len(shape) == 3 else (1, -1)) + 2.0
    norm = fit("channel", z)
    out = norm.normalize(z)
    dims = tuple(d for d in range(out.ndim) if d != channel_axis + 1)
    torch.testing.assert_close(out.mean(dims), torch.zeros(shape[channel_axis]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dims), torch.ones(shape[channel_axis]), atol=1e-4, rtol=0)
    torch.testing.assert_close(norm.denormalize(out), z, atol=1e-5, rtol=1e-5)


def test_element_scaling_and_none_norms():
    z = torch.randn(300, 2, 3) * 5 + torch.arange(6.0).reshape(2, 3)
    element = fit("element", z).normalize(z)
    torch.testing.assert_close(element.mean(0), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(element.std(0), torch.ones(2, 3), atol=1e-4, rtol=0)
    torch.testing.assert_close(fit("scaling", z, scaling_factor=0.18215).normalize(z), z * 0.18215)
    assert torch.equal(fit("none", z).normalize(z), z)
    with pytest.raises(ValueError, match="unknown latent normalisation 'batch'.*channel"):
        fit("batch", z)


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
    shards, meta = cached_latents(tmp_path, key, _Doubler(), data, batch_size=4)
    calls = _Doubler.calls
    shards2, meta2 = cached_latents(tmp_path, key, _Doubler(), data, batch_size=4)
    assert _Doubler.calls == calls  # read, not re-encoded
    z, y = shards.read_all()
    z2, y2 = shards2.read_all()
    assert torch.equal(z, z2) and torch.equal(z, data.tensors[0] * 2) and torch.equal(y2, data.tensors[1])
    assert meta["latents_sha256"] == sha256(z, y) == meta2["latents_sha256"]
    assert meta["n"] == 10 and meta["shape"] == [3, 2, 2]
    assert load_cache(tmp_path, CacheKey("other-checkpoint", data.info, "res 2")) is None
    cached_latents(tmp_path, CacheKey("other-checkpoint", data.info, "res 2"), _Doubler(), data, batch_size=4)
    assert _Doubler.calls > calls  # a different checkpoint re-encodes


def test_cache_is_written_in_parts_and_hashed_as_a_whole(tmp_path, monkeypatch):
    """A small part size: each rank's encoding lands in several files; the hash is the in-memory one."""
    import latentbench.generators.latents as latents

    monkeypatch.setattr(latents, "PART_BYTES", 3 * 12 * 4)  # three latents of 3x2x2 per part
    monkeypatch.setattr(latents, "CHUNK_BYTES", 4 * 12 * 4)  # the hash streams 4 rows at a time
    data = _dataset(10)
    shards, meta = cached_latents(tmp_path, CacheKey("abc", data.info, "res 2"), _Doubler(), data, batch_size=2)
    # batches of 2 rows: a part is flushed once it holds 3 or more, so 4 + 4 + 2 rows
    assert len(list(tmp_path.glob("shard-00000-of-00001-part-*.safetensors"))) == 3
    z = data.tensors[0] * 2
    assert meta["latents_sha256"] == sha256(z, data.tensors[1])
    assert torch.equal(torch.cat(list(shards.chunks())), z)


# ---- shards read lazily ---------------------------------------------------------------------------


def _write_two_ranks(folder, z, y, part_bytes):
    for rank in range(2):
        idx = torch.arange(rank, len(z), 2)
        with ShardWriter(folder, rank, 2, part_bytes=part_bytes) as writer:
            for chunk in idx.split(3):  # arriving batch by batch, as from an encoder
                writer.add(chunk, z[chunk], y[chunk])


def test_lazy_shards_gather_rows_across_parts_and_ranks(tmp_path):
    z, y = torch.randn(23, 2, 4), torch.arange(23) % 5
    _write_two_ranks(tmp_path, z, y, part_bytes=3 * 8 * 4)  # each batch of 3 rows is a part: 12 + 11 rows
    assert len(list(tmp_path.glob("shard-*"))) == 8
    shards = LatentShards(tmp_path)
    assert len(shards) == 23 and shards.shape == (2, 4) and torch.equal(shards.labels, y)
    index = torch.tensor([22, 0, 7, 7, 13, 1])  # any order, repeats
    assert torch.equal(shards.rows(index), z[index])
    assert torch.equal(torch.cat(list(shards.chunks(rows=5))), z)
    again = pickle.loads(pickle.dumps(shards))  # a copy in another process maps the files itself
    assert again._maps is None and torch.equal(again.rows(index), z[index])


def test_old_single_file_shards_still_read(tmp_path):
    """Caches written before shard parts existed: one ``shard-R-of-W.safetensors`` per rank."""
    from safetensors.torch import save_file

    z, y = torch.randn(5, 3), torch.arange(5)
    save_file({"index": torch.arange(5), "latents": z, "labels": y}, str(tmp_path / "shard-00000-of-00001.safetensors"))
    z2, y2 = read_shards(tmp_path)
    assert torch.equal(z2, z) and torch.equal(y2, y)


def test_a_missing_part_or_mixed_shapes_are_refused(tmp_path):
    z, y = torch.randn(12, 3), torch.arange(12)
    _write_two_ranks(tmp_path, z, y, part_bytes=2 * 3 * 4)
    sorted(tmp_path.glob("shard-00001-*"))[1].unlink()  # one part of rank 1 lost
    with pytest.raises(ValueError, match="exactly once"):
        LatentShards(tmp_path)
    other = tmp_path / "other"
    write_shard(other, 0, 2, torch.tensor([0]), torch.randn(1, 3), torch.tensor([0]))
    write_shard(other, 1, 2, torch.tensor([1]), torch.randn(1, 4), torch.tensor([0]))
    with pytest.raises(ValueError, match="different shapes"):
        LatentShards(other)


def test_a_new_writer_replaces_what_an_interrupted_one_left(tmp_path):
    """Rank 0 of a rerun at another world size: its own old parts and the old world's go."""
    z, y = torch.randn(6, 3), torch.arange(6)
    _write_two_ranks(tmp_path, z, y, part_bytes=4)  # world 2, one row a part
    write_shard(tmp_path, 0, 1, torch.arange(6), z, y)
    assert [p.name for p in tmp_path.glob("shard-*")] == ["shard-00000-of-00001-part-00000.safetensors"]
    assert torch.equal(read_shards(tmp_path)[0], z)


def test_a_rank_without_rows_writes_an_empty_part(tmp_path):
    z, y = torch.randn(1, 3), torch.tensor([0])
    write_shard(tmp_path, 0, 2, torch.arange(1), z, y)
    ShardWriter(tmp_path, 1, 2).close()
    z2, y2 = read_shards(tmp_path)
    assert torch.equal(z2, z) and torch.equal(y2, y)


@pytest.mark.parametrize("mode", ["channel", "element"])
@pytest.mark.parametrize("shape", [(4, 3, 5), (6, 8)])
def test_streamed_statistics_equal_the_whole_splits(mode, shape):
    """Chunks of any size merge to the statistics of the whole tensor (float64 moments)."""
    z = torch.randn(101, *shape) * 3 + 7
    whole = fit(mode, z)
    streamed = fit(mode, z.split(17))
    torch.testing.assert_close(streamed.shift, whole.shift, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(streamed.scale, whole.scale, rtol=1e-6, atol=0)
    # and the two-pass float64 statistics the cache used before it streamed
    dims = tuple(d for d in range(z.ndim) if d != (1 if z.ndim == 4 else z.ndim - 1)) if mode == "channel" else (0,)
    torch.testing.assert_close(whole.shift, z.double().mean(dims, keepdim=True)[0].float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(whole.scale, z.double().std(dims, keepdim=True)[0].float(), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="at least 2 values"):
        fit(mode, iter([]))


def test_normalized_latents_batch_like_a_tensor_dataset(tmp_path):
    """The generator's loader gives the batches an in-memory TensorDataset gave, bit for bit."""
    from torch.utils.data import DataLoader

    z, y = torch.randn(40, 2, 3, 3) * 2 + 1, torch.arange(40) % 4
    _write_two_ranks(tmp_path, z, y, part_bytes=5 * 18 * 4)
    shards = LatentShards(tmp_path)
    norm = fit("channel", shards.chunks(rows=7))
    lazy = NormalizedLatents(shards, norm)
    assert lazy.shape == (2, 3, 3) and len(lazy) == 40
    eager = TensorDataset(norm.normalize(z), y)
    batches = [DataLoader(d, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3)) for d in (lazy, eager)]
    for (za, ya), (zb, yb) in zip(*batches, strict=True):
        assert torch.equal(za, zb) and torch.equal(ya, yb)
    assert torch.equal(lazy[5][0], eager[5][0])


def test_streaming_a_cache_holds_a_fraction_of_it_in_memory(tmp_path):
    """Statistics, hash and an epoch of batches over a 384 MB cache: the process's own memory grows by under half that.

    Anonymous memory is polled (RssAnon): the mapped files' pages count in the RSS too, but they
    are the kernel's page cache, dropped under pressure.
    """
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import threading, time, torch
        from torch.utils.data import DataLoader
        from latentbench.generators.latents import LatentNorm, LatentShards, NormalizedLatents, ShardWriter, summarize
        def anon_mb():
            status = open("/proc/self/status").read()
            return int(status.split("RssAnon:")[1].split()[0]) // 1024
        with ShardWriter({str(tmp_path)!r}, 0, 1, part_bytes=32 * 2**20) as w:
            for start in range(0, 24576, 512):
                w.add(torch.arange(start, start + 512), torch.randn(512, 4, 32, 32), torch.zeros(512, dtype=torch.long))
        del w
        base, peak, done = anon_mb(), [0], threading.Event()
        def poll():
            while not done.is_set():
                peak[0] = max(peak[0], anon_mb())
                time.sleep(0.002)
        threading.Thread(target=poll, daemon=True).start()
        shards = LatentShards({str(tmp_path)!r})
        summary = summarize(shards.chunks())  # the hash and the statistics, as a new cache is finished
        summary.sha256(shards.labels)
        norm = LatentNorm.from_statistics("channel", summary.statistics(), shards.shape)
        for z, y in DataLoader(NormalizedLatents(shards, norm), batch_size=256, shuffle=True):
            pass
        done.set()
        print(max(peak[0], anon_mb()) - base)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    grown_mb = int(out.stdout.split()[-1])
    # in memory, as before the cache streamed, it grew by 3x the cache (latents, a float64 copy, a normalised copy)
    assert grown_mb < 192, f"memory grew by {grown_mb} MB while streaming a 384 MB cache"


def test_a_cache_missing_its_last_parts_is_refused(tmp_path, monkeypatch):
    """Each rank's last part lost: the rows left are still 0..k-1, so meta.json's count catches it."""
    import latentbench.generators.latents as latents

    monkeypatch.setattr(latents, "PART_BYTES", 2 * 12 * 4)
    data = _dataset(10)
    key = CacheKey("abc", data.info, "res 2")
    cached_latents(tmp_path, key, _Doubler(), data, batch_size=2)
    max(tmp_path.glob("shard-*.safetensors")).unlink()  # the last part: rows 8 and 9
    with pytest.raises(ValueError, match=r"holds 8 latents .* records 10 .* a shard part is missing; delete the folder"):
        load_cache(tmp_path, key)


def test_statistics_are_stored_with_the_cache_and_read_back(tmp_path, monkeypatch):
    """A finished cache is not streamed again for its normalisation; a cache without the file is, with the same result."""
    import latentbench.generators.latents as latents

    data = _dataset(12)
    key = CacheKey("abc", data.info, "res 2")
    built, _ = cached_latents(tmp_path, key, _Doubler(), data, batch_size=4)
    expected = {mode: fit(mode, data.tensors[0] * 2) for mode in ("channel", "element")}
    monkeypatch.setattr(latents, "summarize", lambda *a, **k: pytest.fail("the stored statistics were not used"))
    loaded, _ = load_cache(tmp_path, key)
    for mode, norm in expected.items():
        for shards in (built, loaded):
            got = LatentNorm.of_cache(mode, shards)
            assert torch.equal(got.shift, norm.shift) and torch.equal(got.scale, norm.scale)
    assert torch.equal(LatentNorm.of_cache("scaling", loaded, 0.5).scale, torch.full((3, 2, 2), 2.0))
    monkeypatch.undo()
    (tmp_path / "statistics.safetensors").unlink()  # a cache written before statistics were stored
    old, _ = load_cache(tmp_path, key)
    assert torch.equal(LatentNorm.of_cache("element", old).scale, expected["element"].scale)
    assert (tmp_path / "statistics.safetensors").exists()  # stored by that load: the next one reads it


def test_element_statistics_need_two_latents(tmp_path):
    write_shard(tmp_path, 0, 1, torch.arange(1), torch.randn(1, 2, 2, 2), torch.tensor([0]))
    shards = LatentShards(tmp_path)
    assert LatentNorm.of_cache("channel", shards).shift.shape == (2, 1, 1)  # 4 values a channel
    with pytest.raises(ValueError, match=f"'element' needs at least 2 values per statistic; there are fewer latents in {tmp_path}"):
        LatentNorm.of_cache("element", shards)


@pytest.mark.parametrize("name, message", [
    ("shard-*.safetensors", r"shard-.* is not a readable safetensors file .*; delete the folder {} to re-encode"),
    ("statistics.safetensors", r"statistics.safetensors is not a readable safetensors file .*; delete it"),
    ("meta.json", r"meta.json is not valid JSON .*; delete the folder {} to re-encode"),
])
def test_a_cut_short_cache_file_is_named_with_the_fix(name, message, tmp_path):
    """A cache file cut short (a kill, a full disk, a partial copy) had raised a bare SafetensorError or JSON error."""
    data = _dataset()
    key = CacheKey("abc", data.info, "res 2")
    cached_latents(tmp_path, key, _Doubler(), data, batch_size=4)
    path = next(tmp_path.glob(name))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=message.format(tmp_path)):  # the folder named: "the folder" could be any above
        cached_latents(tmp_path, key, _Doubler(), data, batch_size=4)
