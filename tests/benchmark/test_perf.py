"""latentbench perf: the matmul roof, timed Lightning steps with their FLOPs, MFU, the JSON and the table."""
import json

import pytest
import torch

from latentbench.benchmark.perf import (
    DEFAULT_TARGETS,
    _codec_rate,
    _compiled_decode_rate,
    Target,
    format_table,
    load_perf,
    matmul_peak,
    measure_target,
    parse_target,
    run_perf,
    summarize,
)
from latentbench.precision import bf16_support

BF16 = bf16_support("cpu")[0]  # False on a CPU without fast bf16: perf measures fp32 only there
TRAIN = "bf16-mixed" if BF16 else "32-true"


def test_targets_parse():
    assert parse_target("sdvae") == Target("tokenizer", "sdvae")
    assert parse_target("dit-ci@rae") == Target("generator", "dit-ci", "rae")
    assert parse_target("dit-ci@rae").label == "dit-ci on rae"
    assert parse_target("configs/tokenizers/perf/rae-anchor.yaml").label == "rae-anchor"
    assert {t.kind for t in DEFAULT_TARGETS} == {"tokenizer", "generator"}


def test_a_generator_target_without_its_generator_or_tokenizer_says_the_form():
    # before: 'dit-ci@' said "unknown tokenizer 'dit-ci'" and '@sdvae' "unknown generator ''"
    for text in ("dit-ci@", "@sdvae"):
        with pytest.raises(ValueError, match="a generator target is GENERATOR@TOKENIZER"):
            parse_target(text)


def test_matmul_peak_is_a_plausible_rate():
    rate = matmul_peak(torch.float32, n=256, repeats=2, rounds=2)
    assert 0.1 < rate < 1e6  # GFLOP/s


def test_mfu_is_achieved_rate_over_the_roof():
    row = summarize({"32-true": {"step_s": 0.5, "flops": 50e9}, "bf16-mixed": {"step_s": 0.25, "flops": 50e9}},
                    {"fp32": 200.0, "bf16": 800.0})
    assert row["32-true"]["gflops_per_s"] == pytest.approx(100.0) and row["32-true"]["mfu"] == pytest.approx(0.5)
    assert row["bf16-mixed"]["gflops_per_s"] == pytest.approx(200.0) and row["bf16-mixed"]["mfu"] == pytest.approx(0.25)


def test_a_tokenizer_step_is_timed_and_counted():
    row = measure_target(Target("tokenizer", "sdvae"), "smoke", steps=2, warmup=1, precisions=(TRAIN,))
    step = row[TRAIN]
    assert step["steps_timed"] == 2 and step["step_s"] > 0
    # FlopCounterMode saw forward and backward: about 3x one forward pass of the batch (no input gradient: a bit less)
    from latentbench.benchmark.costs import tokenizer_costs
    from latentbench.tokenizers import create_tokenizer

    per_image = tokenizer_costs(create_tokenizer("sdvae-smoke"), 32)
    forward = (per_image["encoder_gflops"] + per_image["decoder_gflops"]) * 1e9 * row["batch"]
    assert step["flops"] > 2 * forward
    assert row["encode_img_s"] > 0 and row["decode_img_s"] > 0 and row["peak_rss_gib"] > 0.1
    assert (row.get("decode_img_s_bf16", 0) > 0) == BF16


def test_perf_writes_json_and_a_table(tmp_path):
    out = tmp_path / "perf.json"
    (tmp_path / "README.md").write_text("the user's notes")  # --out elsewhere writes the JSON alone
    lines = []
    result = run_perf([parse_target("dit-smoke@sdvae")], protocol="smoke", steps=2, warmup=1, out=out, log=lines.append)
    stored = json.loads(out.read_text())
    assert stored["rows"][0]["target"] == "dit-smoke on sdvae" and stored == json.loads(json.dumps(result))
    row = stored["rows"][0]
    assert row["32-true"]["mfu"] > 0 and stored["matmul_peak_gflops"]["bf16"] > 0
    assert row["sample_img_s"] > 0 and row["sample_precision"] == TRAIN  # sampled in the precision the bench trains in
    if BF16:
        assert row["bf16-mixed"]["mfu"] > 0
    else:  # skipped, and the table says why
        assert "bf16-mixed" not in row and stored["bf16_usable"] is False
        assert "bf16 not measured" in format_table(stored)
    assert "| dit-smoke on sdvae | 32 |" in lines[-2] and lines[-1] == f"wrote {out}"
    assert "| dit-smoke on sdvae |" in format_table(stored)
    assert format_table(stored).startswith("protocol smoke/v3; matmul peak") and "A median of 2 step(s)" in format_table(stored)
    tokenizer_row = {"target": "sdvae", "kind": "tokenizer", "tokenizer": "sdvae-smoke", "batch": 8, "peak_rss_gib": 1.0}
    assert "| sdvae (sdvae-smoke) | 8 |" in format_table({**stored, "rows": [tokenizer_row]})
    assert (tmp_path / "README.md").read_text() == "the user's notes"


def test_table_of_a_machine_without_fast_bf16_says_why():
    result = {"matmul_peak_gflops": {"fp32": 104.0, "bf16": 0.8}, "steps": 8, "bf16_usable": False, "cpu": "AVX2 CPU ...",
              "rows": [summarize({"target": "sdvae", "batch": 64, "32-true": {"step_s": 0.8, "flops": 80e9},
                                  "encode_img_s": 800.0, "decode_img_s": 230.0, "peak_rss_gib": 1.5}, {"fp32": 104.0, "bf16": 0.8})]}
    table = format_table(result)
    assert "bf16 not measured: AVX2 CPU ..." in table
    assert "| sdvae | 64 | 0.800 | n/a | n/a" in table and "| 80.0 |" in table and "96.2%" in table and "800 / n/a" in table


class _Clock:
    """Time that passes only when told to: the perf timings below read it instead of the wall clock, so a busy
    machine cannot change what they measure."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    import types

    import latentbench.benchmark.perf as perf

    fake = _Clock()
    monkeypatch.setattr(perf, "time", types.SimpleNamespace(perf_counter=fake.perf_counter, strftime=perf.time.strftime))
    return fake


class _SlowCodec(torch.nn.Module):
    """A codec whose encode takes 1 ms and decode ``delay`` seconds of ``clock``; counts its decode passes."""

    def __init__(self, delay: float, clock: _Clock):
        super().__init__()
        self.delay, self.clock, self.passes = delay, clock, 0

    def encode(self, x):
        self.clock.now += 0.001
        return x

    def decode(self, z):
        self.passes += 1
        self.clock.now += self.delay
        return z


def test_codec_timing_stops_early_on_a_slow_decoder(clock):
    images = torch.zeros(10, 3, 8, 8)
    fast, slow = _SlowCodec(0.01, clock), _SlowCodec(0.3, clock)
    _codec_rate(fast, images, bf16=False, repeats=3, budget_s=0.2)
    enc, dec = _codec_rate(slow, images, bf16=False, repeats=3, budget_s=0.2)
    assert fast.passes == 3 and slow.passes == 1  # best of 3 where cheap, one pass past the budget
    assert dec == pytest.approx(10 / 0.3) and enc == pytest.approx(10 / 0.001)


def test_compiled_decoding_is_timed_with_its_compile_cost(monkeypatch, clock):
    import latentbench.tokenizers as tokenizers

    codec = _SlowCodec(0.05, clock)

    def compile_decoding(tok):  # stands in for TorchInductor: the first pass after it is slow
        tok.first_delay = 0.5
        return ["decoder"]

    original = codec.decode

    def decode(z):
        if getattr(codec, "first_delay", None):
            codec.first_delay, delay = None, codec.first_delay
            clock.now += delay
        return original(z)

    codec.decode = decode
    monkeypatch.setattr(tokenizers, "compile_decoding", compile_decoding)
    row = _compiled_decode_rate(codec, torch.zeros(10, 3, 8, 8))
    assert row["compiled"] == ["decoder"]
    assert row["decode_img_s_compiled"] == pytest.approx(10 / 0.05)
    assert row["compile_s"] == pytest.approx(0.5)
    monkeypatch.setattr(tokenizers, "compile_decoding", lambda tok: [])
    assert _compiled_decode_rate(_SlowCodec(0.0, clock), torch.zeros(2, 3, 8, 8)) == {"compiled": []}  # nothing to compile


def test_table_shows_compiled_decoding_only_when_measured():
    peak = {"fp32": 100.0, "bf16": 1.0}
    base = {"target": "flowmo", "batch": 64, "32-true": {"step_s": 1.0, "flops": 50e9}, "encode_img_s": 700.0,
            "decode_img_s": 8.0, "peak_rss_gib": 2.0}
    result = {"matmul_peak_gflops": peak, "steps": 8, "rows": [summarize(dict(base), peak)]}
    assert "compiled" not in format_table(result)
    result["rows"] = [summarize(dict(base, compiled=["decoder"], decode_img_s_compiled=11.5, compile_s=170.2), peak),
                      summarize(dict(base, target="sdvae", compiled=[]), peak)]
    table = format_table(result)
    assert "decode compiled img/s (compile s)" in table and "| 700 / n/a | 8.0 / n/a | 11.5 (170) |" in table
    assert "| sdvae | 64 |" in table and "| 8.0 / n/a | n/a |" in table


def test_a_schema_1_perf_file_reads_as_the_current_schema(tmp_path):
    old = {"schema": 1, "matmul_peak_gflops": {"fp32": 150.0, "bf16": 376.0}, "steps": 8,
           "rows": [{"target": "dit-ci on sdvae", "sample_img_s_bf16": 57.0}, {"target": "dit-ci on rae", "sample_img_s": 17.0},
                    {"target": "sdvae", "decode_img_s": 200.0}]}
    (tmp_path / "perf.json").write_text(json.dumps(old))
    rows = load_perf(tmp_path / "perf.json")["rows"]
    assert rows[0] == {"target": "dit-ci on sdvae", "sample_img_s": 57.0, "sample_precision": "bf16-mixed"}
    assert rows[1]["sample_precision"] == "32-true" and "sample_precision" not in rows[2]
    assert load_perf(tmp_path / "missing.json") is None


def test_an_unknown_target_stops_before_the_roof_is_timed(monkeypatch):
    import latentbench.benchmark.perf as perf

    monkeypatch.setattr(perf, "matmul_peak", lambda *a, **k: pytest.fail("timed the roof before checking the targets"))
    with pytest.raises(KeyError, match="unknown tokenizer 'nope'"):
        run_perf([parse_target("nope")], out=None, log=lambda m: None)
    with pytest.raises(KeyError, match="unknown generator 'nope'"):
        run_perf([parse_target("nope@sdvae")], out=None, log=lambda m: None)


def test_the_perf_readme_shows_the_mfu_plot_when_a_row_has_an_mfu(tmp_path):
    from latentbench.benchmark.perf import render_perf_readme

    peak = {"fp32": 189.0, "bf16": 410.0}
    measured = summarize({"target": "sdvae", "kind": "tokenizer", "tokenizer": "sdvae-ci", "batch": 64, "peak_rss_gib": 1.7,
                          "32-true": {"step_s": 0.556, "flops": 80.5e9}, "bf16-mixed": {"step_s": 0.346, "flops": 80.5e9}},
                         peak)
    base = {"schema": 2, "matmul_peak_gflops": peak, "steps": 8, "threads": 2, "created": "2026-11-30T00:00:00+0000"}
    (tmp_path / "perf.json").write_text(json.dumps({**base, "rows": [measured]}))
    readme = render_perf_readme(tmp_path / "perf.json").read_text()
    assert "![training-step MFU of each config, fp32 and bf16](mfu.png)" in readme
    assert (tmp_path / "mfu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    unmeasured = tmp_path / "none"
    unmeasured.mkdir()
    (unmeasured / "perf.json").write_text(json.dumps({**base, "rows": [{"target": "x", "batch": 8, "peak_rss_gib": 1.0}]}))
    assert "mfu.png" not in render_perf_readme(unmeasured / "perf.json").read_text() and not (unmeasured / "mfu.png").exists()


def test_the_mfu_plot_names_each_precision_once_whichever_rows_have_it(tmp_path, monkeypatch):
    """The legend entry of a precision came from the last row's bar alone: a last row without bf16 left bf16 out."""
    import matplotlib.axes

    from latentbench.benchmark.perf import _plot_mfu

    peak = {"fp32": 189.0, "bf16": 410.0}
    both = summarize({"target": "a", "batch": 8, "peak_rss_gib": 1.0, "32-true": {"step_s": 1.0, "flops": 100e9},
                      "bf16-mixed": {"step_s": 0.5, "flops": 100e9}}, peak)
    fp32_only = summarize({"target": "b", "batch": 8, "peak_rss_gib": 1.0, "32-true": {"step_s": 0.4, "flops": 100e9}}, peak)
    legends, axes = [], []
    real = matplotlib.axes.Axes.legend
    monkeypatch.setattr(matplotlib.axes.Axes, "legend", lambda ax, *a, **k: legends.append(ax.get_legend_handles_labels()[1])
                        or axes.append(ax) or real(ax, *a, **k))
    assert _plot_mfu({"matmul_peak_gflops": peak, "rows": [both, fp32_only]}, tmp_path / "mfu.png")
    assert sorted(legends[0]) == ["32-true (of its roof, 189 GFLOP/s)", "bf16-mixed (of its roof, 410 GFLOP/s)",
                                  "target: 25% of the bf16 roof (bf16 bars)"]
    # the target (a share of the bf16 roof) is marked at 25% across each row's bf16 bar, not across the fp32 bars
    bars = {round(p.get_y() + p.get_height() / 2, 2): p.get_facecolor() for p in axes[0].patches}
    fp32_centres = [y for y, colour in bars.items() if colour == matplotlib.colors.to_rgba("tab:blue")]
    (segments,) = [c.get_segments() for c in axes[0].collections]
    assert len(segments) == 2 and all(seg[0][0] == seg[1][0] == 25.0 for seg in segments)
    assert not any(min(seg[0][1], seg[1][1]) <= y <= max(seg[0][1], seg[1][1]) for seg in segments for y in fp32_centres)


def test_a_batch_larger_than_the_training_split_is_refused_not_an_empty_row():
    """The loader drops an incomplete batch: no step ran, and the row came back with every step column n/a."""
    with pytest.raises(ValueError, match=r"a training batch of 1000000 images is more than the \d+ images of smoke/v\d+'s "
                                         r"training split.*--batch_size \d+ or less"):
        measure_target(Target("tokenizer", "sdvae"), "smoke", steps=1, warmup=0, precisions=(TRAIN,), batch_size=10**6)


def test_a_target_refused_in_its_process_ends_in_its_one_line(monkeypatch, tmp_path):
    """Missing weights ended `latentbench perf` with the child's traceback inside the parent's RuntimeError (59 lines,
    exit 1); now the parent raises the child's message, which the command prints as one line (exit 2)."""
    from latentbench.benchmark.perf import _in_subprocess

    for var in ("HF_HOME", "HF_HUB_CACHE", "TORCH_HOME"):  # no DINOv2 weights, whatever this machine's caches hold
        monkeypatch.setenv(var, str(tmp_path / var))
    with pytest.raises(ValueError) as refused:
        _in_subprocess(Target("tokenizer", "rae-dinov2-b"), "smoke", steps=1, warmup=0, bf16=False)
    message = str(refused.value)
    assert message.startswith("measuring rae-dinov2-b: the RAE encoder 'dinov2-vitb14-reg4' needs the pretrained weights")
    assert "Traceback" not in message and "\n" not in message


def test_a_bug_in_a_target_keeps_its_traceback():
    from latentbench.benchmark.perf import _refusal

    assert _refusal('{"refused": "no weights: download them"}\n') == "no weights: download them"
    assert _refusal("") is None and _refusal("Traceback ...") is None and _refusal('{"rows": []}') is None


@pytest.mark.parametrize("platform, maxrss", [("linux", 3 * 2**20), ("darwin", 3 * 2**30)])
def test_peak_rss_is_in_gib_on_linux_and_macos(monkeypatch, platform, maxrss):
    """ru_maxrss is KiB on Linux and bytes on macOS (a Mac's row read 1024x too large)."""
    from types import SimpleNamespace

    import latentbench.benchmark.perf as perf

    monkeypatch.setattr(perf.sys, "platform", platform)
    monkeypatch.setattr(perf.resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=maxrss))
    assert perf.peak_rss_gib() == 3.0


def test_a_generator_target_gets_the_protocol_s_class_count(monkeypatch):
    """perf built every generator for 10 classes (MNIST's) and sampled labels 0..9, where the bench builds it for the
    dataset's classes: a protocol of 3 classes timed another network and sampled labels it has no embedding for."""
    import latentbench.benchmark.harness as harness
    import latentbench.generators.module as generator_module

    built, dataset, module_class = [], harness._dataset, generator_module.GeneratorModule

    def three_classes(*args, **kwargs):
        data = dataset(*args, **kwargs)
        monkeypatch.setitem(data.info, "num_classes", 3)
        return data

    def recording(name, input_shape, num_classes, *args, **kwargs):
        built.append(num_classes)
        return module_class(name, input_shape, num_classes, *args, **kwargs)

    monkeypatch.setattr(harness, "_dataset", three_classes)
    monkeypatch.setattr(generator_module, "GeneratorModule", recording)
    row = measure_target(Target("generator", "dit-smoke", "sdvae"), "smoke", steps=1, warmup=0, precisions=(TRAIN,))
    assert built == [3] and row["sample_img_s"] > 0
