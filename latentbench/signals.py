"""SIGTERM as Ctrl-C: ``kill``, a scheduler's time limit or torchrun passing either on stops the command where it is.

Python ends a process on SIGTERM by the signal's default action: no ``finally`` block runs and nothing says what
is kept. The ``latentbench`` command (``cli.main``) raises :class:`Terminated` instead, a ``KeyboardInterrupt`` (so
Lightning, and loader workers that get the signal too, take it as Ctrl-C), and a SIGTERM unwinds every stage as Ctrl-C
does (the atomic writes drop their temporary files, a row lands with its table or not at all) and ends in Ctrl-C's
line, "terminated (SIGTERM)" for "interrupted", with exit code 143.

Lightning installs its own SIGTERM handler during a fit and calls the one it found after its own, which on several
processes broadcasts to the other ranks from inside the handler: a collective they need not be in at that moment
(each rank gets the signal wherever it is), so the processes of ``bench --devices 2`` could wait out torchrun's 30 s
of grace and be killed. The bench's Trainers put this module's handler back once the fit has installed Lightning's
(``harness.SigtermInterrupts`` calls :func:`reinstall`); Lightning restores what it found when the fit ends. Other
signals (SLURM's requeue signal, SIGUSR1) stay Lightning's.
"""
from __future__ import annotations

import gc
import signal
import sys
import threading
from typing import Any

_state = {"installed": False, "terminating": False}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's ``KeyboardInterrupt`` would be (and handled as it is)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    if _state["terminating"]:  # a second SIGTERM while the first unwinds: let its clean-up finish
        return
    _state["terminating"] = True
    raise Terminated


def sigterm_interrupts() -> Any:
    """Make SIGTERM raise :class:`Terminated` in this process (the main thread's; elsewhere a no-op).

    Returns:
        the handler it replaced, for :func:`restore`.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    _state.update(installed=True, terminating=False)
    return signal.signal(signal.SIGTERM, _raise_terminated)


def restore(previous: Any) -> None:
    """Put back the SIGTERM handler :func:`sigterm_interrupts` replaced."""
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)
    _state["installed"] = False


def reinstall() -> None:
    """In a fit, where :func:`sigterm_interrupts` was called: SIGTERM raises :class:`Terminated` again, not after
    Lightning's handler (see the module). Nothing where it was not (a caller's own ``run_bench`` keeps Lightning's)."""
    if _state["installed"] and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def exit_interrupted(code: int) -> None:
    """``sys.exit(code)`` without the interpreter's last garbage collections over torch's and Lightning's objects:
    5.4 s of a smoke bench's exit on a busy 2-core CPU, 0.75 s without. Everything was written and closed as the
    interrupt unwound, and a scheduler's grace after its SIGTERM is short; exit handlers still run."""
    gc.freeze()
    sys.exit(code)
