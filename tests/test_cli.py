import subprocess
import sys

import pytest

from latentbench.cli import main


def test_list_shows_tokenizers_and_protocols(capsys):
    main(["list"])
    out = capsys.readouterr().out
    assert "sdvae-ci" in out and "sdvae-f8" in out and "smoke" in out and "sdvae->sdvae-ci" in out


@pytest.mark.parametrize("args, message", [
    (["bench", "--tokenizer", "nope", "--protocol", "smoke"], "unknown tokenizer 'nope'"),
    (["bench", "--protocol", "nope"], "no protocol 'nope'"),
    (["bench", "--protocol", "smoke", "--ckpt", "/does/not/exist.pt"], "does/not/exist.pt"),
])
def test_errors_exit_nonzero_with_one_clear_line(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "latentbench.cli", *args, "--runs_dir", str(tmp_path), "--leaderboard_dir", str(tmp_path / "lb")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "lb").exists()
