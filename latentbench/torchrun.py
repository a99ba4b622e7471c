"""torchrun as ``bench --devices N`` runs it (``distributed.maybe_relaunch``): ``python -m latentbench.torchrun ARGS``.

Only what torchrun prints when it ends early differs from ``torch.distributed.run``'s:

- Ctrl-C or SIGTERM of the launcher ends with one line and exit code 128 + the signal, not torchrun's traceback of
  its own wait loop (its processes, stopped with the same signal, have said what is kept).
- A process that fails ends the launcher with one line and that process's exit code (2 for a bench's refusal, as
  on one process), not torchrun's traceback and its report of every rank (some 100 lines for 8 processes, which
  buried the refusal each process had already printed, and exit code 1). A process killed by a signal, which
  printed nothing, is named with the signal.
"""
from __future__ import annotations

import signal
import sys


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except SignalException as e:
        from latentbench.signals import exit_interrupted

        print(f"latentbench: the launcher got signal {int(e.sigval)} and stopped its processes", file=sys.stderr)
        exit_interrupted(128 + int(e.sigval))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()  # torchrun's root cause: the earliest failure
        print(f"latentbench: {failed_line(rank, failure.exitcode)}", file=sys.stderr)
        sys.exit(128 - failure.exitcode if failure.exitcode < 0 else failure.exitcode)


def failed_line(rank: int, exitcode: int) -> str:
    """What the launcher says when process ``rank`` ended first, with ``exitcode`` (negative: killed by that signal).
    The processes' own errors are printed above it: which one ended first says little (a rank that stops because rank
    0 did repeats rank 0's error), so an exit code points there; a signal, after which nothing was printed, is named."""
    if exitcode >= 0:
        return f"process {rank} ended with exit code {exitcode}, so the launcher stopped the bench: the error is printed above"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = "an unknown signal"
    oom = "; SIGKILL from outside is often the kernel's out-of-memory killer" if -exitcode == signal.SIGKILL else ""
    return (f"process {rank} was killed by signal {-exitcode} ({name}), so the launcher stopped the bench{oom}; rerun "
            "the same command to go on from its finished stages")


if __name__ == "__main__":
    main()
