"""Training memory of the paper-size generator configs, measured on this CPU, scaled to a GPU's batch.

For each config one training step (bf16 autocast, AdamW, EMA copy) runs in a fresh process at
batch 1 and at batch 2; the peak resident memory of each process is read from the kernel
(``ru_maxrss``). The difference is the memory one more sample costs (activations saved for
backward); the rest is weights, gradients, optimizer and EMA state plus the interpreter. The
estimate for a GPU at per-device batch B is then ``base + B * per_sample``. CPU SDPA runs a
flash-style kernel (no seq x seq matrix kept), as CUDA does; the CUDA context (~0.5 GiB) and
allocator slack are not included.

    python benchmarks/paper_memory.py [--per-gpu-batch 32]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CONFIGS = [  # (generator config, latent shape per sample, what it is for)
    ("lightningdit-xl-1", [4, 32, 32], "SD-VAE f8 (32x32x4)"),
    ("lightningdit-xl-1", [768, 16, 16], "RAE DINOv2-B (16x16x768)"),
    ("lightningdit-xl-1", [128, 32], "MAETok (128 tokens x 32)"),
    ("dit-dh-xl", [768, 16, 16], "RAE DINOv2-B, DiT-DH-XL"),
    ("maskgit-l", [256, 18], "FlowMo-Lo (256 tokens x 18 bits)"),
]

STEP = r"""
import json, resource, sys, torch
from latentbench.generators.module import build_generator, resolve_generator
name, shape, batch = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
gen = resolve_generator(name)
net = build_generator(gen.name, tuple(shape), 1000, gen.init_args, gen.transport)
ema = [p.detach().clone() for p in net.parameters()]
opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
discrete = name.startswith("maskgit")
z = torch.randint(0, 2, (batch, *shape)).float() * 2 - 1 if discrete else torch.randn(batch, *shape)
y = torch.zeros(batch, dtype=torch.long)
with torch.autocast("cpu", dtype=torch.bfloat16):
    loss = net.training_losses(z, y)["loss"].mean()
loss.backward()
opt.step()
print(json.dumps({"params": sum(p.numel() for p in net.parameters()), "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def peak(name: str, shape: list[int], batch: int) -> dict:
    out = subprocess.run([sys.executable, "-c", STEP, name, json.dumps(shape), str(batch)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-gpu-batch", type=int, default=32, help="per-GPU batch (paper: 256 over 8 GPUs = 32)")
    args = parser.parse_args()
    print(f"| generator | latent | params | state + base (GiB) | per sample (GiB) | at {args.per_gpu_batch}/GPU (GiB) |")
    print("|---|---|---|---|---|---|")
    for name, shape, what in CONFIGS:
        one, two = peak(name, shape, 1), peak(name, shape, 2)
        per_sample = max(two["rss_kib"] - one["rss_kib"], 0) / 2**20
        base = one["rss_kib"] / 2**20 - per_sample
        total = base + args.per_gpu_batch * per_sample
        print(f"| {name} | {what} | {one['params'] / 1e6:.0f}M | {base:.1f} | {per_sample:.2f} | {total:.0f} |", flush=True)


if __name__ == "__main__":
    main()
