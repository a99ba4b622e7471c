"""benchmarks/metrics_speed.py runs end to end and times the pipeline as the bench computes it."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from latentbench.benchmark.metrics import psnr_per_image

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "metrics_speed.py"


def _script(monkeypatch):
    spec = importlib.util.spec_from_file_location("metrics_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_metrics_speed_times_each_metric_and_the_pipeline(tmp_path, monkeypatch):
    speed = _script(monkeypatch)
    out = tmp_path / "speed.json"
    speed.main(["--n", "12", "--batch-size", "5", "--runs", "1", "--threads", "1", "--lpips-random-backbone", "--fid-dim", "64",
                "--json", str(out)])
    result = json.loads(out.read_text())
    rows = {(t["metric"], t["implementation"]): t for t in result["timings"]}
    assert {("PSNR", "latentbench"), ("SSIM", "torchmetrics"), ("pipeline", "latentbench"), ("pipeline", "torchmetrics")} <= set(rows)
    assert all(t["images_per_s"] > 0 for t in rows.values())
    real, fake = speed.make_images(12, 32)
    ours = psnr_per_image(real, fake).mean().item()
    # the pipeline reports PSNR: the bench's (quantised, per image) and torchmetrics' (raw floats, pooled)
    assert rows[("pipeline", "latentbench")]["value"] == pytest.approx(ours, abs=1e-9)
    assert rows[("PSNR", "latentbench")]["value"] == pytest.approx(ours, abs=1e-9)
    assert rows[("pipeline", "torchmetrics")]["value"] == pytest.approx(rows[("PSNR", "torchmetrics")]["value"], abs=1e-9)
    assert set(result["ours_speedup"]["pipeline"]) == {"torchmetrics"}
    # FID: the same features through both implementations give the same distance (12 samples in 64 dims: singular)
    assert rows[("FID-64", "latentbench")]["value"] == pytest.approx(rows[("FID-64", "torchmetrics")]["value"], rel=1e-4)
