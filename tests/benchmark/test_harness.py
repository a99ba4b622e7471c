"""End-to-end `smoke` bench runs: train, reconstruct, measure, record; resume; plug-ins."""
import argparse
import json
import shutil
import textwrap
import time

import pytest
import torch

from latentbench.benchmark.harness import run_bench
from latentbench.benchmark.leaderboard import read_records
from latentbench.weights import UnsafeCheckpointError


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    start = time.perf_counter()
    record = run_bench("sdvae", "smoke", runs_dir=root / "runs", leaderboard_dir=root / "lb", log=lambda s: None)
    return root, record, time.perf_counter() - start


def test_smoke_bench_end_to_end(smoke_run):
    root, record, _ = smoke_run
    assert record["tokenizer"]["name"] == "sdvae-smoke" and record["tokenizer"]["requested"] == "sdvae"
    assert record["tokenizer"]["trained_steps"] == 20
    metrics = record["metrics"]
    assert set(metrics) == {"psnr", "ssim", "lpips", "rfid", "probe", "gfid"}
    assert all(m["n"] == 64 for k, m in metrics.items() if "unavailable" not in m and k != "gfid")
    assert 5 < metrics["psnr"]["value"] < 60 and 0 < metrics["ssim"]["value"] <= 1
    assert "value" in metrics["lpips"] or metrics["lpips"]["unavailable"].startswith("LPIPS-alex needs")
    rfid = metrics["rfid"]
    assert rfid["label"] == "rFID-domain(mnist)" and rfid["value"] > 0 and rfid["bootstrap"] == 10
    assert rfid["interval"][0] < rfid["interval"][1] and len(rfid["extractor"]["weights_sha256"]) == 64
    assert rfid["extractor"]["info"]["val_accuracy"] > 0.2
    assert 0 <= metrics["probe"]["value"] <= 1 and metrics["probe"]["n_train"] == 256 and metrics["probe"]["pooling"] == "flatten"
    assert record["data"]["eval"]["n"] == 64 and record["data"]["train"]["n"] == 256
    assert record["training"]["perceptual"] in ("off", "lpips-vgg") or record["training"]["perceptual"].startswith("unavailable")
    # sdvae-smoke.yaml's GAN (disc_weight as AutoencoderModule's default); the record said null for every family but RAE
    assert record["training"]["discriminator"] == {"kind": "patchgan", "channels": 8, "layers": 2, "weight": 0.5, "start": 10}
    assert set(record["wall_time_s"]) == {"train", "eval", "generate"}
    gfid, gen = metrics["gfid"], record["generation"]
    assert gfid["label"] == "gFID-domain(mnist)" and gfid["n"] == 40 and gfid["value"] > 0 and gfid["bootstrap"] == 10
    assert len(gfid["reference"]["sha256"]) == 64 and gfid["reference"]["n"] == 256  # the train split's statistics
    assert [p["step"] for p in gen["curve"]] == [10, 20] and gen["curve"][-1]["value"] == gfid["value"]
    assert gen["generator"]["name"] == "dit-smoke" and gen["generator"]["steps"] == 20
    assert gen["generator"]["describe"]["alpha"] == pytest.approx(2.0)  # sqrt(4*16*16 / 256)
    assert gen["latents"]["n"] == 256 and gen["latents"]["shape"] == [4, 16, 16] and len(gen["latents"]["sha256"]) == 64
    assert gen["convergence"] == {"target": 1000.0, "steps_to_target": gen["convergence"]["steps_to_target"],
                                  "budget": 20, "baseline": "sdvae-smoke"}
    assert len(record["tokenizer"]["checkpoint"]["sha256"]) == 64
    run_dir = next((root / "runs/smoke/v3").iterdir())
    for f in ("tokenizer.safetensors", "reconstructions.png", "stages/train.json", "stages/eval.json", "checkpoints/last.ckpt",
              "stages/generate.json", "samples.png", "gfid_curve.png"):
        assert (run_dir / f).exists(), f
    gen_dir = next((run_dir / "generators").iterdir())
    assert (gen_dir / "generator.safetensors").exists() and (gen_dir / "samples/step-0000010").is_dir()
    assert (root / "lb/smoke/v3/gfid_curves.png").exists() and (root / "lb/smoke/v3/rate_distortion.png").exists()
    pictures = sorted(p.name for p in (root / "lb/smoke/v3/grids").iterdir())
    assert pictures == [f"{record['id'][:12]}-reconstructions.png", f"{record['id'][:12]}-samples.png"]
    assert f"grids/{record['id'][:12]}-samples.png" in (root / "lb/smoke/v3/README.md").read_text()
    assert any((run_dir / "tensorboard").rglob("events.out.tfevents*"))
    rows = read_records(root / "lb/smoke/v3")
    assert [r["id"] for r in rows] == [record["id"]]
    assert "sdvae-smoke" in (root / "lb/smoke/v3/README.md").read_text()


def test_the_record_keeps_what_other_processes_took_of_the_cpu_per_stage(smoke_run):
    _, record, _ = smoke_run
    assert set(record["machine_load"]) == set(record["wall_time_s"]) == {"train", "eval", "generate"}
    for stage, load in record["machine_load"].items():
        assert set(load) == {"others_cpu_s", "others_share", "cpus", "wall_s"} and 0 <= load["others_share"] <= 1, stage
        assert load["wall_s"] == pytest.approx(record["wall_time_s"][stage], abs=0.05)


def test_a_busy_machine_is_said_before_the_stages(smoke_run, monkeypatch, tmp_path):
    """Other processes busy while the bench prepares: a warning before any stage, with what to do; none when
    every stage is done (the rerun runs none)."""
    from latentbench.benchmark import machine_load

    own = machine_load.own_cpu_seconds
    monkeypatch.setattr(machine_load, "machine_busy_seconds", lambda: own() + 400 * time.perf_counter())  # busy beyond measure: a rerun prepares in ~0.02 s
    root, record, _ = smoke_run
    shutil.copytree(root / "runs", tmp_path / "runs")
    (run_dir,) = (tmp_path / "runs/smoke/v3").iterdir()
    (run_dir / "stages/record.json").unlink()  # the record stage is left to run
    for runs, stage_runs in ((tmp_path, True), (root, False)):
        logs = []
        run_bench("sdvae", "smoke", runs_dir=runs / "runs", leaderboard_dir=tmp_path / "lb", log=logs.append)
        warned = [i for i, line in enumerate(logs) if line.startswith("warning: other processes are using this machine's CPU")]
        if stage_runs:
            first_stage = next(i for i, line in enumerate(logs) if line.startswith("[train]"))
            assert len(warned) == 1 and warned[0] < first_stage and "OMP_NUM_THREADS=1" in logs[warned[0]]
            # the stage that ran is said busy too, without the advice again
            (stage,) = [line for line in logs if line.startswith("[record] warning: other processes took")]
            assert stage.endswith("not this run's cost alone.")
        else:
            assert warned == [] and sum("already done" in line for line in logs) == 4


def test_rerun_skips_finished_stages_and_adds_no_row(smoke_run):
    root, record, _ = smoke_run
    logs = []
    again = run_bench("sdvae", "smoke", runs_dir=root / "runs", leaderboard_dir=root / "lb", log=logs.append)
    assert again["id"] == record["id"]
    assert sum("already done" in line for line in logs) == 4  # train, eval, generate, record
    assert any(f"row {record['id'][:12]} is in" in line and "already: nothing appended" in line for line in logs)
    assert len(read_records(root / "lb/smoke/v3")) == 1
    assert not any(line.startswith("expect about") for line in logs)  # its stages are done: nothing to expect


def test_a_fresh_run_says_what_to_expect_from_the_latest_run_like_it(smoke_run, tmp_path, monkeypatch):
    """FlowMo's `ci` bench takes 16 minutes where sdvae's takes 8: a bench says so before its first stage, from the
    table's latest run of its configuration (as --dry_run quotes it), naming where that ran."""
    import latentbench.benchmark.harness as harness

    root, record, _ = smoke_run
    monkeypatch.setattr(harness, "_run_stages", lambda *a, **k: {})  # the line comes before the stages
    logs = []
    run_bench("sdvae", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=root / "lb", log=logs.append)
    [line] = [line for line in logs if line.startswith("expect about")]
    seconds = record["wall_time_s"]
    assert sum(seconds.values()) < 120  # a smoke bench's seconds, not "0 min"
    assert line == (f"expect about {sum(seconds.values()):.0f} s of stages: the latest run like this one in the table "
                    f"took train {seconds['train']:.0f} s, eval {seconds['eval']:.0f} s, generate {seconds['generate']:.0f} s "
                    f"on {record['provenance']['hardware']['cpu']}, {record['provenance']['hardware']['cpu_count']} CPUs "
                    f"({record['created'][:10]}); another machine or a busy one takes another time")
    logs = []  # a float32 run, whose time no bf16 row tells
    run_bench("sdvae", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=root / "lb", log=logs.append, precision="32-true")
    assert not any(line.startswith("expect about") for line in logs)


def _tree(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


def test_a_dry_run_shows_the_finished_run_and_writes_nothing(smoke_run):
    root, record, _ = smoke_run
    before, logs = _tree(root), []
    plan = run_bench("sdvae", "smoke", runs_dir=root / "runs", leaderboard_dir=root / "lb", log=logs.append, dry_run=True)
    assert _tree(root) == before  # nothing written, not even the run directory's config.json again
    assert plan["tokenizer"] == "sdvae-smoke" and plan["requested"] == "sdvae" and plan["protocol"] == "smoke/v3"
    assert plan["training_module"] == "latentbench.tokenizers.module:AutoencoderModule"
    assert plan["train_steps"] == 20 and plan["processes"] == 1 and plan["data"]["train"] == 256 and plan["data"]["eval"] == 64
    assert plan["stages_done"] == ["eval", "generate", "record", "train"] and plan["this_run_recorded"] == [record["id"]]
    assert plan["generator"]["gfid_at"] == [10, 20] and plan["earlier_runs"] == 1
    assert plan["latest_run"]["stage_seconds"] == record["wall_time_s"]
    assert logs[0].startswith("dry run: bench sdvae-smoke (sdvae) under smoke/v3; nothing is run or written")
    assert any("stages done: eval, generate, record, train" in line for line in logs)
    assert any(f"already holds this run (record {record['id']})" in line for line in logs)
    logs = []  # a float32 run quotes no bf16 row's time
    plan = run_bench("sdvae", "smoke", runs_dir=root / "runs", leaderboard_dir=root / "lb", log=logs.append, dry_run=True,
                     precision="32-true")
    assert "latest_run" not in plan and any("trained in another precision, at another seed or on another budget" in line
                                            for line in logs)
    logs = []  # nor a shorter training the 20-step row's
    plan = run_bench("sdvae", "smoke", runs_dir=root / "runs", leaderboard_dir=root / "lb", log=logs.append, dry_run=True,
                     train_steps=10)
    assert "latest_run" not in plan and record["protocol"]["train_steps"] == record["training"]["max_steps"] == 20
    assert any(line.startswith("tokenizer: sdvae-smoke, trained by latentbench.tokenizers.module:AutoencoderModule; "
                               "module_args {") for line in logs)
    logs = []  # weights given: nothing trains them
    (weights,) = (root / "runs").rglob("tokenizer.safetensors")
    plan = run_bench("sdvae", "smoke", runs_dir=root / "runs", leaderboard_dir=root / "lb", log=logs.append, dry_run=True,
                     ckpt=str(weights))
    assert "tokenizer: sdvae-smoke" in logs and any(line.startswith("training: none (evaluates ") for line in logs)
    assert "latest_run" not in plan  # the trained row's time has a training stage that a --ckpt bench does not run
    assert any("or trained their weights: no stage time to quote" in line for line in logs)


def test_a_dry_run_of_several_processes_runs_in_one_and_creates_nothing(tmp_path):
    from latentbench.distributed import Launch

    logs = []
    plan = run_bench("flowmo", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=logs.append,
                     launch=Launch("auto", 2, 1), precision="32-true", dry_run=True)
    assert list(tmp_path.iterdir()) == []
    assert plan["processes"] == 2 and plan["stages_done"] == [] and plan["earlier_runs"] == 0 and "latest_run" not in plan
    assert plan["training_module"] == "latentbench.tokenizers.flowmo_module:FlowMoModule"
    assert "training: 20 steps at batch 32 in 32-true, on 2 process(es)" in logs
    assert "precision: tokenizer and generator training in 32-true, not the protocol's bf16-mixed: --precision 32-true given" in logs
    assert any(line.endswith("(no stage done)") for line in logs)


def test_a_dry_run_holds_the_table_to_the_run_directorys_stored_records_not_its_name(smoke_run, tmp_path):
    """Runs of one configuration in other clones share the run directory's name: a fresh clone's table holds the
    committed row of that name, and its bench still trains and appends."""
    import shutil

    root, record, _ = smoke_run
    shutil.copytree(root / "lb", tmp_path / "lb")
    plan = run_bench("sdvae", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None,
                     dry_run=True)
    assert plan["run_dir"].endswith(record["run_dir"].rsplit("/", 1)[-1])  # the same name ...
    assert plan["stages_done"] == [] and plan["this_run_recorded"] == []  # ... but not this run
    logs = []
    plan = run_bench("sdvae", "smoke", runs_dir=root / "runs", leaderboard_dir=tmp_path / "empty", log=logs.append, dry_run=True)
    assert plan["recorded_not_in_table"] == [record["id"]] and plan["this_run_recorded"] == []
    assert any(f"appends this run's stored record {record['id']}" in line for line in logs)


def test_extractor_options_the_build_takes_pass_the_check_before_training():
    import dataclasses

    from latentbench.benchmark.harness import check_extractor
    from latentbench.benchmark.protocol import load_protocol

    proto = load_protocol("imagenet256")
    with_weights = dataclasses.replace(proto, eval=dataclasses.replace(proto.eval, extractor_options={"weights": "/x.pth"}))
    check_extractor(with_weights)  # create_extractor passes it to its own weights parameter
    bad = dataclasses.replace(proto, eval=dataclasses.replace(proto.eval, extractor_options={"cache_dir": "/tmp"}))
    with pytest.raises(ValueError, match="may not set cache_dir"):
        check_extractor(bad)


def test_a_bootstrap_too_large_for_the_extractors_features_is_refused_before_training():
    """eval.fid_bootstrap / generator.fid_bootstrap over FrechetDistance's memory limit at the extractor's width had
    been refused only when the eval stage built the metric (after the tokenizer's training) or the last gFID
    evaluation did (after the generator's: 400K steps under imagenet256)."""
    from dataclasses import replace

    from latentbench.benchmark.harness import check_extractor
    from latentbench.benchmark.protocol import load_protocol

    proto = load_protocol("imagenet256")  # inception-tf, 2048-d: 32 MiB a replicate and stream
    check_extractor(proto)
    with pytest.raises(ValueError, match=r"eval.fid_bootstrap=33 at D=2048 needs .* GiB .*use at most 32 replicates"):
        check_extractor(replace(proto, eval=replace(proto.eval, fid_bootstrap=33)))  # rFID: 2 streams
    with pytest.raises(ValueError, match=r"generator.fid_bootstrap=65 at D=2048 .*use at most 64 replicates"):
        check_extractor(replace(proto, generator=replace(proto.generator, fid_bootstrap=65)))  # gFID: 1 stream
    check_extractor(replace(proto, eval=replace(proto.eval, fid_bootstrap=32), generator=replace(proto.generator,
                                                                                                fid_bootstrap=64)))
    dino = replace(proto, eval=replace(proto.eval, extractor="dinov2-vitb14", fid_bootstrap=227))  # 768-d: 227 fit
    check_extractor(dino)
    with pytest.raises(ValueError, match=r"eval.fid_bootstrap=228 at D=768"):
        check_extractor(replace(dino, eval=replace(dino.eval, fid_bootstrap=228)))
    check_extractor(load_protocol("ci"))  # domain-mnist, 128-d: its 100 replicates are 25 MiB
    wide = load_protocol("ci")
    with pytest.raises(ValueError, match=r"eval.fid_bootstrap=100 at D=4096"):
        check_extractor(replace(wide, eval=replace(wide.eval, extractor_options={"feature_dim": 4096})))


def test_stage_seconds_of_a_run_count_its_shared_training_once():
    from latentbench.benchmark.plan import run_of, run_stage_seconds

    def rec(variant, commit, train, evaluation, generate, record_id="x"):
        times = {"eval": evaluation, "generate": generate} | ({"train": train} if train is not None else {})
        return {"id": record_id, "run_dir": "runs/ci/v2/flowmo-ci-x", "provenance": {"code": {"commit": commit}},
                "wall_time_s": times, "tokenizer": {"name": "flowmo-ci", "variant": variant}}

    old, a, b = rec("1b", "c0", 500.0, 1.0, 2.0), rec("1a", "c1", 443.0, 76.0, 345.0), rec("1b", "c1", 443.0, 70.0, 130.0)
    run = [r for r in (old, a, b) if run_of(r) == run_of(b)]  # same run directory at another commit: another run
    assert run == [a, b]
    assert run_stage_seconds(run) == {"train": 443.0, "eval": 146.0, "generate": 475.0}
    # two benches of weights from elsewhere (no train stage) at one commit and run directory name are two runs: they
    # had been summed as one (eval 200 s)
    first, second = rec(None, "c1", None, 100.0, 50.0, "r1"), rec(None, "c1", None, 100.0, 50.0, "r2")
    assert run_of(first) != run_of(second)
    assert run_stage_seconds([r for r in (first, second) if run_of(r) == run_of(second)]) == {"eval": 100.0, "generate": 50.0}


def test_a_dry_run_quotes_the_rows_of_its_own_config_not_of_another_with_the_same_tokenizer():
    from latentbench.benchmark.plan import _rows_of

    plain = {"tokenizer": {"name": "maetok-ci", "requested": "maetok"}}
    by_path = {"tokenizer": {"name": "maetok-ci", "requested": "/abs/configs/tokenizers/maetok-ci.yaml"}}
    ablation = {"tokenizer": {"name": "maetok-ci", "requested": "configs/tokenizers/ablations/maetok-ci-plain.yaml"}}
    flowmo = [{"tokenizer": {"name": "flowmo-ci", "requested": "flowmo", "variant": v}} for v in ("1a", "1b")]
    records = [plain, by_path, ablation, *flowmo]
    assert _rows_of(records, "maetok-ci") == [plain, by_path]
    assert _rows_of(records, "maetok-ci [maetok-ci-plain]") == [ablation]
    assert _rows_of(records, "flowmo-ci") == flowmo


def test_a_dry_run_quotes_rows_whose_weights_came_as_its_own_do():
    """A --ckpt bench runs no training stage: a trained row's time is not its time, nor its row's a trained bench's."""
    from latentbench.benchmark.plan import runs_like

    def rec(trained_steps, checkpoint, seed=0):
        return {"tokenizer": {"name": "sdvae-ci", "trained_steps": trained_steps, "checkpoint": checkpoint},
                "protocol": {"seed": 0, "train_steps": 800}, "seeds": {"bench": seed},
                "training": {"max_steps": 800} if trained_steps else None}

    trained, ckpt, built = rec(800, {"sha256": "a" * 64}), rec(0, {"path": "w.safetensors", "sha256": "b" * 64}), rec(0, None)
    ckpt1 = rec(0, {"path": "w.safetensors", "sha256": "b" * 64}, seed=1)
    records = [trained, ckpt, built, ckpt1]
    assert runs_like(records, [], None, None, trains=True) == [trained]
    assert runs_like(records, [], None, None, trains=False) == [ckpt, built]  # no training stage in either
    assert runs_like(records, [], 1, None, trains=False) == [ckpt1]


def test_the_generators_training_logs_as_part_of_the_generate_stage(smoke_run, tmp_path):
    """Not as "[train]", which reads as the tokenizer's training again; its stored result keeps its name."""
    import shutil

    root, _, _ = smoke_run
    shutil.copytree(root / "runs", tmp_path / "runs")
    run_dir = next((tmp_path / "runs/smoke/v3").iterdir())
    for name in ("generate", "record"):  # the generate stage runs again and finds its generator trained
        (run_dir / "stages" / f"{name}.json").unlink()
    logs = []
    run_bench("sdvae", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=logs.append)
    # a stage's "[name] warning: other processes took ..." on a shared machine is not a stage line
    stages = [line.split("]")[0] + "]" for line in logs if line.startswith("[") and "] warning: " not in line]
    assert stages == ["[train]", "[eval]", "[generate]", "[generate: train generator]", "[generate]", "[record]", "[record]",
                      "[record]"], logs
    assert any(line.startswith("[generate: train generator] already done") for line in logs)


def test_a_stage_label_names_it_in_the_log_not_on_disk(tmp_path):
    from latentbench.benchmark.stages import Stages

    logs = []
    Stages(tmp_path).run("train", lambda: {}, logs.append, label="generate: train generator")
    assert logs[0] == "[generate: train generator] running" and logs[1].startswith("[generate: train generator] done in ")
    assert (tmp_path / "stages/train.json").is_file() and Stages(tmp_path).get("train") is not None


def test_rerun_with_another_leaderboard_dir_writes_the_same_row_there(smoke_run, tmp_path):
    root, record, _ = smoke_run
    logs = []
    again = run_bench("sdvae", "smoke", runs_dir=root / "runs", leaderboard_dir=tmp_path / "lb2", log=logs.append)
    assert again["id"] == record["id"] and any("appended to" in line for line in logs)
    assert [r["id"] for r in read_records(tmp_path / "lb2/smoke/v3")] == [record["id"]]
    assert len(list((tmp_path / "lb2/smoke/v3/grids").glob(f"{record['id'][:12]}-*.png"))) == 2
    assert [r["id"] for r in read_records(root / "lb/smoke/v3")] == [record["id"]]  # the first table is untouched
    logs.clear()
    run_bench("sdvae", "smoke", runs_dir=root / "runs", leaderboard_dir=tmp_path / "lb2", log=logs.append)
    assert len(read_records(tmp_path / "lb2/smoke/v3")) == 1 and not any("appended to" in line for line in logs)


def test_a_run_killed_while_recording_leaves_one_row_after_its_rerun(smoke_run, tmp_path, monkeypatch):
    """Killed after the record is stored but before its row lands: the rerun appends that record, once."""
    import shutil

    import latentbench.benchmark.harness as harness

    root, _, _ = smoke_run
    run_dir = next((root / "runs/smoke/v3").iterdir())
    copy = tmp_path / "runs/smoke/v3" / run_dir.name
    shutil.copytree(run_dir, copy)
    (copy / "stages/record.json").unlink()  # the record stage has not run in this copy

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(harness, "append_record", killed)
    with pytest.raises(KeyboardInterrupt):
        run_bench("sdvae", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    stored = json.loads((copy / "stages/record.json").read_text())["record"]
    assert read_records(tmp_path / "lb/smoke/v3") == [] and not list(tmp_path.glob("lb/smoke/v3/grids/*"))
    monkeypatch.undo()
    for _ in range(2):
        again = run_bench("sdvae", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
        assert again["id"] == stored["id"]
        assert [r["id"] for r in read_records(tmp_path / "lb/smoke/v3")] == [stored["id"]]


def test_a_run_killed_after_its_row_landed_gets_its_table_rendered_by_the_rerun(smoke_run, tmp_path):
    """SIGKILL between the row's write and the README's: results.jsonl holds the row, the README and plots do not."""
    root, record, _ = smoke_run
    kw = dict(runs_dir=root / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    run_bench("sdvae", "smoke", **kw)
    table = tmp_path / "lb/smoke/v3"
    for name in ("README.md", "gfid_curves.png", "rate_distortion.png"):
        (table / name).unlink()
    run_bench("sdvae", "smoke", **kw)
    assert [r["id"] for r in read_records(table)] == [record["id"]]
    assert record["id"][:12] in (table / "README.md").read_text() and (table / "gfid_curves.png").exists()


def test_a_second_bench_of_a_running_run_is_refused_naming_the_fix(smoke_run, tmp_path):
    """Two benches of one run at once had both stored a record and appended two rows of the same run."""
    from filelock import FileLock

    root, record, _ = smoke_run
    (run_dir,) = (root / "runs/smoke/v3").iterdir()
    kw = dict(runs_dir=root / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    with FileLock(str(run_dir / ".lock")), pytest.raises(ValueError, match="another bench of this run is running"):
        run_bench("sdvae", "smoke", **kw)
    assert not (tmp_path / "lb").exists()
    assert run_bench("sdvae", "smoke", **kw)["id"] == record["id"]  # the lock is left when the first one ends


@pytest.mark.parametrize("damage", ["cut short", "deleted"])
def test_trained_weights_damaged_after_training_are_named_with_the_fix(damage, smoke_run, tmp_path):
    """They had failed at the eval stage as an "interrupted download?" to "download again", or with no fix at all."""
    import shutil

    root, _, _ = smoke_run
    run_dir = next((root / "runs/smoke/v3").iterdir())
    copy = tmp_path / "runs/smoke/v3" / run_dir.name
    shutil.copytree(run_dir, copy)
    (copy / "stages/eval.json").unlink()
    weights = copy / "tokenizer.safetensors"
    if damage == "deleted":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"train stage's weights: .*tokenizer.safetensors .*delete .*stages/train.json"):
        run_bench("sdvae", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)


def test_another_results_weights_cut_short_are_named_with_the_fix(tmp_path):
    """FlowMo's tokenizer-1a.safetensors has no stored sha256: cut short, its eval stage had said to download it."""
    import types

    from safetensors.torch import save_file

    from latentbench.benchmark.harness import _check_trained_weights, sha256_file
    from latentbench.benchmark.stages import Stages

    for name in ("tokenizer.safetensors", "tokenizer-1a.safetensors"):
        save_file({"w": torch.randn(1000)}, str(tmp_path / name))
    train = {"weights": "tokenizer.safetensors", "weights_sha256": sha256_file(tmp_path / "tokenizer.safetensors"),
             "variants": {"1a": "tokenizer-1a.safetensors", "1b": "tokenizer.safetensors"}}
    cfg = types.SimpleNamespace(protocol=types.SimpleNamespace(generator=types.SimpleNamespace(max_steps=0)))
    _check_trained_weights(tmp_path, train, Stages(tmp_path), cfg)
    cut = tmp_path / "tokenizer-1a.safetensors"
    cut.write_bytes(cut.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"tokenizer-1a.safetensors is not a readable safetensors file .*train stage's "
                                         r"weights; delete .*stages/train.json"):
        _check_trained_weights(tmp_path, train, Stages(tmp_path), cfg)


def test_a_finished_run_without_its_weights_still_appends_its_row_to_another_table(smoke_run, tmp_path):
    """Every stage that reads the weights is done: a rerun with another --leaderboard_dir appends the stored record
    (weights deleted to free the disk had stopped it, naming a fix that retrains nothing it needs)."""
    import shutil

    root, record, _ = smoke_run
    run_dir = next((root / "runs/smoke/v3").iterdir())
    copy = tmp_path / "runs/smoke/v3" / run_dir.name
    shutil.copytree(run_dir, copy)
    (copy / "tokenizer.safetensors").unlink()
    rerun = run_bench("sdvae", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    assert rerun["id"] == record["id"] and [r["id"] for r in read_records(tmp_path / "lb/smoke/v3")] == [record["id"]]


def test_a_record_quotes_the_provenance_of_the_stages_that_measured_it(smoke_run):
    root, record, _ = smoke_run
    run_dir = next((root / "runs/smoke/v3").iterdir())
    train = json.loads((run_dir / "stages/train.json").read_text())
    assert train["provenance"]["code"] == record["provenance"]["code"]
    assert record["provenance"]["hardware"] == train["provenance"]["hardware"] and "stages" not in record["provenance"]


@pytest.mark.parametrize("argv0", [".venv/bin/latentbench", "/home/u/src/latentbench/latentbench/cli.py",
                                   "/opt/x/latentbench/__main__.py"])
def test_the_recorded_command_is_the_one_a_user_retypes(argv0):
    """However the suite was started, the record says ``latentbench <args>``, not this machine's paths."""
    from latentbench.benchmark.provenance import command_line

    assert command_line([argv0, "bench", "--tokenizer", "rae"]) == "latentbench bench --tokenizer rae"
    assert command_line(["/usr/bin/other/cli.py", "x"]) == "/usr/bin/other/cli.py x"  # not ours: kept as it was
    assert command_line([]) == ""


def test_stage_provenance_that_differs_is_listed_and_marks_the_record():
    from latentbench.benchmark.stages import UNKNOWN_PROVENANCE, stages_provenance
    from latentbench.benchmark.provenance import provenance

    base = provenance()
    clean = {**base, "code": {"commit": "a" * 40, "dirty": False}}
    dirty = {**base, "code": {"commit": "b" * 40, "dirty": True}}
    same = stages_provenance({"train": {"provenance": clean}, "eval": {"provenance": clean}, "generate": None})
    assert same["code"] == {"commit": "a" * 40, "dirty": False} and "stages" not in same
    mixed = stages_provenance({"train": {"provenance": dirty}, "eval": {"provenance": clean}})
    assert mixed["code"] == {"commit": "mixed", "dirty": True}
    assert mixed["stages"] == {"train": {"code": dirty["code"]}, "eval": {"code": clean["code"]}}
    resumed = stages_provenance({"train": {"provenance": clean, "provenance_resumed": [dirty]}, "eval": {"provenance": clean}})
    assert resumed["code"] == {"commit": "mixed", "dirty": True} and set(resumed["stages"]) == {"train", "train (resumed 1)"}
    # a stage stored before stages kept their provenance is unknown, not credited with this process's commit
    old = stages_provenance({"train": {}, "eval": {"provenance": clean}})
    assert old["code"] == {"commit": "a" * 40, "dirty": None} and old["stages"] == {"train": UNKNOWN_PROVENANCE}
    assert stages_provenance({"eval": {}})["stages"] == {"eval": UNKNOWN_PROVENANCE}


def test_a_stage_resumed_in_another_environment_keeps_both(tmp_path, monkeypatch):
    import latentbench.benchmark.stages as stages_module

    stages = stages_module.Stages(tmp_path)

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stages.run("train", interrupted, log=lambda m: None)
    first = json.loads((tmp_path / "stages/train.attempts.jsonl").read_text())
    real = stages_module.provenance
    monkeypatch.setattr(stages_module, "provenance", lambda: {**real(), "code": {"commit": "c" * 40, "dirty": True}})
    result = stages.run("train", lambda: {"steps": 1}, log=lambda m: None)
    assert result["provenance"] == first and result["provenance_resumed"][0]["code"] == {"commit": "c" * 40, "dirty": True}
    assert not (tmp_path / "stages/train.attempts.jsonl").exists()
    assert json.loads((tmp_path / "stages/train.json").read_text())["provenance_resumed"] == result["provenance_resumed"]


def test_a_training_resumed_on_another_number_of_processes_says_so_in_the_record(tmp_path, monkeypatch):
    """Killed on 2 processes and finished on 1, its training is neither run's: the record had said world_size 1 alone."""
    import latentbench.benchmark.stages as stages_module
    import latentbench.benchmark.provenance as provenance

    stages = stages_module.Stages(tmp_path)
    monkeypatch.setattr(provenance, "world_size", lambda: 2, raising=False)
    with pytest.raises(KeyboardInterrupt):
        stages.run("train", lambda: (_ for _ in ()).throw(KeyboardInterrupt), log=lambda m: None)
    monkeypatch.setattr(provenance, "world_size", lambda: 1)
    train = stages.run("train", lambda: {"steps": 1}, log=lambda m: None)
    evaluation = stages.run("eval", lambda: {}, log=lambda m: None)
    assert stages_module.stages_provenance({"train": train, "eval": evaluation}).get("stages") == {
        "train": {"processes": 2}, "train (resumed 1)": {"processes": 1}, "eval": {"processes": 1}}


def test_a_damaged_attempts_file_is_said_not_skipped_silently(tmp_path):
    import latentbench.benchmark.stages as stages_module

    stages = stages_module.Stages(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        stages.run("train", lambda: (_ for _ in ()).throw(KeyboardInterrupt), log=lambda m: None)
    path = tmp_path / "stages/train.attempts.jsonl"
    path.write_text(path.read_text() + '{"cut short\n')
    with pytest.warns(UserWarning, match="train.attempts.jsonl: 1 unreadable line.*only the other 1 earlier attempt"):
        result = stages.run("train", lambda: {"steps": 1}, log=lambda m: None)
    assert result["steps"] == 1 and result["provenance"]


def test_a_cached_stage_with_an_infinite_metric_still_records_a_row():
    from latentbench.benchmark.evaluate import not_finite_as_unavailable

    assert not_finite_as_unavailable("psnr", {"value": float("inf"), "n": 3}) == {
        "unavailable": "the measurement gave inf over 3 images"}
    assert not_finite_as_unavailable("ssim", {"value": 0.5, "n": 3}) == {"value": 0.5, "n": 3}


def test_an_extractor_without_its_weights_still_gives_a_row(tmp_path, monkeypatch):
    """Its rFID and gFID are recorded unavailable with the reason; the record had failed the schema (no gFID curve)
    after every stage had run, and was stored as done, so each rerun failed the same way."""
    import latentbench.benchmark.harness as harness

    monkeypatch.setattr(harness, "build_extractor", lambda proto, cache_dir=None, on_bad_image="error": (None, "no inception weights here"))
    record = run_bench("sdvae", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    assert record["metrics"]["rfid"] == {"unavailable": "no inception weights here"}
    assert record["metrics"]["gfid"]["unavailable"].startswith("no inception weights here (so the bench trained no generator; "
                                                               "once the weights are in place, --ckpt ")
    assert record["generation"] is None and len(read_records(tmp_path / "lb/smoke/v3")) == 1
    run_dir = next((tmp_path / "runs/smoke/v3").iterdir())
    assert not (run_dir / "generators").exists()  # the generator's training is not spent on a gFID nobody can measure


def _killing(monkeypatch, module_class, at: dict, steps: list | None = None):
    """Make ``module_class``'s training step raise at ``at["step"]`` (None: never), recording the steps it runs."""
    real = module_class.training_step

    def training_step(self, batch, batch_idx):
        if at.get("step") == self.global_step:
            raise RuntimeError("killed")
        if steps is not None:
            steps.append(self.global_step)
        return real(self, batch, batch_idx)

    monkeypatch.setattr(module_class, "training_step", training_step)


def test_a_killed_training_resumes_at_its_last_checkpoint_and_trains_only_the_rest(smoke_run, tmp_path, monkeypatch):
    """Killed after step 10 (the checkpoint of step 8 on disk: one every fifth of the 20-step budget, here the end of
    the first epoch of 8 batches), the rerun resumes at step 8, runs steps 8-19 only, not the whole budget again, and
    ends where the uninterrupted run did: its random streams and its loader's place are in the checkpoint."""
    from latentbench.tokenizers.module import AutoencoderModule

    steps, at = [], {"step": 10}
    _killing(monkeypatch, AutoencoderModule, at, steps)
    kw = dict(runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    with pytest.raises(RuntimeError, match="killed"):
        run_bench("sdvae", "smoke", **kw)
    (run_dir,) = (tmp_path / "runs/smoke/v3").iterdir()
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 8
    assert not (run_dir / "stages/train.json").exists() and not (tmp_path / "lb").exists()
    steps.clear()
    at["step"] = None
    record = run_bench("sdvae", "smoke", **kw)
    assert steps == list(range(8, 20))
    assert json.loads((run_dir / "stages/train.json").read_text())["steps"] == 20
    root, plain, _ = smoke_run
    assert record["tokenizer"]["checkpoint"]["sha256"] == plain["tokenizer"]["checkpoint"]["sha256"]
    assert record["metrics"] == plain["metrics"]


def test_a_bench_killed_inside_an_epoch_and_inside_generator_training_gives_the_uninterrupted_numbers(
        smoke_run, tmp_path, monkeypatch):
    """Killed at tokenizer step 14 (resumed from the checkpoint of step 12, four batches into the second epoch), then
    at generator step 15 (resumed from its step-10 evaluation): the record is the uninterrupted run's, bit for bit."""
    import warnings

    from latentbench.generators.module import GeneratorModule
    from latentbench.tokenizers.module import AutoencoderModule

    tokenizer_kill, generator_kill = {"step": 14}, {"step": None}
    _killing(monkeypatch, AutoencoderModule, tokenizer_kill)
    _killing(monkeypatch, GeneratorModule, generator_kill)
    kw = dict(runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    with pytest.raises(RuntimeError, match="killed"):
        run_bench("sdvae", "smoke", **kw)
    tokenizer_kill["step"], generator_kill["step"] = None, 15
    with pytest.raises(RuntimeError, match="killed"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_bench("sdvae", "smoke", **kw)
    assert not [w for w in caught if "not resumable" in str(w.message)], "Lightning's alarm, which the resume makes wrong"
    generator_kill["step"] = None
    record = run_bench("sdvae", "smoke", **kw)
    _, plain, _ = smoke_run
    assert record["tokenizer"]["checkpoint"]["sha256"] == plain["tokenizer"]["checkpoint"]["sha256"]
    assert record["metrics"] == plain["metrics"] and record["generation"]["curve"] == plain["generation"]["curve"]


def _flowmo_trained(kw, kill_in_validation_at: dict, monkeypatch, val_every: int | None = None):
    """A FlowMo smoke bench's train stage only (the later stages stubbed), killed in the validation of a step."""
    import latentbench.benchmark.harness as harness
    from latentbench.tokenizers.flowmo_module import FlowMoModule

    monkeypatch.setattr(harness, "_bench_variant", lambda *a, **k: {})
    real = FlowMoModule.validation_step

    def validation_step(self, batch, batch_idx):
        if kill_in_validation_at.get("step") == self.global_step:
            raise RuntimeError("killed")
        return real(self, batch, batch_idx)

    monkeypatch.setattr(FlowMoModule, "validation_step", validation_step)
    if val_every:
        kwargs = FlowMoModule.trainer_kwargs
        monkeypatch.setattr(FlowMoModule, "trainer_kwargs", lambda self: {**kwargs(self), "val_check_interval": val_every})
    run_bench("flowmo", "smoke", **kw)
    train = json.loads((next((kw["runs_dir"] / "smoke/v3").iterdir()) / "stages/train.json").read_text())
    return {k: train[k] for k in ("weights_sha256", "early_stopping", "steps")}


@pytest.mark.parametrize("val_every, killed_at", [(None, 20), (4, 16)])
def test_a_flowmo_training_killed_in_a_validation_after_a_checkpoint_of_its_step_resumes_exactly(
        tmp_path, monkeypatch, val_every, killed_at):
    """Killed inside the validation of a step whose checkpoint was written (every 4th step; validations every 5th,
    or every 4th): Lightning resumes a checkpoint of a validation step past that validation, and one of max_steps
    without fit (no last validation, no on_train_end keeping the best decoder). The rerun scored one validation less
    (early stopping: 1 evaluation against 2, status "running"); now the step is saved after its validation and none
    at max_steps, so the rerun's early stopping and weights are the uninterrupted run's."""
    at = {"step": None}
    plain = _flowmo_trained(dict(runs_dir=tmp_path / "plain", leaderboard_dir=tmp_path / "lb", log=lambda s: None), at,
                            monkeypatch, val_every)
    kw = dict(runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    at["step"] = killed_at
    with pytest.raises(RuntimeError, match="killed"):
        _flowmo_trained(kw, at, monkeypatch, val_every)
    at["step"] = None
    resumed = _flowmo_trained(kw, at, monkeypatch, val_every)
    assert resumed == plain and plain["early_stopping"]["evaluations"] == 2


def test_bench_from_checkpoint_equals_trained_run(smoke_run, tmp_path):
    root, record, _ = smoke_run
    weights = next((root / "runs/smoke/v3").iterdir()) / "tokenizer.safetensors"
    again = run_bench("sdvae", "smoke", ckpt=str(weights), runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    assert again["tokenizer"]["trained_steps"] == 0
    assert again["tokenizer"]["checkpoint"]["sha256"] == record["tokenizer"]["checkpoint"]["sha256"]
    assert again["metrics"] == record["metrics"]


def test_compile_reaches_eval_and_generation_and_keeps_the_run_directory(smoke_run, tmp_path, monkeypatch):
    import latentbench.benchmark.harness as harness

    root, record, _ = smoke_run
    weights = next((root / "runs/smoke/v3").iterdir()) / "tokenizer.safetensors"
    kw = dict(ckpt=str(weights), runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    plain = run_bench("sdvae", "smoke", **kw)
    assert plain["compiled"] is None
    calls = []  # SD-VAE decodes in one pass (nothing to compile): record the calls instead of compiling

    def fake(tokenizer):
        calls.append(type(tokenizer).__name__)
        return ["decoder"]

    monkeypatch.setattr(harness, "compile_decoding", fake)  # load_for_decoding: both stages load through it
    import latentbench.distributed as distributed

    placed = []  # no GPU here: record that the decoding stages ask where to put their networks

    def device():
        placed.append(1)
        return torch.device("cpu")

    monkeypatch.setattr(distributed, "compute_device", device)
    run_dir = next((tmp_path / "runs/smoke/v3").iterdir())
    (run_dir / "stages").rename(tmp_path / "old-stages")  # rerun eval and generation (the generator's training is kept)
    compiled = run_bench("sdvae", "smoke", compile=True, **kw)
    assert calls == ["SDVAE", "SDVAE"]  # the eval stage's tokenizer and the generator stage's
    assert len(placed) >= 5  # eval: tokenizer, extractor, metrics; generate: tokenizer, extractor
    assert compiled["compiled"] == {"eval": ["decoder"], "generate": ["decoder"]}
    assert compiled["run_dir"] == plain["run_dir"]  # not part of the key: compiled decoding moves pixels by < 1e-6
    assert compiled["metrics"] == plain["metrics"]  # wiring only: the stand-in compiles nothing (pixels: test_flowmo)


def test_a_checkpoint_of_another_size_is_named_not_a_traceback(tmp_path):
    """load_state_dict(strict=False) still raises a RuntimeError for a tensor of another shape."""
    from safetensors.torch import save_file

    from latentbench.benchmark.harness import load_tokenizer, resolve_tokenizer
    from latentbench.benchmark.protocol import load_protocol

    spec = resolve_tokenizer("sdvae", load_protocol("smoke"))
    state = {k: v.clone() for k, v in load_tokenizer(spec, None).state_dict().items()}
    name = next(k for k, v in state.items() if v.ndim == 4)
    state[name] = torch.zeros(state[name].shape[0] * 2, *state[name].shape[1:])
    save_file(state, tmp_path / "wide.safetensors")
    with pytest.raises(ValueError, match=f"does not fit tokenizer sdvae-smoke: size mismatch for {name}"):
        load_tokenizer(spec, tmp_path / "wide.safetensors")


def test_pickled_checkpoint_needs_trust(smoke_run, tmp_path):
    root, _, _ = smoke_run
    from safetensors.torch import load_file

    state = load_file(next((root / "runs/smoke/v3").iterdir()) / "tokenizer.safetensors")
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {f"tokenizer.{k}": v for k, v in state.items()}, "hyper_parameters": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(UnsafeCheckpointError, match="--trust_checkpoint true"):
        run_bench("sdvae", "smoke", ckpt=str(path), runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    trusted = run_bench("sdvae", "smoke", ckpt=str(path), trust_checkpoint=True, runs_dir=tmp_path / "runs2",
                        leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    assert trusted["metrics"]["psnr"]["n"] == 64


USER_TOKENIZER = '''
import torch
from torch import nn
from latentbench.tokenizers import LatentSpec


class AvgPoolTokenizer(nn.Module):
    """A user's tokenizer that subclasses nothing of the suite: 4x average pooling + a learned 1x1 conv."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(3, channels, 1)
        self.out = nn.Conv2d(channels, 3, 1)

    @property
    def latent_spec(self):
        return LatentSpec(shape=(self.proj.out_channels, 8, 8))

    def encode(self, x):
        return self.proj(nn.functional.avg_pool2d(x, 4))

    def decode(self, z):
        return torch.tanh(self.out(nn.functional.interpolate(z, scale_factor=4, mode="nearest")))
'''


def test_user_tokenizer_plugs_in_by_class_path(tmp_path, monkeypatch):
    (tmp_path / "user_pkg").mkdir()
    (tmp_path / "user_pkg/__init__.py").write_text("")
    (tmp_path / "user_pkg/mytok.py").write_text(textwrap.dedent(USER_TOKENIZER))
    monkeypatch.syspath_prepend(str(tmp_path))
    record = run_bench("user_pkg.mytok:AvgPoolTokenizer", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    assert record["tokenizer"]["class"] == "user_pkg.mytok.AvgPoolTokenizer"
    assert record["tokenizer"]["latent"]["shape"] == [3, 8, 8]
    assert record["metrics"]["psnr"]["n"] == 64 and record["metrics"]["probe"]["feature_dim"] == 192

    config = tmp_path / "mytok.yaml"
    config.write_text("class_path: user_pkg.mytok:AvgPoolTokenizer\ninit_args:\n  channels: 6\nmodule_args:\n  disc_weight: 0.0\n")
    record = run_bench(str(config), "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    assert record["tokenizer"]["latent"]["shape"] == [6, 8, 8]
    assert len(read_records(tmp_path / "lb/smoke/v3")) == 2


def test_a_decoder_on_the_wrong_scale_is_a_warning_in_the_record_and_the_table(tmp_path, monkeypatch):
    """Not only on the console, which a scripted run does not read: the row is marked."""
    (tmp_path / "unit_pkg").mkdir()
    (tmp_path / "unit_pkg/__init__.py").write_text("")
    (tmp_path / "unit_pkg/mytok.py").write_text(textwrap.dedent(USER_TOKENIZER) + textwrap.dedent("""
        class UnitRange(AvgPoolTokenizer):  # a sigmoid-style decoder: [0, 1] images
            def decode(self, z):
                return (super().decode(z) + 1) / 2
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning, match=r"every reconstruction lies in \[0, 1\]"):
        record = run_bench("unit_pkg.mytok:UnitRange", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb",
                           log=lambda s: None)
    assert len(record["warnings"]) == 1 and "return x * 2 - 1 instead" in record["warnings"][0]
    table = (tmp_path / "lb/smoke/v3/README.md").read_text()
    assert "| unit_pkg.mytok:UnitRange (warning: notes) |" in table
    assert f"- **warning**, unit_pkg.mytok:UnitRange (record {record['id'][:12]}): every reconstruction lies in [0, 1]" in table


def test_an_edited_user_tokenizer_is_a_new_run_not_the_old_numbers(tmp_path, monkeypatch):
    """The commit covers the suite's code, not a user's class: its source file's hash is in the run key and the record."""
    from latentbench.benchmark.spec import BenchConfig, resolve_tokenizer
    from latentbench.benchmark.protocol import load_protocol

    (tmp_path / "edited_pkg").mkdir()
    (tmp_path / "edited_pkg/__init__.py").write_text("")
    source = tmp_path / "edited_pkg/mytok.py"
    source.write_text(textwrap.dedent(USER_TOKENIZER))
    monkeypatch.syspath_prepend(str(tmp_path))
    proto = load_protocol("smoke")

    def key():
        spec = resolve_tokenizer("edited_pkg.mytok:AvgPoolTokenizer", proto)
        assert set(spec.to_dict()["sources"]) == {"edited_pkg.mytok"}
        return BenchConfig(spec, proto).key

    first = key()
    assert key() == first  # unchanged code: the same run, its stages reused
    source.write_text(textwrap.dedent(USER_TOKENIZER).replace("torch.tanh(", "0.5 * torch.tanh("))
    assert key() != first
    assert "sources" not in resolve_tokenizer("sdvae", proto).to_dict()  # the suite's own: keys as before


def test_a_user_class_with_a_required_argument_and_no_init_args_is_named(tmp_path, monkeypatch):
    """Its constructor's TypeError had been reported as a bug of the suite's."""
    from latentbench.benchmark.spec import resolve_tokenizer
    from latentbench.benchmark.protocol import load_protocol

    (tmp_path / "required_tok.py").write_text(textwrap.dedent(USER_TOKENIZER) + textwrap.dedent("""
        class Required(AvgPoolTokenizer):
            def __init__(self, channels: int):
                super().__init__(channels)
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="required_tok.Required cannot be built without init_args .*'channels'"):
        resolve_tokenizer("required_tok:Required", load_protocol("smoke"))
    (tmp_path / "callable_tok.py").write_text(textwrap.dedent(USER_TOKENIZER) + textwrap.dedent('''
        from typing import Callable

        class WithFactory(AvgPoolTokenizer):  # a default jsonargparse cannot parse without arguments: it builds as is
            def __init__(self, norm: Callable[..., nn.Module] = nn.GroupNorm):
                super().__init__(3)
        '''))
    assert resolve_tokenizer("callable_tok:WithFactory", load_protocol("smoke")).init_args == {}
    assert resolve_tokenizer("sdvae", load_protocol("smoke")).name == "sdvae-smoke"  # a factory supplies its class's
    config = tmp_path / "noargs.yaml"  # the reverse: arguments for a constructor that takes none
    config.write_text("class_path: no_arguments_tok:NoArguments\ninit_args: {channels: 3}\n")
    (tmp_path / "no_arguments_tok.py").write_text(textwrap.dedent(USER_TOKENIZER) + textwrap.dedent("""
        class NoArguments(AvgPoolTokenizer):
            def __init__(self):
                super().__init__(3)
        """))
    with pytest.raises(ValueError, match="does not accept option 'channels'. It takes: no arguments"):
        resolve_tokenizer(str(config), load_protocol("smoke"))


def test_init_args_the_tokenizer_refuses_stop_the_bench_and_its_dry_run_before_a_run_directory(tmp_path, monkeypatch):
    """Before, they failed when the train stage first built the tokenizer, leaving a run directory with its
    config.json and an attempt behind, and ``--dry_run`` did not build it at all."""
    import latentbench.benchmark.harness as harness

    def no_data(*a, **k):
        raise AssertionError("the splits were scanned before the tokenizer was built")

    monkeypatch.setattr(harness, "_scan_splits", no_data)
    config = tmp_path / "bad.yaml"
    config.write_text("name: sdvae-smoke\ninit_args: {latent_channels: -4}\n")
    for dry_run in (True, False):
        with pytest.raises(ValueError, match=r"^tokenizer sdvae-smoke cannot be built with init_args \{'latent_channels': -4\}: "
                                             "ValueError: latent_channels must be positive, got -4; fix those values"):
            run_bench(str(config), "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None,
                      dry_run=dry_run)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "lb").exists()


def test_a_dry_run_does_not_train_what_a_yaml_tokenizer_trains_on_first_use(tmp_path, monkeypatch):
    """A dry run builds a YAML's tokenizer to check its init_args; RAE's build trained its MAE encoder into the cache
    then (a minute at `ci` size), in a command that promises to run no stage. Now it says what a bench would train."""
    monkeypatch.setenv("LATENTBENCH_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "rae.yaml"
    config.write_text("name: rae-smoke\ninit_args: {decoder_width: 32}\n")
    lines = []
    run_bench(str(config), "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lines.append, dry_run=True)
    (said,) = [line for line in lines if "not in the cache yet" in line]
    assert said.startswith("dry run: the mae-mnist encoder RAE reads is not in the cache yet: a bench trains it first "
                           "(about 60 s on a 2-core CPU for mnist) into ") and "checked only up to there" in said
    assert not list((tmp_path / "cache").rglob("*.safetensors")) and not (tmp_path / "runs").exists()
    with pytest.raises(ValueError, match="decoder_width must be positive"):  # values are still checked before that
        config.write_text("name: rae-smoke\ninit_args: {decoder_width: 0}\n")
        run_bench(str(config), "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lines.append,
                  dry_run=True)


def test_bad_arguments_fail_clearly(tmp_path, monkeypatch):
    import latentbench.benchmark.harness as harness

    kw = dict(runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)

    def no_data(*a, **k):
        raise AssertionError("a split was built before the arguments were checked")

    with monkeypatch.context() as m:
        m.setattr(harness, "_dataset", no_data)
        with pytest.raises(KeyError, match="unknown tokenizer 'nope'.*Family names under protocol smoke: .*flowmo"):
            run_bench("nope", "smoke", **kw)
        with pytest.raises(ImportError, match="no_such_package"):
            run_bench("no_such_package.mod:Tok", "smoke", **kw)
        with pytest.raises(ValueError, match="--train_steps 0 benches sdvae-smoke as built, but it loads no pretrained"):
            run_bench("sdvae", "smoke", train_steps=0, **kw)
        (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
        with pytest.raises(ValueError, match="cannot read checkpoint .*cut.safetensors"):  # before the stages
            run_bench("sdvae", "smoke", ckpt=tmp_path / "cut.safetensors", **kw)
        m.setattr(harness, "check_training_batches", lambda *a: (_ for _ in ()).throw(ValueError("batches checked")))
        with pytest.raises(ValueError, match="batches checked"):  # before any split is built
            run_bench("sdvae", "smoke", **kw)
    assert not list(tmp_path.rglob("stages/*.json"))
    with pytest.raises(FileNotFoundError, match="Shipped protocols: ci, imagenet256, smoke"):
        run_bench("sdvae", "nope", **kw)
    with pytest.raises(ValueError, match="train_steps must be >= 0"):
        run_bench("sdvae", "smoke", train_steps=-1, **kw)
    assert not (tmp_path / "lb").exists()


@pytest.mark.parametrize("eval_, message", [
    ({"extractor": "domain-imagefoldr:/data/x"}, "eval.extractor domain-imagefoldr:/data/x is a classifier trained on the "
                                                 "data source 'imagefoldr:/data/x', which does not resolve"),
    ({"extractor_options": {"max_stepz": 60}}, "eval.extractor_options {'max_stepz': 60} do not fit domain-mnist's training recipe"),
    ({"extractor": "inception-tf"}, "eval.extractor_options {'max_steps': 60} do not fit the inception-tf extractor"),
    ({"extractor": "incepton-tf"}, "unknown extractor 'incepton-tf'. Did you mean inception-tf?"),
])
def test_a_protocols_extractor_is_checked_before_training(eval_, message, tmp_path, monkeypatch):
    """The eval stage builds the extractor only after the tokenizer trained (hours under a paper protocol)."""
    import yaml

    import latentbench.benchmark.harness as harness
    from latentbench.benchmark.protocol import PROTOCOL_DIR

    raw = yaml.safe_load((PROTOCOL_DIR / "smoke.yaml").read_text())
    raw["eval"].update(eval_)
    protocol = tmp_path / "proto.yaml"
    protocol.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(harness, "train_stage", lambda *a: (_ for _ in ()).throw(AssertionError("trained first")))
    with pytest.raises((KeyError, ValueError)) as e:
        run_bench("sdvae", str(protocol), runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    assert message in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_training_batches_must_split_over_the_processes_evaluation_batches_need_not(monkeypatch):
    from dataclasses import replace

    import latentbench.distributed as distributed
    from latentbench.benchmark.harness import check_training_batches
    from latentbench.benchmark.protocol import load_protocol
    from latentbench.benchmark.spec import resolve_tokenizer

    proto = load_protocol("ci")
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(ValueError, match=f"train batch_size {proto.train.batch_size} is not divisible by the 3 processes"):
        check_training_batches(proto, tokenizer_steps=800)
    with pytest.raises(ValueError, match=f"generator batch_size {proto.generator.batch_size} is not divisible by the 3"):
        check_training_batches(proto, tokenizer_steps=0)  # a checkpoint benched: only the generator trains
    monkeypatch.setattr(distributed, "world_size", lambda: 8)
    check_training_batches(proto, tokenizer_steps=800)
    assert distributed.per_rank_eval_batch(proto.eval.batch_size) == -(-proto.eval.batch_size // 8)  # 250 -> 32
    assert distributed.per_rank_eval_batch(5) == 1 and distributed.per_rank_eval_batch(1) == 1
    flowmo = resolve_tokenizer("flowmo", proto)  # its stage 1b samples module_args.posttrain_batch (16) of each batch
    check_training_batches(proto, 800, spec=flowmo)
    monkeypatch.setattr(distributed, "world_size", lambda: 32)
    with pytest.raises(ValueError, match="flowmo-ci's module_args.posttrain_batch 16 is not divisible by the 32 processes"):
        check_training_batches(proto, 800, spec=flowmo)
    check_training_batches(proto, 0, spec=flowmo)  # a checkpoint benched: stage 1b does not run
    no_1b = replace(flowmo, module_args={**flowmo.module_args, "stage_steps": {"1a": 1.0}})
    check_training_batches(proto, 800, spec=no_1b)


def test_a_launch_is_checked_for_the_world_size_it_will_start():
    """``bench --devices N`` checks in the launching process, which has no process group yet."""
    from latentbench.benchmark.harness import check_before_launch
    from latentbench.benchmark.protocol import load_protocol

    proto = load_protocol("ci")
    with pytest.raises(ValueError, match=f"train batch_size {proto.train.batch_size} is not divisible by the 3 processes"):
        check_before_launch("sdvae", "ci", None, None, None, processes=3)
    with pytest.raises(ValueError, match=f"generator batch_size {proto.generator.batch_size} is not divisible by the 3"):
        check_before_launch("sdvae", "ci", None, 0, None, processes=3)  # --train_steps 0: only the generator trains
    with pytest.raises(ValueError, match="--seed must be in"):
        check_before_launch("sdvae", "ci", None, None, -1, processes=8)
    check_before_launch("sdvae", "ci", None, None, None, processes=8)
    # FlowMo's stage-1b batch is global too: 32 processes split the protocol's batches (64) but not its 16; before,
    # torchrun started them, each printed the error at the start of training, and torchrun added its traceback
    with pytest.raises(ValueError, match="flowmo-ci's module_args.posttrain_batch 16 is not divisible by the 32 processes"):
        check_before_launch("flowmo", "ci", None, None, None, processes=32)
    check_before_launch("flowmo", "ci", None, None, None, processes=16)


def test_train_steps_0_benches_a_tokenizer_that_loaded_its_weights(tmp_path, monkeypatch):
    (tmp_path / "loaded_pkg").mkdir()
    (tmp_path / "loaded_pkg/__init__.py").write_text("")
    (tmp_path / "loaded_pkg/mytok.py").write_text(textwrap.dedent(USER_TOKENIZER) + textwrap.dedent("""
        class Loaded(AvgPoolTokenizer):
            pretrained_weights = "loaded_pkg/weights.bin"
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    kw = dict(runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    with pytest.raises(ValueError, match="self.pretrained_weights"):
        run_bench("loaded_pkg.mytok:AvgPoolTokenizer", "smoke", train_steps=0, **kw)
    record = run_bench("loaded_pkg.mytok:Loaded", "smoke", train_steps=0, **kw)
    assert record["tokenizer"]["pretrained_weights"] == "loaded_pkg/weights.bin"
    assert record["tokenizer"]["checkpoint"] is None and record["training"] is None and record["metrics"]["psnr"]["n"] == 64


def test_two_stage_tokenizer_runs_its_stages_in_order(tmp_path):
    record = run_bench("maetok", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    assert record["tokenizer"]["name"] == "maetok-smoke" and record["tokenizer"]["latent"]["shape"] == [8, 4]
    assert record["training"]["stages"] == [{"name": "ae", "steps": 15}, {"name": "decoder-ft", "steps": 5}]
    assert record["metrics"]["psnr"]["n"] == 64 and record["metrics"]["probe"]["feature_dim"] == 32


def test_flowmo_bench_writes_a_row_without_and_with_post_training(tmp_path):
    """FlowMo trains with its own module, early-stops 1b on held-out train images, and records both results."""
    record = run_bench("flowmo", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    rows = read_records(tmp_path / "lb" / "smoke" / "v3")
    assert [r["tokenizer"]["variant"] for r in rows] == ["1a", "1b"] and rows[-1]["id"] == record["id"]
    assert all(r["tokenizer"]["module"].endswith(":FlowMoModule") for r in rows)
    a, b = rows
    assert a["tokenizer"]["checkpoint"]["sha256"] != b["tokenizer"]["checkpoint"]["sha256"]
    assert a["tokenizer"]["checkpoint"]["path"].endswith("tokenizer-1a.safetensors")
    assert b["training"]["stages"] == [{"name": "1a", "steps": 15}, {"name": "1b", "steps": 5}]
    assert b["training"]["validation_images"] > 0 and b["training"]["early_stopping"]["evaluations"] >= 1
    codes = b["codes"]  # bits per pixel, usage and entropy of the eval codes, for every discrete run
    assert codes["bits_per_pixel"] == 8 * 6 / (32 * 32) and 0 < codes["usage"] <= 1
    assert 0 <= codes["entropy_bits"] <= codes["max_entropy_bits"]
    table = (tmp_path / "lb" / "smoke" / "v3" / "README.md").read_text()
    assert "flowmo-smoke (1a)" in table and "flowmo-smoke (1b)" in table
    assert any((tmp_path / "runs").rglob("reconstructions-1a.png"))


@pytest.mark.parametrize("val_images", [None, 9])
def test_training_validates_the_same_held_out_images_on_any_number_of_processes(monkeypatch, val_images):
    """FlowMo's stage-1b validation decodes the first ``val_images`` held-out images, each once over all ranks, for any W
    (Lightning's ``limit_val_batches`` counted batches of ``ceil(eval batch / W)`` per process: with an eval batch of 7,
    one batch per process was images 0-6 on 1 process and 0-7 on 2)."""
    from torch.utils.data import TensorDataset

    from latentbench import distributed
    from latentbench.benchmark import harness
    from latentbench.tokenizers.flowmo_module import FlowMoModule

    data = TensorDataset(torch.arange(300), torch.zeros(300, dtype=torch.long))  # each image is its own index
    held = list(range(harness.VAL_HOLDOUT - 1, 300, harness.VAL_HOLDOUT))  # 18 held-out images
    module = FlowMoModule("flowmo-smoke", val_images=val_images)
    expected = held[:val_images]
    for world in (1, 2, 3, 4):
        monkeypatch.setattr(distributed, "world_size", lambda w=world: w)
        monkeypatch.setattr(harness, "world_size", lambda w=world: w)
        seen = []
        for r in range(world):
            monkeypatch.setattr(distributed, "rank", lambda r=r: r)
            train, loader, n = harness._held_out(data, module, "flowmo-smoke", eval_batch=7)
            for index, x, _ in loader:
                assert len(x) <= -(-7 // world)
                assert x.tolist() == [expected[i] for i in index]  # its index in the validated set: its decoder seed
                seen += x.tolist()
        assert sorted(seen) == expected and n == len(expected), world  # every validated image once, none padded
        assert not set(int(train[i][0]) for i in range(len(train))) & set(held) and len(train) == 300 - len(held)
    monkeypatch.setattr(harness, "world_size", lambda: 10)
    with pytest.raises(ValueError, match=r"9 held-out images for 10 processes; validate at least 10 of them \(val_images\)"):
        harness._held_out(data, FlowMoModule("flowmo-smoke", val_images=9), "flowmo-smoke", eval_batch=7)


def test_unbalanceable_sample_count_fails_before_training(tmp_path):
    import yaml

    from latentbench.benchmark.harness import run_bench
    from latentbench.benchmark.protocol import PROTOCOL_DIR

    raw = yaml.safe_load((PROTOCOL_DIR / "smoke.yaml").read_text())
    raw["generator"]["num_samples"] = 41  # 10 classes
    path = tmp_path / "odd.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"num_samples \(41\) divisible by the 10 classes"):
        run_bench("sdvae", str(path), runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda m: None)
    assert not list((tmp_path / "runs").rglob("stages/*.json"))  # nothing ran


def test_train_split_is_encoded_once_for_probe_and_generator(tmp_path, monkeypatch):
    import latentbench.benchmark.evaluate as evaluate
    from latentbench.benchmark.harness import run_bench

    calls = []
    real = evaluate.encode_batches

    def counting(tokenizer, dataset, batch_size, progress=True):
        calls.append(len(dataset))
        return real(tokenizer, dataset, batch_size, progress)

    monkeypatch.setattr(evaluate, "encode_batches", counting)
    record = run_bench("sdvae", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda m: None)
    assert calls == [256]  # the latent cache, read by the probe and by the generator stage
    assert record["metrics"]["probe"]["n"] == 64 and record["generation"]["latents"]["n"] == 256


def test_an_image_folder_is_scanned_once_per_split(tmp_path, monkeypatch):
    """Every stage of a bench reads the same split; an image folder's scan (decoding every file) runs once per split.

    Its loaders decode in the protocol's worker processes, evaluation's included.
    """
    import latentbench.benchmark.evaluate as evaluate
    import latentbench.data.encoded as encoded

    def shorter(raw):
        raw["train"]["max_steps"], raw["generator"]["max_steps"], raw["generator"]["eval_every"] = 4, 4, 4
        raw["train"]["num_workers"] = 2  # every loader of the bench decodes in 2 worker processes
        raw["eval"]["probe_train"] = 80

    path = _folder_protocol(tmp_path, per_class=(8, 4), edit=shorter)
    scans = []
    real = encoded.scan_files

    def counting(files, resolution, on_bad_image="error", limit=None, desc="scan"):
        scans.append(desc)
        return real(files, resolution, on_bad_image, limit, desc)

    monkeypatch.setattr(encoded, "scan_files", counting)
    workers = []
    real_loader = evaluate.shard_loader

    def recording_loader(*args, **kwargs):
        loader = real_loader(*args, **kwargs)
        workers.append(loader.num_workers)
        return loader

    monkeypatch.setattr(evaluate, "shard_loader", recording_loader)
    record = run_bench("sdvae", str(path), runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda m: None)
    assert record["metrics"]["probe"]["n"] == 40
    counts = {desc.rsplit(" ", 1)[-1]: scans.count(desc) for desc in scans}
    assert counts == {"[train]": 1, "[val]": 1}
    assert workers and set(workers) == {2}


def test_ddp_training_ranks_take_disjoint_parts_of_every_epoch(monkeypatch):
    """The training loader shards itself with the bench's seed on every rank; Lightning's own sampler
    would take its seed from PL_GLOBAL_SEED, which differs per rank (seed_process), and overlap."""
    import os

    import latentbench.distributed as distributed
    from latentbench.benchmark.harness import _loader, seed_process

    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # seed_process sets it: restored after the test
    data = torch.arange(16)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    epochs = {}
    for r in range(2):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        seed_process(7)
        assert os.environ["PL_GLOBAL_SEED"] == str(7 + r)  # what Lightning's injected sampler would have used
        loader = _loader(data, 4, shuffle=True, seed=7, drop_last=True, distributed=True)
        loader.sampler.set_epoch(1)
        epochs[r] = torch.cat(list(loader)).tolist()
    assert len(epochs[0]) == len(epochs[1]) == 8
    assert sorted(epochs[0] + epochs[1]) == list(range(16))  # every image once per epoch, none twice
    assert epochs[0] != sorted(epochs[0])  # shuffled


@pytest.mark.parametrize("processes", [1, 2])
def test_loader_workers_change_no_batch_nor_random_draw(monkeypatch, processes):
    """The protocol's train.num_workers decode images in other processes and change nothing else.

    Lightning takes ``len(loader)`` batches an epoch, and a loader with workers fetches indices ahead, past the
    last batch: RandomSampler then drew one more (empty) permutation from the shuffle's generator. Kept
    (``persistent_workers``), the workers drew their seed once, not once an epoch: from the shuffle's generator on
    one process, from the training noise's stream under DDP. Either made epoch 2 on differ from a run without
    workers: an image-folder smoke bench trained other weights with 2 workers (on 1 and on 2 processes).
    """
    import itertools

    import latentbench.distributed as distributed
    from latentbench.benchmark.harness import _loader

    data = torch.utils.data.TensorDataset(torch.arange(26))  # 6 batches of 4 an epoch, 2 images dropped
    monkeypatch.setattr(distributed, "world_size", lambda: processes)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    epochs, streams = {}, {}
    for workers in (0, 2):
        torch.manual_seed(0)
        loader = _loader(data, 4 // processes, shuffle=True, seed=7, num_workers=workers, drop_last=True, distributed=True)
        epochs[workers] = []
        for epoch in range(3):  # as Lightning iterates: a new iterator each epoch, len(loader) batches of it
            if processes > 1:
                loader.sampler.set_epoch(epoch)
            epochs[workers].append(torch.cat([x for (x,) in itertools.islice(iter(loader), len(loader))]).tolist())
        streams[workers] = torch.rand(3).tolist()  # where training's noise goes on after the loader's draws
    assert epochs[2] == epochs[0] and epochs[0][1] != epochs[0][0]
    assert streams[2] == streams[0]


def test_lpips_weights_on_the_machine_change_the_run_key(monkeypatch, tmp_path):
    """Training's perceptual loss and the LPIPS metric depend on them: stages done without are not reused with them."""
    from latentbench.benchmark.harness import BenchConfig, lpips_nets_used, lpips_weights_present, resolve_tokenizer
    from latentbench.benchmark.protocol import load_protocol
    from latentbench.weights import lpips_backbone_url, torch_hub_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    proto = load_protocol("smoke")
    spec = resolve_tokenizer("sdvae", proto)
    offline = BenchConfig(spec, proto, lpips_weights=lpips_weights_present())
    assert offline.lpips_weights == () and "lpips_weights" not in offline.to_dict()  # offline keys stay as they were
    assert offline.key == BenchConfig(spec, proto).key
    path = torch_hub_file(lpips_backbone_url("alex"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights")
    assert lpips_weights_present(lpips_nets_used(offline)) == ()  # not the published file: refused
    import latentbench.weights

    monkeypatch.setattr(latentbench.weights, "check_published_hash", lambda *a: None)  # stand-in for the real file
    online = BenchConfig(spec, proto, lpips_weights=lpips_weights_present(lpips_nets_used(offline)))
    assert online.lpips_weights == ("alex",) and online.key != offline.key
    # only the backbones the run uses count: the metric's (alex under smoke), and training's (vgg) when it trains
    assert lpips_nets_used(offline) == {proto.eval.lpips_net, "vgg"}
    assert lpips_nets_used(BenchConfig(spec, proto, train_steps=0)) == {proto.eval.lpips_net}
    assert lpips_weights_present({"vgg", "squeeze"}) == ()


def test_lpips_nets_used_counts_flowmo_stage_1b_perceptual_loss():
    """FlowMo's stage 1b scores its samples with LPIPS (perceptual_net) even where stage 1a's perceptual weight is 0:
    its weights on the machine change that training, so they are part of the run key."""
    from dataclasses import replace

    from latentbench.benchmark.harness import BenchConfig, lpips_nets_used, resolve_tokenizer
    from latentbench.benchmark.protocol import load_protocol

    proto = load_protocol("smoke")
    spec = resolve_tokenizer("flowmo", proto)

    def nets(**module_args):
        return lpips_nets_used(BenchConfig(replace(spec, module_args={**spec.module_args, **module_args}), proto))

    assert nets() == {proto.eval.lpips_net, "vgg"}
    assert nets(perceptual_weight=0.0) == {proto.eval.lpips_net, "vgg"}  # smoke's flowmo runs stage 1b
    assert nets(perceptual_weight=0.0, posttrain_perceptual_weight=0.0) == {proto.eval.lpips_net}
    assert nets(perceptual_weight=0.0, stage_steps={"1a": 1.0}) == {proto.eval.lpips_net}  # no stage 1b


def test_training_validation_needs_a_held_out_image_per_process(tmp_path, monkeypatch):
    """A process without a held-out image would skip FlowMo's validation collectives and hang the others."""
    import latentbench.benchmark.harness as harness
    from latentbench.benchmark.harness import BenchConfig, resolve_tokenizer, train_stage
    from latentbench.benchmark.protocol import load_protocol

    proto = load_protocol("smoke")
    cfg = BenchConfig(resolve_tokenizer("flowmo", proto), proto)
    monkeypatch.setattr(harness, "world_size", lambda: 32)
    with pytest.raises(ValueError, match=r"every 16th train image: 16 held-out images for 32 processes; .* at least 512"):
        train_stage(cfg, tmp_path, "error")


def _folder_protocol(tmp_path, val_classes=range(10), per_class=(2, 2), keep_limits=False, edit=None):
    """The smoke protocol on a small image folder: 10 classes in train, ``val_classes`` in val, ``per_class``
    random images of each (train, val); smoke's num_train / num_eval dropped unless ``keep_limits``; ``edit``
    changes the protocol's raw mapping further."""
    import numpy as np
    import yaml
    from PIL import Image

    from latentbench.benchmark.protocol import PROTOCOL_DIR

    rng = np.random.default_rng(0)
    for split, classes, count in (("train", range(10), per_class[0]), ("val", val_classes, per_class[1])):
        for c in classes:
            (tmp_path / "images" / split / f"c{c}").mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "images" / split / f"c{c}" / f"{i}.png")
    raw = yaml.safe_load((PROTOCOL_DIR / "smoke.yaml").read_text())
    raw["data"]["source"] = f"imagefolder:{tmp_path / 'images'}"
    if not keep_limits:
        raw["data"].update(num_train=None, num_eval=None)
    if edit is not None:
        edit(raw)
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class _Stop(Exception):
    pass


def _run_dir_of(protocol, tmp_path, monkeypatch) -> str:
    """The run directory a bench of ``protocol`` names, stopped before its first stage."""
    import latentbench.benchmark.harness as harness

    monkeypatch.setattr(harness, "train_stage", lambda *a: (_ for _ in ()).throw(_Stop()))
    logs = []
    with pytest.raises(_Stop):
        run_bench("sdvae", str(protocol), runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=logs.append)
    return next(line.split("run directory ")[1] for line in logs if "run directory " in line)


def test_an_edited_image_folder_is_a_new_run_not_the_old_numbers(tmp_path, monkeypatch):
    """Finished stages are reused only for the data they measured: the run key holds the splits' fingerprints."""
    import numpy as np
    from PIL import Image

    protocol = _folder_protocol(tmp_path)
    first = _run_dir_of(protocol, tmp_path, monkeypatch)
    assert _run_dir_of(protocol, tmp_path, monkeypatch) == first  # unchanged data: the same run, its stages reused
    from pathlib import Path

    config = json.loads((Path(first) / "config.json").read_text())
    assert set(config["data"]) == {"train", "eval"}
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "images/val/c3/0.png")  # one eval image replaced
    assert _run_dir_of(protocol, tmp_path, monkeypatch) != first


def test_splits_with_different_classes_are_refused_before_training(tmp_path, monkeypatch):
    import latentbench.benchmark.harness as harness

    protocol = _folder_protocol(tmp_path, val_classes=range(1, 11))  # c0 missing, c10 added: label i differs
    monkeypatch.setattr(harness, "train_stage", lambda *a: pytest.fail("trained before the classes were checked"))
    with pytest.raises(ValueError, match=r"the train split's classes \['c0', 'c1', .*\] and the val split's "
                                         r"\['c1', .*\] differ: .* give both splits the same class folders"):
        run_bench("sdvae", str(protocol), runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda m: None)
    assert not (tmp_path / "runs").exists()


def test_splits_of_an_hf_dataset_with_different_classes_are_told_to_share_a_class_label():
    """An hf dataset has no class folders: its classes are a ClassLabel's names, or the label column's 0..max."""
    from latentbench.benchmark.datanotes import check_same_classes

    def info(split, names):
        return {"source": "hf:/data/mine", "split": split, "class_names": names}

    with pytest.raises(ValueError, match=r"differ: .* give both splits' label column one ClassLabel of every class") as e:
        check_same_classes(info("train", ["0", "1", "2"]), info("validation", ["0", "1"]))
    assert "class folders" not in str(e.value)


def test_a_limit_that_leaves_classes_out_is_refused(tmp_path, monkeypatch):
    """num_train of an image folder takes its first files, class by class: too few leave whole classes out."""
    import yaml

    import latentbench.benchmark.harness as harness

    protocol = _folder_protocol(tmp_path)
    raw = yaml.safe_load(protocol.read_text())
    raw["data"]["num_train"] = 6  # c0, c1, c2 only
    protocol.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(harness, "train_stage", lambda *a: pytest.fail("trained on a subset without 7 classes"))
    with pytest.raises(ValueError, match=r"\[train\]: the protocol's limit of 6 images \(num_train / num_eval\) .* leave out "
                                         r"7 of the 10 classes \(c3, c4, c5, c6, c7, \.\.\.\): raise the limit"):
        run_bench("sdvae", str(protocol), runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda m: None)


def test_a_class_without_images_is_refused_without_a_limit_too(tmp_path, monkeypatch):
    """An hf label feature naming a class no row has, or --on_bad_image skip dropping every file of a class: the
    generator's class-balanced gFID samples would have asked for classes it never saw."""
    import latentbench.benchmark.harness as harness

    monkeypatch.setattr(harness, "train_stage", lambda *a: pytest.fail("trained with an empty class"))
    protocol = _folder_protocol(tmp_path / "skip")
    for broken in (tmp_path / "skip/images/train/c4").iterdir():
        broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"\[train\]: 1 of the 10 classes \(c4\) have no readable image, yet the linear probe "
                                         r"and gFID's class-balanced sample set count every class: give every class images"):
        run_bench("sdvae", str(protocol), runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", on_bad_image="skip",
                  log=lambda m: None)
    # a limit the readable images do not reach cut nothing off: raising it is not the fix
    protocol = _folder_protocol(tmp_path / "limit", per_class=(26, 7), keep_limits=True)  # smoke's num_train 256
    for broken in (tmp_path / "limit/images/train/c4").iterdir():
        broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"\[train\]: 1 of the 10 classes \(c4\) have no readable image"):
        run_bench("sdvae", str(protocol), runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", on_bad_image="skip",
                  log=lambda m: None)

    datasets = pytest.importorskip("datasets")
    import numpy as np

    rng = np.random.default_rng(0)

    def split(labels):
        images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in labels]
        features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    labels = [0, 2] * 6  # classes "0", "1", "2": no row is labelled 1
    datasets.DatasetDict({"train": split(labels), "val": split(labels)}).save_to_disk(tmp_path / "hf")
    protocol = _folder_protocol(tmp_path / "folder", edit=lambda raw: raw["data"].update(source=f"hf:{tmp_path / 'hf'}"))
    with pytest.raises(ValueError, match=r"\[train\]: 1 of the 3 classes \(1\) have no readable image, .* cast its label "
                                         r"column to a ClassLabel"):
        run_bench("sdvae", str(protocol), runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda m: None)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "lb").exists()


def test_a_cut_short_last_checkpoint_is_named_with_the_fix(smoke_run, tmp_path):
    """Resuming from a last.ckpt cut short by a kill during its save: a message naming it, not a bare OSError."""
    root, _, _ = smoke_run
    run_dir = next((root / "runs/smoke/v3").iterdir())
    copy = tmp_path / "runs/smoke/v3" / run_dir.name
    (copy / "checkpoints").mkdir(parents=True)
    (copy / "checkpoints/last.ckpt").write_bytes((run_dir / "checkpoints/last.ckpt").read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"cannot resume from .*last\.ckpt: it is not a readable checkpoint .* delete it "
                                         r"to restart this training from step 0"):
        run_bench("sdvae", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)


def test_a_damaged_stage_result_is_named_with_the_fix(tmp_path):
    from latentbench.benchmark.stages import Stages

    (tmp_path / "stages").mkdir()
    (tmp_path / "stages/eval.json").write_text("")
    with pytest.raises(ValueError, match=r"stage result .*stages/eval\.json is not valid JSON .*: delete it to run the "
                                         r"'eval' stage again"):
        Stages(tmp_path).get("eval")
    assert Stages(tmp_path).get("train") is None


def test_unreadable_files_of_both_splits_are_named_in_one_error(tmp_path):
    from latentbench.data import BadImageError

    protocol = _folder_protocol(tmp_path)
    (tmp_path / "images" / "train" / "c3" / "0.png").write_bytes(b"")
    (tmp_path / "images" / "val" / "c5" / "1.png").write_text("not an image")
    with pytest.raises(BadImageError) as e:
        run_bench("sdvae", str(protocol), runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda m: None)
    assert e.value.path.endswith("train/c3/0.png") and "[train split]" in str(e.value)
    assert "the val split has unreadable files too: " in str(e.value) and "val/c5/1.png" in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_skip_leaves_unreadable_files_out_says_so_and_records_them(tmp_path):
    """--on_bad_image skip: the bench runs on the readable files, prints one line per split, and the row's record
    lists each skipped file with its reason."""
    protocol = _folder_protocol(tmp_path)
    (tmp_path / "images" / "train" / "c3" / "0.png").write_bytes(b"")
    logs = []
    record = run_bench("sdvae", str(protocol), on_bad_image="skip", runs_dir=tmp_path / "runs",
                       leaderboard_dir=tmp_path / "lb", log=logs.append)
    train = record["data"]["train"]
    assert train["n_skipped"] == 1 and train["n"] == 19 and train["skipped"][0]["path"].endswith("train/c3/0.png")
    assert train["skipped"][0]["reason"] and record["data"]["eval"]["n_skipped"] == 0
    assert any("[train]: skipped 1 unreadable file(s), first" in line and "c3/0.png" in line for line in logs)
    assert [r["id"] for r in read_records(tmp_path / "lb/smoke/v3")] == [record["id"]]


def _validation_split_protocol(tmp_path, extractor_options=None):
    """The smoke protocol on a 2-class folder whose eval split is named "validation" (as in hf datasets), with a
    broken file in train/c0, and its FID extractor a classifier of that folder."""
    import dataclasses

    import numpy as np
    from PIL import Image

    from latentbench.benchmark.protocol import load_protocol

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for split, per_class in (("train", 6), ("validation", 3)):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / split / f"c{c}" / f"{i}.png")
    (root / "train/c0/broken.png").write_bytes(b"not a png")
    proto = load_protocol("smoke")
    return dataclasses.replace(
        proto, data=dataclasses.replace(proto.data, source=f"imagefolder:{root}", eval_split="validation", num_train=None,
                                        num_eval=None),
        eval=dataclasses.replace(proto.eval, extractor=f"domain-imagefolder:{root}", extractor_options={"max_steps": 2}))


def test_a_domain_classifier_of_the_protocols_data_reads_its_splits_and_skips_as_the_bench(tmp_path):
    """An hf dataset's eval split is "validation", not "val"; --on_bad_image skip must reach the classifier's data
    too (it had trained the tokenizer, then stopped at the eval stage on the file the bench skipped)."""
    from latentbench.benchmark.harness import build_extractor
    from latentbench.data import BadImageError

    proto = _validation_split_protocol(tmp_path)
    with pytest.raises(BadImageError, match="broken.png"):
        build_extractor(proto, tmp_path / "cache")
    extractor, why = build_extractor(proto, tmp_path / "cache", on_bad_image="skip")
    assert why is None and extractor.info["val_images"] == 6 and extractor.info["train_images"] == 12


def test_a_teacher_built_by_a_training_module_reads_the_protocols_data_as_the_bench(monkeypatch, tmp_path):
    """A MAETok teacher or perceptual substitute of the protocol's own data is built inside the training module,
    which does not know the protocol: it had read splits train / val with on_bad_image error, so a bench on data
    with a "validation" split (or skipping a broken file) stopped while building its tokenizer."""
    import latentbench.benchmark.harness as harness
    from latentbench.benchmark import extractors
    from latentbench.benchmark.extractors import DomainRecipe
    from latentbench.data import BadImageError
    from latentbench.tokenizers.teachers import create_teacher

    proto = _validation_split_protocol(tmp_path)
    name, recipe = proto.eval.extractor, DomainRecipe(max_steps=2)
    with pytest.raises(BadImageError, match="broken.png"):  # outside a bench: on_bad_image error
        create_teacher(name, cache_dir=tmp_path / "cache", recipe=recipe)
    with harness.reading_protocol_data(proto, "error"), pytest.raises(BadImageError, match="broken.png"):
        create_teacher(name, cache_dir=tmp_path / "cache", recipe=recipe)
    with harness.reading_protocol_data(proto, "skip"):
        teacher = create_teacher(name, cache_dir=tmp_path / "cache", recipe=recipe)
    assert teacher.info["val_images"] == 6 and teacher.info["train_images"] == 12  # the "validation" split
    with pytest.raises(BadImageError, match="broken.png"):  # the bench's reading ends with it
        create_teacher(name, cache_dir=tmp_path / "cache", recipe=recipe)

    seen = []  # and a bench holds it while it builds and trains its tokenizer

    def train_stage(*a):
        seen.append(dict(extractors._BENCH_READING))
        raise _Stop

    monkeypatch.setattr(harness, "train_stage", train_stage)
    with pytest.raises(_Stop):
        run_bench("sdvae", str(_folder_protocol(tmp_path / "f")), runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb",
                  on_bad_image="skip", log=lambda s: None)
    assert seen == [{f"imagefolder:{tmp_path / 'f' / 'images'}": (("train", "val"), "skip")}]


def test_a_split_with_fewer_images_than_the_protocol_names_is_refused_before_training(tmp_path):
    """A partly copied split would otherwise be recorded under a protocol that says how many images it holds."""
    path = _folder_protocol(tmp_path, per_class=(26, 2), keep_limits=True)  # smoke's num_train 256, num_eval 64
    with pytest.raises(ValueError, match=r"data.num_eval is 64, but the val split .* has 20 images: .* set data.num_eval to 20"):
        run_bench("sdvae", str(path), runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda s: None)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "lb").exists()


def test_the_benchs_on_bad_image_reaches_the_fid_extractor_of_both_stages(monkeypatch, tmp_path):
    import latentbench.benchmark.generation as generation
    import latentbench.benchmark.harness as harness
    from latentbench.benchmark.protocol import load_protocol

    seen = []
    monkeypatch.setattr(harness, "build_extractor",
                        lambda proto, cache_dir=None, on_bad_image="error": seen.append(on_bad_image) or (None, "none here"))
    harness.build_metrics(load_protocol("smoke"), 0, tmp_path, "skip")  # the eval stage's
    generation._extractor(load_protocol("smoke"), "skip")  # the generate stage's
    assert seen == ["skip", "skip"]


def test_a_checkpoint_with_a_damaged_member_is_named_with_the_member(tmp_path):
    """zipfile's testzip names the first member whose CRC fails; the message had put the bare name in parentheses."""
    from latentbench.benchmark.harness import resume_from

    path = tmp_path / "last.ckpt"
    torch.save({"weights": torch.arange(4096, dtype=torch.float32)}, path)
    data = bytearray(path.read_bytes())
    at = data.index(torch.arange(4096, dtype=torch.float32)[1000:1004].numpy().tobytes())
    data[at] ^= 0xFF  # one byte of the tensor's storage: the archive's directory is whole, the member's CRC fails
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"not a readable checkpoint \(its member \S+/data/0 fails its CRC; cut short"):
        resume_from(path)


def test_a_protocol_mapping_a_family_to_an_unknown_name_is_named_as_the_protocols(tmp_path):
    """A protocol file whose tokenizers: entry names no registered size: the error says the protocol's map is wrong;
    before it read 'unknown tokenizer ... Did you mean the family sdvae (sdvae-nope under mine)?', the very name."""
    from dataclasses import replace

    from latentbench.benchmark.harness import resolve_tokenizer
    from latentbench.benchmark.protocol import load_protocol

    proto = replace(load_protocol("smoke"), name="mine", tokenizers={"sdvae": "sdvae-nope"})
    with pytest.raises(KeyError, match="protocol mine maps the family sdvae to 'sdvae-nope', which is not a tokenizer: "
                                       "unknown tokenizer 'sdvae-nope'.*Fix the protocol file's tokenizers: entry"):
        resolve_tokenizer("sdvae", proto)
    with pytest.raises(KeyError, match="unknown tokenizer 'sdvae-nop'.*Family names under protocol mine: sdvae"):
        resolve_tokenizer("sdvae-nop", proto)  # a name that is not the family's: as before


@pytest.mark.slow  # a whole bench (2 training steps, no generator): 20-60 s on a busy 2-core CPU
def test_a_folder_without_class_folders_benches_with_the_probe_unavailable(tmp_path):
    """A folder of images without class sub-folders is one class (a documented layout); the linear probe needs two, and
    raised 'num_classes must be at least 2, got 1' at the eval stage, after the training. Now the row records the probe
    as unavailable, saying why and what to do, and every other metric as measured."""
    import numpy as np
    import yaml
    from PIL import Image

    from latentbench.benchmark.protocol import PROTOCOL_DIR

    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    raw = yaml.safe_load((PROTOCOL_DIR / "smoke.yaml").read_text())
    raw["data"].update(source=f"imagefolder:{tmp_path / 'images'}", num_train=None, num_eval=None)
    raw["train"].update(max_steps=2, batch_size=2)
    raw["eval"].update(batch_size=2)
    raw["generator"]["max_steps"] = 0
    (tmp_path / "flat.yaml").write_text(yaml.safe_dump(raw))
    record = run_bench("sdvae", str(tmp_path / "flat.yaml"), runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb",
                       log=lambda line: None)
    assert record["metrics"]["probe"] == {"unavailable": f"imagefolder:{tmp_path / 'images'} has one class, and a linear "
                                                         "probe needs at least 2 (give its images class sub-folders to "
                                                         "measure one)"}
    assert record["metrics"]["psnr"]["n"] == 6 and "value" in record["metrics"]["rfid"]


def test_a_domain_extractor_of_one_class_data_is_refused_before_training(tmp_path):
    """eval.extractor domain-<a folder without class sub-folders>: refused by the checks before the stages, for another
    source (check_extractor) and for the protocol's own (_check_data_for_the_stages), not at the eval stage."""
    import dataclasses

    import numpy as np
    from PIL import Image

    from latentbench.benchmark.harness import _check_data_for_the_stages, check_extractor
    from latentbench.benchmark.protocol import load_protocol
    from latentbench.data import build_dataset

    (tmp_path / "flat").mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "flat" / f"{i}.png")
    source = f"imagefolder:{tmp_path / 'flat'}"
    proto = load_protocol("smoke")
    other = dataclasses.replace(proto, eval=dataclasses.replace(proto.eval, extractor=f"domain-{source}"))
    with pytest.raises(ValueError, match=f"extractor domain-{source} is a classifier of .* but it has one class"):
        check_extractor(other)
    own = dataclasses.replace(other, data=dataclasses.replace(proto.data, source=source, num_train=None, num_eval=None))
    info = build_dataset(source, "train", 32).info
    with pytest.raises(ValueError, match=f"extractor domain-{source} is a classifier of .* but it has one class"):
        _check_data_for_the_stages(own, info, info)
    _check_data_for_the_stages(dataclasses.replace(own, eval=proto.eval), info, info)  # domain-mnist: measures, no error
