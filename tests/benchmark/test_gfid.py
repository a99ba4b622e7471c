"""gFID pieces: reference statistics, per-sample decoding, measuring sampled latents, convergence."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from latentbench.benchmark.fid import FeatureStats, frechet_distance
from latentbench.benchmark.gfid import (
    measure_samples,
    plot_curves,
    reference_stats,
    speedup,
    steps_to_target,
)
from latentbench.benchmark.metrics import to_uint8
from latentbench.generators.latents import LatentNorm, ShardWriter
from latentbench.tokenizers.base import decode_per_sample


class PixelStats(nn.Module):
    """A toy extractor: per-channel mean and std of uint8 images (6 features)."""

    id, weights_sha256, preprocessing, metric_name, dim = "pixel-stats", "none", "uint8", "FID-toy", 6

    def forward(self, images):
        x = images.double() / 255
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)

    def describe(self):
        return {"id": self.id}


class NoisyDecoder(nn.Module):
    """A stochastic decoder without a ``noise`` argument: z (B, 3) -> image + seeded noise."""

    def decode(self, z, generator=None):
        return z[:, :, None, None].expand(-1, 3, 4, 4) * 0.5 + 0.1 * torch.randn(len(z), 3, 4, 4, generator=generator)


class NoiseArgDecoder(NoisyDecoder):
    decode_noise_shape = (3, 4, 4)

    def decode(self, z, generator=None, noise=None):
        noise = torch.randn(len(z), 3, 4, 4, generator=generator) if noise is None else noise
        return z[:, :, None, None].expand(-1, 3, 4, 4) * 0.5 + 0.1 * noise


@pytest.mark.parametrize("decoder", [NoisyDecoder(), NoiseArgDecoder()])
def test_decode_per_sample_does_not_depend_on_the_batch(decoder):
    z, seeds = torch.randn(5, 3), [11, 12, 13, 14, 15]
    whole = decode_per_sample(decoder, z, seeds)
    parts = torch.cat([decode_per_sample(decoder, z[:2], seeds[:2]), decode_per_sample(decoder, z[2:], seeds[2:])])
    torch.testing.assert_close(whole, parts)
    perm = [4, 2, 0, 1, 3]
    torch.testing.assert_close(decode_per_sample(decoder, z[perm], [seeds[i] for i in perm]), whole[perm])


def test_a_decoder_that_takes_its_noise_gets_the_cpu_generators_numbers_on_any_device():
    """Its noise was drawn by generators on z's device: the CUDA stream of a GPU run, other numbers than a CPU run's for
    the same seeds (the generators' own noise is drawn on the CPU). Shown with the meta device, which has no generator."""
    from latentbench.generators import seeding

    class Recording(NoiseArgDecoder):
        def decode(self, z, generator=None, noise=None):
            self.noise = noise
            return noise

    decoder, seeds = Recording(), [11, 12]
    decode_per_sample(decoder, torch.zeros(2, 3), seeds)
    torch.testing.assert_close(decoder.noise, seeding.randn(seeding.generators(seeds, "cpu"), (3, 4, 4)), rtol=0, atol=0)
    out = decode_per_sample(decoder, torch.zeros(2, 3, device="meta"), seeds)  # the code before: no generator on meta
    assert out.device.type == "meta" and out.shape == (2, 3, 4, 4)


class CountingDecoder(nn.Module):
    """Deterministic, but takes (and ignores) a generator, as the shipped tokenizers' decode does."""

    def __init__(self, stochastic_decode):
        super().__init__()
        self.stochastic_decode, self.calls = stochastic_decode, []

    def decode(self, z, generator=None):
        self.calls.append(len(z))
        return z[:, :, None, None].expand(-1, 3, 4, 4) * 0.5


def test_a_decoder_that_ignores_its_generator_decodes_whole_batches():
    from latentbench.tokenizers import create_tokenizer
    from latentbench.tokenizers.base import decodes_stochastically

    z = torch.randn(5, 3)
    batched, single = CountingDecoder(False), CountingDecoder(None)  # None: inferred from the generator argument
    torch.testing.assert_close(decode_per_sample(batched, z, range(5)), decode_per_sample(single, z, range(5)))
    assert batched.calls == [5] and single.calls == [1] * 5
    assert [decodes_stochastically(create_tokenizer(f"{name}-smoke")) for name in ("sdvae", "maetok", "rae", "flowmo")] \
        == [False, False, False, True]
    with pytest.raises(TypeError, match="sets stochastic_decode but its decode takes no generator"):
        decode_per_sample(type("T", (nn.Module,), {"stochastic_decode": True, "decode": lambda self, z: z})(), z, range(5))


def test_measure_samples_matches_a_direct_frechet_distance(tmp_path):
    z = torch.rand(30, 3) * 2 - 1
    with ShardWriter(tmp_path, 0, 1) as samples:
        samples.add(torch.arange(30), z, torch.arange(30) % 3)
    extractor, tokenizer = PixelStats(), NoiseArgDecoder()
    norm = LatentNorm.from_statistics("none", {}, tuple(z.shape[1:]))
    ref = FeatureStats.empty(6)
    ref.update(torch.rand(50, 6))
    reference = ref.reference()
    result, kept = measure_samples(tmp_path, tokenizer, norm, extractor, reference, seed=0, batch_size=7, keep_images=4)
    from latentbench.benchmark.gfid import decode_samples

    feats = extractor(to_uint8(decode_samples(tokenizer, z, torch.arange(30), norm, seed=0)))
    expected = frechet_distance(feats.mean(0).numpy(), np.cov(feats.numpy(), rowvar=False), reference.mu, reference.sigma)
    assert result["n"] == 30 and result["label"] == "gFID-toy"
    assert result["value"] == pytest.approx(expected, rel=1e-6)
    assert kept.shape == (4, 3, 4, 4)
    step = tmp_path / "gen" / "samples" / "step-0000010"
    with ShardWriter(step, 0, 1) as samples:
        samples.add(torch.arange(29), z[:29], torch.arange(29) % 3)  # the part with the last sample lost
    with pytest.raises(ValueError, match=r"holds 29 of the 30 gFID samples .* delete .*gen to train the generator"):
        measure_samples(step, tokenizer, norm, extractor, reference, seed=0, batch_size=7, num_samples=30)


def test_reference_stats_from_a_split_are_cached(tmp_path):
    data = TensorDataset(torch.rand(20, 3, 4, 4) * 2 - 1, torch.zeros(20, dtype=torch.long))
    data.info = {"source": "toy", "n": 20}
    calls = []

    def dataset_fn(split):
        calls.append(split)
        return data

    first = reference_stats("train", dataset_fn, PixelStats(), batch_size=6, cache_dir=tmp_path)
    second = reference_stats("train", dataset_fn, PixelStats(), batch_size=6, cache_dir=tmp_path)
    feats = PixelStats()(to_uint8(data.tensors[0])).numpy()
    np.testing.assert_allclose(first.mu, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(second.sigma, np.cov(feats, rowvar=False), rtol=1e-10)
    assert first.n == 20 and first.sha256 == second.sha256
    assert len(list(tmp_path.rglob("*.npz"))) == 1


def test_reference_npz_missing_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="generator.reference.*download"):
        reference_stats("VIRTUAL_imagenet256_labeled.npz", None, PixelStats(), 4, cache_dir=tmp_path)


def test_a_reference_npz_of_another_extractor_is_refused(tmp_path):
    stats = FeatureStats.empty(6)
    stats.update(torch.rand(20, 6, dtype=torch.float64))
    ours = tmp_path / "other.npz"
    stats.save_npz(ours, extractor_id="domain-mnist", weights_sha256="a" * 64)
    with pytest.raises(ValueError, match=r"computed with domain-mnist, not pixel-stats; the protocol's generator.reference .* \(pixel-stats\)"):
        reference_stats(str(ours), None, PixelStats(), 4)
    same_id = tmp_path / "same-id.npz"
    stats.save_npz(same_id, extractor_id="pixel-stats", weights_sha256="a" * 64)
    with pytest.raises(ValueError, match="weights aaaaaaaaaaaa, these are none"):
        reference_stats(str(same_id), None, PixelStats(), 4)
    adm = tmp_path / "adm.npz"
    np.savez(adm, mu=np.zeros(6), sigma=np.eye(6))
    with pytest.raises(ValueError, match="carries only mu and sigma, as an ADM reference batch of Inception features does, so it is read as inception-tf, not pixel-stats"):
        reference_stats(str(adm), None, PixelStats(), 4)
    stats.save_npz(tmp_path / "good.npz", extractor_id="pixel-stats", weights_sha256="none")
    assert reference_stats(str(tmp_path / "good.npz"), None, PixelStats(), 4).n == 20


def test_a_reference_npz_of_another_extractor_and_dimension_names_the_extractor(tmp_path):
    """A file of another extractor's features (of another width, as most are) is refused with the extractor it was
    computed with and the fix, not only with the dimension mismatch."""
    stats = FeatureStats.empty(4)
    stats.update(torch.rand(20, 4, dtype=torch.float64))
    stats.save_npz(tmp_path / "other.npz", extractor_id="domain-mnist", weights_sha256="a" * 64)
    with pytest.raises(ValueError, match=r"computed with domain-mnist, not pixel-stats; the protocol's generator.reference"):
        reference_stats(str(tmp_path / "other.npz"), None, PixelStats(), 4)
    np.savez(tmp_path / "adm.npz", mu=np.zeros(2048), sigma=np.eye(2048))  # an ADM batch: Inception's 2048 features
    with pytest.raises(ValueError, match="read as inception-tf, not pixel-stats; the protocol's generator.reference"):
        reference_stats(str(tmp_path / "adm.npz"), None, PixelStats(), 4)
    stats.save_npz(tmp_path / "narrow.npz", extractor_id="pixel-stats", weights_sha256="none")  # its id, another width
    with pytest.raises(ValueError, match="holds 4-d statistics but pixel-stats gives 6-d features"):
        reference_stats(str(tmp_path / "narrow.npz"), None, PixelStats(), 4)


def test_convergence_steps_and_speedup():
    curve = [{"step": s, "value": v} for s, v in [(100, 50.0), (200, 20.0), (300, 9.0), (400, 8.0)]]
    assert steps_to_target(curve, 10.0) == 300
    assert steps_to_target(curve, 5.0) is None
    assert steps_to_target(curve, None) is None
    assert speedup(300, 900, 1000) == {"ratio": 3.0, "bound": "="}
    assert speedup(300, None, 1200) == {"ratio": 4.0, "bound": ">="}
    assert speedup(None, 900, 1000) is None


def test_plot_curves_writes_a_png(tmp_path):
    curves = {"a": [{"step": 1, "value": 5.0, "interval": [4.0, 6.0]}, {"step": 2, "value": 3.0, "interval": None}],
              "b": [{"step": 1, "value": 7.0}, {"step": 2, "value": 6.0}]}
    path = plot_curves(curves, tmp_path / "curves.png", target=4.0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rows_earlier_curves_share_its_colour_dashed_and_the_legend_hides_none(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at
    curve = [{"step": 1, "value": 5.0, "interval": [4.0, 6.0]}, {"step": 2, "value": 3.0, "interval": [2.5, 3.5]}]
    curves = {"tok @old": curve, "other": curve, "tok @new": curve}  # in the records' order: "tok @new" is tok's latest
    plot_curves(curves, tmp_path / "curves.png", groups={"tok @old": "tok", "other": "other", "tok @new": "tok"})
    ax = figures[0].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["tok @new"].get_color() == lines["tok @old"].get_color() != lines["other"].get_color()
    assert (lines["tok @new"].get_linestyle(), lines["tok @new"].get_alpha()) == ("-", 1.0)
    assert (lines["tok @old"].get_linestyle(), lines["tok @old"].get_alpha()) == ("--", 0.45)
    assert len(ax.collections) == 2  # intervals of the latest curves only
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["other", "tok @new", "tok @old"]
    assert legend.get_bbox_to_anchor().x0 > ax.get_window_extent().x1  # beside the axes, not over the curves


def test_generator_training_refuses_no_latents_or_fewer_samples_than_processes(tmp_path, monkeypatch):
    import dataclasses

    import latentbench.benchmark.evaluate as evaluate
    from latentbench.benchmark.generation import train_generator
    from latentbench.benchmark.protocol import load_protocol
    from latentbench.generators.module import resolve_generator

    spec = load_protocol("smoke").generator
    gen = resolve_generator(spec.continuous)
    empty = TensorDataset(torch.zeros(0, 4, 2, 2), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot train the generator: 0 latents and 40 gFID samples for 1 processes"):
        train_generator(gen, spec, empty, 3, tmp_path, seed=0)
    monkeypatch.setattr(evaluate, "world", lambda: (0, 64))
    data = TensorDataset(torch.zeros(80, 4, 2, 2), torch.zeros(80, dtype=torch.long))
    with pytest.raises(ValueError, match="80 latents and 30 gFID samples for 64 processes"):
        train_generator(gen, dataclasses.replace(spec, num_samples=30), data, 3, tmp_path, seed=0)
    with pytest.raises(ValueError, match="8 latents and 100 gFID samples for 64 processes"):
        train_generator(gen, dataclasses.replace(spec, num_samples=100), TensorDataset(*data[:8]), 3, tmp_path, seed=0)
