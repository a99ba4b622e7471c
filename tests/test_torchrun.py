"""``python -m latentbench.torchrun``, the launcher of ``bench --devices N``: how it ends when its processes fail."""
import subprocess
import sys

import pytest

FAILING = """import os
import sys

print(f"latentbench: error: rank {os.environ['RANK']} refuses", file=sys.stderr)
sys.exit(2)
"""
KILLED = """import os
import signal

if os.environ["RANK"] == "1":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("script, code, line", [
    (FAILING, 2, "latentbench: process "),
    (KILLED, 128 + 9, "latentbench: process 1 was killed by signal 9 (SIGKILL), so the launcher stopped the bench; "
                      "SIGKILL from outside is often the kernel's out-of-memory killer"),
])
def test_a_failed_process_ends_the_launcher_in_one_line_with_its_exit_code(tmp_path, script, code, line):
    """Each process of a failed `bench --devices N` had printed its one-line error, but torchrun then raised
    ChildFailedError: a traceback and a report of every rank (some 100 lines for 8 processes) after it, exit code 1."""
    (tmp_path / "worker.py").write_text(script)
    proc = subprocess.run([sys.executable, "-m", "latentbench.torchrun", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "worker.py")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.rstrip().splitlines()[-1].startswith(line), proc.stderr[-3000:]
    if script is FAILING:  # whichever process ended first (its rank varies), its exit code is the launcher's
        assert proc.stderr.rstrip().endswith("ended with exit code 2, so the launcher stopped the bench: the error is "
                                             "printed above")
        assert "latentbench: error: rank 0 refuses" in proc.stderr and "latentbench: error: rank 1 refuses" in proc.stderr


def test_the_line_for_one_failed_process_and_for_an_unknown_signal():
    from latentbench.torchrun import failed_line

    assert failed_line(3, 2) == "process 3 ended with exit code 2, so the launcher stopped the bench: the error is printed above"
    assert failed_line(0, -200).startswith("process 0 was killed by signal 200 (an unknown signal), so the launcher")
