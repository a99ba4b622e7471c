"""torchrun as ``bench --devices N`` runs it (``distributed.maybe_relaunch``): ``python -m latentbench.torchrun ARGS``.

Only what torchrun prints when it is interrupted differs: Ctrl-C or SIGTERM of the launcher ends with one line and exit
code 128 + the signal, not torchrun's traceback of its own wait loop (its processes, stopped with the same signal, have
said what is kept). Everything else is ``torch.distributed.run``'s.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except SignalException as e:
        from latentbench.signals import exit_interrupted

        print(f"latentbench: the launcher got signal {int(e.sigval)} and stopped its processes", file=sys.stderr)
        exit_interrupted(128 + int(e.sigval))


if __name__ == "__main__":
    main()
