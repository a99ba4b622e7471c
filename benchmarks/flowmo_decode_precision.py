"""How far bf16-autocast decoding, and another decoder seed, move FlowMo's `ci` reconstruction metrics.

Reconstructs the `ci` eval split (1,000 images) with a finished flowmo-ci bench's 1b and 1a
weights three ways: float32 with the bench's decoder seed (reproduces the committed row),
bf16 autocast with the same seed, and float32 with another seed. The seed-to-seed difference is
the yardstick the bf16 difference is judged by. About 7 minutes on a 2-core CPU.

    .venv/bin/python benchmarks/flowmo_decode_precision.py runs/ci/v2/flowmo-ci-<key> [--out result.json]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from latentbench.benchmark.evaluate import reconstruct
from latentbench.benchmark.harness import BenchConfig, _dataset, build_metrics, load_for_decoding, resolve_tokenizer
from latentbench.benchmark.protocol import load_protocol


@contextlib.contextmanager
def bf16_decoding(tokenizer) -> Iterator[None]:
    """``tokenizer.decode`` under CPU bf16 autocast inside the block (its signature kept: it takes a generator)."""
    plain = tokenizer.decode

    @functools.wraps(plain)
    def decode(*args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return plain(*args, **kwargs).float()

    tokenizer.decode = decode
    try:
        yield
    finally:
        del tokenizer.decode  # the class's own method again


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished flowmo-ci bench's run directory")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    proto = load_protocol("ci")
    cfg = BenchConfig(resolve_tokenizer("flowmo", proto), proto)
    data = _dataset(proto, proto.data.eval_split, proto.data.num_eval, "error")
    results = {}
    for variant, name in (("1b", "tokenizer.safetensors"), ("1a", "tokenizer-1a.safetensors")):
        weights = args.run_dir / name
        if not weights.is_file():
            raise SystemExit(f"{weights} not found: pass the run directory of a finished `make bench TOKENIZER=flowmo`")
        tokenizer, _ = load_for_decoding(cfg, weights, True)
        for label, seed, bf16 in (("fp32 seed 0", 0, False), ("bf16 seed 0", 0, True), ("fp32 seed 1", 1, False)):
            metrics = build_metrics(proto, seed)
            start = time.perf_counter()
            with bf16_decoding(tokenizer) if bf16 else contextlib.nullcontext():
                reconstruct(tokenizer, data, metrics, proto.eval.batch_size, seed)
            row = {k: v.get("value") if isinstance(v, dict) else v for k, v in metrics.results().items()}
            row["seconds"] = round(time.perf_counter() - start, 1)
            results[f"{variant} {label}"] = row
            print(variant, label, json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
