"""The regression gate: every tokenizer's `smoke` bench against golden values kept in the repo.

``configs/regress/smoke.yaml`` holds, for every family the `smoke` protocol maps (each result
variant its own entry: ``flowmo-smoke (1b)``), each metric's golden value (seed 0), the values
the other seeds gave, and a tolerance set from that seed-to-seed spread:
``tolerance = SPREAD_FACTOR * (max - min)`` over the seeds, at least ``MIN_TOLERANCE`` of the
value (the probe's accuracy is checked with at least one eval image's worth: ``COUNTED``).
``latentbench regress`` re-runs the benches with seed 0 and fails, naming tokenizer and metric,
when a metric moved from golden by more than its tolerance, either way: a large "improvement" is
as suspect as a loss (originals leaking into reconstructions), and an intended one is taken in
with ``latentbench regress --update``. Every checked metric's margin is printed, passed or not.

Golden values hold for one training precision. ``smoke.yaml`` is the protocol's (bf16-mixed); a
machine that trains in another one (a CPU without fast bf16 falls back to 32-true, see
``latentbench.precision``) is checked against ``smoke.<precision>.yaml``, measured the same way.
"""
from __future__ import annotations

import math
import re
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from latentbench.fsutil import atomic_write_text, unique_key_loader
from latentbench.paths import CONFIG_DIR

GOLDEN_PATH = CONFIG_DIR / "regress" / "smoke.yaml"
PROTOCOL = "smoke"
DIRECTION = {"psnr": 1, "ssim": 1, "probe": 1, "lpips": -1, "rfid": -1, "gfid": -1}  # +1: higher is better
SPREAD_FACTOR = 2.0
MIN_TOLERANCE = 1e-3  # relative: a metric identical on every seed still gets 0.1% for other CPUs' rounding
STRICT_TOLERANCE = 1e-9  # relative, under --strict: float rounding only
# Fractions of n eval images (the probe's top-1): they move in steps of 1/n, so the gate allows at least one image
# more or less. Another CPU's kernels can flip one: under smoke v2 rae-smoke's probe was 63/64 on one CPU
# and 62/64 on an AVX512-BF16 one, at the same commit and seed.
COUNTED = {"probe"}


def golden_file(precision: str) -> Path:
    """The golden file for runs trained in ``precision``: smoke.yaml for the protocol's own."""
    from latentbench.benchmark.protocol import load_protocol

    if precision == load_protocol(PROTOCOL).train.precision:
        return GOLDEN_PATH
    return GOLDEN_PATH.with_name(f"{GOLDEN_PATH.stem}.{precision}{GOLDEN_PATH.suffix}")


def gate_precision(requested: str = "auto") -> str:
    """The precision the gate's benches train in here (``auto``: the protocol's, or float32 without fast bf16)."""
    from latentbench.benchmark.protocol import load_protocol
    from latentbench.precision import resolve_precision

    return resolve_precision(load_protocol(PROTOCOL).train.precision, requested).used


def bench_rows(family: str, seed: int, root: Path, log: Callable[[str], None] = print,
               precision: str = "auto", counts: dict[str, dict[str, int]] | None = None,
               unavailable: dict[str, dict[str, str]] | None = None) -> dict[str, dict[str, float]]:
    """Run the `smoke` bench of ``family`` with ``seed``; metric values of every row it wrote, by row name.

    ``counts``, when given, receives each metric's sample count ``n`` by row name (for ``check``); ``unavailable``,
    the reason the bench gave for each metric it could not measure (LPIPS without its weights), by row name.
    """
    from latentbench.benchmark.harness import run_bench
    from latentbench.benchmark.leaderboard import display_name, read_records

    lb = root / f"lb-{family}-{seed}"
    run_bench(family, PROTOCOL, seed=seed, runs_dir=root / "runs", leaderboard_dir=lb, log=lambda s: None, precision=precision)
    rows = {}
    for record in (r for d in lb.glob(f"{PROTOCOL}/v*") for r in read_records(d)):
        name, metrics = display_name(record["tokenizer"]), {k: m for k, m in record["metrics"].items()
                                                            if k in DIRECTION and "value" in m}
        rows[name] = {k: float(m["value"]) for k, m in metrics.items()}
        if counts is not None:
            counts[name] = {k: int(m["n"]) for k, m in metrics.items() if m.get("n")}
        if unavailable is not None:
            unavailable[name] = {k: str(m["unavailable"]) for k, m in record["metrics"].items() if "unavailable" in m}
    log(f"  {family} seed {seed}: " + "; ".join(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(m.items()))
                                               for name, m in rows.items()))
    return rows


def families() -> list[str]:
    """The family aliases of the `smoke` protocol: every registered tokenizer family."""
    from latentbench.benchmark.protocol import load_protocol

    return sorted(load_protocol(PROTOCOL).tokenizers)


def measure_golden(seeds: list[int], root: Path, only: list[str] | None = None,
                   log: Callable[[str], None] = print, precision: str = "auto") -> dict[str, Any]:
    """Golden values (the first seed) and tolerances from the spread over ``seeds``."""
    if len(seeds) < 2:
        raise ValueError("golden tolerances need at least 2 seeds to measure a spread")
    runs = {f: [bench_rows(f, s, root, log, precision) for s in seeds] for f in only or families()}
    golden: dict[str, Any] = {}
    for per_seed in runs.values():
        for name in per_seed[0]:
            golden[name] = {}
            for metric, value in per_seed[0][name].items():
                values = [r[name][metric] for r in per_seed]
                spread = max(values) - min(values)
                golden[name][metric] = {
                    "value": value, "tolerance": max(SPREAD_FACTOR * spread, MIN_TOLERANCE * abs(value)),
                    "seeds": dict(zip(seeds, values, strict=True)), "stdev": statistics.stdev(values),
                }
    return golden


def write_golden(golden: dict[str, Any], seeds: list[int], path: Path = GOLDEN_PATH, precision: str | None = None) -> Path:
    trained = f", trained in {precision}" if precision else ""
    header = (f"# Golden `smoke` values for `make regress` (written by `latentbench regress --update`{trained}).\n"
              f"# value: seed {seeds[0]}; tolerance: {SPREAD_FACTOR:g} x (max - min) over seeds {seeds}, "
              f"at least {MIN_TOLERANCE:g} x |value|.\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, header + yaml.safe_dump(golden, sort_keys=True))
    return path


def load_golden(path: Path = GOLDEN_PATH) -> dict[str, Any]:
    """The golden values, checked before any bench runs: ValueError naming the row and metric of a damaged entry."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no golden values at {path}: create them with `latentbench regress --update` "
                                "(on a machine that trains in that file's precision, or with --precision)")
    fix = "restore it (git checkout) or re-measure it with `latentbench regress --update`"
    try:
        golden = yaml.load(Path(path).read_text(), Loader=unique_key_loader())  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise ValueError(f"golden file {path} is not valid YAML ({' '.join(str(e).split())}): {fix}") from None
    if not isinstance(golden, dict) or not golden:
        raise ValueError(f"golden file {path} holds no rows: {fix}")
    for name, metrics in golden.items():
        if not isinstance(name, str):  # YAML reads `123:`, `null:` or `true:` as no string: checked before any bench runs
            raise ValueError(f"golden file {path}: row {name!r} is not a row name (YAML read it as "
                             f"{type(name).__name__}): name a tokenizer's row, such as sdvae-smoke, or {fix}")
        if not isinstance(metrics, dict) or not metrics:
            raise ValueError(f"golden file {path}: row {name!r} holds no metrics: {fix}")
        for metric, entry in metrics.items():
            if metric not in DIRECTION:
                raise ValueError(f"golden file {path}: {name} has an unknown metric {metric!r} (known: {sorted(DIRECTION)}): {fix}")
            for key in ("value", "tolerance"):
                value = entry.get(key) if isinstance(entry, dict) else None
                # finite: a .nan or .inf tolerance (or value) would pass every measured value, a regression included
                if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                        or (key == "tolerance" and value < 0)):
                    raise ValueError(f"golden file {path}: {name} {metric} needs a finite numeric {key!r}"
                                     f"{' >= 0' if key == 'tolerance' else ''}, got {value!r}{_as_string(value)}: {fix}")
    return golden


def _as_string(value: Any) -> str:
    """Why a number in the golden file arrived as a string, if it did: PyYAML (YAML 1.1) reads ``1e-3``, without a dot,
    as one, so a hand-written tolerance was refused with no word of what to change."""
    if not isinstance(value, str):
        return ""
    if re.fullmatch(r"[-+]?[0-9]+[eE][-+]?[0-9]+", value.strip()):
        return f" (a string: YAML reads a number without a dot as one; write {value.strip().lower().replace('e', '.0e', 1)})"
    try:
        float(value)
    except ValueError:
        return ""
    return " (a string: write the number without quotes)"


def _tolerance(name: str, metric: str, g: dict[str, Any], counts: dict[str, dict[str, int]] | None,
               strict: bool = False) -> float:
    if strict:
        return STRICT_TOLERANCE * abs(g["value"])
    n = (counts or {}).get(name, {}).get(metric)
    return max(g["tolerance"], 1.0 / n) if metric in COUNTED and n else g["tolerance"]


def margins(golden: dict[str, Any], measured: dict[str, dict[str, float]],
            counts: dict[str, dict[str, int]] | None = None, strict: bool = False) -> list[str]:
    """One line per row: each checked metric's value, its change from golden and the tolerance; and the measured
    metrics that have no golden value (unchecked: LPIPS on a machine with its weights, say)."""
    lines = []
    for name in sorted(set(golden) & set(measured)):
        cells = []
        for metric, g in sorted(golden[name].items()):
            if metric in measured[name]:
                delta = measured[name][metric] - g["value"]
                change = "exact" if delta == 0 else f"{delta:+.4g}"
                cells.append(f"{metric} {measured[name][metric]:.6g} ({change}, tolerance {_tolerance(name, metric, g, counts, strict):.4g})")
        unchecked = sorted(set(measured[name]) - set(golden[name]))
        lines.append(f"{name}: " + "; ".join(cells) + (f"; not checked (no golden value): {', '.join(unchecked)}"
                                                       if unchecked else ""))
    return lines


def check(golden: dict[str, Any], measured: dict[str, dict[str, float]],
          counts: dict[str, dict[str, int]] | None = None, strict: bool = False,
          unavailable: dict[str, dict[str, str]] | None = None) -> list[str]:
    """One line per regression: a metric further from golden than its tolerance (worse, or better: an intended
    improvement is taken in with ``--update``), a missing row/metric, or a measured row without golden values
    (which would otherwise pass unchecked).

    ``counts``: the sample count behind each measured metric (``bench_rows``); a ``COUNTED`` metric's
    tolerance is then at least one sample's worth, 1 / n. ``strict``: every tolerance is float rounding
    (``STRICT_TOLERANCE`` of the value), for changes meant to move no number. ``unavailable``: the bench's reason for
    each metric it could not measure (``bench_rows``), said with that metric's "missing" line.
    """
    failures = [f"{name}: no golden values (add them with `latentbench regress --update --families ...`)"
                for name in sorted(set(measured) - set(golden))]
    for name, metrics in sorted(golden.items()):
        if name not in measured:
            failures.append(f"{name}: no row (the bench did not produce it)")
            continue
        for metric, g in sorted(metrics.items()):
            if metric not in measured[name]:
                why = (unavailable or {}).get(name, {}).get(metric)  # the bench's reason: LPIPS without its weights
                failures.append(f"{name} {metric}: missing (golden {g['value']:.6g})" + (f": {why}" if why else ""))
                continue
            worse = DIRECTION[metric] * (g["value"] - measured[name][metric])  # > 0: worse than golden
            tolerance = _tolerance(name, metric, g, counts, strict)
            if not abs(worse) <= tolerance:  # a NaN measured value fails too (NaN > tolerance is False)
                how = (f"worse by {worse:.4g}" if worse > 0 else f"better by {-worse:.4g}" if worse < 0 else "not a number")
                hint = "" if not worse < 0 else "; if the change is intended, re-measure with `latentbench regress --update`"
                failures.append(f"{name} {metric}: {measured[name][metric]:.6g} vs golden {g['value']:.6g} "
                                f"({how} > tolerance {tolerance:.4g}{hint})")
    return failures


def _row_of(row: str, names: list[str]) -> bool:
    """Whether golden row ``row`` is a row of the tokenizers ``names`` (``row_names``): the name itself (``sdvae-smoke``)
    or the name with a result's variant (``flowmo-smoke (1b)``). Not a prefix of a family alias: a family ``rae2``
    registered beside ``rae`` owns ``rae2-smoke``, which ``rae`` must neither check nor replace."""
    return any(row == n or row.startswith(f"{n} (") for n in names)


def row_names(targets: list[str]) -> list[str]:
    """The row name each gate target's `smoke` bench writes (without a result's variant): a family's `smoke`
    tokenizer (``sdvae`` -> ``sdvae-smoke``), or the table name of a tokenizer of the user's own (``pkg.mod:Class``,
    ``mine.yaml``), resolved as ``bench`` resolves it, so that a typo stops the gate before any bench runs."""
    from latentbench.benchmark.leaderboard import display_name
    from latentbench.benchmark.protocol import load_protocol
    from latentbench.benchmark.spec import resolve_tokenizer

    proto = load_protocol(PROTOCOL)
    names = []
    for target in targets:
        if target in proto.tokenizers:  # a family: its size name, no resolution needed
            names.append(proto.tokenizers[target])
            continue
        spec = resolve_tokenizer(target, proto)
        names.append(display_name({"name": spec.name, "requested": spec.requested}))
    return names


def _check_golden_rows(golden: dict[str, Any], path: Path, own: list[str]) -> None:
    """ValueError, before any bench runs, for a golden row that no `smoke` bench writes: its name must be a tokenizer
    of the protocol, or one of ``own``'s rows (``row_names``), or either with a result's variant (``flowmo-smoke (1b)``);
    otherwise it is reported only after every bench has run."""
    names = row_names(families()) + own
    unknown = [row for row in golden if not _row_of(row, names)]
    if unknown:
        raise ValueError(f"golden file {path}: row(s) {unknown} are no {PROTOCOL} bench's (its tokenizers: "
                         f"{', '.join(names)}, FlowMo's as '<name> (1a)' / '(1b)'): fix the row names, or re-measure "
                         "the file with `latentbench regress --update`")


def regress(golden_path: Path | None = None, update: bool = False, seeds: list[int] | None = None,
            only: list[str] | None = None, log: Callable[[str], None] = print, precision: str = "auto",
            strict: bool = False, own: list[str] | None = None) -> list[str]:
    """Run the gate (or, with ``update``, re-measure golden values); returns the failures (empty: passed).

    Args:
        golden_path: the golden file (default: ``golden_path`` of the precision the benches train in).
        precision: ``auto`` (the protocol's, or float32 on a CPU without fast bf16) or a Lightning precision.
        update: measure golden values over ``seeds`` (default 0, 1, 2) and write them instead of checking.
        only: families to run (default: all of the `smoke` protocol's, or none when ``own`` is given); with
            ``only`` or ``own`` the check covers only their golden rows.
        strict: tolerances of float rounding only (``check``).
        own: tokenizers of the user's own (``pkg.mod:Class`` or a YAML file, as ``bench --tokenizer`` takes them),
            benched under `smoke` like the families; their golden values go in a file of the user's (``golden_path``
            is then required: the shipped file holds the suite's families).
    """
    unknown = sorted(set(only or []) - set(families()))
    if unknown:
        raise ValueError(f"unknown families {unknown} for the regression gate; choose from {families()} (a tokenizer "
                         "of your own is given with --tokenizers)")
    own = own or []
    if own and golden_path is None:
        raise ValueError(f"--tokenizers {','.join(own)}: give --golden FILE, a golden file of your own for their "
                         "values (the shipped ones hold the suite's families); create it with --update")
    own_rows = row_names(own)  # a typo'd class or YAML stops the gate here, before any bench runs
    targets = (only or ([] if own else families())) + own
    rows = row_names(only or []) + own_rows
    used = gate_precision(precision)
    golden_path = golden_path or golden_file(used)
    log(f"regression gate: smoke benches trained in {used}, golden values {golden_path}")
    with tempfile.TemporaryDirectory(prefix="latentbench-regress-") as tmp:
        root = Path(tmp)
        if update:
            seeds = seeds or [0, 1, 2]
            if seeds[0] != 0:
                raise ValueError(f"--seeds {seeds}: the gate benches seed 0 and compares it with the first seed's value, "
                                 "so the seeds must start with 0 (e.g. 0,1,2)")
            golden = measure_golden(seeds, root, targets, log, used)
            if rows and Path(golden_path).is_file():  # the other families keep their golden values
                kept = {k: v for k, v in load_golden(golden_path).items() if not _row_of(k, rows)}
                golden = {**kept, **golden}
            write_golden(golden, seeds, golden_path, used)
            log(f"wrote {golden_path}")
            return []
        golden = load_golden(golden_path)
        _check_golden_rows(golden, golden_path, own_rows)
        measured: dict[str, dict[str, float]] = {}
        counts: dict[str, dict[str, int]] = {}
        unavailable: dict[str, dict[str, str]] = {}
        for target in targets:
            measured.update(bench_rows(target, 0, root, log, used, counts, unavailable))
        if rows:
            golden = {k: v for k, v in golden.items() if _row_of(k, rows)}
        for line in margins(golden, measured, counts, strict):
            log(f"  {line}")
        return check(golden, measured, counts, strict, unavailable)
