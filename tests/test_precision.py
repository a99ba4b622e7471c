"""Training precision: the protocol's bf16, float32 where this machine has no fast bf16, --precision over both."""
import pytest
import torch

import latentbench.precision as precision_mod
from latentbench.precision import Precision, bf16_support, resolve_precision


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(precision_mod, "bf16_support", lambda device: (False, "AVX2 CPU without oneDNN bf16 support"))


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    monkeypatch.setattr(precision_mod, "bf16_support", lambda device: (True, "CPU with AMX"))


def test_bf16_is_kept_where_it_runs_at_speed(cpu_with_bf16):
    assert resolve_precision("bf16-mixed") == Precision("bf16-mixed", "bf16-mixed")
    assert not resolve_precision("bf16-mixed").changed


def test_bf16_falls_back_to_float32_and_says_why(cpu_without_bf16):
    p = resolve_precision("bf16-mixed")
    assert p.used == "32-true" and p.requested == "bf16-mixed" and p.changed
    assert "AVX2 CPU" in p.reason and "--precision bf16-mixed forces bf16" in p.reason


def test_command_line_precision_wins(cpu_without_bf16):
    assert resolve_precision("bf16-mixed", "bf16-mixed") == Precision("bf16-mixed", "bf16-mixed")
    forced = resolve_precision("bf16-mixed", "32-true")
    assert forced.used == "32-true" and forced.reason == "--precision 32-true given"
    assert resolve_precision("32-true") == Precision("32-true", "32-true")  # nothing to fall back from
    with pytest.raises(ValueError, match="--precision must be one of auto, 32-true, bf16-mixed"):
        resolve_precision("bf16-mixed", "fp8")


def test_cpu_probe_is_pytorchs_own_onednn_test():
    usable, what = bf16_support("cpu")
    assert usable == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert torch.backends.cpu.get_cpu_capability() in what


def test_fallback_changes_the_run_key_and_marks_the_row(cpu_without_bf16):
    from latentbench.benchmark.spec import BenchConfig, resolve_tokenizer
    from latentbench.benchmark.leaderboard import row_name
    from latentbench.benchmark.protocol import load_protocol

    proto = load_protocol("smoke")
    spec = resolve_tokenizer("sdvae", proto)
    native = BenchConfig(spec, proto)
    fallback = BenchConfig(spec, proto, train_precision=resolve_precision(proto.train.precision),
                           generator_precision=resolve_precision(proto.generator.precision))
    same = BenchConfig(spec, proto, train_precision=Precision("bf16-mixed", "bf16-mixed"))
    assert same.key == native.key  # runs in the protocol's precision keep their run directories
    assert fallback.key != native.key and fallback.precision == fallback.gen_precision == "32-true"
    assert native.precision_notes() is None
    notes = fallback.precision_notes()
    assert notes["train"]["used"] == "32-true" and "AVX2" in notes["generator"]["reason"]
    record = {"tokenizer": {"name": "sdvae-smoke"}, "precision_changed": notes}
    assert row_name(record) == "sdvae-smoke [32-true]"
    assert row_name({"tokenizer": {"name": "sdvae-smoke"}}) == "sdvae-smoke"


def test_regress_gate_picks_golden_values_of_its_precision(cpu_without_bf16):
    from latentbench.benchmark.regress import GOLDEN_PATH, gate_precision, golden_file

    assert gate_precision() == "32-true" and gate_precision("bf16-mixed") == "bf16-mixed"
    assert golden_file("bf16-mixed") == GOLDEN_PATH
    assert golden_file("32-true") == GOLDEN_PATH.with_name("smoke.32-true.yaml")


def test_forced_precision_reaches_training_the_record_and_the_table(tmp_path):
    """A smoke bench with --precision 32-true: both trainings in float32, said once, recorded, row marked."""
    from latentbench.benchmark.harness import run_bench

    lines = []
    record = run_bench("sdvae", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lines.append,
                       precision="32-true")
    said = [line for line in lines if line.startswith("precision:")]
    assert said == ["precision: tokenizer and generator training in 32-true, not the protocol's bf16-mixed: --precision 32-true given"]
    assert record["training"]["precision"] == "32-true" and record["generation"]["generator"]["precision"] == "32-true"
    assert record["precision_changed"]["train"] == {"requested": "bf16-mixed", "used": "32-true", "reason": "--precision 32-true given"}
    table = (tmp_path / "lb" / "smoke" / "v3" / "README.md").read_text()
    assert "| sdvae-smoke [32-true] |" in table and "- [32-true]: trained in 32-true, not the protocol's bf16-mixed" in table


def test_a_fallback_row_never_becomes_the_baseline_of_protocol_precision_rows():
    from latentbench.benchmark.leaderboard import convergence_cell

    def row(name, values, used=None):
        conv = {"target": "baseline", "baseline": "sdvae-ci", "budget": 1000}
        curve = [{"step": s, "value": v} for s, v in zip((250, 500, 750, 1000), values, strict=True)]
        changed = {"train": {"requested": "bf16-mixed", "used": used, "reason": "test"}} if used else None
        return {"tokenizer": {"name": name}, "generation": {"curve": curve, "convergence": conv}, "precision_changed": changed}

    base = row("sdvae-ci", [900, 700, 500, 400])
    base_fp32 = row("sdvae-ci", [900, 700, 450, 300], used="32-true")  # later and lower: would move every cell
    other = row("flowmo-ci", [600, 400, 300, 250])
    records = [base, other, base_fp32]
    assert convergence_cell(other, records) == "500 (2.0x)"  # against the bf16 baseline's 400 at step 1000
    assert convergence_cell(base, records) == "1000"
    assert convergence_cell(base_fp32, records) == "1000"
