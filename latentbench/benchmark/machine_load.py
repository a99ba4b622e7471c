"""How much of the machine's CPU other processes took while a bench stage ran.

A stage's wall time is its cost only on an otherwise idle machine. On the 2-core CPU of the
README's Cost section, a test run and another helper beside a FlowMo bench made its training
steps 25-30x slower (12 s instead of 0.4 s: PyTorch's OpenMP threads wait for each other at
every operation when one of them is preempted), and nothing in the record said so.

``OtherCpuUse`` measures it: the machine's busy CPU time over the stage (``psutil.cpu_times``:
user, nice, system, irq, softirq and steal, i.e. a hypervisor's other guests too) minus the CPU
time of this process and its descendants (DataLoader workers included, living or finished), as
a share of wall time x logical CPUs. The bench logs a warning above ``BUSY_SHARE``, stores the
figures with each stage, and the leaderboard marks the row's stage time.

Measured only in a single-process run: the other ranks of a DDP run on this node are not this
process's descendants (a launcher's siblings), so they would count as other processes.
"""
from __future__ import annotations

import time
from typing import Any

import psutil

# other processes' share of the machine's CPU above which a stage's time is marked as not its cost alone,
# once they took at least BUSY_MIN_CPU_S (a stage of a fraction of a second is not worth a warning)
BUSY_SHARE = 0.10
BUSY_MIN_CPU_S = 1.0
# what to do about it, measured (README, Cost): one busy loop beside a smoke bench on 2 cores
ADVICE = ("PyTorch's threads wait for each other when another process holds a core (a 14x slower smoke training was "
          "measured): stop the other work, or give the bench fewer threads (OMP_NUM_THREADS=1: 2.3x slower, not 14x; the "
          "numbers then differ in training numerics, as on another machine)")
_IDLE_FIELDS = ("idle", "iowait", "guest", "guest_nice")  # not busy; guest time is already counted in user


def machine_busy_seconds() -> float:
    """CPU seconds all logical CPUs have spent busy since boot."""
    times = psutil.cpu_times()
    return sum(getattr(times, f) for f in times._fields if f not in _IDLE_FIELDS)


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its living descendants, each with its finished children's."""
    me = psutil.Process()
    total = 0.0
    for proc in (me, *me.children(recursive=True)):
        try:
            t = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # ended between listing and reading: its parent has it
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


class OtherCpuUse:
    """Context manager: CPU time other processes used on this machine while the block ran.

    After the block, ``result`` is ``{"others_cpu_s", "others_share", "cpus", "wall_s"}`` (share:
    of wall time x logical CPUs, clipped to [0, 1]), or None when ``measure`` is False.
    """

    def __init__(self, measure: bool = True):
        self.measure = measure
        self.result: dict[str, Any] | None = None

    def __enter__(self) -> OtherCpuUse:
        if self.measure:
            self._start = (time.perf_counter(), machine_busy_seconds(), own_cpu_seconds())
        return self

    def __exit__(self, *exc) -> None:
        self.result = self.so_far()

    def so_far(self) -> dict[str, Any] | None:
        """The figures from entering the block until now (the block goes on); None when not measuring."""
        if not self.measure:
            return None
        wall0, busy0, own0 = self._start
        wall = time.perf_counter() - wall0
        others = max(0.0, (machine_busy_seconds() - busy0) - (own_cpu_seconds() - own0))
        cpus = psutil.cpu_count() or 1
        return {"others_cpu_s": round(others, 2), "others_share": round(min(1.0, others / max(wall * cpus, 1e-9)), 4),
                "cpus": cpus, "wall_s": round(wall, 2)}

    @property
    def busy(self) -> bool:
        """Whether other processes took a noticeable share of the machine's CPU (``is_busy``)."""
        return is_busy(self.result)


_since_start: OtherCpuUse | None = None  # measuring since the command started (``watch_from_process_start``)


def watch_from_process_start() -> None:
    """Start measuring other processes' CPU use now, for ``since_process_start`` (the CLI calls it first thing)."""
    global _since_start
    _since_start = OtherCpuUse().__enter__()


def since_process_start() -> dict[str, Any] | None:
    """Other processes' CPU use since ``watch_from_process_start`` (None: it was not called, e.g. ``run_bench`` from
    Python): the window a bench has, before its stages, to say that the machine is busy."""
    return _since_start.so_far() if _since_start is not None else None


def is_busy(load: dict[str, Any] | None, min_cpu_s: float = BUSY_MIN_CPU_S) -> bool:
    """Whether a stage's ``machine_load`` shows other processes above ``BUSY_SHARE`` (and ``min_cpu_s``)."""
    return load is not None and load["others_share"] > BUSY_SHARE and load["others_cpu_s"] >= min_cpu_s


_advised = False  # whether a warning of this bench gave ADVICE already (``advise_once``)


def advise_once(reset: bool = False) -> bool:
    """Whether a busy warning now should carry ``ADVICE``: a bench's first does, the ones after it state the fact
    alone (one stage after another would repeat the paragraph). ``reset`` starts a bench: nothing given yet."""
    global _advised
    if reset:
        _advised = False
        return False
    first, _advised = not _advised, True
    return first


def busy_now_note(load: dict[str, Any]) -> str:
    """The warning, before the stages start, that other processes are busy on this machine (``busy_note``'s advice)."""
    return (f"other processes are using this machine's CPU: {load['others_share']:.0%} of it over the bench's first "
            f"{load['wall_s']:.0f} s. The stages will run slower than their usual times, and the record and the table "
            "will say so. " + (ADVICE if advise_once() else ""))


def busy_note(load: dict[str, Any], advice: bool = True) -> str:
    """The warning line for a stage whose ``machine_load`` is busy, with what to do unless ``advice`` is False."""
    fact = (f"other processes took {load['others_share']:.0%} of this machine's CPU time ({load['others_cpu_s']:.0f} CPU-s "
            f"on {load['cpus']} CPUs) while it ran, so its {load['wall_s']:.0f} s are not this run's cost alone")
    return f"{fact}. {ADVICE}" if advice else f"{fact}."
