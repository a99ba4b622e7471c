"""``latentbench bench --dry_run``: what a bench would do, from its configuration and what is on disk.

Reads the run directory and the leaderboard table; writes nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from latentbench.benchmark.harness import precision_lines
from latentbench.benchmark.leaderboard import (
    display_name,
    fallback_precisions,
    other_budget,
    other_seed,
    read_records,
    weights_source,
)
from latentbench.benchmark.spec import BenchConfig
from latentbench.benchmark.stages import Stages
from latentbench.paths import display_path


def plan(cfg: BenchConfig, run_dir: Path, leaderboard_dir: Path, data: list[dict[str, Any]],
         log: Callable[[str], None]) -> dict[str, Any]:
    """What a bench of ``cfg`` would do (``bench --dry_run``), logged line by line; returns the same facts.

    The tokenizer and protocol as resolved (what ``--print_config`` cannot show: it prints the
    options as typed), the budgets, precisions and processes, the run directory and which of
    its stages are done, whether the table holds its stored records, and the stage time of this
    tokenizer's latest run in the leaderboard table run like this one (same precision, seed and
    budget; weights trained by the bench, or from elsewhere: --ckpt or as built), measured on the
    hardware it names. Reads only; writes nothing.
    """
    proto, spec, gen = cfg.protocol, cfg.tokenizer, cfg.protocol.generator
    table = leaderboard_dir / proto.name / f"v{proto.version}"
    stages = Stages(run_dir)
    stage_dir = stages.dir
    done = sorted(p.stem for p in stage_dir.glob("*.json")) if stage_dir.is_dir() else []
    train_info, eval_info = data
    facts: dict[str, Any] = {
        "tokenizer": spec.name, "requested": spec.requested, "training_module": _class_name(spec.module_class()),
        "protocol": proto.id, "protocol_fingerprint": proto.fingerprint[:8],
        "data": {"source": proto.data.source, "resolution": proto.data.resolution,
                 "train": train_info["n"], "eval": eval_info["n"]},
        "train_steps": cfg.steps, "precision": cfg.precision, "processes": cfg.launch.world_size,
        "generator": None, "run_dir": display_path(run_dir), "stages_done": done, "table": display_path(table),
    }
    if cfg.ckpt:
        facts["checkpoint"] = cfg.ckpt
    if gen.max_steps > 0:
        facts["generator"] = {"continuous": gen.continuous, "discrete": gen.discrete, "steps": gen.max_steps,
                              "precision": cfg.gen_precision, "samples": gen.num_samples, "gfid_at": gen.eval_steps}
    label = display_name({"name": spec.name, "requested": spec.requested})  # the table row's name, without a variant
    earlier = _rows_of(read_records(table), label) if (table / "results.jsonl").exists() else []
    facts["earlier_runs"] = len({run_of(r) for r in earlier})
    # what a bench would find: its stored record stages, and whether the table holds their rows (a run directory's
    # name alone says nothing: runs of one configuration in other clones share it)
    stored = [stages.get(p.stem)["record"]["id"] for p in sorted(stage_dir.glob("record*.json"))] if done else []
    ids = {r["id"] for r in earlier}
    facts["this_run_recorded"] = [i for i in stored if i in ids]
    facts["recorded_not_in_table"] = [i for i in stored if i not in ids]

    log(f"dry run: bench {spec.name} ({spec.requested}) under {proto.id}; nothing is run or written")
    trained = cfg.steps and (f", trained by {facts['training_module']}"  # with weights given, nothing trains them
                             + (f"; module_args {spec.module_args}" if spec.module_args else ""))
    log(f"tokenizer: {spec.name}" + (trained or "") + (f"; init_args {spec.init_args}" if spec.init_args else ""))
    log(f"protocol: {proto.id} (fingerprint {facts['protocol_fingerprint']}), {proto.data.source} at {proto.data.resolution} px: "
        f"{train_info['n']} train / {eval_info['n']} eval images")
    training = (f"{cfg.steps} steps at batch {proto.train.batch_size} in {cfg.precision}" if cfg.steps
                else f"none (evaluates {cfg.ckpt or 'the weights it loads as built'})")
    log(f"training: {training}, on {cfg.launch.world_size} process(es)")
    for line in precision_lines(cfg):
        log(line)
    if facts["generator"]:
        log(f"generator: {gen.continuous} (continuous latents) or {gen.discrete} (discrete codes), {gen.max_steps} steps at "
            f"batch {gen.batch_size} in {cfg.gen_precision}; gFID of {gen.num_samples} samples at steps "
            f"{', '.join(map(str, gen.eval_steps))}")
    else:
        log("generator: none (the protocol has no generator stage)")
    log(f"run directory: {facts['run_dir']} " + (f"(stages done: {', '.join(done)}; a bench reuses them)" if done else "(no stage done)"))
    if facts["this_run_recorded"]:
        log(f"leaderboard: {facts['table']} already holds this run (record {', '.join(facts['this_run_recorded'])})"
            + (": a bench adds no row" if not facts["recorded_not_in_table"] else ""))
    if facts["recorded_not_in_table"]:
        log(f"leaderboard: a bench appends this run's stored record {', '.join(facts['recorded_not_in_table'])} to "
            f"{facts['table']}/results.jsonl (its stages are done)")
    elif not facts["this_run_recorded"]:
        log(f"leaderboard: a bench appends its row to {facts['table']}/results.jsonl")
    trains = bool(cfg.steps)  # 0 with --ckpt
    latest = latest_alike_run(cfg, earlier)
    if not earlier:
        log(f"no row of {label} in that table yet: no stage time to quote")
    if earlier and not latest:
        log(f"earlier rows of {label} in that table trained in another precision, at another seed or on another budget, "
            f"or {'had weights from elsewhere' if trains else 'trained their weights'}: no stage time to quote")
    if latest:
        facts["latest_run"] = latest
        log(latest_run_line(label, latest, trains))
    return facts


def latest_alike_run(cfg: BenchConfig, earlier: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The stage seconds, date, hardware and commit of the latest run among ``earlier`` (a table's rows of the bench's
    tokenizer) run like ``cfg`` (``runs_like``); None without one."""
    proto = cfg.protocol
    alike = runs_like(earlier, sorted({p.used for p in cfg.changed_precisions().values()}),
                      cfg.seed if cfg.seed != proto.seed else None,
                      cfg.steps if cfg.steps and cfg.steps != proto.train.max_steps else None, bool(cfg.steps))
    if not alike:
        return None
    latest = max(alike, key=lambda r: r["created"])
    hw = latest["provenance"]["hardware"]
    where = ", ".join(hw["cuda"]) if hw.get("cuda") else f"{hw.get('cpu') or 'a CPU'}, {hw.get('cpu_count')} CPUs"
    return {"stage_seconds": run_stage_seconds([r for r in alike if run_of(r) == run_of(latest)]),
            "created": latest["created"], "hardware": where,
            "commit": ((latest["provenance"].get("code") or {}).get("commit") or "")[:7]}


def latest_run_line(label: str, latest: dict[str, Any], trains: bool = True) -> str:
    """``latest_alike_run``'s facts as the line ``bench --dry_run`` prints."""
    seconds = latest["stage_seconds"]
    how = "" if trains else " (weights from elsewhere: --ckpt or as built)"
    return (f"latest run of {label}{how} in that table: {sum(seconds.values()):.0f} s of stages ("
            + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + f") on {latest['hardware']}, "
            f"{latest['created'][:10]}, commit {latest['commit'] or 'unknown'}")


def expected_time_line(cfg: BenchConfig, leaderboard_dir: Path) -> str | None:
    """What a bench about to run its stages can expect, from the latest run like it in its table (``latest_alike_run``):
    "this takes about N minutes of stages on <hardware> (...)"; None without such a run. Another machine, or a busy
    one, takes another time: the line names where the quoted run ran."""
    proto, spec = cfg.protocol, cfg.tokenizer
    table = leaderboard_dir / proto.name / f"v{proto.version}"
    if not (table / "results.jsonl").exists():
        return None
    latest = latest_alike_run(cfg, _rows_of(read_records(table), display_name({"name": spec.name, "requested": spec.requested})))
    if latest is None:
        return None
    seconds = latest["stage_seconds"]
    total = sum(seconds.values())
    about = f"{total / 60:.0f} min" if total >= 120 else f"{total:.0f} s"
    return (f"expect about {about} of stages: the latest run like this one in the table took "
            + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
            + f" on {latest['hardware']} ({latest['created'][:10]}); another machine or a busy one takes another time")


def runs_like(records: list[dict[str, Any]], precisions: list[str], seed: int | None, steps: int | None,
              trains: bool) -> list[dict[str, Any]]:
    """The rows run like a bench whose training leaves the protocol for ``precisions`` (``fallback_precisions``), at
    ``seed`` and on ``steps`` (None: the protocol's), that ``trains`` its tokenizer or not: a float32 fallback's,
    another seed's or another budget's time is another run's, and a row of weights from elsewhere (``--ckpt``, or as
    built: ``weights_source``) has no training stage, so its time is never quoted for a bench that trains, nor a
    trained row's for a bench that does not."""
    return [r for r in records if fallback_precisions(r) == precisions and other_seed(r) == seed
            and other_budget(r) == steps and (weights_source(r) == "trained") == trains]


def _rows_of(records: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    """The records of the table row named ``label`` (any variant): an ablation config's
    (``maetok-ci [maetok-ci-plain]``) are not the registered size's (``maetok-ci``), whose time says nothing of it."""
    return [r for r in records if display_name({**r["tokenizer"], "variant": None}) == label]


def run_of(record: dict[str, Any]) -> tuple[Any, ...]:
    """What tells one run's records (FlowMo's 1a and 1b) from another's: a run directory alone does not, as runs
    of the same configuration in other clones or at other commits share its name. A record without a variant is a
    run of its own: two benches of weights from elsewhere (no train stage to tell them apart) at one commit and run
    directory name (a fresh clone, or runs/ deleted in between) would otherwise count as one run of twice the time."""
    if not (record.get("tokenizer") or {}).get("variant"):
        return ("record", record.get("id"))
    return (record.get("run_dir"), ((record.get("provenance") or {}).get("code") or {}).get("commit"),
            (record.get("wall_time_s") or {}).get("train"))


def run_stage_seconds(records: list[dict[str, Any]]) -> dict[str, float]:
    """Stage seconds of one run from its records: training once (each of a run's records repeats it), the other
    stages summed over its results (FlowMo's 1a and 1b)."""
    seconds = {}
    for stage in ("train", "eval", "generate"):
        values = [r["wall_time_s"][stage] for r in records if stage in r["wall_time_s"]]
        if values:
            seconds[stage] = values[0] if stage == "train" else sum(values)
    return seconds


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"
