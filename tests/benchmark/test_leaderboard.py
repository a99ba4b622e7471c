import json
import multiprocessing as mp
import uuid

import pytest

from latentbench.benchmark.leaderboard import append_record, read_records, render_table


def make_record(name="tok-a", fingerprint="f" * 64, psnr=20.0):
    return {
        "schema": 1, "id": uuid.uuid4().hex, "created": "2026-01-01T00:00:00+00:00",
        "protocol": {"name": "unit", "version": 1, "fingerprint": fingerprint, "description": "unit test"},
        "tokenizer": {"name": name, "init_args": {}, "module_args": {}, "latent": {"shape": [4, 8, 8]},
                      "params": {"total": 1_000_000}, "checkpoint": {"sha256": "c" * 64}, "trained_steps": 5},
        "training": {"precision": "bf16-mixed"},
        "data": {"eval": {"fingerprint": "d" * 64, "n": 10, "source": "unit", "split": "val"}},
        "metrics": {"psnr": {"value": psnr, "n": 10}, "ssim": {"value": 0.5, "n": 10}},
        "seeds": {"bench": 0},
        "provenance": {"code": {"commit": "abcdef123456", "dirty": False}, "packages": {"torch": "2", "latentbench": "0"},
                       "hardware": {"cpu": "unit", "cuda": []}, "python": "3.11"},
        "wall_time_s": {"train": 1.0, "eval": 2.0},
    }


def test_append_only_and_rendered(tmp_path):
    a, b = make_record("tok-a"), make_record("tok-b", psnr=25.0)
    append_record(tmp_path, a)
    first = (tmp_path / "unit/v1/results.jsonl").read_text()
    append_record(tmp_path, b)
    text = (tmp_path / "unit/v1/results.jsonl").read_text()
    assert text.startswith(first), "existing rows must be kept byte for byte"
    assert [r["id"] for r in read_records(tmp_path / "unit/v1")] == [a["id"], b["id"]]
    with pytest.raises(ValueError, match="never rewritten"):
        append_record(tmp_path, a)
    table = (tmp_path / "unit/v1/README.md").read_text()
    assert "| tok-b | 4x8x8 | 1.00 | — | — | 25.00 | 0.5000 | — | — | — | — | 10 | 5 | — | 3 | abcdef12 |" in table
    assert "| stage time (s) |" in table and "- stage time (s): the sum of the bench's train, eval and generate" in table


@pytest.mark.parametrize("interruption", [RuntimeError("a broken perf.json"), KeyboardInterrupt()])
def test_a_row_whose_table_fails_to_render_is_taken_back(tmp_path, monkeypatch, interruption):
    """Otherwise the failed record stage reruns and the same run lands twice."""
    import latentbench.benchmark.leaderboard as leaderboard

    first = make_record()
    table = append_record(tmp_path, first)
    before = (table / "results.jsonl").read_text()

    def broken(directory, records):
        raise interruption

    monkeypatch.setattr(leaderboard, "render", broken)
    with pytest.raises(type(interruption)):
        append_record(tmp_path, make_record(psnr=31.0))
    assert (table / "results.jsonl").read_text() == before
    fresh = tmp_path / "fresh"
    with pytest.raises(type(interruption)):
        append_record(fresh, make_record(psnr=31.0))
    assert not list(fresh.rglob("results.jsonl"))  # a first row is not left alone either


def test_unavailable_metrics_and_intervals_are_rendered():
    record = make_record()
    record["metrics"]["lpips"] = {"unavailable": "LPIPS-alex needs weights"}
    record["metrics"]["rfid"] = {"value": 3.14159, "n": 10, "interval": [2.5, 3.9], "label": "rFID-domain(mnist)"}
    table = render_table([record])
    assert "rFID-domain(mnist) ↓" in table and "3.14 [2.50, 3.90]" in table
    assert "| n/a |" in table and "- n/a — lpips: LPIPS-alex needs weights" in table


def test_the_note_on_missing_weights_names_no_machine_s_home_folder():
    """The reason a metric is n/a names where its weights go on the measuring machine (/root/.cache/...); the table
    writes that folder as $TORCH_HOME/hub, and the same reason from two home folders is one note."""
    reason = ("LPIPS-alex needs torchvision's ImageNet backbone weights, which are not on this machine: download "
              "https://download.pytorch.org/models/a.pth to {}/hub/checkpoints/a.pth (or point TORCH_HOME at a folder "
              "whose hub/checkpoints/ holds it).")
    records = [make_record("a"), make_record("b")]
    for record, home in zip(records, ("/root/.cache/torch", "/home/ann/.cache/torch"), strict=True):
        record["metrics"]["lpips"] = {"unavailable": reason.format(home)}
    notes = [line for line in render_table(records).splitlines() if line.startswith("- n/a")]
    assert notes == [f"- n/a — lpips: {reason.format('$TORCH_HOME')}"]


def test_a_pipe_in_a_row_name_stays_in_its_cell():
    """A config named ``a|b`` split its row into one column more than the header has."""
    table = render_table([make_record("tok|a")])
    (row,) = [line for line in table.splitlines() if line.startswith("| tok\\")]
    header = next(line for line in table.splitlines() if line.startswith("| tokenizer"))
    assert row.startswith("| tok\\|a |") and row.replace("\\|", "").count("|") == header.count("|")


def test_rendering_is_deterministic():
    records = [make_record("x"), make_record("y")]
    assert render_table(records) == render_table(list(reversed(records)))


def test_record_without_provenance_is_refused(tmp_path):
    record = make_record()
    del record["provenance"]
    with pytest.raises(ValueError, match="'provenance' is a required property"):
        append_record(tmp_path, record)
    assert not (tmp_path / "unit/v1/results.jsonl").exists()


def test_a_record_already_in_the_table_is_left_as_it_is_if_absent(tmp_path):
    record = make_record()
    append_record(tmp_path, record)
    before = (tmp_path / "unit/v1/results.jsonl").read_text()
    append_record(tmp_path, record, if_absent=True)
    assert (tmp_path / "unit/v1/results.jsonl").read_text() == before


def test_changed_protocol_fingerprint_is_refused(tmp_path):
    append_record(tmp_path, make_record())
    with pytest.raises(ValueError, match="new version number"):
        append_record(tmp_path, make_record(fingerprint="0" * 64))


@pytest.mark.parametrize("where, value", [("value", float("nan")), ("value", float("inf")), ("interval", [1.0, float("inf")])])
def test_a_metric_that_is_not_a_finite_number_is_refused(tmp_path, where, value):
    record = make_record()
    record["metrics"]["psnr"][where] = value
    with pytest.raises(ValueError, match=rf"metrics\.psnr\.{where}.* is not a finite number"):
        append_record(tmp_path, record)
    assert not (tmp_path / "unit/v1/results.jsonl").exists()


def test_rows_are_strict_json_and_a_broken_line_is_named(tmp_path):
    record = make_record()
    record["training"]["final_loss"] = float("nan")  # outside the metrics: kept, by name
    append_record(tmp_path, record)
    path = tmp_path / "unit/v1/results.jsonl"
    row = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert row["training"]["final_loss"] == "nan"
    path.write_text(path.read_text() + "<<<<<<< HEAD\n")
    with pytest.raises(ValueError, match=r"results.jsonl line 2 is not a JSON record .*merge-conflict marker"):
        append_record(tmp_path, make_record())


def test_psnr_of_an_exact_reconstruction_is_reported_unavailable_with_the_reason():
    import torch

    from latentbench.benchmark.evaluate import ReconstructionMetrics

    metrics = ReconstructionMetrics(None, None)
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fakes = images.clone()
    fakes[1:, 0, 0, 0] += 0.1  # three images off by some levels in one pixel, one exact
    metrics.update(torch.arange(4), images, fakes)
    psnr = metrics.results()["psnr"]
    from latentbench.benchmark.metrics import psnr_per_image

    others = psnr_per_image(images[1:], fakes[1:]).double().mean().item()
    assert psnr == {"unavailable": "1 of 4 reconstructions are identical to their image after uint8 rounding "
                                   f"(MSE 0, PSNR infinite), so the mean PSNR is infinite; {others:.2f} dB over the other 3"}


def test_a_protocol_with_a_bad_version_names_its_file(tmp_path):
    from latentbench.benchmark.protocol import PROTOCOL_DIR, load_protocol

    path = tmp_path / "p.yaml"
    path.write_text((PROTOCOL_DIR / "smoke.yaml").read_text().replace("version: 3", "version: two"))
    with pytest.raises(ValueError, match=rf"protocol file {path} is malformed: .*'two'"):
        load_protocol(str(path))


def _widen_the_race(after_check: float, before_write: float):
    """Sleep in an append after its id check's read and before its write, so that without the table's lock
    processes nearly always lose each other's rows (a pause before the write) or add one record twice (a pause
    after the check), not only when the scheduler happens to interleave them. In the forked worker only."""
    import time

    import latentbench.benchmark.leaderboard as leaderboard

    read, write = leaderboard.read_records, leaderboard.atomic_write_text

    def read_records(directory):
        records = read(directory)
        time.sleep(after_check)
        return records

    def atomic_write_text(path, text):
        time.sleep(before_write)
        write(path, text)

    leaderboard.read_records, leaderboard.atomic_write_text = read_records, atomic_write_text


def _append_many(root, n):
    _widen_the_race(0.0, 0.05)
    for _ in range(n):
        append_record(root, make_record())


def _append_same(root, record, n):
    _widen_the_race(0.05, 0.0)
    for _ in range(n):
        append_record(root, record, if_absent=True)


def _run_workers(target, args_list):
    ctx = mp.get_context("fork")  # the worker lives in this test file, which spawn cannot import
    procs = [ctx.Process(target=target, args=args) for args in args_list]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0


def test_concurrent_appends_lose_nothing(tmp_path):
    _run_workers(_append_many, [(tmp_path, 10)] * 2)
    lines = (tmp_path / "unit/v1/results.jsonl").read_text().splitlines()
    assert len(lines) == 20 and len({json.loads(line)["id"] for line in lines}) == 20


def test_processes_adding_the_same_record_add_it_once(tmp_path):
    """A rerun racing another (two ranks, two shells) with the same record: one row."""
    record = make_record()
    _run_workers(_append_same, [(tmp_path, record, 3)] * 3)
    assert [r["id"] for r in read_records(tmp_path / "unit/v1")] == [record["id"]]


def test_protocol_fingerprint_ignores_aliases_but_not_budgets():
    import dataclasses

    from latentbench.benchmark.protocol import load_protocol

    ci = load_protocol("ci")
    assert dataclasses.replace(ci, tokenizers={**ci.tokenizers, "newfamily": "newfamily-ci"}).fingerprint == ci.fingerprint
    assert dataclasses.replace(ci, description="reworded").fingerprint == ci.fingerprint
    assert dataclasses.replace(ci, train=dataclasses.replace(ci.train, max_steps=801)).fingerprint != ci.fingerprint
    assert dataclasses.replace(ci, seed=1).fingerprint != ci.fingerprint


def test_display_name_tells_config_variants_apart():
    from latentbench.benchmark.leaderboard import display_name

    assert display_name({"name": "maetok-ci", "requested": "maetok"}) == "maetok-ci"
    assert display_name({"name": "maetok-ci", "requested": "configs/x/maetok-ci-plain.yaml"}) == "maetok-ci [maetok-ci-plain]"
    assert display_name({"name": "flowmo-ci", "requested": "flowmo", "variant": "1a"}) == "flowmo-ci (1a)"


def test_costs_column_and_random_encoder_label():
    from latentbench.benchmark.leaderboard import _gmacs, display_name

    assert _gmacs({"costs": {"encoder_gmacs": 23.5, "decoder_gmacs": 311.1}}) == "23.5 / 311"
    assert _gmacs({"costs": None}) == "—"
    tok = {"name": "rae-ci", "requested": "rae", "describe": {"encoder": {"kind": "random-init"}}}
    assert display_name(tok) == "rae-ci [RANDOM-INIT ENCODER]"


def _with_curve(name, values, target="baseline", variant=None):
    record = make_record(name)
    curve = [{"step": 250 * (i + 1), "value": v, "interval": None, "n": 500} for i, v in enumerate(values)]
    record["metrics"]["gfid"] = {"value": values[-1], "n": 500, "label": "gFID-domain(mnist)"}
    record["generation"] = {"curve": curve, "convergence": {"target": target, "steps_to_target": None,
                                                            "budget": 250 * len(values), "baseline": "base"}}
    if variant:
        record["tokenizer"]["variant"] = variant
    return record


def test_convergence_against_the_baseline_final_gfid(tmp_path):
    from latentbench.benchmark.leaderboard import convergence_cell

    base = _with_curve("base", [90.0, 60.0, 45.0, 40.0])
    fast = _with_curve("fast", [50.0, 35.0, 30.0, 28.0])
    slow = _with_curve("slow", [95.0, 80.0, 70.0, 66.0])
    early = _with_curve("early", [38.0, 30.0, 20.0, 10.0])
    rows = [fast, base, slow, early]
    assert convergence_cell(base, rows) == "1000"
    assert convergence_cell(fast, rows) == "500 (2.0x)"
    assert convergence_cell(early, rows) == "250 (4.0x)"
    assert convergence_cell(slow, rows) == "> 1000"
    assert convergence_cell(fast, [fast]) == "— (no base row)"
    table = render_table(rows)
    assert "gFID-domain(mnist) ↓" in table and "the baseline's final gFID (baseline: base" in table


def test_numeric_target_and_a_baseline_that_never_reaches_it():
    from latentbench.benchmark.leaderboard import convergence_cell

    base = _with_curve("base", [90.0, 60.0], target=20.0)
    ours = _with_curve("ours", [30.0, 15.0], target=20.0)
    assert convergence_cell(ours, [base, ours]) == "500 (≥1.0x)"
    assert convergence_cell(base, [base, ours]) == "> 500"


@pytest.mark.parametrize("breakage, where", [
    (lambda r: r["provenance"].pop("code"), "provenance: 'code' is a required property"),
    (lambda r: r["provenance"]["packages"].pop("torch"), "provenance.packages"),
    (lambda r: r["tokenizer"].update(checkpoint={"sha256": "abc"}), "tokenizer.checkpoint"),
    (lambda r: r["data"]["eval"].pop("fingerprint"), "data.eval"),
    (lambda r: r["metrics"]["psnr"].pop("n"), "metrics.psnr"),
    (lambda r: r["metrics"].update(rfid={"value": 3.0, "n": 10, "label": "rFID"}), "metrics.rfid"),
    (lambda r: r["metrics"].update(gfid={"value": 3.0, "n": 10, "label": "gFID", "extractor": {"id": "x", "weights_sha256": "y"}}),
     "metrics.gfid"),
    (lambda r: r.pop("seeds"), "'seeds' is a required property"),
])
def test_schema_rejects_a_record_missing_provenance(tmp_path, breakage, where):
    record = make_record()
    breakage(record)
    with pytest.raises(ValueError, match="does not match schema v1") as err:
        append_record(tmp_path, record)
    assert where in str(err.value)
    assert not (tmp_path / "unit/v1/results.jsonl").exists()  # nothing written


def test_committed_rows_match_the_schema():
    from latentbench.benchmark.leaderboard import validate_record
    from latentbench.paths import LEADERBOARD_DIR

    rows = [r for path in LEADERBOARD_DIR.glob("*/v*/results.jsonl") for r in read_records(path.parent)]
    assert rows
    for r in rows:
        validate_record(r)


def test_render_all_is_deterministic_and_committed_tables_are_current(tmp_path):
    import shutil

    from latentbench.benchmark.leaderboard import render_all
    from latentbench.paths import LEADERBOARD_DIR

    for path in LEADERBOARD_DIR.glob("*/v*/results.jsonl"):
        dst = tmp_path / path.parent.relative_to(LEADERBOARD_DIR)
        dst.mkdir(parents=True)
        shutil.copy(path, dst / "results.jsonl")
        if (path.parent / "grids").is_dir():
            shutil.copytree(path.parent / "grids", dst / "grids")
    if (LEADERBOARD_DIR / "perf" / "perf.json").exists():  # the tables' cost sections
        shutil.copytree(LEADERBOARD_DIR / "perf", tmp_path / "perf")
    tables = render_all(tmp_path)
    assert tables
    v1, v2 = tmp_path / "ci" / "v1", tmp_path / "ci" / "v2"  # v1 has no generator stage, so no gFID curves
    assert tables[v1] == ["README.md", "rate_distortion.png", "stage_times.png"]
    assert tables[v2] == ["README.md", "gfid_curves.png", "rate_distortion.png", "stage_times.png"]
    assert all((t / name).is_file() for t, names in tables.items() for name in names)
    first = {t: (t / "README.md").read_text() for t in tables}
    render_all(tmp_path)
    for table, text in first.items():
        assert (table / "README.md").read_text() == text  # deterministic
        committed = LEADERBOARD_DIR / table.relative_to(tmp_path) / "README.md"
        assert committed.read_text() == text, f"{committed} is stale: run `latentbench leaderboard`"
    if (tmp_path / "perf").is_dir():
        perf_readme = (tmp_path / "perf" / "README.md").read_text()
        assert (LEADERBOARD_DIR / "perf" / "README.md").read_text() == perf_readme, "perf/README.md is stale: run `latentbench leaderboard`"


def test_cost_section_comes_from_perf_json():
    from latentbench.benchmark.leaderboard import cost_section

    record = {"protocol": {"name": "ci", "version": 2}}
    perf = {"threads": 2, "created": "2026-11-22T13:00:00", "provenance": {"code": {"commit": "abcdef0123"}},
            "matmul_peak_gflops": {"fp32": 150.0, "bf16": 400.0}, "steps": 8,
            "rows": [{"target": "sdvae", "protocol": "ci/v2", "batch": 64, "peak_rss_gib": 1.5,
                      "32-true": {"step_s": 0.7, "flops": 80e9, "mfu": 0.75},
                      "bf16-mixed": {"step_s": 0.5, "flops": 80e9, "gflops_per_s": 160.0, "mfu": 0.4},
                      "encode_img_s": 900.0, "decode_img_s": 250.0, "encode_img_s_bf16": 1500.0, "decode_img_s_bf16": 600.0},
                     {"target": "other", "protocol": "smoke/v2", "batch": 32, "peak_rss_gib": 1.0}]}
    text = cost_section([record], perf)
    assert "## Cost" in text and "| sdvae | 64 | 0.700 | 0.500 | 1.40x | 80.0 | 160 | 40.0% | 75.0% | 900 / 1500 | 250 / 600 |" in text
    assert "other" not in text  # another protocol's row
    assert cost_section([record], None) == ""


def test_a_bench_under_a_changed_protocol_stops_before_its_stages(tmp_path, monkeypatch):
    """Not after the training, evaluation and generator stages it would have run for nothing."""
    import latentbench.benchmark.harness as harness

    record = make_record()
    record["protocol"].update(name="smoke", version=3)  # a row measured under another smoke v3 (fingerprint f...f)
    append_record(tmp_path / "lb", record)
    monkeypatch.setattr(harness, "train_stage", lambda *a, **k: pytest.fail("trained under a changed protocol"))
    with pytest.raises(ValueError, match="protocol smoke v3 changed .* needs a new version number"):
        harness.run_bench("sdvae", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)


def test_rows_trained_with_different_perceptual_losses_get_a_note():
    from latentbench.benchmark.leaderboard import _perceptual_notes

    def record(name, perceptual):
        return {"tokenizer": {"name": name}, "training": {"perceptual": perceptual}}

    same = [record("a", "lpips-vgg"), record("b", "lpips-alex"), {"tokenizer": {"name": "c"}, "training": None}]
    assert _perceptual_notes(same) == []
    (note,) = _perceptual_notes([record("sdvae-ci", "unavailable: LPIPS-vgg needs ..."),
                                 record("rae-ci", "substitute: domain-mnist feature distance ...")])
    assert "none, LPIPS weights unavailable and no substitute configured for sdvae-ci" in note
    assert "the labelled substitute, LPIPS's recipe on the domain classifier for rae-ci" in note


def test_a_missing_baseline_row_and_a_tiny_model_are_rendered_as_such():
    ours = _with_curve("ours", [30.0, 15.0], target=20.0)
    ours["tokenizer"]["params"]["total"] = 2_345
    table = render_table([ours])
    assert "(baseline: base, which has no row in this table yet;" in table
    assert "| ours | 4x8x8 | 0.00234 |" in table or "| ours | 4x8x8 | 0.00235 |" in table
    assert "(baseline: base;" in render_table([_with_curve("base", [90.0, 60.0], target=20.0), ours])


def test_every_rows_curve_is_drawn_when_rows_share_a_name():
    """Rows of earlier commits (or other seeds) keep their curves beside the latest one's."""
    from latentbench.benchmark.leaderboard import _curves

    old, new, again, other = (_with_curve("tok", [v]) for v in (90.0, 80.0, 70.0, 60.0))
    for record, commit in ((old, "a" * 40), (new, "b" * 40), (again, "b" * 40)):
        record["provenance"]["code"]["commit"] = commit
    other["tokenizer"]["name"] = "other"
    curves, groups = _curves([old, new, again, other])
    assert groups == {"tok @aaaaaaaa": "tok", f"tok @bbbbbbbb @{new['id'][:8]}": "tok", f"tok @bbbbbbbb @{again['id'][:8]}": "tok",
                      "other": "other"}
    assert list(curves)[-2:] == [f"tok @bbbbbbbb @{again['id'][:8]}", "other"]  # the records' order: the plot's latest
    assert len(curves) == 4 and curves["other"][0]["value"] == 60.0 and curves["tok @aaaaaaaa"][0]["value"] == 90.0
    assert {curves[f"tok @bbbbbbbb @{r['id'][:8]}"][0]["value"] for r in (new, again)} == {80.0, 70.0}


def test_rows_measured_on_other_files_of_the_same_folder_are_said_to_differ():
    a, b = make_record("tok-a"), make_record("tok-b")
    for r in (a, b):
        r["data"]["train"] = {"fingerprint": "1" * 64}
    assert "- data:" not in render_table([a, b])
    b["data"]["eval"] = {**a["data"]["eval"], "fingerprint": "2" * 64}
    table = render_table([a, b])
    assert "- data: the rows were measured on 2 versions of the eval split" in table and "versions of the train" not in table
    assert "`222222222222`: tok-b (abcdef12, 2026-01-01)" in table


def test_only_the_plots_a_table_has_are_linked():
    """A table without gFID curves (v1 of `ci`) links no gfid_curves.png; one without any plot has no Plots section."""
    plain = make_record()
    plain["wall_time_s"] = {}  # no stage timed: no stage_times.png
    assert "## Plots" not in render_table([plain])
    sized = make_record()
    sized["data"]["eval"]["resolution"] = 32
    table = render_table([sized])
    assert "[rate_distortion.png](rate_distortion.png)" in table and "gfid_curves.png" not in table
    assert "[stage_times.png](stage_times.png)" in table
    sized["generation"] = {"curve": {"100": 50.0, "200": 40.0}}
    assert "[gfid_curves.png](gfid_curves.png)" in render_table([sized])


def test_a_damaged_perf_json_costs_the_table_its_cost_section_not_the_row(tmp_path):
    (tmp_path / "perf").mkdir()
    (tmp_path / "perf" / "perf.json").write_text('{"schema": 2, <<<<<<< HEAD\n')
    with pytest.warns(UserWarning, match="perf.json is not a `latentbench perf` result .*without its Cost section"):
        table = append_record(tmp_path, make_record())
    assert len(read_records(table)) == 1 and "Cost" not in (table / "README.md").read_text()


def test_the_leaderboard_command_names_a_damaged_perf_json(tmp_path, capsys):
    from latentbench.cli import main

    append_record(tmp_path, make_record())
    (tmp_path / "perf").mkdir()
    (tmp_path / "perf" / "perf.json").write_text('{"rows": 3}')
    with pytest.raises(SystemExit) as e, pytest.warns(UserWarning):
        main(["leaderboard", "--leaderboard_dir", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "perf.json is not a `latentbench perf` result (TypeError: 'rows' is not a list of objects)" in err
    assert "`make perf`" in err


def test_a_failed_render_puts_the_plots_back(tmp_path, monkeypatch):
    """The plots are drawn before the README; a row taken back must not stay in them."""
    import latentbench.benchmark.leaderboard as leaderboard

    first = make_record()
    first["data"]["eval"]["resolution"] = 32
    table = append_record(tmp_path, first)
    plot = (table / "rate_distortion.png").read_bytes()
    real = leaderboard.cost_section

    def fails_with_two_rows(records, perf):
        if len(records) == 2:
            raise RuntimeError("disk full")
        return real(records, perf)

    monkeypatch.setattr(leaderboard, "cost_section", fails_with_two_rows)
    second = make_record("tok-b", psnr=31.0)
    second["data"]["eval"]["resolution"] = 32
    with pytest.raises(RuntimeError, match="disk full"):
        append_record(tmp_path, second)
    assert (table / "rate_distortion.png").read_bytes() == plot
    assert [r["id"] for r in read_records(table)] == [first["id"]]


def test_the_rate_distortion_plot_labels_each_rows_latest_point_without_overlaps(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from latentbench.benchmark.leaderboard import _plot_rate_distortion

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at
    records = []
    for name, psnr in (("tok-a", 20.0), ("tok-a", 20.1), ("tok-b", 20.05), ("tok-c", 20.1), ("tok-d", 19.95), ("far", 30.0)):
        records.append(make_record(name, psnr=psnr))  # every rate the same: 4x8x8 latents of 32 px images
        records[-1]["data"]["eval"]["resolution"] = 32
    records[-1]["tokenizer"]["latent"]["shape"] = [8, 8, 8]  # 0.5 floats per pixel: the plot spans under one decade
    assert _plot_rate_distortion(records, tmp_path / "rd.png")
    fig = figures[0]
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_text()]
    assert sorted(t.get_text() for t in labels) == ["far", "tok-a", "tok-b", "tok-c", "tok-d"]  # tok-a once: its latest
    assert [c.get_alpha() for c in ax.collections].count(0.3) == 1  # tok-a's earlier point, faint
    boxes = [Text.get_window_extent(t, renderer) for t in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    ticks = [t.get_text() for t in ax.get_xticklabels() if ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
    assert {"0.2", "0.5"} <= set(ticks)  # numbers on the axis, though no power of ten lies inside it


def test_a_rows_warnings_are_marked_in_the_table_and_given_in_its_notes():
    a, b = make_record("tok-a"), make_record("tok-b")
    b["warnings"] = ["every reconstruction lies in [0, 1] while the images reach -1.00: ..."]
    table = render_table([a, b])
    assert "| tok-b (warning: notes) |" in table and "| tok-a |" in table
    assert f"- **warning**, tok-b (record {b['id'][:12]}): every reconstruction lies in [0, 1]" in table


def test_a_row_at_another_seed_is_marked_and_compared_with_the_baseline_at_that_seed():
    from latentbench.benchmark.leaderboard import convergence_cell, row_name

    base, fast = _with_curve("base", [90.0, 60.0, 45.0, 40.0]), _with_curve("fast", [50.0, 35.0, 30.0, 28.0])
    base1 = _with_curve("base", [40.0, 20.0, 10.0, 5.0])  # a later --seed 1 run of the baseline
    fast1 = _with_curve("fast", [50.0, 35.0, 30.0, 28.0])
    for r in (base1, fast1):
        r["seeds"]["bench"] = 1
    assert row_name(base) == "base" and row_name(base1) == "base [seed 1]"
    records = [base, fast, base1]
    assert convergence_cell(fast, records) == "500 (2.0x)"  # against the seed-0 baseline (final 40), not the later seed-1 row
    assert convergence_cell(fast1, records + [fast1]) == "> 1000"  # the seed-1 baseline's 5.0 is not reached
    assert convergence_cell(fast1, [base, fast, fast1]) == "— (no base row at seed 1)"
    protocol_seed = make_record("tok")  # a protocol whose own seed is 7: its rows are not marked
    protocol_seed["protocol"]["seed"] = protocol_seed["seeds"]["bench"] = 7
    assert row_name(protocol_seed) == "tok"
    table = render_table(records)
    assert "| base [seed 1] |" in table and "| base |" in table


def test_a_row_trained_on_another_budget_is_marked_and_never_the_baseline_of_the_protocols_rows():
    """``--train_steps 300`` under a protocol of 800 steps: the latest row of the baseline's name, it had become the
    baseline of every row's conv. steps."""
    from latentbench.benchmark.leaderboard import convergence_cell, row_name

    base, fast = _with_curve("base", [90.0, 60.0, 45.0, 40.0]), _with_curve("fast", [50.0, 35.0, 30.0, 28.0])
    short = _with_curve("base", [200.0, 150.0, 120.0, 100.0])  # a later, shorter training of the baseline
    for r in (base, fast, short):
        r["protocol"]["train_steps"] = 800
        r["training"]["max_steps"] = 800
    short["training"]["max_steps"] = 300
    assert row_name(base) == "base" and row_name(short) == "base [300 steps]"
    records = [base, fast, short]
    assert convergence_cell(fast, records) == "500 (2.0x)"  # against the 800-step baseline (final 40)
    assert convergence_cell(short, records) == "1000"  # its own baseline: itself
    old = make_record("base")  # recorded before the budgets were: not marked
    assert row_name(old) == "base"
    assert "| base [300 steps] |" in render_table(records)


def test_crowded_rate_distortion_labels_stay_inside_the_axes(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from latentbench.benchmark.leaderboard import _plot_rate_distortion

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    records = [make_record(f"tok-{i:02d}", psnr=20.0) for i in range(28)]  # 28 rows on one point
    for r in records:
        r["data"]["eval"]["resolution"] = 32
    assert _plot_rate_distortion(records, tmp_path / "rd.png")
    fig = figures[0]
    ax, renderer = fig.axes[0], fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    for label in (t for t in ax.texts if t.get_text()):
        box = Text.get_window_extent(label, renderer)
        assert frame.y0 <= box.y0 and box.y1 <= frame.y1, label.get_text()


def test_a_row_measured_on_images_read_nearly_black_is_noted():
    dark = make_record("tok-dark")
    dark["data"]["eval"] |= {"n_off_scale": 3, "off_scale_example": {"path": "val/a/x.png", "reason": "I;16 with every value in 0..255"}}
    table = render_table([make_record("tok-a"), dark])
    assert (f"- data: tok-dark (record {dark['id'][:12]}): 3 of the 10 eval images look saved on another scale than the one "
            "they are read on (e.g. val/a/x.png), so they were read nearly black.") in table
    assert "nearly black" not in render_table([make_record("tok-a")])


def test_a_row_measured_on_images_of_several_frames_is_noted():
    animated = make_record("tok-gif")
    animated["data"]["train"] = {**animated["data"]["eval"], "split": "train",
                                 "n_multiframe": 2, "multiframe_example": {"path": "train/a/walk.gif", "frames": 8}}
    table = render_table([make_record("tok-a"), animated])
    assert (f"- data: tok-gif (record {animated['id'][:12]}): 2 of the 10 train images hold several frames (e.g. "
            "train/a/walk.gif), of which only the first was read.") in table
    assert "several frames" not in render_table([make_record("tok-a")])


def test_a_row_trained_and_measured_on_the_same_images_is_noted():
    same = make_record("tok-same")
    same["data"]["eval"]["source"] = "imagefolder:/d"
    same["data"] |= {"train": {"fingerprint": "e" * 64, "n": 40, "split": "train", "source": "imagefolder:/d"}, "same_images": True}
    table = render_table([make_record("tok-a"), same])
    assert (f"- data: tok-same (record {same['id'][:12]}): its train and val splits were read from the same images "
            "(imagefolder:/d has no separate splits), so its reconstruction metrics and probe are not on held-out images.") in table
    assert "held-out" not in render_table([make_record("tok-a")])
    same["data"]["eval"]["split"] = "train"  # a protocol naming one split twice
    assert (f"- data: tok-same (record {same['id'][:12]}): its train and eval split were both 'train' of imagefolder:/d, "
            "so its reconstruction metrics and probe are not on held-out images.") in render_table([same])


def _from_ckpt(record, sha, path="elsewhere/weights.safetensors"):
    """``record`` as ``bench --ckpt path`` writes it: the weights given, no training stage."""
    record["tokenizer"] |= {"checkpoint": {"path": path, "sha256": sha}, "trained_steps": 0}
    record["training"] = None
    del record["wall_time_s"]["train"]
    return record


def test_a_ckpt_row_is_marked_and_never_the_baseline():
    """A --ckpt row of the baseline tokenizer had the trained row's name and, as its latest row, set every row's speed-up.
    A --ckpt row of another tokenizer (your own weights) is compared with the protocol's baseline like any row."""
    from latentbench.benchmark.leaderboard import _plot_target, convergence_cell, row_name

    base, fast = _with_curve("base", [90.0, 60.0, 45.0, 40.0]), _with_curve("fast", [50.0, 35.0, 30.0, 28.0])
    other_base = _from_ckpt(_with_curve("base", [40.0, 20.0, 10.0, 5.0]), "1a2b3c4d" + "0" * 56)  # weights from elsewhere
    other_fast = _from_ckpt(_with_curve("fast", [50.0, 35.0, 30.0, 28.0]), "9" * 64, "/w/fast.safetensors")
    assert row_name(base) == "base" and row_name(other_base) == "base [ckpt 1a2b3c4d]"
    records = [other_base, base, fast, other_base]
    assert convergence_cell(fast, records) == "500 (2.0x)"  # against the trained baseline (final 40), not the later ckpt row
    assert convergence_cell(other_fast, [base, fast, other_base, other_fast]) == "500 (2.0x)"  # the same baseline
    assert convergence_cell(other_fast, [fast, other_base, other_fast]) == "— (no base row)"
    assert convergence_cell(other_base, records) == "250 (4.0x)"  # itself measured against the trained baseline
    assert _plot_target(records) == (40.0, "base final")
    seed1 = _from_ckpt(_with_curve("fast", [50.0]), "8" * 64)
    seed1["seeds"]["bench"] = 1
    assert row_name(seed1) == "fast [ckpt 88888888, seed 1]"
    table = render_table([base, fast, other_base, other_fast])
    assert "| base [ckpt 1a2b3c4d] |" in table and "| base |" in table and "| fast [ckpt 99999999] |" in table
    assert (f"- fast [ckpt 99999999] (record {other_fast['id'][:12]}): evaluated from weights given with "
            "`--ckpt /w/fast.safetensors` (sha256 `9999999999999999`), not trained by its bench.") in table
    assert "is nobody's baseline" in table and "is nobody's baseline" not in render_table([base, fast, other_fast])
    built = _with_curve("base", [90.0, 60.0, 45.0, 40.0])  # evaluated as built (--train_steps 0: a config that loads weights)
    built["tokenizer"] |= {"checkpoint": None, "trained_steps": 0}
    assert row_name(built) == "base"  # its config names where its weights come from (sdvae-ft-mse)
    assert convergence_cell(other_fast, [built, other_base, other_fast]) == "500 (2.0x)"  # the protocol's way, not a --ckpt
    own = _with_curve("base", [40.0, 20.0, 10.0, 5.0])
    own["tokenizer"]["requested"] = "my-base.yaml"  # a config file of the baseline's name: row "base [my-base]"
    assert convergence_cell(fast, [base, fast, own]) == "500 (2.0x)"


def test_a_ckpt_of_weights_a_row_of_the_table_trained_counts_as_that_training():
    """``--ckpt <run dir>/tokenizer.safetensors`` once a missing extractor is in place (README, Metrics): the re-measured
    run is the protocol's training, so it is the baseline of rows trained here."""
    from latentbench.benchmark.leaderboard import convergence_cell

    trained = make_record("base")  # its gFID was unavailable: no curve
    trained["tokenizer"]["checkpoint"] = {"path": "runs/unit/v1/base-x/tokenizer.safetensors", "sha256": "5" * 64}
    again = _from_ckpt(_with_curve("base", [90.0, 60.0, 45.0, 40.0]), "5" * 64, "runs/unit/v1/base-x/tokenizer.safetensors")
    fast = _with_curve("fast", [50.0, 35.0, 30.0, 28.0])
    records = [trained, again, fast]
    assert convergence_cell(fast, records) == "500 (2.0x)"
    assert convergence_cell(fast, [again, fast]) == "— (no base row)"  # without the row that trained them: from elsewhere
    table = render_table(records)
    assert (f"- base [ckpt 55555555] (record {again['id'][:12]}): evaluated from weights given with `--ckpt "
            f"runs/unit/v1/base-x/tokenizer.safetensors` (sha256 `5555555555555555`), not trained by its bench; they are the "
            f"weights base (record {trained['id'][:12]}, 2026-01-01) trained in this table, re-measured.") in table


def test_the_stage_time_plot_shows_each_rows_latest_bench_with_a_runs_results_as_one(tmp_path):
    """FlowMo's bench records two rows (1a, 1b) that share one training: plotted once, as the bench it was, and only
    the latest run of each row name (the committed `ci` tables keep several runs of a row)."""
    from latentbench.benchmark.leaderboard import _latest_runs, _plot_stage_times

    def run(name, variant, commit, created, train, evaluation, generate, precision=None):
        r = make_record(name)
        r["tokenizer"]["variant"] = variant
        r["run_dir"], r["created"] = f"runs/ci/v2/{name}-x", created
        r["provenance"]["code"]["commit"] = commit
        r["wall_time_s"] = {"train": train, "eval": evaluation, "generate": generate}
        if precision:
            r["precision_changed"] = {"train": {"requested": "bf16-mixed", "used": precision, "why": "no fast bf16"}}
        return r

    old = run("flowmo-ci", "1a", "c0", "2026-01-01", 900.0, 90.0, 600.0)
    a = run("flowmo-ci", "1a", "c1", "2026-01-02", 390.0, 67.0, 318.0)
    b = run("flowmo-ci", "1b", "c1", "2026-01-02", 390.0, 65.0, 114.0)
    sdvae = run("sdvae-ci", None, "c1", "2026-01-02", 286.0, 28.0, 192.0)
    float32 = run("sdvae-ci", None, "c2", "2026-01-03", 922.0, 20.0, 468.0, precision="32-true")  # a row of its own
    latest = {label: (record["id"], seconds) for label, record, seconds in _latest_runs([old, a, sdvae, b, float32])}
    assert set(latest) == {"flowmo-ci", "sdvae-ci", "sdvae-ci [32-true]"}
    assert latest["flowmo-ci"][1] == {"train": 390.0, "eval": 132.0, "generate": 432.0}
    assert latest["sdvae-ci"][1] == {"train": 286.0, "eval": 28.0, "generate": 192.0}
    assert _plot_stage_times([old, a, b, sdvae], tmp_path / "times.png")
    assert (tmp_path / "times.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    untimed = make_record()
    untimed["wall_time_s"] = {}
    assert not _plot_stage_times([untimed], tmp_path / "none.png") and not (tmp_path / "none.png").exists()
    instant = make_record()
    instant["wall_time_s"] = {"train": 0.0, "eval": 0.0}  # identical x limits made matplotlib warn (an error under -W error)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _plot_stage_times([instant], tmp_path / "instant.png")
