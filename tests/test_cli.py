import subprocess
import sys

import pytest

from latentbench.cli import main


def test_list_shows_tokenizers_and_protocols(capsys):
    main(["list"])
    out = capsys.readouterr().out
    assert "sdvae-ci" in out and "sdvae-f8" in out and "smoke" in out and "sdvae->sdvae-ci" in out


@pytest.mark.parametrize("args, message", [
    (["bench", "--tokenizer", "nope", "--protocol", "smoke"], "unknown tokenizer 'nope'"),
    # the family first and alone: the registry's guesses of other protocols' sizes came first ("Did you mean flowmo-lo, ...")
    (["bench", "--tokenizer", "flowm", "--protocol", "smoke"],
     "unknown tokenizer 'flowm'. Did you mean the family flowmo (flowmo-smoke under smoke)? Registered: "),
    (["bench", "--protocol", "nope"], "no protocol 'nope'"),
    (["bench", "--protocol", "smoke", "--ckpt", "/does/not/exist.pt"], "does/not/exist.pt"),
    (["bench", "--protocol", "smoke", "--seed", "-1"], "--seed must be in [0, 2^32), got -1"),
    (["bench", "--protocol", "smoke", "--ckpt", "pyproject.toml", "--train_steps", "5"],
     "--train_steps 5 has no effect with --ckpt"),
    # not offered (README "Scaling out"); Launch refuses it with the reason when the API is asked for it
    (["bench", "--protocol", "smoke", "--strategy", "fsdp", "--devices", "2"], "--strategy expects one of auto, ddp, got 'fsdp'"),
    # refused before torchrun starts 3 processes that would each say it
    (["bench", "--protocol", "smoke", "--devices", "3"], "train batch_size 32 is not divisible by the 3 processes"),
])
def test_errors_exit_nonzero_with_one_clear_line(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "latentbench.cli", *args, "--runs_dir", str(tmp_path), "--leaderboard_dir", str(tmp_path / "lb")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "lb").exists()


def test_a_dry_run_prints_the_plan_for_any_devices_and_launches_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "latentbench.cli", "bench", "--protocol", "smoke", "--devices", "4", "--dry_run",
                           "--runs_dir", str(tmp_path / "runs"), "--leaderboard_dir", str(tmp_path / "lb")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("dry run: bench sdvae-smoke (sdvae) under smoke/v3") and "launching" not in proc.stdout
    assert "on 4 process(es)" in proc.stdout and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, line", [
    (["bench", "--train_steps", "abc"], "--train_steps expects an integer, got 'abc'"),  # Optional[int]
    (["bench", "--devices", "x"], "--devices expects an integer, got 'x'"),
    (["bench", "--compile", "maybe"], "--compile expects true or false, got 'maybe'"),
    (["bench", "--precision", "16"], "--precision expects one of auto, 32-true, bf16-mixed, got '16'"),
    (["perf", "--steps", "1.5"], "--steps expects an integer, got '1.5'"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_option_type_and_value(args, line, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and capsys.readouterr().err == f"latentbench: error: {line}\n"


@pytest.mark.parametrize("args, line", [
    (["bench", "--tokenizer", "sdvae", "--train_stpes", "3"],
     "unknown option --train_stpes (did you mean --train_steps?): `latentbench bench --help` lists the options"),
    (["bench", "--bogus", "--dryrun"],
     "unknown options --bogus, --dryrun (did you mean --dry_run?): `latentbench bench --help` lists the options"),
    (["metrics", "--pnsr=true"], "unknown option --pnsr (did you mean --psnr?): `latentbench metrics --help` lists the options"),
    (["bench", "sdvae"], "unexpected argument 'sdvae': every option is given by its name (`--name value`); "
                         "`latentbench bench --help` lists them"),
])
def test_an_unknown_option_is_one_line_with_the_likeliest_meant_one(args, line, capsys):
    """argparse printed the command's whole usage (a dozen lines) above "unrecognized arguments", and no suggestion."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and capsys.readouterr().err == f"latentbench: error: {line}\n"


def test_help_shows_no_restructuredtext_markup(capsys):
    """--help prints the docstrings as they are: ``x`` and :func:`x` would show their markup."""
    import re

    from latentbench.cli import COMMANDS

    for command in ([], *([name] for name in COMMANDS)):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        out = capsys.readouterr().out
        assert out and not re.search(r"``|:[a-z]+:`", out), (command, re.findall(r".*(?:``|:[a-z]+:`).*", out))


def test_list_options_take_one_value_commas_or_a_list():
    from latentbench.cli import as_list

    assert as_list("sdvae", "targets") == ["sdvae"]
    assert as_list("sdvae, dit-ci@sdvae", "targets") == ["sdvae", "dit-ci@sdvae"]
    assert as_list(["a", "b"], "targets") == ["a", "b"] and as_list(None, "targets") is None
    assert as_list("0,1,2", "seeds", int) == [0, 1, 2] and as_list(3, "seeds", int) == [3]
    with pytest.raises(ValueError, match="--seeds: expected comma-separated int values, got 'a,b'"):
        as_list("a,b", "seeds", int)


@pytest.mark.parametrize("given", [["--targets", "sdvae,dit-ci@sdvae"], ["--targets", "[sdvae, dit-ci@sdvae]"],
                                   ["--targets+", "sdvae", "--targets+", "dit-ci@sdvae"]])
def test_perf_targets_parse_from_the_command_line(given, monkeypatch, tmp_path):
    import latentbench.benchmark.perf as perf

    seen = []
    monkeypatch.setattr(perf, "run_perf", lambda targets, *a, **k: seen.append([t.label for t in targets]))
    main(["perf", *given, "--out", str(tmp_path / "perf.json")])
    assert seen == [["sdvae", "dit-ci on sdvae"]]


def test_a_partial_perf_run_does_not_replace_the_committed_table(monkeypatch, capsys):
    import latentbench.benchmark.perf as perf

    monkeypatch.setattr(perf, "run_perf", lambda *a, **k: pytest.fail("measured without a place to write"))
    for given in (["--targets", "sdvae"], ["--batch_size", "16"], ["--protocol", "smoke"], ["--steps", "2"]):
        with pytest.raises(SystemExit) as exit_:
            main(["perf", *given])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "pass --out FILE" in err
        if given[0] == "--protocol":
            assert "--protocol smoke differs from how the committed" in err


def test_out_naming_the_committed_table_is_no_way_round(monkeypatch, capsys):
    import os

    import latentbench.benchmark.perf as perf

    monkeypatch.setattr(perf, "run_perf", lambda *a, **k: pytest.fail("measured into the committed table"))
    relative = os.path.relpath(perf.PERF_PATH)  # as `make perf ARGS="... --out leaderboards/perf/perf.json"` names it
    for given in (["--targets", "rae"], ["--steps", "2", "--warmup", "1"]):
        for out in (relative, ""):  # "": an empty make variable, which is no --out
            with pytest.raises(SystemExit) as exit_:
                main(["perf", *given, "--out", out])
            assert exit_.value.code == 2 and "pass --out FILE" in capsys.readouterr().err


@pytest.mark.parametrize("given, message", [
    (["--steps", "-1"], "--steps must be >= 1"), (["--steps", "0"], "--steps must be >= 1"),
    (["--warmup", "-1"], "--warmup must be >= 0"), (["--batch_size", "0"], "--batch_size must be >= 1"),
])
def test_perf_refuses_counts_it_cannot_measure_before_measuring(given, message, monkeypatch, capsys, tmp_path):
    import latentbench.benchmark.perf as perf

    monkeypatch.setattr(perf, "_in_subprocess", lambda *a, **k: pytest.fail("measured"))
    monkeypatch.setattr(perf, "matmul_peak", lambda *a, **k: pytest.fail("measured"))
    for out in (["--out", str(tmp_path / "perf.json")], []):  # without --out too: this, not "pass --out FILE", is the fix
        with pytest.raises(SystemExit) as exit_:
            main(["perf", *given, *out])
        assert exit_.value.code == 2 and f"latentbench: error: {message}" in capsys.readouterr().err
    with pytest.raises(ValueError, match=message):  # the API as well
        perf.run_perf(None, "ci", **{"steps": 8, "warmup": 3, "batch_size": None} | {given[0][2:]: int(given[1])}, out=None)


def test_user_errors_in_files_and_paths_exit_2_without_a_traceback(tmp_path):
    import subprocess
    import sys

    bad_yaml = tmp_path / "tok.yaml"
    bad_yaml.write_text("name: [sdvae\n")
    listed = tmp_path / "list.yaml"
    listed.write_text("- sdvae\n")
    bad_protocol = tmp_path / "proto.yaml"
    bad_protocol.write_text("name: x\n  version: 1\n")
    cases = {
        ("--tokenizer", str(bad_yaml)): f"tokenizer config {bad_yaml} is not valid YAML",
        ("--tokenizer", str(listed)): f"tokenizer config {listed} must hold a mapping of keys",
        ("--protocol", str(bad_protocol), "--tokenizer", "sdvae"): f"protocol {bad_protocol} is not valid YAML",
        ("--ckpt", str(tmp_path)): f"--ckpt {tmp_path} is not a file",
    }
    for args, message in cases.items():
        if "--tokenizer" not in args:
            args = ("--tokenizer", "sdvae", *args)
        if "--protocol" not in args:
            args = (*args, "--protocol", "smoke")
        proc = subprocess.run([sys.executable, "-m", "latentbench.cli", "bench", *args, "--runs_dir", str(tmp_path / "runs"),
                               "--leaderboard_dir", str(tmp_path / "lb")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr[-800:])


def test_leaderboard_refuses_a_root_without_tables(tmp_path):
    for root, message in ((tmp_path / "nope", "is not a folder"), (tmp_path, "no leaderboard tables under")):
        proc = subprocess.run([sys.executable, "-m", "latentbench.cli", "leaderboard", "--leaderboard_dir", str(root)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_an_install_without_the_checkout_says_so(monkeypatch, tmp_path):
    import latentbench.paths as paths
    from latentbench.benchmark.protocol import load_protocol

    monkeypatch.setattr(paths, "CONFIG_DIR", tmp_path / "site-packages" / "configs")
    with pytest.raises(FileNotFoundError, match="runs from its repository checkout.*pip install -e"):
        load_protocol("smoke")


def test_an_error_raised_in_the_users_own_code_keeps_its_traceback(tmp_path):
    """The one-line message alone would hide the file and line of a bug in the user's tokenizer."""
    (tmp_path / "buggy.py").write_text(
        "from torch import nn\nfrom latentbench.tokenizers import LatentSpec\n\n"
        "class Buggy(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.c = nn.Conv2d(3, 4, 4, stride=4)\n"
        "    @property\n    def latent_spec(self):\n        return LatentSpec(shape=(4, 8, 8))\n"
        "    def encode(self, x):\n        return self.c(x, x)  # the bug\n"
        "    def decode(self, z):\n        return z\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "latentbench.cli", "bench", "--tokenizer", "buggy:Buggy", "--protocol", "smoke",
                           "--runs_dir", str(tmp_path / "runs"), "--leaderboard_dir", str(tmp_path / "lb")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and f'{tmp_path / "buggy.py"}", line 12, in encode' in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("latentbench: error: ")


def test_any_error_of_the_users_own_code_is_named_in_one_line_after_its_traceback(tmp_path):
    """torch's RuntimeError (a shape mismatch) is the usual bug of a user's tokenizer; a file that does not compile
    is named with its line."""
    (tmp_path / "raising.py").write_text(
        "from torch import nn\n\n"
        "class Raising(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        raise RuntimeError('mat1 and mat2 shapes')\n")
    (tmp_path / "broken.py").write_text("class Broken(:\n    pass\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    for name, line in (("raising:Raising", "RuntimeError: mat1 and mat2 shapes (raised in your own code"),
                       ("broken:Broken", f"module 'broken' (for 'broken:Broken') does not compile: invalid syntax at "
                                         f"{tmp_path / 'broken.py'}, line 1")):
        proc = subprocess.run([sys.executable, "-m", "latentbench.cli", "bench", "--tokenizer", name, "--protocol", "smoke",
                               "--runs_dir", str(tmp_path / "runs"), "--leaderboard_dir", str(tmp_path / "lb")],
                              capture_output=True, text=True, timeout=120, env=env)
        last = proc.stderr.rstrip().splitlines()[-1]
        assert proc.returncode == 2 and last.startswith("latentbench: error: ") and line in last, proc.stderr[-800:]
    assert not (tmp_path / "lb").exists()


def test_a_failed_lookup_inside_the_suite_keeps_its_traceback(monkeypatch, capsys, tmp_path):
    """A KeyError no ``raise`` made (a bug) prints where it came from; the suite's own KeyErrors stay one line."""
    import latentbench.cli as cli

    def lookup(*args, **kwargs):
        return {}["value"]

    monkeypatch.setitem(cli.COMMANDS, "list", lookup)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["list"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" in err and 'return {}["value"]' in err
    assert "latentbench: error: KeyError: 'value' (not an error message of latentbench's" in err

    with pytest.raises(SystemExit):  # registry.py raises it over several lines
        cli.main(["bench", "--tokenizer", "nosuch", "--protocol", "smoke", "--runs_dir", str(tmp_path / "runs"),
                  "--leaderboard_dir", str(tmp_path / "lb")])
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("latentbench: error: unknown tokenizer 'nosuch'")


def test_every_boolean_option_may_stand_alone():
    """--strict, --fid, ...: taken from the subcommands' signatures, so a new bool option cannot be forgotten."""
    from latentbench.cli import BOOLEAN_FLAGS, expand_bare_flags

    assert {"--strict", "--fid", "--update", "--compile", "--json", "--trust_checkpoint"} <= BOOLEAN_FLAGS
    assert expand_bare_flags(["regress", "--strict", "--families", "sdvae"]) == ["regress", "--strict", "true", "--families", "sdvae"]
    assert expand_bare_flags(["metrics", "--fid", "false"]) == ["metrics", "--fid", "false"]


def test_the_suites_warnings_print_as_one_line(capsys):
    """Its own: ``latentbench: warning: ...``, not a Python source line; other packages' as Python prints them."""
    import latentbench.benchmark.fid as fid
    from latentbench.cli import _show_warning

    _show_warning(UserWarning("too few samples"), UserWarning, fid.__file__, 1)
    assert capsys.readouterr().err == "latentbench: warning: too few samples\n"
    _show_warning(UserWarning("from elsewhere"), UserWarning, pytest.__file__, 1)
    assert "UserWarning: from elsewhere" in capsys.readouterr().err


def test_a_run_of_two_results_prints_both_labelled_as_their_rows(tmp_path, capsys):
    """FlowMo's bench records 1a and 1b: the summary gives each, named as its table row, not only the last unlabelled."""
    import json

    from latentbench.cli import _print_result, _run_results

    def record(variant, psnr):
        return {"id": f"id-{variant}", "run_dir": str(tmp_path), "tokenizer": {"name": "flowmo-smoke", "variant": variant},
                "protocol": {"name": "smoke", "version": 3}, "metrics": {"psnr": {"value": psnr, "n": 64}},
                "wall_time_s": {"train": 1.0, "eval": 0.5}, "training": {}, "seeds": {}}

    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "train.json").write_text(json.dumps({"variants": {"1a": "a.safetensors", "1b": "b.safetensors"}}))
    for variant, psnr in (("1a", 6.1), ("1b", 7.6)):
        (tmp_path / "stages" / f"record-{variant}.json").write_text(json.dumps({"record": record(variant, psnr)}))
    results = _run_results(record("1b", 7.6))
    assert [r["id"] for r in results] == ["id-1a", "id-1b"]
    one = {**record("", 29.7), "tokenizer": {"name": "sdvae-smoke"}}
    assert _run_results(one) == [one]
    for result in results:
        _print_result(result, str(tmp_path / "lb"))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("flowmo-smoke (1a) under smoke v3: psnr 6.1 (n=64)") and out[-1] == "record id: id-1b"
    assert "flowmo-smoke (1b) under smoke v3: psnr 7.6 (n=64)" in out


def test_the_summary_says_why_a_metric_is_not_available(tmp_path, capsys):
    """"lpips n/a" alone left the reason (weights missing, and where to put them) to the table's notes."""
    from latentbench.cli import _print_result

    record = {"id": "id-x", "run_dir": str(tmp_path), "tokenizer": {"name": "sdvae-smoke"},
              "protocol": {"name": "smoke", "version": 3}, "wall_time_s": {"train": 1.0, "eval": 0.5},
              "metrics": {"psnr": {"value": 13.4, "n": 64}, "lpips": {"unavailable": "LPIPS-alex needs its weights"}}}
    _print_result(record, str(tmp_path / "lb"))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "sdvae-smoke under smoke v3: psnr 13.4 (n=64), lpips n/a"
    assert out[1] == "  lpips n/a: LPIPS-alex needs its weights"


def test_a_fid_without_its_interval_does_not_say_what_the_interval_resampled(monkeypatch, capsys):
    import latentbench.benchmark.standalone as standalone
    from latentbench.cli import main

    result = {"fid": {"value": 0.15, "n": 3, "label": "FID-domain(mnist)", "resampled": "pairs of same-named images, jointly"}}
    monkeypatch.setattr(standalone, "folder_metrics", lambda *args: result)
    main(["metrics", "--real", "a", "--fake", "b", "--fid"])
    assert capsys.readouterr().out.strip() == "FID-domain(mnist): 0.15 (n=3)"
    result["fid"]["interval"] = [0.1, 0.2]
    main(["metrics", "--real", "a", "--fake", "b", "--fid"])
    assert "; the 95% interval resamples pairs" in capsys.readouterr().out


def _ctrl_c_in_the_suites_code():
    raise KeyboardInterrupt


def _ctrl_c_in_lightnings_fit():
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        sys.exit(1)  # what Lightning's graceful shutdown of an interrupted fit ends with


def _sigterm_in_lightnings_fit():
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    raise SIGTERMException


def _sigterm_in_the_suites_code():
    import os
    import signal
    import time

    os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's time limit in evaluation, sampling, the latent cache...
    time.sleep(5)  # the signal's handler runs before this ends


def _sigterm_in_a_fit():
    """A SIGTERM in a fit of the bench's (its callbacks): raised there, as outside a fit, without Lightning's handler,
    which on several processes broadcasts to the others from inside the signal handler."""
    import logging
    import os
    import signal
    import warnings

    import lightning as L
    import torch

    from latentbench.benchmark.harness import SigtermInterrupts

    class Fit(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            if self.global_step == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return (self.w - batch).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # its lines on the machine; the stderr asserted is the command's
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, callbacks=[SigtermInterrupts()])
            trainer.fit(Fit(), torch.utils.data.DataLoader(torch.zeros(4, 1)))
    finally:
        lightning_log.setLevel(level)
        assert trainer.global_step == 1 and not trainer.received_sigterm, "Lightning's SIGTERM handler ran"


class _SigtermReachedTheTest(Exception):
    pass


def _sigterm_reached_the_test(signum, frame):
    raise _SigtermReachedTheTest("the command left SIGTERM to the handler it found (Python's: end the process at once)")


@pytest.mark.parametrize("stop, code, said", [
    (_ctrl_c_in_the_suites_code, 130, "interrupted"),
    (_ctrl_c_in_lightnings_fit, 130, "interrupted"),
    # SIGTERM (``kill``, a scheduler's time limit) inside Lightning's fit ends it with its SIGTERMException, a SystemExit
    # without a code: a smoke maetok bench killed so at its tokenizer step 10 exited 0, silently, with its training
    # unfinished (the rerun went on correctly; a job chain would have taken it as done)
    (_sigterm_in_lightnings_fit, 143, "terminated (SIGTERM)"),
    # outside a fit Python's own SIGTERM ended the process there: no line, no clean-up, exit by the signal
    (_sigterm_in_the_suites_code, 143, "terminated (SIGTERM)"),
    (_sigterm_in_a_fit, 143, "terminated (SIGTERM)"),
])
def test_an_interrupted_bench_says_how_to_go_on(stop, code, said, monkeypatch, capsys):
    import gc
    import signal

    import latentbench.benchmark.harness as harness

    monkeypatch.setattr(harness, "run_bench", lambda *args, **kwargs: stop())
    found = signal.signal(signal.SIGTERM, _sigterm_reached_the_test)  # not Python's default, which would end pytest
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["bench", "--protocol", "smoke"])
        assert signal.getsignal(signal.SIGTERM) is _sigterm_reached_the_test  # the command put back what it found
    finally:
        signal.signal(signal.SIGTERM, found)
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl-C once it has seen one
        gc.unfreeze()  # the command exits without the interpreter's last collections
    assert exit_.value.code == code
    assert capsys.readouterr().err.strip() == (
        f"latentbench: {said}. Every finished stage is kept and a training resumes from its last checkpoint "
        "(saved every fifth of its budget): rerun the same command to go on.")


def test_a_file_that_cannot_be_written_is_one_line_naming_it(monkeypatch, capsys, tmp_path):
    """A folder that cannot be written (here a file stands where one should be; permissions, a read-only or full disk
    alike): one line naming the file and the fix, exit 2; before, a traceback ending in the OSError, exit 1."""
    import latentbench.benchmark.harness as harness
    from latentbench.fsutil import atomic_write_text

    (tmp_path / "runs").write_text("")
    monkeypatch.setattr(harness, "run_bench", lambda *a, **k: atomic_write_text(tmp_path / "runs" / "config.json", "{}"))
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--protocol", "smoke"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"latentbench: error: Not a directory: {tmp_path / 'runs' / 'config.json'}: a part of that path is a file, not a "
        "folder: choose another path; the bench's finished stages are kept: rerun the same command once it is fixed\n")


def test_an_exit_without_an_interrupt_is_left_alone(monkeypatch):
    import latentbench.benchmark.harness as harness

    monkeypatch.setattr(harness, "run_bench", lambda *a, **k: sys.exit(3))
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--protocol", "smoke"])
    assert exit_.value.code == 3


def test_the_bench_handler_is_back_as_soon_as_lightning_installs_its_own():
    """Between Lightning's registration of its SIGTERM handler and ``on_train_start`` (loaders set up, a sanity check)
    a SIGTERM went through Lightning's handler, which on several processes broadcasts from inside it."""
    import signal
    import warnings

    import lightning as L
    import torch

    from latentbench import signals
    from latentbench.benchmark.harness import SigtermInterrupts

    class Fit(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (self.w - batch).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            return None

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Seen(L.Callback):
        def on_sanity_check_start(self, trainer, pl_module):  # after Lightning's registration, before on_train_start
            self.handler = signal.getsignal(signal.SIGTERM)

    seen, previous = Seen(), signals.sigterm_interrupts()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1,
                                callbacks=[SigtermInterrupts(), seen])
            data = torch.utils.data.DataLoader(torch.zeros(4, 1))
            trainer.fit(Fit(), data, data)
    finally:
        signals.restore(previous)
    assert seen.handler is signals._raise_terminated, seen.handler
