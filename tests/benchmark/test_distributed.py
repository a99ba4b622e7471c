"""Distributed benches: 2 gloo processes give 1 process's numbers; rank 0 alone writes."""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from latentbench.benchmark.protocol import PROTOCOL_DIR
from latentbench.distributed import (
    Launch,
    maybe_relaunch,
    per_rank_batch,
    resolve_launch,
    trainer_kwargs,
)

ELASTIC = {"RANK": "0", "GROUP_RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "test"}


def test_launch_checks_its_arguments():
    with pytest.raises(ValueError, match="--strategy must be one of"):
        Launch(strategy="deepspeed")
    with pytest.raises(ValueError, match="must be >= 1"):
        Launch(devices=0)
    assert Launch(devices=8, num_nodes=2).world_size == 16


def test_one_process_trains_on_a_single_device():
    assert trainer_kwargs(Launch()) == {"strategy": "auto", "devices": 1, "num_nodes": 1}
    kwargs = trainer_kwargs(Launch("ddp", devices=2))
    assert type(kwargs["strategy"]).__name__ == "DDPStrategy" and kwargs["devices"] == 2
    with pytest.raises(ValueError, match="--strategy fsdp is not supported.*use --strategy ddp"):
        Launch("fsdp", devices=2)


def test_global_batch_must_split_evenly(monkeypatch):
    import latentbench.distributed as d

    monkeypatch.setattr(d, "world_size", lambda: 3)
    assert per_rank_batch(96, "batch_size") == 32
    with pytest.raises(ValueError, match="batch_size 64 is not divisible by the 3 processes"):
        per_rank_batch(64, "batch_size")


def test_launcher_layout_is_taken_or_checked(monkeypatch):
    for k, v in ELASTIC.items():
        monkeypatch.setenv(k, v)
    assert resolve_launch(Launch()) == Launch("auto", 2, 1)  # torchrun without flags: its layout
    assert resolve_launch(Launch("ddp", 2)) == Launch("ddp", 2, 1)
    with pytest.raises(ValueError, match="but the launcher started 2"):
        resolve_launch(Launch(devices=4))


@pytest.mark.parametrize("env,expected", [
    ({"LOCAL_WORLD_SIZE": "3", "SLURM_NTASKS_PER_NODE": "2"}, 3),
    ({"SLURM_NTASKS_PER_NODE": "4"}, 4),
    ({"SLURM_TASKS_PER_NODE": "2(x3)", "SLURM_NODEID": "2"}, 2),  # srun without --ntasks-per-node
    ({"SLURM_TASKS_PER_NODE": "2(x2),1", "SLURM_NODEID": "2"}, 1),
    ({"SLURM_TASKS_PER_NODE": "2(x2),1", "SLURM_NODEID": "0"}, 2),
    ({}, 5),
])
def test_processes_per_node_reads_slurms_compressed_task_lists(monkeypatch, env, expected):
    """int('2(x3)') had raised a bare ValueError for srun's task list of uneven or unflagged layouts."""
    import latentbench.distributed as distributed

    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NODEID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.processes_per_node(default=5) == expected
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "two")
    if not env.get("LOCAL_WORLD_SIZE") and not env.get("SLURM_NTASKS_PER_NODE"):
        with pytest.raises(ValueError, match=r"SLURM_TASKS_PER_NODE='two' is not a SLURM task count"):
            distributed.processes_per_node()


def test_gpu_machines_reduce_cpu_tensors_through_gloo(tmp_path):
    """NCCL alone refuses CPU tensors; on GPU machines the group pairs it with gloo for them.

    No GPU here: the CPU half of the device:backend form is exercised on a 1-process group
    (a CPU tensor all-reduce and an object all-gather, as evaluation and the scan do).
    """
    import torch
    import torch.distributed as dist

    from latentbench.distributed import process_group_backend

    assert process_group_backend(cuda=False) == "gloo"
    assert process_group_backend(cuda=True) == "cpu:gloo,cuda:nccl"
    cpu_part = process_group_backend(cuda=True).split(",")[0]
    dist.init_process_group(cpu_part, store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        t = torch.tensor([2.0], dtype=torch.float64)
        dist.all_reduce(t)
        gathered = [None]
        dist.all_gather_object(gathered, {"n": 3})
        assert t.item() == 2.0 and gathered == [{"n": 3}]
    finally:
        dist.destroy_process_group()


def test_evaluation_runs_on_the_process_gpu_else_the_cpu(monkeypatch):
    import torch

    from latentbench.distributed import compute_device, module_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)  # what init_process_group's set_device selected
    assert compute_device() == torch.device("cuda", 3)
    assert module_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU


def test_launcher_rank_holds_without_a_process_group(monkeypatch):
    from latentbench.distributed import launcher_rank

    for k in ELASTIC:
        monkeypatch.delenv(k, raising=False)
    assert launcher_rank() == 0  # no launcher: the one process
    for k, v in {**ELASTIC, "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(k, v)
    assert launcher_rank() == 1  # torchrun's rank 1 stays silent after the bench has left the group


def test_several_nodes_without_a_launcher_say_how(monkeypatch):
    for k in ELASTIC:
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(SystemExit, match="srun --nodes 2 --ntasks-per-node 4"):
        maybe_relaunch(Launch(devices=4, num_nodes=2), ["bench", "--tokenizer", "sdvae"])


def test_relaunching_checks_the_command_first_and_once(monkeypatch):
    """The launching process checks with the world size it will start; launched processes do not check again here."""
    import latentbench.distributed as d

    for k in ELASTIC:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(d.os, "execv", lambda *a: pytest.fail("launched although the check failed"))

    def refuse(processes):
        raise ValueError(f"checked for {processes}")

    with pytest.raises(ValueError, match="checked for 3"):
        maybe_relaunch(Launch(devices=3), ["bench"], check=refuse)
    maybe_relaunch(Launch(), ["bench"], check=refuse)  # one process: nothing is launched, run_bench checks
    for k, v in ELASTIC.items():
        monkeypatch.setenv(k, v)
    maybe_relaunch(Launch(devices=2), ["bench"], check=refuse)  # under torchrun: each process's run_bench checks


def test_global_batch_splits_over_the_processes_about_to_be_launched():
    assert per_rank_batch(96, "batch_size", processes=3) == 32
    with pytest.raises(ValueError, match="batch_size 32 is not divisible by the 3 processes"):
        per_rank_batch(32, "batch_size", processes=3)


def _odd_protocol(tmp_path: Path, batch: int = 32) -> Path:
    """The smoke protocol with odd eval and sample counts (63 and 41: not divisible by 2 or 3 processes), and
    training and generator batches of ``batch``."""
    raw = yaml.safe_load((PROTOCOL_DIR / "smoke.yaml").read_text())
    raw["name"] = "smoke-odd"
    raw["train"]["batch_size"] = raw["generator"]["batch_size"] = batch
    raw["data"]["num_eval"] = 63
    raw["generator"]["num_samples"] = 41
    raw["generator"]["class_sampling"] = "random"  # balanced classes need a multiple of 10
    path = tmp_path / "smoke-odd.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _bench(tmp_path: Path, tokenizer: str, runs: str, *args: str, batch: int = 32) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "latentbench.cli", "bench", "--tokenizer", tokenizer, "--protocol", str(_odd_protocol(tmp_path, batch)),
           "--runs_dir", str(tmp_path / runs), "--leaderboard_dir", str(tmp_path / "lb"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    # no rerun on failure: the C++ abort at exit that this once needed is gone (the harness leaves
    # the process group before the interpreter exits; latentbench.distributed.destroy_process_group)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "sync_dist=True" not in proc.stderr, "Lightning warns of a value logged as one process's: " + proc.stderr[-2000:]
    printed = [line.split()[2] for line in proc.stdout.splitlines() if line.startswith("record id: ")]
    results = 2 if Path(tokenizer).stem.startswith("flowmo") and "--ckpt" not in args else 1  # FlowMo's run: 1a and 1b
    # rank 0 alone prints the summary, one per result, each naming the leaderboard record it wrote
    assert proc.stdout.count("wall time per stage") == len(set(printed)) == len(printed) == results, proc.stdout[-2000:]
    ids = [json.loads(line)["id"] for path in (tmp_path / "lb").rglob("results.jsonl") for line in path.read_text().splitlines()]
    assert set(printed) <= set(ids)


# maetok-smoke with maetok-ci's teacher: the domain-mnist classifier, trained on first use while the other rank waits
MAETOK_TEACHER = """
name: maetok-smoke
init_args: {aux_targets: [hog, domain-mnist]}
module_args: {rec_loss: mse, lr: 1.0e-3, warmup_steps: 1, disc_weight: 0.0, stage_steps: {ae: 0.75, decoder-ft: 0.25}}
"""


def _flowmo_val_images() -> str:
    """flowmo-smoke validating only its first 9 held-out images (of 16): 5 on rank 0, 4 on rank 1."""
    raw = yaml.safe_load((PROTOCOL_DIR.parent / "tokenizers" / "flowmo-smoke.yaml").read_text())
    raw["module_args"]["val_images"] = 9
    return yaml.safe_dump(raw)


# flowmo-lo's recipe (configs/tokenizers/flowmo-lo.yaml: one shared latent query, Adam reset where the encoder freezes
# after a fraction of stage 1a) at flowmo-smoke's size: the encoder freezes at step 7 of 20, inside the first epoch
# (8 batches) and between the checkpoints of steps 4 and 8; stage 1b starts at step 15
FLOWMO_LO_FREEZE = """
name: flowmo-lo
init_args: {resolution: 32, patch_size: 4, latent_tokens: 8, bits: 6, entropy_group: 3, width: 32, depth: 1, heads: 2,
            decoder_width: 64, decoder_depth: 1, decoder_heads: 2, sample_steps: 6, posttrain_steps: 3}
module_args: {lr: 1.0e-3, posttrain_lr: 5.0e-4, betas: [0.9, 0.95], perceptual_weight: 0.1, perceptual_net: vgg,
              posttrain_perceptual_weight: 0.01, stage_steps: {"1a": 0.75, "1b": 0.25}, freeze_encoder_after: 0.35,
              posttrain_batch: 4, val_every: 5, patience: 3}
"""


# maetok-smoke with maetok-ci's teacher and perceptual substitute (the domain-mnist classifier, trained on first use) and
# a GAN from step 10 (maetok-b-128's adversarial loss, at smoke size)
MAETOK_TEACHER_GAN = """
name: maetok-smoke
init_args: {aux_targets: [hog, domain-mnist]}
module_args: {rec_loss: mse, lr: 1.0e-3, warmup_steps: 1, perceptual_weight: 1.0, perceptual_fallback: domain-mnist,
              disc_weight: 0.4, disc_start: 10, disc_channels: 8, disc_layers: 2, stage_steps: {ae: 0.75, decoder-ft: 0.25}}
"""


def _flowmo_posttrain(batch: int) -> str:
    """flowmo-smoke whose stage 1b samples ``batch`` images of each batch (its 4 do not divide over 3 processes)."""
    raw = yaml.safe_load((PROTOCOL_DIR.parent / "tokenizers" / "flowmo-smoke.yaml").read_text())
    raw["module_args"]["posttrain_batch"] = batch
    return yaml.safe_dump(raw)


def _tokenizer(tmp_path: Path, family: str) -> str:
    """``--tokenizer`` of a family: its name, or the YAML of a variant (``maetok-teacher``, ``maetok-teacher-gan``,
    ``flowmo-val-images``, ``flowmo-lo-freeze``, ``flowmo-posttrain-6``)."""
    variants = {"maetok-teacher": lambda: MAETOK_TEACHER, "maetok-teacher-gan": lambda: MAETOK_TEACHER_GAN,
                "flowmo-val-images": _flowmo_val_images, "flowmo-lo-freeze": lambda: FLOWMO_LO_FREEZE,
                "flowmo-posttrain-6": lambda: _flowmo_posttrain(6)}
    if family not in variants:
        return family
    path = tmp_path / f"{family}.yaml"
    path.write_text(variants[family]())
    return str(path)


def _held_out_psnr(protocol: Path, tokenizer: str, weights: Path, precision: str, n: int) -> float:
    """FlowMo's validation PSNR of ``weights`` over the first ``n`` held-out train images in one process (``train_stage``'s
    images, the validation's per-image seeds and autocast)."""
    import torch

    from latentbench.benchmark.harness import VAL_HOLDOUT, _dataset, load_tokenizer
    from latentbench.benchmark.metrics import psnr_per_image
    from latentbench.benchmark.protocol import load_protocol
    from latentbench.benchmark.spec import resolve_tokenizer
    from latentbench.generators.seeding import sample_seed
    from latentbench.tokenizers.base import decode_per_sample

    proto = load_protocol(str(protocol))
    data = _dataset(proto, proto.data.train_split, proto.data.num_train, "error")
    x = torch.stack([data[i][0] for i in range(VAL_HOLDOUT - 1, len(data), VAL_HOLDOUT)][:n])
    tokenizer = load_tokenizer(resolve_tokenizer(tokenizer, proto), weights)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in precision):
        rec = decode_per_sample(tokenizer, tokenizer.encode(x), [sample_seed(0, i) for i in range(len(x))])
    return psnr_per_image(x.float(), rec.float()).mean().item()


def _one_process_statistics(protocol: Path, weights: Path):
    """RAE's latent mean and variance fitted on the whole train split in one process, with the encoder of ``weights``."""
    from torch.utils.data import DataLoader

    from latentbench.benchmark.harness import _dataset, load_tokenizer
    from latentbench.benchmark.protocol import load_protocol
    from latentbench.benchmark.spec import resolve_tokenizer

    proto = load_protocol(str(protocol))
    tokenizer = load_tokenizer(resolve_tokenizer("rae", proto), weights)
    tokenizer.fit_normalization(DataLoader(_dataset(proto, proto.data.train_split, proto.data.num_train, "error"), batch_size=32))
    return tokenizer.latent_mean, tokenizer.latent_var


def _check_training(family: str, tmp_path: Path, run: Path, train: dict) -> None:
    """What the 2 processes computed across ranks while training is what 1 process computes."""
    import torch
    from safetensors.torch import load_file

    protocol = tmp_path / "smoke-odd.yaml"
    if family.startswith("flowmo"):  # stage 1b's early stopping scored every validated image once, not one rank's share
        es, n = train["early_stopping"], 9 if family == "flowmo-val-images" else 16
        assert train["validation_images"] == n and es["evaluations"] == 2 and es["best_step"] in (15, 20)
        assert es["best"] == pytest.approx(_held_out_psnr(protocol, _tokenizer(tmp_path, family), run / "tokenizer.safetensors",
                                                          train["precision"], n), rel=1e-5)  # the kept decoder's own score
    if family == "flowmo-lo-freeze":  # the encoder froze at step 7 on both ranks, and Adam started afresh there, once
        state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
        adam = state["optimizer_states"][0]["state"]
        assert state["global_step"] == 16 and {int(s["step"]) for s in adam.values()} == {16 - 7}
        encoder = sum(1 for k in state["state_dict"] if k.startswith("tokenizer.encoder."))
        assert 0 < len(adam) <= len(state["state_dict"]) - encoder  # no moments for the frozen encoder
    if family == "rae":  # the latent statistics of the whole train split, all-reduced over the two shards
        assert train["normalization"]["images"] == 256
        state = load_file(run / "tokenizer.safetensors")
        mean, var = _one_process_statistics(protocol, run / "tokenizer.safetensors")
        torch.testing.assert_close(state["latent_mean"], mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state["latent_var"], var, rtol=1e-5, atol=1e-7)
    if family == "maetok-teacher":  # the teacher one rank trained on first use (the other waited) is the one 1 process trains
        from latentbench.tokenizers.teachers import create_teacher

        teacher = create_teacher("domain-mnist", cache_dir=str(tmp_path / "one-process-cache"))
        assert train["targets"]["domain-mnist"]["weights_sha256"] == teacher.weights_sha256


@pytest.mark.parametrize("family", ["sdvae", "flowmo", "maetok", "rae", pytest.param("maetok-teacher", marks=pytest.mark.slow),
                                    pytest.param("flowmo-val-images", marks=pytest.mark.slow),
                                    pytest.param("flowmo-lo-freeze", marks=pytest.mark.slow)])
def test_two_process_bench_equals_one_process(tmp_path, family):
    """Train under DDP on 2 processes, then evaluate those weights on 1: the same numbers, every sample once.

    FlowMo's run has two results (1a, 1b): each of its weight files is evaluated on 1 process.
    """
    from latentbench.generators.latents import LatentShards

    tokenizer = _tokenizer(tmp_path, family)
    _bench(tmp_path, tokenizer, "runs2", "--devices", "2")
    (run2,) = (tmp_path / "runs2" / "smoke-odd" / "v3").iterdir()
    train = json.loads((run2 / "stages" / "train.json").read_text())
    files = list((train["variants"] or {"": train["weights"]}).values())
    for path in files:
        _bench(tmp_path, tokenizer, "runs1", "--ckpt", str(run2 / path))
    rows = [json.loads(line) for line in (tmp_path / "lb" / "smoke-odd" / "v3" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(files), "rank 1 must not write a row"  # one per result of each bench
    for two, one in zip(rows[:len(files)], rows[len(files):], strict=True):
        assert two["distributed"]["world_size"] == 2 and one["distributed"]["world_size"] == 1
        assert two["tokenizer"]["trained_steps"] == 20 and two["training"] is not None
        assert one["tokenizer"]["checkpoint"]["sha256"] == two["tokenizer"]["checkpoint"]["sha256"]
        for name in ("psnr", "ssim"):
            assert one["metrics"][name]["n"] == two["metrics"][name]["n"] == 63
            assert two["metrics"][name]["value"] == pytest.approx(one["metrics"][name]["value"], rel=1e-6, abs=1e-9)
        assert two["metrics"]["probe"]["value"] == one["metrics"]["probe"]["value"]
        assert two["metrics"]["probe"]["n"] == one["metrics"]["probe"]["n"] == 63
        assert one["metrics"]["rfid"]["n"] == two["metrics"]["rfid"]["n"] == 63
        assert two["metrics"]["rfid"]["value"] == pytest.approx(one["metrics"]["rfid"]["value"], rel=1e-4)
        # generators train on differently split batches (statistically, not bitwise, the same): gFID counts agree
        assert one["metrics"]["gfid"]["n"] == two["metrics"]["gfid"]["n"] == 41
        assert (one["codes"] is None) == (two["codes"] is None)  # FlowMo's code usage and entropy: every eval code once
        if two["codes"]:
            assert one["codes"] == pytest.approx(two["codes"], rel=1e-6)
    _check_training(family, tmp_path, run2, train)
    # the latent caches the 2 processes wrote (one per result), one shard each, are read whole by this single process
    assert len(list((run2 / "latents").iterdir())) == len(files)
    for cache in (run2 / "latents").iterdir():
        assert sorted(p.name for p in cache.glob("shard-*")) == ["shard-00000-of-00002-part-00000.safetensors",
                                                                 "shard-00001-of-00002-part-00000.safetensors"]
        z, y = LatentShards(cache).read_all()
        assert len(z) == len(y) == 256 and json.loads((cache / "meta.json").read_text())["world_size"] == 2
    (generator,) = (run2 / "generators").iterdir()  # FlowMo's two results share their codes, so their generator
    z_samples, _ = LatentShards(generator / "samples" / "step-0000020").read_all()
    assert len(z_samples) == 41  # 21 + 20 sampled by the two ranks, each once


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sdvae", "rae"])
def test_three_process_bench_equals_one_process(tmp_path, family):
    """An odd world size: 3 processes (batches of 48) shard 63 eval images, 256 cached latents and 41 gFID samples
    21 / 21 / 21, 86 / 85 / 85 and 14 / 14 / 13; the weights they trained give 1 process's numbers."""
    import torch

    from latentbench.generators.latents import LatentShards

    _bench(tmp_path, family, "runs3", "--devices", "3", batch=48)
    (run3,) = (tmp_path / "runs3" / "smoke-odd" / "v3").iterdir()
    _bench(tmp_path, family, "runs1", "--ckpt", str(run3 / "tokenizer.safetensors"), batch=48)
    three, one = [json.loads(line) for line in (tmp_path / "lb" / "smoke-odd" / "v3" / "results.jsonl").read_text().splitlines()]
    assert three["distributed"]["world_size"] == 3 and one["distributed"]["world_size"] == 1
    for name in ("psnr", "ssim", "rfid", "probe"):
        assert one["metrics"][name]["n"] == three["metrics"][name]["n"] == 63
        assert three["metrics"][name]["value"] == pytest.approx(one["metrics"][name]["value"], rel=1e-5)
    assert one["metrics"]["gfid"]["n"] == three["metrics"]["gfid"]["n"] == 41
    (cache,) = (run3 / "latents").iterdir()
    assert len(list(cache.glob("shard-*-of-00003-part-00000.safetensors"))) == 3
    z, y = LatentShards(cache).read_all()
    z1, y1 = LatentShards(next((tmp_path / "runs1" / "smoke-odd" / "v3").glob("*/latents/*"))).read_all()
    assert torch.equal(y, y1) and (z.float() - z1.float()).abs().max() < 1e-4  # the cache 1 process writes
    (generator,) = (run3 / "generators").iterdir()
    assert len(LatentShards(generator / "samples" / "step-0000020").read_all()[0]) == 41


def _killed_bench(tmp_path: Path, tokenizer: str, runs: str, processes: int, kill: tuple[str, int], env: dict) -> str:
    """``bench --devices processes`` as ``_bench`` runs it (batches of 48), its process group (the launcher and the
    processes it started) SIGKILLed at ``kill``: ("checkpoint", k) once this attempt has written its k-th
    ``last.ckpt`` of tokenizer training, ("teacher", 0) 2 s into the domain-mnist classifier's first-use training
    (about 20 s). Returns what it printed."""
    import signal
    import time
    import zipfile

    cmd = [sys.executable, "-m", "latentbench.cli", "bench", "--tokenizer", tokenizer, "--protocol",
           str(_odd_protocol(tmp_path, 48)), "--runs_dir", str(tmp_path / runs), "--leaderboard_dir",
           str(tmp_path / "lb-killed"), "--devices", str(processes)]
    log = tmp_path / "killed.log"

    def checkpoint():  # the tokenizer's last.ckpt, once complete (a zip archive): its identity, else None
        for path in (tmp_path / runs).glob("*/v3/*/checkpoints/last.ckpt"):
            try:
                st = path.stat()
                with zipfile.ZipFile(path) as archive:
                    if archive.testzip() is None:
                        return st.st_ino, st.st_mtime_ns, st.st_size
            except (OSError, zipfile.BadZipFile):
                pass
        return None

    with open(log, "w") as out:
        bench = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    try:
        what, k = kill
        seen, last, deadline = 0, checkpoint(), time.monotonic() + 600
        while True:
            assert bench.poll() is None and time.monotonic() < deadline, f"not killed at {kill}: " + log.read_text()[-3000:]
            if what == "teacher" and "training the FID-domain(mnist) classifier" in log.read_text():
                time.sleep(2)
                break
            if what == "checkpoint" and (now := checkpoint()) not in (None, last):
                seen, last = seen + 1, now
                if seen == k:
                    break
            time.sleep(0.05)
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
        bench.wait(timeout=60)
    return log.read_text()


def _comparable(row: dict):
    """What a rerun must reproduce of a record: its weights and every number, not its wall times or file paths."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.endswith(("_s", "_path"))}
        return [strip(v) for v in value] if isinstance(value, list) else value

    return strip({"sha256": row["tokenizer"]["checkpoint"]["sha256"], **{k: row[k] for k in ("metrics", "codes", "training",
                                                                                              "generation")}})


@pytest.mark.slow
@pytest.mark.parametrize("family, processes, kills", [
    ("sdvae", 3, [("checkpoint", 1), ("checkpoint", 2)]),  # steps 4-7, then 12-15 (the GAN started at step 10)
    ("flowmo-posttrain-6", 3, [("checkpoint", 1), ("checkpoint", 3)]),  # steps 4-7, then 16-19 (stage 1b)
    ("maetok-teacher-gan", 2, [("teacher", 0), ("checkpoint", 3)]),  # the teacher's training, then 12-15 (GAN)
])
def test_a_killed_bench_rerun_on_its_processes_gives_the_uninterrupted_record(tmp_path, monkeypatch, family, processes,
                                                                             kills):
    """Killed (SIGKILL of the bench's process group) after checkpoints of its training or while it trains the
    domain-mnist teacher on first use, a bench rerun on as many processes ends with the record of an uninterrupted
    bench on them to every digit: weights, metrics, codes, training and generation. No kill leaves a row, a
    result of the unfinished train stage or the teacher's weights."""
    tokenizer = _tokenizer(tmp_path, family)
    monkeypatch.setenv("LATENTBENCH_CACHE", str(tmp_path / "cache-plain"))  # each trains the teacher on first use
    _bench(tmp_path, tokenizer, "runs-plain", "--devices", str(processes), batch=48)
    monkeypatch.setenv("LATENTBENCH_CACHE", str(tmp_path / "cache-killed"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for kill in kills:
        printed = _killed_bench(tmp_path, tokenizer, "runs-killed", processes, kill, env)
        assert not list((tmp_path / "runs-killed").rglob("stages/train.json")) and not (tmp_path / "lb-killed").exists()
        teacher = list((tmp_path / "cache-killed" / "extractors").glob("domain-mnist-*.safetensors"))
        if kill[0] == "teacher":
            assert "training the FID-domain(mnist) classifier" in printed and teacher == [], printed[-3000:]
    rerun = subprocess.run(
        [sys.executable, "-m", "latentbench.cli", "bench", "--tokenizer", tokenizer, "--protocol", str(tmp_path / "smoke-odd.yaml"),
         "--runs_dir", str(tmp_path / "runs-killed"), "--leaderboard_dir", str(tmp_path / "lb-killed"), "--devices",
         str(processes)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-4000:]
    assert "resuming on the interrupted run's random streams and batches" in rerun.stdout + rerun.stderr
    rows = {}
    for name in ("lb", "lb-killed"):
        rows[name] = [json.loads(line) for line in (tmp_path / name / "smoke-odd" / "v3" / "results.jsonl").read_text().splitlines()]
    assert len(rows["lb"]) == len(rows["lb-killed"]) == (2 if family.startswith("flowmo") else 1)
    for plain, resumed in zip(rows["lb"], rows["lb-killed"], strict=True):
        assert resumed["distributed"]["world_size"] == plain["distributed"]["world_size"] == processes
        assert _comparable(resumed) == _comparable(plain)


def _image_folder_protocol(tmp_path: Path, workers: int) -> Path:
    """The smoke protocol on a folder of 260 train / 70 val random PNGs (10 classes), decoded in ``workers`` loader
    processes; batch 48, so 5 batches an epoch and 4 epochs in smoke's 20 steps."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "images"
    if not root.exists():
        rng = np.random.default_rng(0)
        for split, count in (("train", 26), ("val", 7)):
            for c in range(10):
                (root / split / f"c{c}").mkdir(parents=True)
                for i in range(count):
                    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / split / f"c{c}" / f"{i}.png")
    raw = yaml.safe_load((PROTOCOL_DIR / "smoke.yaml").read_text())
    raw["name"] = f"folder-w{workers}"
    raw["data"].update(source=f"imagefolder:{root}", num_train=None, num_eval=None)
    raw["train"].update(batch_size=48, num_workers=workers)
    raw["generator"]["batch_size"] = 48
    raw["eval"]["probe_train"] = None
    path = tmp_path / f"folder-w{workers}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sdvae", "flowmo", "maetok"])
def test_loader_workers_under_ddp_change_no_number(tmp_path, family):
    """2 processes decoding an image folder in 2 loader workers each train the weights of 2 processes without
    workers, sha256 for sha256, and measure the same numbers; the bench ends (no worker holds it at exit). FlowMo
    (its stage-1b validation and its two results) and MAETok (its masks and auxiliary targets drawn per batch) too.

    Before, the kept workers drew their seed once rather than once an epoch from each rank's training-noise stream,
    and the weights differed from the second epoch on (``test_loader_workers_change_no_batch_nor_random_draw``).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = {}
    for workers in (0, 2):
        cmd = [sys.executable, "-m", "latentbench.cli", "bench", "--tokenizer", family, "--devices", "2",
               "--protocol", str(_image_folder_protocol(tmp_path, workers)), "--runs_dir", str(tmp_path / "runs"),
               "--leaderboard_dir", str(tmp_path / "lb")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        rows[workers] = [json.loads(line) for line in
                         (tmp_path / "lb" / f"folder-w{workers}" / "v3" / "results.jsonl").read_text().splitlines()]
    assert len(rows[0]) == len(rows[2]) == (2 if family == "flowmo" else 1)  # FlowMo's run: 1a and 1b
    for without, with_workers in zip(rows[0], rows[2], strict=True):
        assert with_workers["tokenizer"]["checkpoint"]["sha256"] == without["tokenizer"]["checkpoint"]["sha256"]
        assert with_workers["training"] == without["training"]  # FlowMo's early stopping, final losses
        for name in ("psnr", "ssim", "rfid", "probe", "gfid"):
            assert with_workers["metrics"][name]["n"] == without["metrics"][name]["n"] == (40 if name == "gfid" else 70)
            assert with_workers["metrics"][name]["value"] == pytest.approx(without["metrics"][name]["value"], rel=1e-9)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_users_torchrun_or_srun_runs_the_bench_it_started(tmp_path):
    """``torchrun -m latentbench.cli bench --devices 2`` and two tasks as ``srun`` starts them (SLURM_* variables,
    MASTER_ADDR / MASTER_PORT; Lightning's SLURMEnvironment) join their launcher's processes instead of launching
    more, train the weights of ``bench --devices 2``, and write one row each, from rank 0."""
    bench = ["-m", "latentbench.cli", "bench", "--tokenizer", "sdvae", "--protocol", "smoke", "--leaderboard_dir"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    env["OMP_NUM_THREADS"] = "1"
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *bench,
                               str(tmp_path / "lb-torchrun"), "--runs_dir", str(tmp_path / "runs-torchrun"), "--devices", "2"],
                              capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert torchrun.returncode == 0, torchrun.stdout[-2000:] + torchrun.stderr[-4000:]
    assert "launching" not in torchrun.stdout and torchrun.stdout.count("record id: ") == 1
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "bench", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2",
             "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(_free_port())}
    tasks = [subprocess.Popen([sys.executable, *bench, str(tmp_path / "lb-srun"), "--runs_dir", str(tmp_path / "runs-srun")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                              env={**env, **slurm, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)})
             for r in range(2)]  # no --devices: the tasks srun started
    outputs = [task.communicate(timeout=600) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], [err[-3000:] for _, err in outputs]
    assert "on 2 process(es)" in outputs[0][0] and outputs[0][0].count("record id: ") == 1
    assert "record id" not in outputs[1][0]  # rank 1 prints no summary
    rows = {}
    for launcher in ("torchrun", "srun"):
        (rows[launcher],) = [json.loads(line) for line in
                             (tmp_path / f"lb-{launcher}" / "smoke" / "v3" / "results.jsonl").read_text().splitlines()]
        assert rows[launcher]["distributed"]["world_size"] == 2
    expected = _weights_of_devices_2(tmp_path, env)
    for row in rows.values():
        assert row["tokenizer"]["checkpoint"]["sha256"] == expected
    assert rows["srun"]["metrics"] == rows["torchrun"]["metrics"]


def _weights_of_devices_2(tmp_path: Path, env: dict) -> str:
    """The sha256 of the weights ``bench --devices 2`` trains under the smoke protocol."""
    cmd = [sys.executable, "-m", "latentbench.cli", "bench", "--tokenizer", "sdvae", "--protocol", "smoke", "--devices", "2",
           "--runs_dir", str(tmp_path / "runs-devices"), "--leaderboard_dir", str(tmp_path / "lb-devices")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = [json.loads(line) for line in (tmp_path / "lb-devices" / "smoke" / "v3" / "results.jsonl").read_text().splitlines()]
    return row["tokenizer"]["checkpoint"]["sha256"]


AGREE = """
import sys
import torch.distributed as dist
from latentbench.benchmark.gfid import reference_stats  # before the group exists: see distributed.init_process_group
from latentbench.distributed import require_agreement

dist.init_process_group("gloo")
require_agreement("found", "LPIPS's weights", "same files")  # all agree: nothing happens
try:
    require_agreement("found" if dist.get_rank() == 0 else "missing", "LPIPS's weights", "put them on every node")
except ValueError as e:
    print(f"rank {dist.get_rank()}: {e}")
# a gFID reference .npz that only rank 0's node has (ref-0.npz exists, ref-1.npz does not)
try:
    reference_stats(f"{sys.argv[1]}/ref-{dist.get_rank()}.npz", None, None, 4)
except ValueError as e:
    print(f"rank {dist.get_rank()}: {e}")
dist.destroy_process_group()
"""


def test_processes_that_find_different_weight_files_stop_together(tmp_path):
    script = tmp_path / "agree.py"
    script.write_text(AGREE)
    (tmp_path / "ref-0.npz").write_bytes(b"")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):  # every rank raises, so none waits in a collective for the others
        assert (f"rank {rank}: the processes disagree on LPIPS's weights: found on rank 0, missing on rank 1; "
                "put them on every node") in proc.stdout
        assert (f"rank {rank}: the processes disagree on the gFID reference {tmp_path}/ref-{rank}.npz: found on rank 0, "
                "missing on rank 1; put the file on every node") in proc.stdout


NODE_CACHES = """
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

from latentbench.benchmark.gfid import reference_stats  # before the group exists: see distributed.init_process_group


class PixelStats(nn.Module):
    id, weights_sha256, preprocessing, dim = "pixel-stats", "none", "uint8", 6

    def forward(self, images):
        x = images.double() / 255
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


data = TensorDataset(torch.linspace(-1, 1, 11 * 48).reshape(11, 3, 4, 4).sin(), torch.zeros(11, dtype=torch.long))
data.info = {"source": "toy", "n": 11}
dist.init_process_group("gloo")
rank = dist.get_rank()
cache = Path(sys.argv[1]) / f"node-{rank}"  # LATENTBENCH_CACHE of this rank's own node
for call in ("computed", "read", "rank 1's copy lost"):
    if call == "rank 1's copy lost" and rank == 1:
        (npz,) = cache.rglob("*.npz")
        npz.unlink()
    dist.barrier()
    ref = reference_stats("train", lambda split: data, PixelStats(), 4, cache_dir=cache)
    with open(Path(sys.argv[1]) / f"rank-{rank}.txt", "a") as out:  # a file each: two ranks' prints can interleave
        out.write(f"rank {rank} {call}: n={ref.n} sha256={ref.sha256} files={len(list(cache.rglob('*.npz')))}\\n")
dist.destroy_process_group()
"""


def test_reference_statistics_cached_per_node_are_read_and_written_on_every_node(tmp_path):
    """A split's gFID reference with a cache folder per node: rank 0 had decided for every node whether the file was
    there, and every rank then read the file rank 0 wrote; another node, which had no copy, stopped (torchrun then
    ended the group) where it should compute the statistics with the others and keep its own copy."""
    script = tmp_path / "node_caches.py"
    script.write_text(NODE_CACHES)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.split(": ", 1) for r in (0, 1) for line in (tmp_path / f"rank-{r}.txt").read_text().splitlines()]
    assert sorted(who for who, _ in lines) == sorted(f"rank {r} {c}" for r in (0, 1)
                                                    for c in ("computed", "read", "rank 1's copy lost"))
    (fact,) = {what for _, what in lines}  # the same statistics on every rank after every call
    assert fact.startswith("n=11 ") and fact.endswith(" files=1")  # and one file in each node's cache


MEAN = """
import torch
import torch.distributed as dist
from latentbench.distributed import mean_over_processes

dist.init_process_group("gloo")
r = dist.get_rank()
print(f"rank {r}: {mean_over_processes(torch.tensor(1.0 + 2 * r))}")  # a logged loss is a 0-d tensor
dist.destroy_process_group()
"""


def test_a_per_process_figure_is_averaged_over_the_processes(tmp_path):
    """The records' final training loss: each process logged its share's; every process gets the mean."""
    from latentbench.distributed import mean_over_processes

    assert mean_over_processes(0.1) == 0.1  # one process: the value itself, to the bit
    script = tmp_path / "mean.py"
    script.write_text(MEAN)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0: 2.0" in proc.stdout and "rank 1: 2.0" in proc.stdout


LEAVE = """
import os, sys
import latentbench.distributed as ld

def gloo_threads():  # gloo names its threads (gloo_tcp_loop, pt_gloo_runloop); others come and go with imports
    names = (open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
    return sum("gloo" in name for name in names)

ld.init_process_group(ld.Launch(devices=2))
import torchvision  # the stages import their libraries lazily, after the group exists (torchvision imports torch._dynamo)
ld.all_gather({"rank": ld.rank()})  # a collective whose tensors Python made
during = gloo_threads()
rank = ld.rank()
ld.destroy_process_group()
with open(f"{sys.argv[1]}/threads-{rank}", "w") as f:  # a file each: two ranks' prints can interleave
    f.write(f"{during} {gloo_threads()}")
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_leaving_the_group_joins_its_threads(tmp_path):
    """Leaving the group frees it, and so its gloo worker threads, before the interpreter finalizes.

    A worker still alive then, freeing a finished collective's tensors, needs the GIL and aborts
    the process ("terminate called without an active exception"); ``torch._dynamo`` imported
    after the group was created keeps it alive, so ``distributed.init_process_group`` makes sure it
    is imported first, and the libraries a stage imports later cannot.
    """
    script = tmp_path / "leave.py"
    script.write_text(LEAVE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        during, after = map(int, (tmp_path / f"threads-{rank}").read_text().split())
        assert during > 0 and after == 0, (rank, during, after)


RANK_ZERO = """
import latentbench.distributed as ld

ld.init_process_group(ld.Launch(devices=2))
assert ld.run_on_rank_zero(lambda: {"written": ld.rank()}) == {"written": 0}  # every rank gets rank 0's result

def write():
    raise ValueError("the table refused the row")

try:
    ld.run_on_rank_zero(write)
except (ValueError, ld.RankZeroFailed) as e:
    print(f"rank {ld.rank()}: {type(e).__name__}: {e}", flush=True)
ld.destroy_process_group()
"""


def test_an_error_on_rank_zero_stops_every_rank_with_its_message(tmp_path):
    """Not a gloo connection error (or an NCCL hang) on the ranks that waited for rank 0's result."""
    script = tmp_path / "rank_zero.py"
    script.write_text(RANK_ZERO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0: ValueError: the table refused the row" in proc.stdout
    assert ("rank 1: RankZeroFailed: rank 0 stopped, so this rank stops too; rank 0's error: "
            "ValueError: the table refused the row") in proc.stdout


def _processes_with(marker: str) -> list[int]:
    """The pids of the processes whose environment holds ``marker`` (``NAME=value``)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker.encode() in f.read().split(b"\0"):
                    pids.append(int(entry))
        except (OSError, ValueError):
            continue
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
@pytest.mark.parametrize("signal_name, after", [
    ("SIGKILL", "last.ckpt"), ("SIGINT", "last.ckpt"),
    # SIGTERM (a scheduler's time limit, ``kill``), which torchrun passes on: in training Lightning's handler broadcast
    # from inside the signal handler (the processes could wait out torchrun's 30 s of grace); after it, in evaluation,
    # the processes ended by the signal's default action, without a line
    pytest.param("SIGTERM", "last.ckpt", marks=pytest.mark.slow), pytest.param("SIGTERM", "train.json", marks=pytest.mark.slow),
])
def test_the_processes_a_bench_launched_die_with_its_launcher(tmp_path, signal_name, after):
    """``bench --devices 2`` killed with SIGKILL (kill -9 of its process group, the OOM killer) leaves no process;
    interrupted (Ctrl-C, SIGTERM), it says so in a line, without a traceback, and leaves no temporary file.

    torchrun starts its workers in sessions of their own: they outlived a killed launcher, finished the bench in the
    background and held the run directory against the rerun.
    """
    import signal
    import time

    marker = f"LATENTBENCH_TEST_BENCH={tmp_path.name}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", marker.split("=")[0]: tmp_path.name}
    cmd = [sys.executable, "-m", "latentbench.cli", "bench", "--tokenizer", "sdvae", "--protocol", "smoke", "--devices", "2",
           "--runs_dir", str(tmp_path / "runs"), "--leaderboard_dir", str(tmp_path / "lb")]
    log = tmp_path / "log"
    with open(log, "w") as out:
        launcher = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "runs").rglob(after)):  # training (past the collectives that need torchrun), or after
            assert launcher.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        assert len(_processes_with(marker)) >= 3  # the launcher and its two workers (and their loaders' workers)
        sent = time.monotonic()
        os.killpg(launcher.pid, getattr(signal, signal_name))  # the launcher's group (Ctrl-C's): the workers are not in it
        code = launcher.wait(timeout=60)
        if signal_name != "SIGKILL":  # torchrun passes it on; rank 0 and the launcher say so in a line each
            number, said = (2, "interrupted") if signal_name == "SIGINT" else (15, "terminated (SIGTERM)")
            text = log.read_text()
            assert code == 128 + number and "Traceback" not in text, text[-3000:]
            assert f"latentbench: the launcher got signal {number} and stopped its processes" in text
            assert text.count(f"latentbench: {said}. Every finished stage is kept") == 1, text[-3000:]  # rank 0's
            assert "Unable to shutdown process" not in text  # torchrun's SIGKILL after its 30 s of grace
            assert time.monotonic() - sent < 25, text[-3000:]
            assert not list(tmp_path.rglob("*.tmp"))
        deadline = time.monotonic() + 5
        while _processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_with(marker) == [], "a launched process outlived its launcher"
        assert not list((tmp_path / "lb").rglob("results.jsonl")), "the launched processes finished the bench without it"
    finally:
        for pid in _processes_with(marker):
            with contextlib.suppress(ProcessLookupError):  # gone meanwhile
                os.kill(pid, signal.SIGKILL)
