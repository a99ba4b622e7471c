"""The ``latentbench`` command (jsonargparse subcommands).

    latentbench list                                  registered tokenizers and shipped protocols
    latentbench bench --tokenizer sdvae --protocol ci train, reconstruct, measure, record
"""
from __future__ import annotations

import sys
from typing import Literal, Optional

from latentbench.paths import LEADERBOARD_DIR, RUNS_DIR


def bench(
    tokenizer: str = "sdvae",
    protocol: str = "ci",
    ckpt: Optional[str] = None,
    trust_checkpoint: bool = False,
    train_steps: Optional[int] = None,
    seed: Optional[int] = None,
    on_bad_image: Literal["error", "skip"] = "error",
    runs_dir: str = str(RUNS_DIR),
    leaderboard_dir: str = str(LEADERBOARD_DIR),
) -> None:
    """Bench a tokenizer under a protocol and append its row to the protocol's leaderboard.

    Args:
        tokenizer: family alias (sdvae), registered name (sdvae-ci), your own class as
            package.module:Class, or a YAML file with name/class_path, init_args, module_args.
        protocol: shipped protocol name (smoke, ci, imagenet256) or a protocol YAML file.
        ckpt: evaluate these weights instead of training (safetensors, or a torch file that
            loads with weights_only=True; a Lightning checkpoint's tokenizer.* keys work).
        trust_checkpoint: allow a torch checkpoint that needs full unpickling (runs code from the file).
        train_steps: override the protocol's training budget (0 = evaluate as built, for pretrained weights).
        seed: override the protocol's seed.
        on_bad_image: unreadable images abort naming the file (error) or are skipped and counted (skip).
        runs_dir: where run directories (checkpoints, TensorBoard logs, stage results) go.
        leaderboard_dir: root of the leaderboard tables.
    """
    from latentbench.benchmark.harness import run_bench

    record = run_bench(tokenizer, protocol, ckpt, trust_checkpoint, train_steps, seed, on_bad_image, runs_dir, leaderboard_dir)
    metrics = ", ".join(f"{k} {v['value']:.4g} (n={v['n']})" for k, v in record["metrics"].items())
    print(f"{record['tokenizer']['name']} under {record['protocol']['name']} v{record['protocol']['version']}: {metrics}")
    print(f"wall time per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in record["wall_time_s"].items()))
    print(f"leaderboard: {leaderboard_dir}/{record['protocol']['name']}/v{record['protocol']['version']}/README.md")


def list_(kind: Literal["all", "tokenizers", "protocols"] = "all") -> None:
    """List registered tokenizers and shipped protocols.

    Args:
        kind: what to list.
    """
    from latentbench.benchmark.protocol import available_protocols, load_protocol
    from latentbench.tokenizers import TOKENIZERS

    if kind in ("all", "tokenizers"):
        print("tokenizers:")
        for name in TOKENIZERS.names():
            print(f"  {name:<16} {TOKENIZERS.help(name)}")
    if kind in ("all", "protocols"):
        print("protocols:")
        for name in available_protocols():
            proto = load_protocol(name)
            aliases = ", ".join(f"{k}->{v}" for k, v in proto.tokenizers.items())
            print(f"  {name:<16} v{proto.version}  {proto.description}  [{aliases}]")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run a subcommand; known errors print one clear line and exit 2."""
    from jsonargparse import CLI

    from latentbench.weights import UnsafeCheckpointError, WeightsUnavailable

    from latentbench.data import BadImageError
    try:
        CLI({"bench": bench, "list": list_}, args=argv, as_positional=False)
    except (ValueError, KeyError, FileNotFoundError, ImportError, TypeError,
            ConnectionError, WeightsUnavailable, UnsafeCheckpointError, BadImageError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"latentbench: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
