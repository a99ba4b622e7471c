"""The papers' reported figures as reference rows, and side-by-side comparison of a result with them.

``leaderboards/paper/paper_tables.csv`` holds the figures (source, table, row, resolution,
latent, metric, value, condition, verified, note, config), copied from the papers; they are
reported, not measured here. ``config`` names the registered tokenizer config(s) a row describes
(space-separated; empty where none does), so a result is set beside its own rows first. A result
is compared only with rows of its own protocol: the papers measured ImageNet at 256x256
(protocol ``imagenet256``), so a ``ci`` result is refused, not compared.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from latentbench.paths import LEADERBOARD_DIR

PAPER_DIR = LEADERBOARD_DIR / "paper"
PAPER_CSV = PAPER_DIR / "paper_tables.csv"
METRIC_KEYS = {"rFID": "rfid", "PSNR": "psnr", "SSIM": "ssim", "LPIPS": "lpips", "gFID": "gfid",
               "linear probe top-1": "probe"}
PERCENT = {"linear probe top-1"}  # the papers report these in percent; records hold fractions
# figures measured under another protocol than the suite's own metric of that name: shown, never judged
NOT_COMPARABLE = {"linear probe top-1": "other probe protocol: the papers' full-train-set linear eval, the suite's "
                                        "50k-image subset of mean-pooled latents (benchmark/probe.py)"}
FIELDS = ("source", "table", "row", "resolution", "bpp_or_tokens", "metric", "value", "condition", "verified", "note",
          "config")
FAMILIES = ("MAETok", "FlowMo", "RAE", "SD-VAE")  # what --family matches in a row's source and name, or "all"


@dataclass(frozen=True)
class PaperRow:
    source: str
    table: str
    row: str
    resolution: int
    bpp_or_tokens: str
    metric: str
    value: float
    condition: str
    verified: str
    note: str
    config: str = ""

    @property
    def configs(self) -> tuple[str, ...]:
        """The registered tokenizer configs this row describes."""
        return tuple(self.config.split())

    @property
    def protocol(self) -> str:
        """The protocol the figure belongs to: ImageNet at its resolution (``imagenet256``)."""
        return f"imagenet{self.resolution}"


def load_paper_rows(path: Path = PAPER_CSV) -> list[PaperRow]:
    """Every reference row; a malformed line raises ValueError naming it."""
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != FIELDS:
            raise ValueError(f"{path}: header must be {','.join(FIELDS)}, got {reader.fieldnames}")
        for line, raw in enumerate(reader, start=2):
            try:
                rows.append(PaperRow(**{**raw, "resolution": int(raw["resolution"]), "value": float(raw["value"])}))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path} line {line} is malformed: {e}") from None
            if raw["metric"] not in METRIC_KEYS:
                raise ValueError(f"{path} line {line}: unknown metric {raw['metric']!r} (known: {', '.join(METRIC_KEYS)})")
    return rows


def render_paper_readme(rows: list[PaperRow]) -> str:
    """Markdown of the reference rows, grouped by source and table (deterministic)."""
    lines = ["# Reported figures from the papers", "",
             "Reference rows, **reported by the papers, not measured here**, from `paper_tables.csv` (one row per",
             "figure: source, table, row, resolution, latent, metric, value, condition). `verified` is `paper` for",
             "a figure read in the paper itself and `secondhand` for one quoted from another paper's table.",
             "`latentbench compare --result <record id>` sets a result beside the rows of its own protocol: those of",
             "its own tokenizer config (`config`: the registered config a row describes; SD-VAE rows name both",
             "official checkpoints, as the papers do not say which) or, with `--family`, a paper's rows.", "",
             "Caveats: press summaries of MAETok quote gFID 2.4 vs 3.2, \"2.5x faster convergence\" and LPIPS",
             "0.052 / 0.061; those figures are not in the paper and are not here. FlowMo's official evaluation pools",
             "PSNR over a batch; latentbench reports per-image PSNR. RAE's guided gFID uses AutoGuidance, not CFG,",
             "and its baselines were re-evaluated with 50 images per class, so they differ from the originals.", ""]
    for source in sorted({r.source for r in rows}):
        lines += [f"## {source}", "", "| table | row | res. | latent | metric | value | condition | verified | note | config |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted((r for r in rows if r.source == source), key=lambda r: (r.table, r.row, r.metric, r.condition)):
            lines.append(f"| {r.table} | {r.row} | {r.resolution} | {r.bpp_or_tokens} | {r.metric} | {r.value:g} | "
                         f"{r.condition} | {r.verified} | {r.note} | {' '.join(f'`{c}`' for c in r.configs)} |")
        lines.append("")
    return "\n".join(lines)


def _family_matches(family: str, row: PaperRow) -> bool:
    text = f"{row.source} {row.row}".lower().replace("-", "")
    return family.lower().replace("-", "") in text


def compare(record: dict[str, Any], rows: list[PaperRow], family: str | None = None) -> list[dict[str, Any]]:
    """One entry per paper figure of the record's protocol (and family): paper value, ours, delta, within interval.

    Raises:
        ValueError: the record's protocol has no paper rows (e.g. ``ci``): differences across data,
            resolution, extractor and budget would be meaningless.
    """
    proto = record["protocol"]["name"]
    protocols = sorted({r.protocol for r in rows})
    chosen = [r for r in rows if r.protocol == proto]
    if proto not in protocols:
        raise ValueError(
            f"refusing to compare a `{proto}` result with the papers: their figures were measured under "
            f"{', '.join(protocols)} (ImageNet at that resolution, the papers' extractors and budgets), this one under "
            f"`{proto}` ({record['protocol'].get('description', 'another protocol')}), so a difference would say nothing. "
            "Bench the tokenizer with --protocol imagenet256 to compare it with the papers")
    _check_measured_as_the_papers(record, chosen[0].resolution)
    own = [r for r in chosen if record["tokenizer"]["name"] in r.configs]
    if family is None and own:  # the rows of the result's own config
        chosen = own
    elif family != "all":
        family = family or record["tokenizer"]["name"].split("-")[0]
        chosen = [r for r in chosen if _family_matches(family, r)]
        if not chosen:
            raise ValueError(f"no `{proto}` paper rows match --family {family!r}: choose one of {', '.join(FAMILIES)}, or all")
    return [_entry(r, record["metrics"].get(METRIC_KEYS[r.metric])) for r in chosen]


def _check_measured_as_the_papers(record: dict[str, Any], resolution: int) -> None:
    """ValueError when a record that names the papers' protocol was not measured under it: other eval images'
    resolution, or a protocol file of the same name and version with another fingerprint (edited)."""
    from latentbench.benchmark.protocol import load_protocol

    proto = record["protocol"]
    measured = ((record.get("data") or {}).get("eval") or {}).get("resolution")
    if measured is not None and measured != resolution:
        raise ValueError(f"refusing to compare: the record names `{proto['name']}`, but its eval images were "
                         f"{measured}x{measured}, the papers' {resolution}x{resolution}")
    try:
        shipped = load_protocol(proto["name"])
    except FileNotFoundError:  # no shipped protocol of that name (imagenet512): nothing to hold the record to
        return
    # an older version too: its fingerprint cannot be held to the shipped file's, so any file of that name and an
    # old version number (a user's own `imagenet256` v1 on another data set, extractor and budget) would pass
    if isinstance(proto.get("version"), int) and proto["version"] != shipped.version:
        raise ValueError(f"refusing to compare: the record's `{proto['name']}` v{proto['version']} is not the shipped version "
                         f"(v{shipped.version} is): it was measured under another protocol file, not the papers' protocol")
    if proto.get("fingerprint") and proto.get("version") == shipped.version and proto["fingerprint"] != shipped.fingerprint:
        raise ValueError(f"refusing to compare: the record's `{proto['name']}` v{proto['version']} has fingerprint "
                         f"{proto['fingerprint'][:16]}, the shipped protocol's is {shipped.fingerprint[:16]}: it was measured "
                         "under an edited protocol file, not the papers' protocol")


def comparison_title(record: dict[str, Any], entries: list[dict[str, Any]], family: str | None = None) -> str:
    """What is compared: the result (name, id, protocol, commit) and which paper rows."""
    from latentbench.benchmark.leaderboard import row_name

    commit = ((record.get("provenance") or {}).get("code") or {}).get("commit", "")[:8]
    own = entries and all(record["tokenizer"]["name"] in e["config"].split() for e in entries)
    rows = ("every paper row of the protocol" if family == "all" else f"the paper rows matching {family}" if family
            else "the papers' rows of this config" if own else "the paper rows of its family")
    return (f"{row_name(record)} (record {record['id'][:12]}, {record['protocol']['name']} "
            f"v{record['protocol']['version']}{', commit ' + commit if commit else ''}) beside {rows} "
            "(--family all for every row of the protocol)")


def _entry(row: PaperRow, ours: dict[str, Any] | None) -> dict[str, Any]:
    out = {**asdict(row), "ours": None, "interval": None, "delta": None, "within": None, "missing": None,
           "not_comparable": NOT_COMPARABLE.get(row.metric)}
    if not ours:
        return out | {"missing": "not measured"}
    if "unavailable" in ours:
        return out | {"missing": ours["unavailable"]}
    label = ours.get("label")
    if row.metric in ("rFID", "gFID") and label and label != row.metric:  # the extractor labels what it measured
        out["not_comparable"] = (f"measured as {label}, not the papers' FID (torch-fidelity's Inception with its "
                                 "published weights)")
    scale = 100.0 if row.metric in PERCENT else 1.0
    ours = {**ours, "value": ours["value"] * scale,
            "interval": [v * scale for v in ours["interval"]] if ours.get("interval") else None}
    interval = ours.get("interval")
    within = None if not interval or out["not_comparable"] else bool(interval[0] <= row.value <= interval[1])
    return out | {"ours": ours["value"], "interval": interval, "delta": ours["value"] - row.value, "within": within}


def format_comparison(entries: list[dict[str, Any]]) -> str:
    """A plain-text side-by-side table."""
    if not entries:
        return "no paper rows match (use --family all to see every row of the protocol)"
    width = max(7, *(len(e["metric"]) for e in entries))  # "linear probe top-1" is wider than "rFID"
    head = f"{'source / table / row':<52} {'condition':<28} {'metric':<{width}} {'paper':>9} {'ours':>24} {'delta':>9}  within"
    lines = [head, "-" * len(head)]
    for e in entries:
        name = _clip(f"{e['source'].split(' (')[0]} {e['table']}: {e['row']}", 52) + " " + _clip(e["condition"], 28)
        if e["missing"]:
            ours, delta, within = "n/a", "", e["missing"][:60]
        else:
            iv = f" [{_num(e['interval'][0])}, {_num(e['interval'][1])}]" if e["interval"] else ""
            ours, delta = f"{_num(e['ours'])}{iv}", ("+" if e["delta"] >= 0 else "") + _num(e["delta"])
            within = (f"not comparable: {e['not_comparable'].split(':')[0].split(',')[0]}" if e.get("not_comparable") else
                      "no interval" if e["within"] is None else ("yes" if e["within"] else "no"))
        lines.append(f"{name:<81} {e['metric']:<{width}} {_num(e['value']):>9} {ours:>24} {delta:>9}  {within}")
    for metric, why in sorted({(e["metric"], e["not_comparable"]) for e in entries if e.get("not_comparable")}):
        lines.append(f"{metric}: {why}")
    return "\n".join(lines)


def _num(value: float) -> str:
    """Four significant digits without switching to exponents for large FIDs (1699, not 1.699e+03)."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _clip(text: str, width: int) -> str:
    """``text`` padded to ``width``, or cut to it with an ellipsis."""
    return f"{text:<{width}}" if len(text) <= width else text[:width - 1] + "…"


def find_record(result: str, root: Path = LEADERBOARD_DIR) -> dict[str, Any]:
    """A record by id (or unique prefix) in any table, the last row of a results.jsonl, or a stage's record json."""
    import json

    from latentbench.benchmark.leaderboard import parse_jsonl

    path = Path(result)
    if path.is_file():
        if path.suffix == ".jsonl":
            records = parse_jsonl(path)
            if not records:
                raise ValueError(f"{path} holds no records")
            return records[-1]
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not JSON ({e}): {_WHAT_TO_GIVE}") from None
        data = data.get("record", data) if isinstance(data, dict) else data
        if not isinstance(data, dict) or not {"protocol", "tokenizer", "metrics"} <= set(data):
            raise ValueError(f"{path} is not a result record (a stage's result? only stages/record.json holds one): "
                             f"{_WHAT_TO_GIVE}")
        return data
    if not Path(root).is_dir():  # a mistyped --leaderboard_dir would otherwise read as "no records with id ..."
        raise FileNotFoundError(f"--leaderboard_dir {root} is not a folder: give the root of the leaderboard tables the "
                                f"bench wrote to (default: the repository's leaderboards/), or {_WHAT_TO_GIVE[5:]}")
    found = [r for p in sorted(Path(root).glob("*/v*/results.jsonl")) for r in parse_jsonl(p) if r["id"].startswith(result)]
    if len(found) != 1:
        # a bench given --leaderboard_dir wrote its row there, and its summary's record id is looked up here otherwise
        elsewhere = (" (a bench given --leaderboard_dir DIR wrote its row under DIR: pass compare the same --leaderboard_dir)"
                     if not found and Path(root).resolve() == LEADERBOARD_DIR.resolve() else "")
        raise ValueError(f"{'no' if not found else len(found)} records with id {result!r} under {root}{elsewhere}: "
                         f"{_WHAT_TO_GIVE}")
    return found[0]


_WHAT_TO_GIVE = ("give a record id (the 'id' field of a line of leaderboards/<protocol>/v<N>/results.jsonl, or a unique "
                 "prefix), a results.jsonl (its last row), or a run directory's stages/record.json")
