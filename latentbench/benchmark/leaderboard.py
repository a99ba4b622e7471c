"""Append-only leaderboard tables: ``leaderboards/<protocol>/v<N>/results.jsonl`` + README.md.

Every write takes a file lock, writes the whole new file to a temporary name and renames it
over the old one, so concurrent runs never lose or interleave rows and an interrupted write
leaves the previous table intact. An existing row is never rewritten.
"""
from __future__ import annotations

import contextlib
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

from filelock import FileLock

from latentbench.benchmark.machine_load import BUSY_SHARE, is_busy
from latentbench.benchmark.schema import SCHEMA_VERSION, finite_or_str, validate_record  # noqa: F401  (re-exported)
from latentbench.fsutil import atomic_write_text


def table_dir(root: Path, protocol_name: str, version: int) -> Path:
    return Path(root) / protocol_name / f"v{version}"


def read_records(directory: Path) -> list[dict[str, Any]]:
    """All records of one table, in the order they were appended."""
    path = Path(directory) / "results.jsonl"
    if not path.exists():
        return []
    return parse_jsonl(path)


def parse_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a results.jsonl; ValueError naming the file and line of one that is not a JSON object."""
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            conflict = line.startswith(("<<<<<<<", "=======", ">>>>>>>"))
            raise ValueError(
                f"{path} line {number} is not a JSON record ({e.msg})"
                + ("; it is a merge-conflict marker: keep both sides' rows (each line is one record) and delete the "
                   "marker lines" if conflict else "; restore the line from version control or a backup")) from None
        if not isinstance(record, dict) or "id" not in record:
            raise ValueError(f"{path} line {number} is not a result record (a JSON object with an 'id')")
        records.append(record)
    return records


def check_protocol_unchanged(records: list[dict[str, Any]], name: str, version: int, fingerprint: str, directory: Path) -> None:
    """ValueError when the table's rows were measured under another fingerprint of this protocol version."""
    fingerprints = {r["protocol"]["fingerprint"] for r in records}
    if fingerprints and fingerprint not in fingerprints:
        raise ValueError(
            f"protocol {name} v{version} changed (fingerprint {fingerprint[:12]} vs "
            f"{sorted(fingerprints)[0][:12]} in {directory}); a changed protocol needs a new version number"
        )


def check_table_accepts(root: Path, name: str, version: int, fingerprint: str) -> None:
    """The protocol check of ``append_record``, made before a bench runs its stages (not after hours of them)."""
    directory = table_dir(root, name, version)
    if (directory / "results.jsonl").exists():
        check_protocol_unchanged(read_records(directory), name, version, fingerprint, directory)


def append_record(root: Path, record: dict[str, Any], if_absent: bool = False) -> Path:
    """Append one record to its protocol's table and re-render the table's README.md.

    A record whose id is in the table already is refused, or with ``if_absent`` left as it is
    (decided under the table's lock, so two processes adding the same record add it once).

    Returns:
        The table directory.
    """
    validate_record(record)
    proto = record["protocol"]
    directory = table_dir(root, proto["name"], proto["version"])
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / ".lock"), timeout=120):
        records = read_records(directory)
        if any(r["id"] == record["id"] for r in records):
            if if_absent:
                return directory
            raise ValueError(f"record {record['id']} is already in {directory}; rows are never rewritten")
        check_protocol_unchanged(records, proto["name"], proto["version"], proto["fingerprint"], directory)
        path = directory / "results.jsonl"
        old = path.read_text() if path.exists() else None
        # strict JSON: a non-finite float outside the metrics (a diverged run's final loss) is kept as its name
        atomic_write_text(path, (old or "") + json.dumps(finite_or_str(record), sort_keys=True, allow_nan=False) + "\n")
        try:
            render(directory, records + [record])
        except BaseException:  # Ctrl-C included: a row lands with its table or not at all (a rerun would add it again)
            if old is None:  # the table's first row: nothing of it stays
                for name in ("results.jsonl", CURVES_PNG, RD_PNG, TIMES_PNG):
                    (directory / name).unlink(missing_ok=True)
            else:
                atomic_write_text(path, old)
                with contextlib.suppress(Exception):  # the plots back to the rows that stay (best effort)
                    render(directory, records)
            raise
    return directory


def render_all(root: Path) -> dict[Path, list[str]]:
    """Re-render every table under ``root`` (README.md and plots) from its results.jsonl, under its lock; and perf/README.md.

    Returns each table's folder and the names of the files written there."""
    done = {path.parent: rerender(path.parent) for path in sorted(Path(root).glob("*/v*/results.jsonl"))}
    if (Path(root) / "perf" / "perf.json").is_file():  # the `latentbench perf` table, in the current format
        from latentbench.benchmark.perf import render_perf_readme

        render_perf_readme(Path(root) / "perf" / "perf.json")
    return done


def rerender(directory: Path) -> list[str]:
    """Re-render one table from its results.jsonl, under its lock; the names of the files written."""
    with FileLock(str(Path(directory) / ".lock"), timeout=120):
        return render(directory, read_records(directory))


def render(directory: Path, records: list[dict[str, Any]]) -> list[str]:
    """Write a table's README.md and its plots from its records; the names of the files written."""
    written = []
    curves, groups = _curves(records)
    if curves:
        from latentbench.benchmark.gfid import plot_curves

        label = _metric_label("gfid", records) or "gFID"
        target, what = _plot_target(records)
        plot_curves(curves, Path(directory) / CURVES_PNG, label=label, target=target, target_label=what, groups=groups)
        written.append(CURVES_PNG)
    if _plot_rate_distortion(records, Path(directory) / RD_PNG):
        written.append(RD_PNG)
    if _plot_stage_times(records, Path(directory) / TIMES_PNG):
        written.append(TIMES_PNG)
    grids = {p.name for p in (Path(directory) / GRID_DIR).glob("*.png")}
    from latentbench.benchmark.perf import load_perf

    try:
        perf = load_perf(Path(directory).parent.parent / "perf" / "perf.json")  # <root>/perf/perf.json beside <root>/<name>/v<N>
    except ValueError as e:  # a damaged perf.json costs the table its Cost section, not the row
        warnings.warn(f"{e}; {directory / 'README.md'} is written without its Cost section", stacklevel=2)
        perf = None
    atomic_write_text(Path(directory) / "README.md", render_table(records, grids) + cost_section(records, perf))
    return ["README.md", *written]


def cost_section(records: list[dict[str, Any]], perf: dict[str, Any] | None) -> str:
    """The measured cost of this protocol's configs (``latentbench perf``), or nothing if it has not been run."""
    if not records or not perf:
        return ""
    from latentbench.benchmark.perf import format_table

    proto = records[0]["protocol"]
    rows = [r for r in perf["rows"] if r.get("protocol") == f"{proto['name']}/v{proto['version']}"]
    if not rows:
        return ""
    return ("\n## Cost\n\nTraining step, codec and sampling throughput of this protocol's configs, from `latentbench perf` "
            f"(`make perf`) on {perf['threads']} threads, {perf['created'][:10]}, commit "
            f"{perf['provenance']['code']['commit'][:8]} ([perf.json](../../perf/perf.json)). MFU: a step's FLOPs "
            "(FlopCounterMode) per second over this machine's measured matrix-product peak.\n\n"
            + format_table({**perf, "rows": rows}) + "\n")


def format_metric(metric: dict[str, Any] | None, digits: int) -> str:
    """A table cell: the value (with its interval when there is one), "n/a" when unavailable."""
    if not metric:
        return "—"
    if "unavailable" in metric:
        return "n/a"
    value = metric.get("value")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    cell = f"{value:.{digits}f}"
    if metric.get("interval"):
        lo, hi = metric["interval"]
        cell += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return cell


COLUMNS = (  # (metric key, header, digits)
    ("rfid", "rFID ↓", 2),
    ("psnr", "PSNR (dB) ↑", 2),
    ("ssim", "SSIM ↑", 4),
    ("lpips", "LPIPS ↓", 4),
    ("gfid", "gFID ↓", 2),
    ("probe", "probe top-1 ↑", 3),
)
CURVES_PNG = "gfid_curves.png"
RD_PNG = "rate_distortion.png"
TIMES_PNG = "stage_times.png"
GRID_DIR = "grids"  # <record id[:12]>-reconstructions.png and -samples.png, copied in by the harness


def grid_names(record: dict[str, Any]) -> tuple[str, str]:
    """File names (in GRID_DIR) of a record's reconstruction grid and generated-sample grid."""
    return f"{record['id'][:12]}-reconstructions.png", f"{record['id'][:12]}-samples.png"


def _rate_distortion_points(records: list[dict[str, Any]]) -> list[tuple[str, float, float, bool]]:
    """(row, latent size per pixel, PSNR, discrete) of each row that has both."""
    points = []
    for r in records:
        psnr = (r["metrics"].get("psnr") or {}).get("value")
        if psnr is None:
            continue
        bpp = (r.get("codes") or {}).get("bits_per_pixel")
        res = (r["data"]["eval"] or {}).get("resolution")
        if bpp is None and not res:
            continue
        rate = bpp if bpp is not None else math.prod(r["tokenizer"]["latent"]["shape"]) / res**2
        points.append((row_name(r), rate, psnr, bpp is not None))
    return points


def _curves(records: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    """Each row's gFID curve, for the rows that have one, in the records' order, and each curve's row name (its
    group in the plot). Rows of one name (earlier commits, other seeds) are told apart by their commit, then their
    record id: keyed by name alone, the latest had hidden the others' curves."""
    rows = [r for r in records if (r.get("generation") or {}).get("curve")]
    names = [row_name(r) for r in rows]
    for suffix in (lambda r: ((r.get("provenance") or {}).get("code") or {}).get("commit", "")[:8], lambda r: r["id"][:8]):
        repeated = {n for n in names if names.count(n) > 1}
        names = [f"{n} @{suffix(r)}" if n in repeated else n for n, r in zip(names, rows, strict=True)]
    return ({n: r["generation"]["curve"] for n, r in zip(names, rows, strict=True)},
            {n: row_name(r) for n, r in zip(names, rows, strict=True)})


def _plot_rate_distortion(records: list[dict[str, Any]], path: Path) -> bool:
    """PSNR against latent size per pixel: floats per pixel for continuous latents, bits per pixel for codes.
    False (nothing written) when no record has both.

    Each row name's latest record is drawn and labelled; its earlier ones (other commits) faint,
    unlabelled. Labels that would overlap are moved up, with a line back to their point.
    """
    points = _rate_distortion_points(records)
    if not points:
        return False
    import matplotlib.ticker

    from latentbench.benchmark.plots import pyplot, save_png

    plt = pyplot()

    latest = {name: i for i, (name, *_) in enumerate(points)}  # records' order: the last of each name
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    labels = []
    for i, (name, rate, psnr, discrete) in enumerate(points):
        current = latest[name] == i
        ax.scatter(rate, psnr, marker="s" if discrete else "o", color="tab:orange" if discrete else "tab:blue",
                   alpha=1.0 if current else 0.3, zorder=3 if current else 2)
        if current:
            labels.append(ax.annotate(name, (rate, psnr), fontsize=7, xytext=(9, -2), textcoords="offset points",
                                      arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "0.35", "shrinkA": 1, "shrinkB": 4}))
    ax.set_xscale("log")
    rates = [rate for _, rate, _, _ in points]
    low, high = min(rates), max(rates)
    ax.set_xlim(low / 1.6, high * 3.0)  # room for the labels right of the points
    # 1, 2, 5 per decade with plain numbers: the default's 10^k alone leaves a plot inside one decade without labels
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("latent size per pixel: floats (circles) or code bits (squares)")
    ax.set_ylabel("PSNR (dB, higher is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _spread_labels(fig, labels, [(rate, psnr) for _, rate, psnr, _ in points])
    save_png(fig, path)
    return True


def _latest_runs(records: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, float]]]:
    """(label, latest record, stage seconds) of the latest run of each row name, a run's results (FlowMo's 1a and 1b)
    together as the one bench they were (``plan.run_stage_seconds``: the shared training once); sorted by label."""
    from latentbench.benchmark.plan import run_of, run_stage_seconds

    runs: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        if r.get("wall_time_s"):
            runs.setdefault(run_of(r), []).append(r)
    latest: dict[str, list[dict[str, Any]]] = {}
    for run in runs.values():
        label = row_name({**run[0], "tokenizer": {**run[0]["tokenizer"], "variant": None}})
        if label not in latest or max(r["created"] for r in run) > max(r["created"] for r in latest[label]):
            latest[label] = run
    return [(label, max(run, key=lambda r: r["created"]), run_stage_seconds(run)) for label, run in sorted(latest.items())]


def _plot_stage_times(records: list[dict[str, Any]], path: Path) -> bool:
    """Horizontal stacked bars of the stage minutes of each row's latest bench (``_latest_runs``), labelled with
    its commit and date; False (nothing written) without timed records. Hand-written: a plot of this table's
    records, which no plotting library knows."""
    runs = _latest_runs(records)
    if not runs:
        return False
    from latentbench.benchmark.plots import pyplot, save_png

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.42 * len(runs)), dpi=120)
    colours = {stage: colour for stage, colour in (("train", "tab:blue"), ("eval", "tab:green"), ("generate", "tab:orange"))
               if any(stage in seconds for _, _, seconds in runs)}  # a protocol without a generator has no generate stage
    for y, (_, latest, seconds) in enumerate(reversed(runs)):
        left = 0.0
        for stage, colour in colours.items():
            minutes = seconds.get(stage, 0.0) / 60
            ax.barh(y, minutes, left=left, color=colour, label=stage if y == 0 else None, height=0.6)
            left += minutes
        commit = ((latest["provenance"].get("code") or {}).get("commit") or "")[:8]
        ax.annotate(f"{left:.1f} min  ({commit or 'no commit'}, {latest['created'][:10]})", (left, y), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(range(len(runs)), [label for label, _, _ in reversed(runs)], fontsize=8)
    ax.set_xlim(0, max(max(sum(s.values()) for _, _, s in runs) / 60 * 1.45, 0.1))  # room for the annotations
    ax.set_xlabel("minutes of stages (process start, data scans and checks not counted)")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)
    return True


def _spread_labels(fig, labels: list, points: list[tuple[float, float]]) -> None:
    """Give each annotation label, lowest first, the nearest free slot beside its point: offsets of one label
    height above and below, in turn, kept inside the axes; a slot free of the labels placed before and of the
    points' markers, else the one that overlaps fewest (greedy; matplotlib does not do it). A label left where
    it was hides its line back to the point."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    if not labels:
        return
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = labels[0].axes
    frame = ax.get_window_extent(renderer)
    to_display = ax.transData.transform
    placed = [Bbox.from_extents(x - 5, y - 5, x + 5, y + 5) for x, y in map(to_display, points)]
    pixels_per_point = fig.dpi / 72
    for label in sorted(labels, key=lambda a: (a.xy[1], a.xy[0])):
        start = label.xyann
        box = Text.get_window_extent(label, renderer)  # the text alone: an Annotation's own extent takes in its line
        step = box.height / pixels_per_point + 1  # offset points
        best = None
        for k in range(60):  # 0, +1, -1, +2, -2, ... label heights
            dy = step * ((k + 1) // 2) * (1 if k % 2 else -1) if k else 0.0
            moved = box.translated(0, dy * pixels_per_point)
            if moved.y0 < frame.y0 or moved.y1 > frame.y1:
                continue
            overlaps = sum(moved.overlaps(other) for other in placed)
            if best is None or overlaps < best[0]:
                best = (overlaps, dy, moved)
            if overlaps == 0:
                break
        overlaps, dy, moved = best or (0, 0.0, box)
        label.xyann = (start[0], start[1] + dy)
        label.arrow_patch.set_visible(dy != 0)
        placed.append(moved)


def _metric_label(key: str, records: list[dict[str, Any]]) -> str | None:
    """The label all rows give a metric (``rFID-domain(mnist)``), or None when they differ or give none."""
    labels = {(r["metrics"].get(key) or {}).get("label") for r in records} - {None}
    return labels.pop() if len(labels) == 1 else None


def _header(key: str, header: str, records: list[dict[str, Any]]) -> str:
    """Column header; FIDs take the extractor's label (``rFID-domain(mnist)``) when all rows share it."""
    label = _metric_label(key, records) if key in ("rfid", "gfid") else None
    return f"{label} ↓" if label else header


def _plot_target(records: list[dict[str, Any]]) -> tuple[float | None, str]:
    """The convergence target to draw: the number all rows share, or the baseline's final gFID."""
    rows = [r for r in records if _conv(r).get("target") is not None and (r.get("generation") or {}).get("curve")]
    targets = {str(_conv(r)["target"]) for r in rows}
    if len(targets) != 1:
        return None, ""
    if _conv(rows[0])["target"] != "baseline":
        return float(_conv(rows[0])["target"]), "target"
    # the target of the rows trained as the protocol trains, where there are such rows (not a --ckpt or --seed row's)
    own = [r for r in rows if _trained_as(r, records) == ([], None, None, None)]
    base = _baseline_row((own or rows)[0], records)
    return (base["generation"]["curve"][-1]["value"], f"{row_name(base)} final") if base else (None, "")


def _conv(record: dict[str, Any]) -> dict[str, Any]:
    return ((record.get("generation") or {}).get("convergence")) or {}


def fallback_precisions(record: dict[str, Any]) -> list[str]:
    """The precisions a record trained in instead of the protocol's (empty: the protocol's own)."""
    return sorted({p["used"] for p in (record.get("precision_changed") or {}).values()})


def _baseline_row(record: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The latest row of the record's baseline tokenizer that has a gFID curve under the same target rule and ran
    like the record (``_trained_as``): in the same precision (a float32 fallback row is compared with float32
    baselines only), at the same seed and on the same training budget (a --seed 1 or --train_steps 300 run of the
    baseline does not become every row's baseline). A ``--ckpt`` row of the baseline (weights from elsewhere) is
    nobody's baseline, unless it re-measures weights a row of the table trained (``trained_here``); a ``--ckpt``
    row of another tokenizer (your own weights) is compared with the protocol's baseline like any row, and a YAML
    config of the baseline's name (``sdvae-ci [my-sdvae]``) is not the baseline."""
    conv, alike = _conv(record), _trained_as(record, records)
    rows = [r for r in records if display_name(r["tokenizer"]) == conv.get("baseline")  # not a config file of its own
            and (r.get("generation") or {}).get("curve") and _conv(r).get("target") == conv.get("target")
            and (weights_source(r) != "ckpt" or trained_here(r, records)) and _trained_as(r, records) == alike]
    return rows[-1] if rows else None


def ckpt_weights(record: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint (``path`` as given, ``sha256``) of a row benched from weights given with ``--ckpt``, else None (a row
    the bench trained records the weights it wrote, with its training steps; a row evaluated as built records none)."""
    tokenizer = record["tokenizer"]
    return tokenizer.get("checkpoint") if tokenizer.get("trained_steps") == 0 else None


def weights_source(record: dict[str, Any]) -> str:
    """How the bench got the tokenizer's weights: ``"trained"`` (its training stage), ``"ckpt"`` (``--ckpt``) or
    ``"as built"`` (``--train_steps 0``: the weights the tokenizer loads itself, e.g. ``sdvae-ft-mse``)."""
    if record["tokenizer"].get("trained_steps") != 0:
        return "trained"
    return "ckpt" if ckpt_weights(record) else "as built"


def trained_here(record: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row of ``records`` whose training wrote the weights a ``--ckpt`` row was benched from (same config, same
    sha256; ``--ckpt <run dir>/tokenizer.safetensors``, e.g. to measure what a run could not while an extractor's
    weights were missing), else None."""
    sha = (ckpt_weights(record) or {}).get("sha256")
    if sha is None:
        return None
    config = display_name({**record["tokenizer"], "variant": None})
    return next((r for r in records if weights_source(r) == "trained"
                 and (r["tokenizer"].get("checkpoint") or {}).get("sha256") == sha
                 and display_name({**r["tokenizer"], "variant": None}) == config), None)


def _trained_as(record: dict[str, Any], records: list[dict[str, Any]]) -> tuple[Any, ...]:
    """What a row is compared on for its conv. steps' baseline: the precisions it left the protocol's for, its seed,
    and its training's seed and budget. A ``--ckpt`` row of weights a row of the table trained (``trained_here``)
    counts as that training re-measured."""
    source = trained_here(record, records) or record
    return (sorted(set(fallback_precisions(record)) | set(fallback_precisions(source))),
            other_seed(record), other_seed(source), other_budget(source))


def convergence_cell(record: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """Steps to the protocol's gFID target, and the speed-up against the baseline tokenizer's curve in the table.

    The target is a number, or ``"baseline"``: the baseline's final gFID (resolved here, from the
    table's rows, so rows recorded before the baseline's get their cell when it arrives).
    """
    from latentbench.benchmark.gfid import speedup, steps_to_target

    conv, curve = _conv(record), (record.get("generation") or {}).get("curve")
    if not curve or conv.get("target") is None:
        return "—"
    base = _baseline_row(record, records)
    target = conv["target"]
    if target == "baseline":
        if base is None:
            _, seed, _, steps = _trained_as(record, records)
            where = (f" at seed {seed}" if seed is not None else "") + (f" of {steps} steps" if steps is not None else "")
            return f"— (no {conv.get('baseline')} row{where})"
        target = base["generation"]["curve"][-1]["value"]
    ours = steps_to_target(curve, target)
    cell = f"{ours}" if ours is not None else f"> {conv['budget']}"
    if base is not None and base is not record:
        ratio = speedup(ours, steps_to_target(base["generation"]["curve"], target), _conv(base)["budget"])
        if ratio:
            cell += f" ({'≥' if ratio['bound'] == '>=' else ''}{ratio['ratio']:.1f}x)"
    return cell


def _perceptual_kind(status: str) -> str:
    """A training record's ``perceptual`` status in a few words."""
    if status.startswith("lpips-"):
        return "LPIPS"
    if status.startswith("substitute"):
        return "the labelled substitute, LPIPS's recipe on the domain classifier"
    if status == "off":
        return "none, off in the config"
    if status.startswith("unavailable"):
        return "none, LPIPS weights unavailable and no substitute configured"
    return status.split(":")[0]  # a user module's own status


def _perceptual_notes(records: list[dict[str, Any]]) -> list[str]:
    """A note when the rows' tokenizers trained with different perceptual losses (it favours some metrics)."""
    kinds: dict[str, list[str]] = {}
    for r in records:
        status = (r.get("training") or {}).get("perceptual")
        if isinstance(status, str):
            kinds.setdefault(_perceptual_kind(status), [])
            if row_name(r) not in kinds[_perceptual_kind(status)]:
                kinds[_perceptual_kind(status)].append(row_name(r))
    if len(kinds) < 2:
        return []
    parts = "; ".join(f"{kind} for {', '.join(rows)}" for kind, rows in sorted(kinds.items()))
    return [f"- training's perceptual loss differs between rows: {parts}. Training without one favours PSNR over "
            "perceptual metrics; each record's training.perceptual says why."]


def _unavailable_notes(records: list[dict[str, Any]]) -> list[str]:
    """One line per distinct reason a metric is missing; the measuring machine's torch hub folder is written as
    ``$TORCH_HOME/hub`` (the record keeps the path), so the table reads the same for everyone and one reason
    measured under two home folders is one line."""
    notes = sorted({f"{key}: {_portable(m['unavailable'])}" for r in records for key, m in r["metrics"].items()
                    if "unavailable" in m})
    return [f"- n/a — {note}" for note in notes]


def _portable(reason: str) -> str:
    # the path weights.py names, torch.hub.get_dir()/checkpoints/<file>: $TORCH_HOME/hub, ~/.cache/torch/hub by default
    return re.sub(r"(?<!\S)/\S*?/hub/checkpoints/", "$TORCH_HOME/hub/checkpoints/", reason)


def _gmacs(tokenizer: dict[str, Any]) -> str:
    """Encoder / decoder multiply-adds per image (the papers' "GFLOPs"); "—" for rows recorded without a count."""
    costs = tokenizer.get("costs")
    if not costs:
        return "—"
    return f"{costs['encoder_gmacs']:.3g} / {costs['decoder_gmacs']:.3g}"


def _latent(record: dict[str, Any]) -> str:
    """Latent shape per image, with bits per pixel for discrete codes."""
    shape = "x".join(map(str, record["tokenizer"]["latent"]["shape"]))
    bpp = (record.get("codes") or {}).get("bits_per_pixel")
    return f"{shape} ({bpp:.3g} bpp)" if bpp else shape


def _millions(n: int) -> str:
    """Parameters in millions, two decimals, or three significant digits below 0.01M (a 2,000-parameter model is not 0.00)."""
    return f"{n / 1e6:.2f}" if n >= 1e4 or n == 0 else f"{n / 1e6:.3g}"


def _throughput(record: dict[str, Any]) -> str:
    """Encode + decode images per second in the eval pass, on the recording machine."""
    value = record.get("throughput_img_s")
    return f"{value:.0f}" if value else "—"


def display_name(tokenizer: dict[str, Any]) -> str:
    """Table label: the registered name, plus the config file's stem when a YAML file chose the arguments
    (``maetok-ci [maetok-ci-plain]``), plus the record's variant (``flowmo-ci (1a)``) where it has one."""
    name, requested = tokenizer["name"], tokenizer.get("requested") or ""
    if ((tokenizer.get("describe") or {}).get("encoder") or {}).get("kind") == "random-init":
        name += " [RANDOM-INIT ENCODER]"
    if requested.endswith((".yaml", ".yml")) and Path(requested).stem != name:
        name = f"{name} [{Path(requested).stem}]"
    return f"{name} ({tokenizer['variant']})" if tokenizer.get("variant") else name


def _cell(text: str) -> str:
    """``text`` for a Markdown table cell: a ``|`` in a config's name would split the row into another column."""
    return text.replace("|", "\\|")


def row_name(record: dict[str, Any]) -> str:
    """A record's table label: ``display_name``, marked ``[ckpt 1a2b3c4d]`` (the sha256 prefix of the weights) where
    the bench evaluated weights given with ``--ckpt`` instead of training them, ``[32-true]`` where training left
    the protocol's precision (``latentbench.precision``: a CPU without fast bf16, or ``--precision``), ``[seed N]``
    where the bench ran at another seed than the protocol's (``--seed``) and ``[N steps]`` where the tokenizer trained
    on another budget than the protocol's (``--train_steps``)."""
    ckpt = ckpt_weights(record)
    marks = [f"ckpt {ckpt['sha256'][:8]}"] if ckpt else []
    marks += fallback_precisions(record)
    if other_seed(record) is not None:
        marks.append(f"seed {other_seed(record)}")
    if other_budget(record) is not None:
        marks.append(f"{other_budget(record)} steps")
    return display_name(record["tokenizer"]) + (f" [{', '.join(marks)}]" if marks else "")


def other_seed(record: dict[str, Any]) -> int | None:
    """The bench's seed where it is not the protocol's, else None (records written before the protocol's seed was
    recorded ran the shipped protocols, whose seed is 0)."""
    seed = (record.get("seeds") or {}).get("bench")
    return seed if seed is not None and seed != record["protocol"].get("seed", 0) else None


def other_budget(record: dict[str, Any]) -> int | None:
    """The steps the bench trained the tokenizer for where it is not the protocol's budget (``--train_steps``), else
    None: also for weights trained elsewhere (``--ckpt``) and for records written before both were recorded."""
    steps, budget = (record.get("training") or {}).get("max_steps"), (record.get("protocol") or {}).get("train_steps")
    return steps if steps is not None and budget is not None and steps != budget else None


def shared_cpu(record: dict[str, Any]) -> bool:
    """Whether other processes took more than ``BUSY_SHARE`` of the machine's CPU during a stage of the run (``is_busy``)."""
    return any(is_busy(load) for load in (record.get("machine_load") or {}).values())


def render_table(records: list[dict[str, Any]], grids: set[str] | frozenset[str] = frozenset()) -> str:
    """Markdown table of a protocol version's results (deterministic for the same records)."""
    if not records:
        return "# (empty)\n"
    proto = records[0]["protocol"]
    lines = [
        f"# Leaderboard: `{proto['name']}` v{proto['version']}",
        "",
        f"{proto.get('description', '')}",
        "",
        f"Protocol fingerprint `{proto['fingerprint'][:16]}`. Generated from `results.jsonl` "
        "(one JSON record per run, append-only); do not edit by hand.",
        "",
        "| tokenizer | latent | params (M) | enc / dec GMACs | " + " | ".join(_header(k, h, records) for k, h, _ in COLUMNS)
        + " | conv. steps | n eval | train steps | codec img/s | stage time (s) | commit | date |",
        "|---|---|---|---|" + "---|" * len(COLUMNS) + "---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: (row_name(r), r["created"])):
        tok, metrics = r["tokenizer"], r["metrics"]
        values = [format_metric(metrics.get(k), d) for k, _, d in COLUMNS]
        n = (metrics.get("psnr") or {}).get("n") or max((m.get("n", 0) for m in metrics.values()), default=0)
        commit = r["provenance"]["code"]["commit"][:8] + ("+dirty" if r["provenance"]["code"]["dirty"] else "")
        lines.append(
            f"| {_cell(row_name(r))}{' (warning: notes)' if r.get('warnings') else ''} | {_latent(r)} | {_millions(tok['params']['total'])} | {_gmacs(tok)} | "
            + " | ".join(values)
            + f" | {convergence_cell(r, records)} | {n} | {tok['trained_steps']} | {_throughput(r)} "
            f"| {sum(r['wall_time_s'].values()):.0f}{' (shared CPU)' if shared_cpu(r) else ''} | {commit} | {r['created'][:10]} |"
        )
    notes = _unavailable_notes(records)
    changed = sorted({(p["used"], p["requested"]) for r in records for p in (r.get("precision_changed") or {}).values()})
    for used, requested in changed:
        notes.append(f"- [{used}]: trained in {used}, not the protocol's {requested} (a CPU without fast bf16 falls back "
                     "to float32, see the README's \"Cost\"; the record's precision_changed says why); numbers differ "
                     f"from {requested} rows by training numerics, and conv. steps compare with the baseline's [{used}] row.")
    notes += _perceptual_notes(records)
    notes += _ckpt_notes(records)
    notes += _data_notes(records)
    notes += [f"- **warning**, {row_name(r)} (record {r['id'][:12]}): {w}" for r in records for w in r.get("warnings") or ()]
    notes.append("- stage time (s): the sum of the bench's train, eval and generate stages, each timed in the process "
                 "that finished it (process start, data scans and checks are not in it; a resumed stage counts only "
                 "its last process); rows of one run (FlowMo's 1a and 1b) each count the shared training stage.")
    if any(shared_cpu(r) for r in records):
        notes.append(f"- (shared CPU): other processes took more than {BUSY_SHARE:.0%} of the machine's CPU time during a "
                     "stage of that run (the record's `machine_load`), so its stage time overstates what the bench costs.")
    targets = {str(_conv(r).get("target")) for r in records if _conv(r).get("target") is not None}
    if targets:
        what = ", ".join(sorted("the baseline's final gFID" if t == "baseline" else t for t in targets))
        bases = ", ".join(sorted({_conv(r)["baseline"] for r in records if _conv(r).get("baseline")}))
        if not any(_conv(r).get("baseline") == r["tokenizer"]["name"] for r in records):
            bases += ", which has no row in this table yet"
        elsewhere = any(weights_source(r) == "ckpt" and display_name(r["tokenizer"]) == _conv(r).get("baseline")
                        and not trained_here(r, records) for r in records)  # the rows _baseline_row passes over
        notes.insert(0, f"- conv. steps: the first evaluated generator step with gFID <= {what} (baseline: {bases}; "
                        "\"> N\": not reached in N steps); (Kx): the baseline's steps to the same gFID divided by this "
                        f"row's (≥: the baseline never reached it). Curves: [{CURVES_PNG}]({CURVES_PNG})."
                        + (" A `--ckpt` row of the baseline (weights from elsewhere) is nobody's baseline, unless its "
                           "weights are a row of this table's training re-measured." if elsewhere else ""))
    if any(m.get("interval") for r in records for m in r["metrics"].values()):
        notes.insert(0, "- [lo, hi]: 95% Poisson-bootstrap interval of the sampling spread at that n (see `benchmark/fid.py`).")
    pictures = _pictures(records, grids)
    return "\n".join(lines + ([""] + notes if notes else []) + pictures) + "\n"


def _ckpt_notes(records: list[dict[str, Any]]) -> list[str]:
    """A note per row benched from ``--ckpt`` weights: the file, and the row that trained them where it is in the table."""
    notes = []
    for r in records:
        ckpt = ckpt_weights(r)
        if ckpt:
            source = trained_here(r, records)
            given = f"`--ckpt {ckpt['path']}`" if ckpt.get("path") else "`--ckpt`"
            notes.append(f"- {row_name(r)} (record {r['id'][:12]}): evaluated from weights given with {given} "
                         f"(sha256 `{ckpt['sha256'][:16]}`), not trained by its bench"
                         + (f"; they are the weights {row_name(source)} (record {source['id'][:12]}, {source['created'][:10]}) "
                            "trained in this table, re-measured" if source else "") + ".")
    return notes


def _data_notes(records: list[dict[str, Any]]) -> list[str]:
    """A note per split whose rows were measured on other data (an image folder edited between benches): the protocol
    fingerprint names the folder, not its files, so such rows share a table while their numbers do not compare."""
    notes = []
    for split in ("eval", "train"):
        by_print: dict[str, list[str]] = {}
        for r in records:
            fingerprint = ((r.get("data") or {}).get(split) or {}).get("fingerprint")
            if fingerprint:
                by_print.setdefault(fingerprint, []).append(f"{row_name(r)} ({r['provenance']['code']['commit'][:8]}, "
                                                            f"{r['created'][:10]})")
        if len(by_print) > 1:
            groups = "; ".join(f"`{f[:12]}`: {', '.join(rows)}" for f, rows in sorted(by_print.items(), key=lambda kv: kv[1]))
            notes.append(f"- data: the rows were measured on {len(by_print)} versions of the {split} split (its files changed "
                         f"between benches), so their numbers do not compare across versions; by fingerprint: {groups}.")
    for r in records:  # train and eval the same images (datanotes.split_notes said so at the bench)
        if (r.get("data") or {}).get("same_images"):
            train, evaluation = r["data"]["train"], r["data"]["eval"]
            which = (f"its train and eval split were both {train['split']!r} of {evaluation['source']}"
                     if train["split"] == evaluation["split"] else
                     f"its {train['split']} and {evaluation['split']} splits were read from the same images "
                     f"({evaluation['source']} has no separate splits)")
            notes.append(f"- data: {row_name(r)} (record {r['id'][:12]}): {which}, so its "
                         "reconstruction metrics and probe are not on held-out images.")
    for r in records:  # a folder saved on another scale than it is read on (datanotes.data_notes said so at the bench)
        for split in ("train", "eval"):
            info = (r.get("data") or {}).get(split) or {}
            if info.get("n_off_scale"):
                notes.append(f"- data: {row_name(r)} (record {r['id'][:12]}): {info['n_off_scale']} of the {info['n']} {split} "
                             f"images look saved on another scale than the one they are read on (e.g. "
                             f"{info['off_scale_example']['path']}), so they were read nearly black.")
            if info.get("n_multiframe"):  # read as their first frame, as ADM does: said, as the bench said it
                notes.append(f"- data: {row_name(r)} (record {r['id'][:12]}): {info['n_multiframe']} of the {info['n']} "
                             f"{split} images hold several frames (e.g. {info['multiframe_example']['path']}), of which "
                             "only the first was read.")
    return notes


def _pictures(records: list[dict[str, Any]], grids: set[str] | frozenset[str]) -> list[str]:
    """Links to the table's plots and to each row's reconstruction and sample grids that exist."""
    plots = ([f"- [{CURVES_PNG}]({CURVES_PNG}): gFID against generator steps, every row"] if _curves(records)[0] else []) \
        + ([f"- [{RD_PNG}]({RD_PNG}): PSNR against latent size per pixel"] if _rate_distortion_points(records) else []) \
        + ([f"- [{TIMES_PNG}]({TIMES_PNG}): each row's latest bench by stage (train, eval, generate), in minutes"]
           if _latest_runs(records) else [])
    out = ["", "## Plots", "", *plots] if plots else []
    rows = []
    for r in sorted(records, key=lambda r: (row_name(r), r["created"])):
        rec, smp = grid_names(r)
        cells = [f"![{_cell(row_name(r))} {what}]({GRID_DIR}/{name})" if name in grids else "—"
                 for name, what in ((rec, "reconstructions"), (smp, "samples"))]
        if cells != ["—", "—"]:
            rows.append(f"| {_cell(row_name(r))} | {cells[0]} | {cells[1]} |")
    if rows:
        out += ["", "## Reconstructions and samples", "",
                "Reconstructions: originals (top) and reconstructions (bottom) spread over the eval split. "
                "Samples: generated images, one column per class.", "",
                "| tokenizer | reconstructions | samples |", "|---|---|---|", *rows]
    return out
