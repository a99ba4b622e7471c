"""The regression gate: tolerances from the seed spread; a move beyond one, either way, fails with the metric named."""
import pytest

from latentbench.benchmark.regress import (
    MIN_TOLERANCE,
    check,
    load_golden,
    margins,
    regress,
    write_golden,
)


def _golden():
    return {"tok-smoke": {"psnr": {"value": 20.0, "tolerance": 0.5}, "rfid": {"value": 100.0, "tolerance": 5.0}}}


def test_within_tolerance_passes_and_far_better_fails_too():
    """A large "improvement" is as suspect as a loss (originals leaking into reconstructions)."""
    assert check(_golden(), {"tok-smoke": {"psnr": 19.6, "rfid": 104.0}}) == []
    assert check(_golden(), {"tok-smoke": {"psnr": 20.4, "rfid": 96.0}}) == []
    failures = check(_golden(), {"tok-smoke": {"psnr": 25.0, "rfid": 10.0}})
    assert failures[0].startswith("tok-smoke psnr: 25 vs golden 20 (better by 5 > tolerance 0.5; if the change is "
                                  "intended, re-measure with `latentbench regress --update`)")
    assert failures[1].startswith("tok-smoke rfid: 10 vs golden 100 (better by 90")


def test_margins_show_every_checked_metric_and_the_unchecked_ones():
    lines = margins(_golden(), {"tok-smoke": {"psnr": 20.0, "rfid": 103.0, "lpips": 0.2}})
    assert lines == ["tok-smoke: psnr 20 (exact, tolerance 0.5); rfid 103 (+3, tolerance 5); "
                     "not checked (no golden value): lpips"]


@pytest.mark.parametrize("text, message", [
    ("tok-smoke: {psnr: {value: 20.0}}", "tok-smoke psnr needs a finite numeric 'tolerance' >= 0, got None"),
    ("tok-smoke: {psnr: {value: 20.0, tolerance: -1}}", "tok-smoke psnr needs a finite numeric 'tolerance' >= 0, got -1"),
    ("tok-smoke: {psnr: {value: high, tolerance: 1}}", "tok-smoke psnr needs a finite numeric 'value', got 'high'"),
    # a NaN or infinite tolerance passed every measured value: `abs(worse) > nan` is never true
    ("tok-smoke: {psnr: {value: 20.0, tolerance: .nan}}", "tok-smoke psnr needs a finite numeric 'tolerance' >= 0, got nan"),
    ("tok-smoke: {psnr: {value: 20.0, tolerance: .inf}}", "tok-smoke psnr needs a finite numeric 'tolerance' >= 0, got inf"),
    ("tok-smoke: {psnr: {value: .nan, tolerance: 1}}", "tok-smoke psnr needs a finite numeric 'value', got nan"),
    ("tok-smoke: {psnrr: {value: 1, tolerance: 1}}", "tok-smoke has an unknown metric 'psnrr'"),
    ("tok-smoke: 3", "row 'tok-smoke' holds no metrics"),
    ("[1, 2]", "holds no rows"),
    ("tok-smoke: {psnr: [", "is not valid YAML"),
    # a row name YAML reads as no string stopped the gate with an AttributeError's traceback ('int' has no startswith)
    ("123: {psnr: {value: 20.0, tolerance: 1}}", "row 123 is not a row name (YAML read it as int)"),
    ("null: {psnr: {value: 20.0, tolerance: 1}}", "row None is not a row name (YAML read it as NoneType)"),
    # PyYAML reads 1e-2 (no dot) as a string: refused with no word of why
    ("tok-smoke: {psnr: {value: 20.0, tolerance: 1e-2}}", "got '1e-2' (a string: YAML reads a number without a dot as "
                                                          "one; write 1.0e-2)"),
    ("tok-smoke: {psnr: {value: '20.0', tolerance: 1}}", "got '20.0' (a string: write the number without quotes)"),
    # a key given twice was taken from its last occurrence, silently
    ("tok-smoke: {psnr: {value: 20.0, tolerance: 1}}\ntok-smoke: {psnr: {value: 2.0, tolerance: 1}}",
     "'tok-smoke' is given twice in one mapping"),
    ("tok-smoke: {psnr: {value: 20.0, tolerance: 1, value: 2.0}}", "'value' is given twice in one mapping"),
])
def test_a_damaged_golden_file_is_refused_before_any_bench(tmp_path, text, message):
    path = tmp_path / "golden.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="regress --update") as e:
        regress(golden_path=path, only=["sdvae"], log=lambda s: None)  # would bench sdvae if the file were read late
    assert message in str(e.value)


def test_a_golden_row_no_bench_writes_is_refused_before_any_bench(tmp_path):
    """A misspelt row name was reported only after every bench had run ("no row (the bench did not produce it)")."""
    golden = load_golden()
    golden["sdvae-smok"] = golden.pop("sdvae-smoke")
    path = write_golden(golden, [0, 1, 2], tmp_path / "typo.yaml")
    with pytest.raises(ValueError, match=r"row\(s\) \['sdvae-smok'\] are no smoke bench's .*regress --update"):
        regress(golden_path=path, only=["sdvae"], log=lambda s: None)  # would bench sdvae if checked late


def test_worse_beyond_tolerance_names_tokenizer_and_metric():
    failures = check(_golden(), {"tok-smoke": {"psnr": 19.0, "rfid": 106.0}})
    assert len(failures) == 2
    assert failures[0].startswith("tok-smoke psnr: 19 vs golden 20") and "tolerance 0.5" in failures[0]
    assert failures[1].startswith("tok-smoke rfid: 106 vs golden 100")


def test_the_probe_may_move_by_one_eval_image():
    """An accuracy over n images moves in steps of 1/n: one image flipped by another CPU's kernels is not a regression."""
    golden = {"tok-smoke": {"probe": {"value": 63 / 64, "tolerance": 0.001}, "psnr": {"value": 20.0, "tolerance": 0.001}}}
    one_less = {"tok-smoke": {"probe": 62 / 64, "psnr": 20.0}}
    assert check(golden, one_less, {"tok-smoke": {"probe": 64, "psnr": 64}}) == []
    (failure,) = check(golden, {"tok-smoke": {"probe": 61 / 64, "psnr": 20.0}}, {"tok-smoke": {"probe": 64, "psnr": 64}})
    assert failure.startswith("tok-smoke probe: 0.953125 vs golden 0.984375") and "tolerance 0.01562" in failure
    assert check(golden, one_less)[0].startswith("tok-smoke probe")  # without counts: the golden tolerance alone
    assert check(golden, {"tok-smoke": {"probe": 63 / 64, "psnr": 19.99}}, {"tok-smoke": {"psnr": 64}})  # psnr: no floor


def test_a_nan_measured_value_fails():
    """`abs(nan) > tolerance` is False: a metric that came out NaN passed the gate."""
    failures = check(_golden(), {"tok-smoke": {"psnr": float("nan"), "rfid": 100.0}})
    assert failures == ["tok-smoke psnr: nan vs golden 20 (not a number > tolerance 0.5)"]


def test_missing_rows_and_metrics_fail():
    assert check(_golden(), {}) == ["tok-smoke: no row (the bench did not produce it)"]
    assert check(_golden(), {"tok-smoke": {"psnr": 20.0}}) == ["tok-smoke rfid: missing (golden 100)"]


def test_bench_rows_hands_on_the_bench_s_reason_for_a_missing_metric(tmp_path, monkeypatch):
    """``bench_rows`` reads the records the smoke bench wrote (here one written by a stand-in for the bench)."""
    import json

    import latentbench.benchmark.harness as harness
    from latentbench.benchmark.regress import bench_rows

    def bench(family, protocol, leaderboard_dir, **_):
        table = leaderboard_dir / protocol / "v1"
        table.mkdir(parents=True)
        metrics = {"psnr": {"value": 20.0, "n": 8}, "lpips": {"unavailable": "LPIPS-alex needs weights"}}
        (table / "results.jsonl").write_text(json.dumps({"id": "r1", "tokenizer": {"name": "tok-smoke"}, "metrics": metrics}) + "\n")

    monkeypatch.setattr(harness, "run_bench", bench)
    counts, unavailable = {}, {}
    rows = bench_rows("tok", 0, tmp_path, lambda s: None, counts=counts, unavailable=unavailable)
    assert rows == {"tok-smoke": {"psnr": 20.0}} and counts == {"tok-smoke": {"psnr": 8}}
    assert unavailable == {"tok-smoke": {"lpips": "LPIPS-alex needs weights"}}


def test_a_missing_metric_says_why_the_bench_did_not_measure_it():
    """A golden lpips on a machine without LPIPS's weights failed as "missing" alone; the bench had said why."""
    why = {"tok-smoke": {"rfid": "Inception weights are not on this machine: download ..."}}
    assert check(_golden(), {"tok-smoke": {"psnr": 20.0}}, unavailable=why) == [
        "tok-smoke rfid: missing (golden 100): Inception weights are not on this machine: download ..."]


def test_a_measured_row_without_golden_values_fails():
    measured = {"tok-smoke": {"psnr": 20.0, "rfid": 100.0}, "new-smoke": {"psnr": 30.0}}
    assert check(_golden(), measured) == ["new-smoke: no golden values (add them with `latentbench regress --update --families ...`)"]


def test_updating_some_families_keeps_the_others(tmp_path, monkeypatch):
    import latentbench.benchmark.regress as regress_module

    path = write_golden({**_golden(), "sdvae-smoke": {"psnr": {"value": 1.0, "tolerance": 0.1}}}, [0, 1, 2], tmp_path / "g.yaml")
    monkeypatch.setattr(regress_module, "measure_golden",  # no benches: the merge is what is tested
                        lambda seeds, root, only, log, used: {"sdvae-smoke": {"psnr": {"value": 2.0, "tolerance": 0.2}}})
    regress(golden_path=path, update=True, only=["sdvae"], log=lambda s: None)
    golden = load_golden(path)
    assert golden["sdvae-smoke"]["psnr"]["value"] == 2.0 and golden["tok-smoke"] == _golden()["tok-smoke"]
    with pytest.raises(ValueError, match="seeds must start with 0"):
        regress(golden_path=path, update=True, seeds=[1, 2], only=["sdvae"], log=lambda s: None)


def test_a_family_owns_its_rows_by_name_not_by_prefix(tmp_path, monkeypatch):
    """`--families sdvae --update` replaced every row starting with "sdvae", so a family registered as ``sdvae2`` lost
    its golden values (and a check of sdvae alone checked them too); now a family owns its smoke tokenizer's row
    and that row with a result's variant."""
    import latentbench.benchmark.regress as regress_module

    other = {"psnr": {"value": 5.0, "tolerance": 0.5}}
    path = write_golden({"sdvae-smoke": {"psnr": {"value": 1.0, "tolerance": 0.1}}, "sdvae2-smoke": other,
                         "sdvae2-smoke (1b)": other}, [0, 1, 2], tmp_path / "g.yaml")
    monkeypatch.setattr(regress_module, "measure_golden",
                        lambda seeds, root, only, log, used: {"sdvae-smoke": {"psnr": {"value": 2.0, "tolerance": 0.2}}})
    regress(golden_path=path, update=True, only=["sdvae"], log=lambda s: None)
    assert load_golden(path) == {"sdvae-smoke": {"psnr": {"value": 2.0, "tolerance": 0.2}}, "sdvae2-smoke": other,
                                 "sdvae2-smoke (1b)": other}
    assert regress_module.row_names(["flowmo", "rae"]) == ["flowmo-smoke", "rae-smoke"]
    assert regress_module._row_of("flowmo-smoke (1b)", ["flowmo-smoke"]) and not regress_module._row_of("flowmo-smoke", ["rae-smoke"])


def test_golden_file_round_trip(tmp_path):
    path = write_golden(_golden(), [0, 1, 2], tmp_path / "g.yaml")
    assert load_golden(path) == _golden()
    assert "2 x (max - min) over seeds [0, 1, 2]" in path.read_text()
    with pytest.raises(FileNotFoundError, match="regress --update"):
        load_golden(tmp_path / "none.yaml")


def test_committed_golden_covers_every_family_with_measured_tolerances():
    import latentbench.benchmark.regress as regress_module
    from latentbench.benchmark.regress import families

    golden = load_golden()
    for family in families():
        rows = [name for name in golden if regress_module._row_of(name, regress_module.row_names([family]))]
        assert rows, f"no golden row for {family}"
        for name in rows:
            for g in golden[name].values():
                spread = max(g["seeds"].values()) - min(g["seeds"].values())
                assert g["tolerance"] == pytest.approx(max(2 * spread, MIN_TOLERANCE * abs(g["value"])))


@pytest.mark.slow
def test_worsened_golden_value_makes_the_gate_fail(tmp_path):
    """The real gate on sdvae's smoke bench: passes on the committed values, fails on a golden PSNR raised beyond tolerance."""
    golden = load_golden()
    assert regress(only=["sdvae"], log=lambda s: None) == []
    golden["sdvae-smoke"]["psnr"]["value"] += golden["sdvae-smoke"]["psnr"]["tolerance"] + 0.5
    path = write_golden(golden, [0, 1, 2], tmp_path / "worse.yaml")
    failures = regress(golden_path=path, only=["sdvae"], log=lambda s: None)
    assert len(failures) == 1 and failures[0].startswith("sdvae-smoke psnr:")


def test_strict_allows_float_rounding_only():
    """For a change meant to move no number: the benches reproduce exactly on the machine the values came from."""
    golden = _golden()
    assert check(golden, {"tok-smoke": {"psnr": 20.0 + 1e-12, "rfid": 100.0}}, strict=True) == []
    (failure,) = check(golden, {"tok-smoke": {"psnr": 20.001, "rfid": 100.0}}, strict=True)
    assert failure.startswith("tok-smoke psnr: 20.001 vs golden 20 (better by 0.001 > tolerance 2e-08")
    assert check(golden, {"tok-smoke": {"psnr": 20.001, "rfid": 100.0}}) == []  # within the seed-spread tolerance


def _own_tokenizer(tmp_path):
    """A tokenizer YAML of the user's own (a shipped class with its own arguments): its row is 'sdvae-smoke [mine]'."""
    path = tmp_path / "mine.yaml"
    path.write_text("name: sdvae-smoke\n")
    return str(path)


def test_a_user_s_own_tokenizer_is_gated_against_a_golden_file_of_theirs(tmp_path, monkeypatch):
    """`regress --tokenizers mine.yaml --golden g.yaml`: the gate benches the user's tokenizer under smoke (not the
    suite's families), --update writes its row beside what the file holds, and a check fails naming its metric."""
    import latentbench.benchmark.regress as regress_module

    mine = _own_tokenizer(tmp_path)
    benched = []

    def bench(target, seed, root, log, used, counts=None, unavailable=None):
        benched.append((target, seed))
        return {"sdvae-smoke [mine]": {"psnr": 20.0 + seed}}

    monkeypatch.setattr(regress_module, "bench_rows", bench)
    path = write_golden({"sdvae-smoke": {"psnr": {"value": 1.0, "tolerance": 0.1}}}, [0, 1, 2], tmp_path / "g.yaml")
    regress(golden_path=path, update=True, own=[mine], log=lambda s: None)
    golden = load_golden(path)
    assert benched == [(mine, 0), (mine, 1), (mine, 2)] and golden["sdvae-smoke"]["psnr"]["value"] == 1.0
    assert golden["sdvae-smoke [mine]"]["psnr"]["value"] == 20.0  # seed 0's; tolerance from the spread of 2
    benched.clear()
    assert regress(golden_path=path, own=[mine], log=lambda s: None) == [] and benched == [(mine, 0)]
    monkeypatch.setattr(regress_module, "bench_rows", lambda *a, **k: {"sdvae-smoke [mine]": {"psnr": 10.0}})
    [failure] = regress(golden_path=path, own=[mine], log=lambda s: None)
    assert failure.startswith("sdvae-smoke [mine] psnr: 10 vs golden 20 (worse by 10")


def test_own_tokenizers_need_a_golden_file_and_a_typo_stops_the_gate_before_any_bench(tmp_path, monkeypatch):
    import latentbench.benchmark.regress as regress_module

    monkeypatch.setattr(regress_module, "bench_rows", lambda *a, **k: pytest.fail("a bench ran"))
    with pytest.raises(ValueError, match=r"give --golden FILE, a golden file of your own"):
        regress(own=[_own_tokenizer(tmp_path)], log=lambda s: None)
    with pytest.raises(FileNotFoundError, match="tokenizer config .*missing.yaml does not exist"):
        regress(golden_path=tmp_path / "g.yaml", own=[str(tmp_path / "missing.yaml")], log=lambda s: None)
    with pytest.raises(ValueError, match=r"a tokenizer of your own is given with --tokenizers"):
        regress(golden_path=tmp_path / "g.yaml", only=["mine.yaml"], log=lambda s: None)
