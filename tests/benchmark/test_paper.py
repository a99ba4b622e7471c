"""Paper reference rows and `latentbench compare`."""
import json
import re

import pytest

from latentbench.benchmark.paper import (
    METRIC_KEYS,
    PAPER_CSV,
    PAPER_DIR,
    compare,
    format_comparison,
    load_paper_rows,
    render_paper_readme,
)
from latentbench.cli import main


def test_csv_loads_every_line_with_known_metrics():
    rows = load_paper_rows()
    assert len(rows) == len(PAPER_CSV.read_text().strip().splitlines()) - 1
    assert {r.metric for r in rows} <= set(METRIC_KEYS) and {r.protocol for r in rows} == {"imagenet256", "imagenet512"}


def test_committed_readme_is_a_fresh_render():
    rows = load_paper_rows()
    assert render_paper_readme(rows) == render_paper_readme(rows)
    assert (PAPER_DIR / "README.md").read_text() == render_paper_readme(rows) + "\n"


def test_malformed_csv_names_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(PAPER_CSV.read_text().splitlines()[0] + "\nA,T,r,256,x,PSNR,not-a-number,c,paper,,\n")
    with pytest.raises(ValueError, match="line 2 is malformed"):
        load_paper_rows(path)


def _record(protocol="imagenet256", name="maetok-b-128"):
    return {"id": "ab" * 16, "protocol": {"name": protocol, "version": 2, "description": "d"}, "tokenizer": {"name": name},
            "metrics": {"rfid": {"value": 0.50, "n": 50000, "interval": [0.45, 0.55]},  # MAETok paper: 0.48, inside
                        "psnr": {"value": 22.0, "n": 50000, "interval": [21.9, 22.1]},  # paper 23.61, outside
                        "lpips": {"unavailable": "no LPIPS weights"}}}


def test_compare_gives_deltas_within_flags_and_handles_missing_metrics():
    entries = compare(_record(), load_paper_rows())
    by = {(e["row"], e["metric"]): e for e in entries}
    rfid, psnr = by[("MAETok", "rFID")], by[("MAETok", "PSNR")]
    assert rfid["delta"] == pytest.approx(0.50 - 0.48) and rfid["within"] is True
    assert psnr["delta"] == pytest.approx(22.0 - 23.61) and psnr["within"] is False
    assert any(e["metric"] == "gFID" for e in entries)
    assert all(e["missing"] == "not measured" for e in entries if e["metric"] == "gFID")
    everything = compare(_record(), load_paper_rows(), family="all")
    lpips = [e for e in everything if e["metric"] == "LPIPS"]
    assert lpips and all(e["missing"] == "no LPIPS weights" for e in lpips)
    text = format_comparison(everything)
    assert "MAETok Table 4: MAETok" in text and "no LPIPS weights" in text and "not measured" in text


def test_cross_protocol_comparison_is_refused():
    with pytest.raises(ValueError, match="refusing to compare a `ci` result.*--protocol imagenet256"):
        compare(_record("ci"), load_paper_rows())


def test_cli_compare(tmp_path, capsys):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(json.dumps(_record()) + "\n")
    bad.write_text(json.dumps(_record("ci")) + "\n")
    main(["compare", "--result", str(good)])
    assert "MAETok Table 4: MAETok" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--result", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("latentbench: error: refusing to compare")


def test_compare_table_shows_each_rows_condition():
    text = format_comparison(compare(_record(), load_paper_rows(), family="all"))
    assert "condition" in text.splitlines()[0]
    assert any("no guidance" in line and "gFID" in line for line in text.splitlines())


def test_compare_names_what_it_was_given_when_it_is_not_a_record(tmp_path, capsys):
    stage = tmp_path / "eval.json"
    stage.write_text(json.dumps({"metrics": {}, "wall_time_s": 1.0}))
    conflicted = tmp_path / "results.jsonl"
    conflicted.write_text(json.dumps(_record()) + "\n<<<<<<< HEAD\n" + json.dumps(_record()) + "\n=======\n>>>>>>> b\n")
    for path, says in ((stage, r"is not a result record \(a stage's result\?"),
                       (conflicted, "results.jsonl line 2 is not a JSON record .*merge-conflict marker")):
        with pytest.raises(SystemExit) as exit_info:
            main(["compare", "--result", str(path)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert re.search(says, err) and str(path) in err, err


def test_compare_json_is_strict_json(tmp_path, capsys):
    record = _record()
    record["metrics"]["psnr"] = {"value": float("inf"), "n": 3}  # a standalone record could hold one
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record) + "\n")
    main(["compare", "--result", str(path), "--json"])
    entries = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert any(e["ours"] == "inf" for e in entries)


def test_compare_finds_an_id_in_a_benchs_own_leaderboard_dir(tmp_path, capsys):
    table = tmp_path / "lb" / "imagenet256" / "v2"
    table.mkdir(parents=True)
    (table / "results.jsonl").write_text(json.dumps(_record()) + "\n")
    main(["compare", "--result", "abab", "--leaderboard_dir", str(tmp_path / "lb")])
    assert "MAETok Table 4: MAETok" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # a mistyped folder: said so, not "no records with id 'abab' under"
        main(["compare", "--result", "abab", "--leaderboard_dir", str(tmp_path / "lbb")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"latentbench: error: --leaderboard_dir {tmp_path / 'lbb'} is not a folder")
    with pytest.raises(SystemExit) as exit_info:  # an id of a bench that wrote elsewhere, looked up in the checkout's
        main(["compare", "--result", "abab-elsewhere"])  # (not hex: no committed row's id starts so)
    assert exit_info.value.code == 2
    assert ("no records with id 'abab-elsewhere' under " in (err := capsys.readouterr().err)
            and "(a bench given --leaderboard_dir DIR wrote its row under DIR: pass compare the same --leaderboard_dir)" in err)


def test_a_result_is_set_beside_its_own_configs_rows_first():
    """rae-dinov2-b against the ViT-B decoder's and the DINOv2-B encoder's rows, not every RAE-paper row."""
    record = _record(name="rae-dinov2-b")
    own = compare(record, load_paper_rows())
    assert {e["row"] for e in own} == {"RAE DINOv2-B ViT-B decoder", "RAE DINOv2-B encoder"}
    family = compare(record, load_paper_rows(), family="RAE")
    assert len(family) > len(own) and any(e["row"] == "RAE MAE-B encoder" for e in family)
    # every row's config names a registered tokenizer
    from latentbench.tokenizers import TOKENIZERS

    assert {c for r in load_paper_rows() for c in r.configs} <= set(TOKENIZERS.names())


def test_an_unknown_family_is_an_error():
    with pytest.raises(ValueError, match="no `imagenet256` paper rows match --family 'foo': choose one of MAETok, FlowMo, RAE"):
        compare(_record(), load_paper_rows(), family="foo")


def test_a_record_not_measured_under_the_papers_protocol_is_refused():
    """The protocol's name alone does not make a result comparable."""
    from latentbench.benchmark.protocol import load_protocol

    small = _record()
    small["data"] = {"eval": {"resolution": 32}}
    with pytest.raises(ValueError, match="eval images were 32x32, the papers' 256x256"):
        compare(small, load_paper_rows())
    shipped = load_protocol("imagenet256")
    edited = _record()
    edited["protocol"].update(version=shipped.version, fingerprint="0" * 64)
    with pytest.raises(ValueError, match="measured under an edited protocol file"):
        compare(edited, load_paper_rows())
    edited["protocol"]["fingerprint"] = shipped.fingerprint
    assert compare(edited, load_paper_rows())
    for version in (shipped.version + 1, shipped.version - 1):  # an older number holds no fingerprint to check either
        edited["protocol"]["version"] = version
        with pytest.raises(ValueError, match=f"v{version} is not the shipped version"):
            compare(edited, load_paper_rows())
    other = _record("imagenet512")  # paper rows exist, no protocol is shipped: nothing to hold it to
    other["protocol"]["fingerprint"] = "0" * 64
    assert compare(other, load_paper_rows(), family="all")


def test_the_comparison_names_the_result_and_keeps_large_numbers_plain(tmp_path, capsys):
    record = _record()
    record["metrics"]["gfid"] = {"value": 1699.4, "n": 500, "interval": [1643.2, 1741.9]}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record) + "\n")
    main(["compare", "--result", str(path)])
    out = capsys.readouterr().out
    assert out.startswith(f"maetok-b-128 (record {record['id'][:12]}, imagenet256 v2) beside the papers' rows of this config")
    assert "1699 [1643, 1742]" in out and "e+03" not in out


def test_probe_figures_are_shown_but_not_judged():
    """The papers' linear probes ran on the full train set; the suite's probe is another protocol."""
    record = _record(name="rae-dinov2-b")
    record["metrics"]["probe"] = {"value": 0.80, "n": 50000, "interval": [0.79, 0.81]}
    (probe,) = [e for e in compare(record, load_paper_rows()) if e["metric"] == "linear probe top-1"]
    assert probe["ours"] == pytest.approx(80.0) and probe["within"] is None and probe["not_comparable"]
    text = format_comparison([probe])
    assert "not comparable: other probe protocol" in text and "50k-image subset" in text


def test_an_fid_measured_with_other_weights_is_shown_but_not_judged():
    """Inception weights other than the published ones label the metric with their hash: not the papers' FID."""
    record = _record(name="rae-dinov2-b")
    record["metrics"]["rfid"] = {"value": 0.5, "n": 50000, "interval": [0.45, 0.55],
                                 "label": "rFID(inception-tf weights 0123456789ab)"}
    (rfid,) = [e for e in compare(record, load_paper_rows()) if e["metric"] == "rFID"]
    assert rfid["within"] is None and rfid["not_comparable"].startswith("measured as rFID(inception-tf weights 0123456789ab)")
    text = format_comparison([rfid])
    assert "not comparable: measured as rFID(inception-tf weights 0123456789ab)" in text
    record["metrics"]["rfid"]["label"] = "rFID"  # the published weights: judged against the interval
    (rfid,) = [e for e in compare(record, load_paper_rows()) if e["metric"] == "rFID"]
    assert rfid["not_comparable"] is None and rfid["within"] is not None


def test_the_title_says_which_rows():
    from latentbench.benchmark.paper import comparison_title

    record = _record(name="rae-dinov2-b")
    assert "beside the papers' rows of this config" in comparison_title(record, compare(record, load_paper_rows()))
    rows = compare(record, load_paper_rows(), family="RAE")
    assert "beside the paper rows matching RAE" in comparison_title(record, rows, "RAE")
    assert "beside every paper row of the protocol" in comparison_title(record, rows, "all")
    record["tokenizer"] |= {"checkpoint": {"path": "rae.safetensors", "sha256": "0123abcd" + "0" * 56}, "trained_steps": 0}
    assert comparison_title(record, rows).startswith(f"rae-dinov2-b [ckpt 0123abcd] (record {record['id'][:12]}")  # its table row
