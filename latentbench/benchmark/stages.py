"""A run directory's stages: each finished stage's result is an atomically written JSON file
(``<run_dir>/stages/<stage>.json``), so a rerun skips what finished; each attempt at a stage notes its
environment, and a record takes its provenance from the stages that measured it (``stages_provenance``).
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from latentbench.benchmark.machine_load import OtherCpuUse, advise_once, busy_note
from latentbench.benchmark.provenance import provenance
from latentbench.distributed import run_on_rank_zero, world_size
from latentbench.fsutil import atomic_write_text

PROVENANCE_PARTS = ("code", "packages", "python", "platform", "hardware", "processes")  # what can change a number (not the command)
UNKNOWN_PROVENANCE = "unknown: stored before stages kept their provenance"


class Stages:
    """Finished-stage results of a run directory, each an atomically written JSON file."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir / "stages"

    def get(self, name: str) -> dict[str, Any] | None:
        path = self.dir / f"{name}.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:  # the suite writes it atomically: edited or damaged
            raise ValueError(f"stage result {path} is not valid JSON ({err}): delete it to run the {name!r} stage again"
                             ) from None

    def run(self, name: str, fn: Callable[[], dict[str, Any]], log: Callable[[str], None],
            label: str | None = None) -> dict[str, Any]:
        """Return the stage's stored result, or run it, time it and store the result.

        Under torch.distributed every rank runs ``fn`` (stages shard their work); rank 0 stores
        its result and every rank returns rank 0's, so all ranks go on with the same facts.

        Args:
            name: the stage, which names its result file (``stages/<name>.json``).
            fn: runs the stage; returns its result.
            log: prints the stage's progress lines.
            label: the stage in those lines, default ``name``: the generator's training, a ``train`` stage of
                its own folder, logs as part of the run's ``generate`` stage, not as the tokenizer's training.
        """
        label = label or name
        done = run_on_rank_zero(lambda: self.get(name))  # rank 0's view of the folder decides for all
        if done is not None:
            log(f"[{label}] already done ({done['wall_time_s']:.1f} s), skipping")
            return done
        log(f"[{label}] running")
        attempts = run_on_rank_zero(lambda: self._attempt(name))
        start = time.perf_counter()
        with OtherCpuUse(measure=world_size() == 1) as load:  # a DDP run's other ranks would count as other processes
            result = fn()
        result["wall_time_s"] = time.perf_counter() - start
        result["machine_load"] = load.result
        if load.busy:
            log(f"[{label}] warning: {busy_note(load.result, advice=advise_once())}")

        def store() -> dict[str, Any]:
            stored = {**result, **_attempts_provenance(attempts)}
            atomic_write_text(self.dir / f"{name}.json", json.dumps(stored, indent=1, sort_keys=True))
            (self.dir / f"{name}.attempts.jsonl").unlink(missing_ok=True)
            return stored

        result = run_on_rank_zero(store)
        log(f"[{label}] done in {result['wall_time_s']:.1f} s")
        return result

    def _attempt(self, name: str) -> list[dict[str, Any]]:
        """Note this process's environment as an attempt at stage ``name``; every attempt's so far, this one last.

        A stage interrupted and resumed (training from its last checkpoint) ran partly in each
        attempt, so a record quotes them all (``_attempts_provenance``).
        """
        path = self.dir / f"{name}.attempts.jsonl"
        earlier, unreadable = [], 0
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    earlier.append(json.loads(line))
                except json.JSONDecodeError:  # the suite writes the file atomically: edited by hand or damaged
                    unreadable += 1
        if unreadable:
            warnings.warn(f"{path}: {unreadable} unreadable line(s) left out, so the record quotes only the other "
                          f"{len(earlier)} earlier attempt(s) at the {name!r} stage", stacklevel=2)
        attempts = [*earlier, provenance()]
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps(a, sort_keys=True) + "\n" for a in attempts))
        return attempts


def _attempts_provenance(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """A finished stage's ``provenance`` (its first attempt's environment) and ``provenance_resumed``
    (later attempts that ran in another environment; absent when none did)."""
    first = attempts[0]
    resumed = [a for a in attempts[1:] if _parts(a) != _parts(first)]
    return {"provenance": first, **({"provenance_resumed": resumed} if resumed else {})}


def _parts(environment: dict[str, Any]) -> dict[str, Any]:
    return {k: environment.get(k) for k in PROVENANCE_PARTS}


def stages_provenance(stages: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The provenance of the stages that measured a record, not of the process that writes it.

    A record is written by the last stage of a run; its numbers come from the stages before,
    which may have run in other processes (a resumed run), on another commit or another machine,
    and a stage may itself have been interrupted and resumed elsewhere. The record carries the
    first measuring stage's environment; every stage or resumed attempt whose environment
    differs is listed under ``stages`` with what differed (a stage stored before stages kept
    their provenance as unknown); ``code.commit`` reads ``mixed`` when commits differ, and
    ``code.dirty`` is true when any of them ran on a modified tree (None: not known for all).
    """
    ran: list[tuple[str, dict[str, Any] | None]] = []
    for name, result in stages.items():
        if result is None:
            continue
        ran.append((name, result.get("provenance")))
        ran += [(f"{name} (resumed {i})", e) for i, e in enumerate(result.get("provenance_resumed") or [], start=1)]
    known = [(name, e) for name, e in ran if e]
    unknown = {name: UNKNOWN_PROVENANCE for name, e in ran if not e}
    if not known:  # a run directory from before: this process's environment, said to be so
        now = provenance()
        return {**now, **({"stages": unknown} if unknown else {})}
    first_name, first = known[0]
    out = {**first, "code": dict(first["code"])}
    differ = {name: {k: e.get(k) for k in PROVENANCE_PARTS if e.get(k) != first.get(k)} for name, e in known}
    differ = {name: d for name, d in differ.items() if d}
    listed = {first_name: {k: first.get(k) for k in PROVENANCE_PARTS if any(k in d for d in differ.values())}} if differ else {}
    listed |= differ | unknown
    if listed:
        out["stages"] = listed
    dirty = [e["code"].get("dirty") for _, e in known]
    out["code"]["dirty"] = True if any(dirty) else None if (None in dirty or unknown) else False
    if len({e["code"].get("commit") for _, e in known}) > 1:
        out["code"]["commit"] = "mixed"
    return out
