"""Other processes' CPU time while a stage runs: this process's descendants are its own, anything else is not."""
import subprocess
import sys
import textwrap
import time

import pytest

from latentbench.benchmark import machine_load
from latentbench.benchmark.machine_load import BUSY_SHARE, OtherCpuUse, busy_note, own_cpu_seconds

BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"


def test_a_child_process_is_this_runs_own_cpu_time():
    before = own_cpu_seconds()
    subprocess.run([sys.executable, "-c", BURN.format(s=1.0)], check=True)  # finished and waited for
    child = subprocess.Popen([sys.executable, "-c", BURN.format(s=1.0) + "time.sleep(30)"])  # still alive at the end
    try:
        time.sleep(0.2)
        while own_cpu_seconds() - before < 1.9 and child.poll() is None:
            time.sleep(0.1)
        assert own_cpu_seconds() - before >= 1.9
    finally:
        child.kill()
        child.wait()


def test_a_detached_process_is_another_process():
    """A process that is not a descendant (double fork: re-parented to init) burning ~1.5 CPU-s shows as others'."""
    detach = textwrap.dedent(f"""
        import os, subprocess, sys
        subprocess.Popen([sys.executable, "-c", {BURN.format(s=1.5)!r}], start_new_session=True)
    """)
    with OtherCpuUse() as load:
        subprocess.run([sys.executable, "-c", detach], check=True)  # the middle process exits at once
        time.sleep(3.0)
    assert load.result["others_cpu_s"] >= 1.0, load.result
    assert load.result["cpus"] >= 1 and load.result["wall_s"] >= 3.0
    assert 0 < load.result["others_share"] <= 1


def test_share_busy_flag_and_note(monkeypatch):
    readings = iter([(0.0, 100.0, 10.0), (10.0, 116.0, 13.0)])  # (wall, machine busy, own) at entry and exit
    state = {}

    def reading(kind):
        def read():
            if kind == 0:
                state["now"] = next(readings)
            return state["now"][kind]
        return read

    monkeypatch.setattr(machine_load.time, "perf_counter", reading(0))
    monkeypatch.setattr(machine_load, "machine_busy_seconds", reading(1))
    monkeypatch.setattr(machine_load, "own_cpu_seconds", reading(2))
    monkeypatch.setattr(machine_load.psutil, "cpu_count", lambda: 2)
    with OtherCpuUse() as load:
        assert load.result is None  # filled in when the block ends
    # 16 busy CPU-s, 3 of them this run's: 13 of 10 s x 2 CPUs
    assert load.result == {"others_cpu_s": 13.0, "others_share": 0.65, "cpus": 2, "wall_s": 10.0}
    assert load.busy and 0.65 > BUSY_SHARE
    assert busy_note(load.result).startswith("other processes took 65% of this machine's CPU time (13 CPU-s on 2 CPUs)")


def test_a_bench_gives_the_advice_once():
    assert machine_load.advise_once(reset=True) is False  # a bench starts: nothing said yet
    assert [machine_load.advise_once() for _ in range(3)] == [True, False, False]
    load = {"others_cpu_s": 13.0, "others_share": 0.65, "cpus": 2, "wall_s": 10.0}
    assert machine_load.ADVICE in busy_note(load) and busy_note(load, advice=False).endswith("cost alone.")


def test_not_measured_gives_none():
    with OtherCpuUse(measure=False) as load:
        assert not hasattr(load, "_start")  # nothing read on entry either
    assert load.result is None and not load.busy


@pytest.mark.parametrize("share, marked", [(0.02, False), (0.4, True), (None, False)])
def test_leaderboard_marks_a_stage_time_taken_on_a_shared_machine(share, marked):
    from latentbench.benchmark.leaderboard import shared_cpu

    load = None if share is None else {"others_cpu_s": 8.0, "others_share": share, "cpus": 2, "wall_s": 10.0}
    assert shared_cpu({"machine_load": {"train": load, "eval": None}}) is marked
    short = {"others_cpu_s": 0.4, "others_share": 0.5, "cpus": 2, "wall_s": 0.4}  # a stage of a fraction of a second
    assert shared_cpu({"machine_load": {"record": short}}) is False
    assert shared_cpu({}) is False  # records from before the measurement


def test_perf_table_says_it_was_measured_on_a_shared_machine():
    from latentbench.benchmark.perf import format_table

    result = {"matmul_peak_gflops": {"fp32": 190.0, "bf16": 410.0}, "rows": [], "steps": 8,
              "machine_load": {"others_cpu_s": 120.0, "others_share": 0.3, "cpus": 2, "wall_s": 200.0}}
    assert "Measured on a shared machine: other processes took 30% of this machine's CPU time" in format_table(result)
    assert "shared machine" not in format_table({**result, "machine_load": None})
    assert "shared machine" not in format_table({k: v for k, v in result.items() if k != "machine_load"})


def test_since_process_start_measures_from_the_mark(monkeypatch):
    monkeypatch.setattr(machine_load, "_since_start", None)
    assert machine_load.since_process_start() is None  # run_bench from Python: it measures its own window instead
    machine_load.watch_from_process_start()
    load = machine_load.since_process_start()
    assert set(load) == {"others_cpu_s", "others_share", "cpus", "wall_s"} and load["wall_s"] >= 0
