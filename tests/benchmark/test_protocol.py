"""Protocol and tokenizer config files are checked when they are loaded: a typo fails at once, naming the field, not after training."""
import subprocess
import sys

import pytest
import yaml

from latentbench.benchmark.protocol import PROTOCOL_DIR, available_protocols, load_protocol


def _write(tmp_path, edit):
    raw = yaml.safe_load((PROTOCOL_DIR / "smoke.yaml").read_text())
    edit(raw)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _set(section, key, value):
    def edit(raw):
        (raw[section] if section else raw)[key] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    # values YAML types correctly but that no stage accepts; each used to fail only at its stage, after training
    (_set("generator", "precision", "fp16"), "generator.precision must be one of 32-true, bf16-mixed, "),
    (_set("train", "precision", "bf16"), "train.precision must be one of"),
    (_set("eval", "probe_pooling", "max"), "eval.probe_pooling must be one of flatten, mean, got 'max'"),
    (_set("eval", "fid_bootstrap", -1), "eval.fid_bootstrap must be 0 (no interval) or at least 10 replicates, got -1"),
    (_set("generator", "fid_bootstrap", 3), "generator.fid_bootstrap must be 0 (no interval) or at least 10 replicates, got 3"),
    (_set("eval", "lpips_net", "squeeze"), "eval.lpips_net must be one of alex, vgg, got 'squeeze'"),
    (_set("generator", "normalization", "layer"), "generator.normalization must be one of channel, element, scaling, none"),
    (_set("generator", "target_gfid", -3.0), "generator.target_gfid must be a positive number, 'baseline' or null"),
    (_set("eval", "batch_size", 0), "eval.batch_size must be a positive integer, got 0"),
    (_set("data", "num_eval", 0), "data.num_eval must be a positive integer or null, got 0"),
    (_set("data", "source", ""), "data.source must be a non-empty string"),
    # a source without its syntax used to pass the load and stop the data scan, in twelve lines naming no file
    (_set("data", "source", "/data/mine"), "data.source: unknown data source '/data/mine' (did you mean "
                                           "'imagefolder:/data/mine'?): a source is one of mnist,"),
    (_set("data", "source", "mnsit"), "data.source: unknown data source 'mnsit' (did you mean 'mnist'?)"),
    (_set("data", "source", "shapes:10"), "data.source: bad shapes source 'shapes:10'"),
    (_set(None, "seed", -1), "seed must be in [0, 2^32), got -1"),
    (_set(None, "name", "../up"), "name must be letters, digits"),
    # values that int() used to coerce silently
    (_set("train", "max_steps", 20.5), "train.max_steps must be an integer, got 20.5"),
    (_set(None, "version", 2.5), "version must be an integer, got 2.5"),
    (_set(None, "version", "3"), "version must be an integer, got '3'"),
    (_set("train", "batch_size", True), "train.batch_size must be an integer, got True"),
    (_set("eval", "probe_train", "all"), "eval.probe_train must be an integer or null, got 'all'"),
    # keys no stage reads
    (_set(None, "generatr", {"max_steps": 0}), "unknown keys ['generatr']"),
    (_set("data", "num_evals", 10), "data has unknown keys ['num_evals']"),
    (_set(None, "eval", [1, 2]), "eval must be a mapping"),
    (lambda raw: raw.pop("data"), "it has no 'data'"),
])
def test_a_bad_field_is_named_when_the_protocol_is_loaded(tmp_path, edit, message):
    path = _write(tmp_path, edit)
    with pytest.raises(ValueError, match="protocol file .* is malformed: ") as e:
        load_protocol(str(path))
    assert message in str(e.value)


def test_shipped_protocols_load_and_a_float_field_takes_an_integer(tmp_path):
    assert {p: load_protocol(p).id for p in available_protocols()} == {
        "ci": "ci/v2", "imagenet256": "imagenet256/v2", "smoke": "smoke/v3"}
    assert load_protocol(str(_write(tmp_path, _set("generator", "target_gfid", 900)))).generator.target_gfid == 900


def test_a_missing_protocol_file_is_said_to_be_missing_beside_the_shipped_names(tmp_path):
    shipped = ", ".join(available_protocols())
    with pytest.raises(FileNotFoundError) as err:
        load_protocol(str(tmp_path / "nosuch.yaml"))
    assert str(err.value) == f"protocol file {tmp_path / 'nosuch.yaml'} does not exist. Shipped protocols: {shipped}"
    with pytest.raises(FileNotFoundError, match=f"no protocol 'nope': expected .*nope.yaml. Shipped protocols: {shipped}"):
        load_protocol("nope")


@pytest.mark.parametrize("given", ["smok", "ci.yaml", "configs/protocols/smoke", "nosuch/smoke.yml"])
def test_a_missing_protocol_named_like_a_shipped_one_says_which(tmp_path, monkeypatch, given):
    """A shipped name given as a file (ci.yaml from elsewhere than configs/protocols) or with a typo."""
    monkeypatch.chdir(tmp_path)
    meant = "ci" if given == "ci.yaml" else "smoke"
    with pytest.raises(FileNotFoundError, match=f"\\(did you mean --protocol {meant}\\?\\)\\. Shipped protocols: "):
        load_protocol(given)


def test_a_bad_protocol_stops_the_bench_before_anything_is_written(tmp_path):
    path = _write(tmp_path, _set("generator", "precision", "fp16"))
    proc = subprocess.run([sys.executable, "-m", "latentbench.cli", "bench", "--tokenizer", "sdvae", "--protocol", str(path),
                           "--runs_dir", str(tmp_path / "runs"), "--leaderboard_dir", str(tmp_path / "lb")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "generator.precision must be one of" in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "lb").exists()


@pytest.mark.parametrize("value, message", [
    ("dit-cii", "the protocol's generator.continuous: unknown generator 'dit-cii'. Did you mean dit-ci"),
    ("missing.yaml", "the protocol's generator.continuous: generator config missing.yaml does not exist"),
])
def test_an_unknown_generator_stops_the_bench_before_training(tmp_path, value, message):
    from latentbench.benchmark.harness import run_bench

    path = _write(tmp_path, _set("generator", "continuous", value))
    with pytest.raises((KeyError, FileNotFoundError)) as e:
        run_bench("sdvae", str(path), runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda m: None)
    assert message in str(e.value.args[0])
    assert not (tmp_path / "runs").exists()


def test_shipped_protocols_pin_the_generator_configs_their_rows_were_measured_with():
    """Each shipped protocol pins both generators it names, and the pins hold for the configs in this checkout; the
    ci/v2 table's rows recorded the generator configs they trained, and each hashes to its pin."""
    import json

    from latentbench.benchmark.generation import check_generators
    from latentbench.generators.module import GeneratorConfig, resolve_generator
    from latentbench.paths import LEADERBOARD_DIR

    for name in available_protocols():
        proto = load_protocol(name)
        named = {proto.generator.continuous, proto.generator.discrete}
        assert set(proto.generator_configs) == named, name
        assert {g: resolve_generator(g).sha256 for g in named} == proto.generator_configs
        check_generators(proto)
    pins = load_protocol("ci").generator_configs
    rows = [json.loads(line) for line in (LEADERBOARD_DIR / "ci" / "v2" / "results.jsonl").read_text().splitlines()]
    recorded = [GeneratorConfig(**{k: v for k, v in r["generation"]["generator"].items() if k in
                                   ("name", "init_args", "transport", "module_args")}) for r in rows]
    assert len(recorded) == len(rows) > 10
    assert {g.sha256 for g in recorded} == set(pins.values())


def test_pins_are_left_out_of_the_fingerprint_and_must_be_digests(tmp_path):
    unpinned = load_protocol(str(_write(tmp_path, lambda raw: raw.pop("generator_configs"))))
    assert unpinned.generator_configs == {} and unpinned.fingerprint == load_protocol("smoke").fingerprint
    with pytest.raises(ValueError, match="generator_configs must be a mapping of generator config names to sha256"):
        load_protocol(str(_write(tmp_path, _set("generator_configs", "dit-smoke", "abc"))))


def test_an_edited_generator_config_stops_the_bench_before_anything_is_written(tmp_path, monkeypatch):
    """A generator config edited since its protocol pinned it would land rows of another generator in the table: the
    bench stops before its first stage, naming the file, both digests and the two ways on; an unpinned protocol
    (one's own) runs it; a pinned protocol that does not pin a generator it names says what to add."""
    import latentbench.generators.module as module
    from latentbench.benchmark.harness import check_before_launch, run_bench
    from latentbench.generators.module import resolve_generator

    shipped = module.GENERATOR_CONFIG_DIR
    configs = tmp_path / "generators"
    configs.mkdir()
    for f in shipped.glob("*.yaml"):
        (configs / f.name).write_text(f.read_text())
    monkeypatch.setattr(module, "GENERATOR_CONFIG_DIR", configs)
    pinned = resolve_generator("dit-smoke").sha256
    assert pinned == load_protocol("smoke").generator_configs["dit-smoke"]
    (configs / "dit-smoke.yaml").write_text((configs / "dit-smoke.yaml").read_text() + "\n# a comment changes nothing\n")
    check_before_launch("sdvae", "smoke", None, None, None, 1)
    raw = yaml.safe_load((configs / "dit-smoke.yaml").read_text())
    raw.setdefault("transport", {})["sample_steps"] = 7
    (configs / "dit-smoke.yaml").write_text(yaml.safe_dump(raw))
    edited = resolve_generator("dit-smoke").sha256
    for check in (lambda: check_before_launch("sdvae", "smoke", None, None, None, 1),
                  lambda: run_bench("sdvae", "smoke", runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "lb", log=lambda m: None)):
        with pytest.raises(ValueError) as e:
            check()
        message = str(e.value)
        assert message.startswith(f"{configs / 'dit-smoke.yaml'} (generator.continuous of protocol smoke/v3) is not the config "
                                  "this protocol's rows were measured with")
        assert f"hashes to {edited[:12]}, the protocol's generator_configs pins {pinned[:12]}" in message
        assert f"git checkout {configs / 'dit-smoke.yaml'}" in message and f"pin `dit-smoke: {edited}`" in message
    assert not (tmp_path / "runs").exists() and not (tmp_path / "lb").exists()
    check_before_launch("sdvae", str(_write(tmp_path, lambda raw: raw.pop("generator_configs"))), None, None, None, 1)
    with pytest.raises(ValueError, match=f"has no pin in the protocol's generator_configs, which pins \\['maskgit-smoke'\\]: "
                                         f"add `dit-smoke: {edited}` there"):
        check_before_launch("sdvae", str(_write(tmp_path, lambda raw: raw["generator_configs"].pop("dit-smoke"))), None, None, None, 1)


@pytest.mark.parametrize("raw, message", [
    ({"name": "sdvae-ci", "init_args": {"latent_channels": "four"}},
     'init_args do not fit latentbench.tokenizers.sdvae.SDVAE: Parser key "init_args.latent_channels": Expected a <class \'int\'>. '
     "Got value: four. It takes: block_out_channels, latent_channels,"),
    ({"name": "sdvae-ci", "init_args": {"latent_chanels": 4}}, "does not accept option 'latent_chanels'"),
    ({"name": "rae-ci", "module": "latentbench.tokenizers.rae_module:RAEModule", "module_args": {"warmup_step": 5}},
     "module_args do not fit latentbench.tokenizers.rae_module.RAEModule: Group 'module_args' does not accept option 'warmup_step'"),
    ({"name": "sdvae-ci", "module_args": {"max_steps": 5}}, "(the protocol sets the training budget)"),
    ({"name": "sdvae-ci", "init_args": [4]}, "init_args must be a mapping of argument names to values, got [4]"),
    ({"name": "sdvae-ci", "class_path": "latentbench.tokenizers.sdvae:SDVAE"}, "has both 'name' (sdvae-ci) and 'class_path'"),
    # a misspelt name or class_path is named as the unknown key it is, not reported as a missing 'name'
    ({"clas_path": "latentbench.tokenizers.sdvae:SDVAE"}, "has unknown keys ['clas_path'] (allowed: name or class_path"),
    ({"nmae": "sdvae-ci", "init_args": {}}, "has unknown keys ['nmae']"),
    ({"init_args": {"latent_channels": 4}}, "needs 'name' (a registered tokenizer) or 'class_path'"),
])
def test_a_tokenizer_config_that_does_not_fit_its_class_is_refused_when_resolved(tmp_path, raw, message):
    from latentbench.benchmark.spec import resolve_tokenizer

    path = tmp_path / "tok.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError) as e:
        resolve_tokenizer(str(path), load_protocol("ci"))
    assert message in str(e.value)


def test_every_shipped_tokenizer_config_fits_its_class():
    from latentbench.benchmark.spec import resolve_tokenizer

    configs = sorted(PROTOCOL_DIR.parent.glob("tokenizers/**/*.yaml"))
    assert len(configs) >= 15
    for path in configs:
        spec = resolve_tokenizer(str(path), load_protocol("ci"))
        assert spec.init_args or spec.module_args, path  # each sets something, and it was checked


def test_a_float_yaml_reads_as_a_string_is_passed_on_as_the_annotated_number(tmp_path):
    """PyYAML reads 1e-3 (no dot) as the string '1e-3'; the module would compare it with floats in training."""
    from latentbench.benchmark.spec import resolve_tokenizer

    path = tmp_path / "tok.yaml"
    path.write_text("name: sdvae-ci\ninit_args: {latent_channels: 4}\nmodule_args: {lr: 1e-3, rec_loss: l1}\n")
    spec = resolve_tokenizer(str(path), load_protocol("ci"))
    assert spec.module_args == {"lr": 0.001, "rec_loss": "l1"} and isinstance(spec.module_args["lr"], float)
    assert spec.init_args == {"latent_channels": 4}


def test_numbers_read_as_strings_inside_mappings_are_converted_too(tmp_path):
    from latentbench.benchmark.spec import resolve_tokenizer

    path = tmp_path / "tok.yaml"
    path.write_text("name: sdvae-ci\nmodule_args: {loss_weights: {l1: 1e-3, kl: 1.0e-6}, rec_loss: l1}\n")
    spec = resolve_tokenizer(str(path), load_protocol("ci"))
    assert spec.module_args == {"loss_weights": {"l1": 0.001, "kl": 1e-6}, "rec_loss": "l1"}
    assert isinstance(spec.module_args["loss_weights"]["l1"], float)
