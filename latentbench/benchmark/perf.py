"""What the suite's own work costs: training step time, codec throughput, FLOPs, MFU and memory.

``latentbench perf`` (``make perf``) measures, on the machine it runs on:

* the matrix-product peak, fp32 and bf16: the best of several large square ``torch.mm`` in a
  row (the roof every MFU figure here is divided by);
* for each tokenizer config: one training step of the module the bench trains, through a
  Lightning ``Trainer`` as the bench runs it, in fp32 and under bf16 autocast (median of
  ``steps`` after ``warmup``); the FLOPs of one step (``torch.utils.flop_counter.FlopCounterMode``
  around a whole step: forward, backward, every loss network, counted once, not timed); encode and
  decode images per second in eval mode (fp32, as evaluation runs, and bf16); with ``--compile``,
  also the decode rate of the networks ``bench --compile`` compiles (``compile_decoding``) and
  what compiling cost;
* for each generator config: the same for one training step on latents of the tokenizer it
  serves, and sampling throughput;
* peak resident memory: every config is measured in its own process (``ru_maxrss``).

It measures the CPU, even on a machine with a GPU, and the first steps of a training: a GAN that
starts later (``disc_start``) or a later stage (MAETok's decoder fine-tuning, FlowMo's 1b) is not in
them. The `ci` configs train no GAN.

On a CPU without fast bf16 (``latentbench.precision``: AVX2 only, where bf16 runs ~100x slower
than fp32 and the bench trains in fp32) the bf16 columns are skipped and say why; the bf16 roof is
still measured, on small matrices.

MFU = achieved FLOP/s of a step / the measured matrix-product peak of the same precision. It
counts matrix products, convolutions and attention only (what FlopCounterMode counts), so it is
the fraction of the machine's matmul roof a step reaches.

The results are printed as a table and written (atomically) as JSON; ``leaderboard`` renders a
cost table from it beside each protocol's results.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latentbench.paths import LEADERBOARD_DIR

PERF_PATH = LEADERBOARD_DIR / "perf" / "perf.json"
PERF_SCHEMA = 2  # 2: sampling rate under one key, ``sample_img_s``, with ``sample_precision``


@dataclass(frozen=True)
class Target:
    """One configuration to measure: a tokenizer (bench training module) or a generator on a tokenizer's latents."""

    kind: str  # "tokenizer" or "generator"
    name: str  # tokenizer alias/registry name, or generator config
    latent_of: str | None = None  # generators: the tokenizer whose latent shape it trains on

    @property
    def label(self) -> str:
        name = Path(self.name).stem if self.name.endswith((".yaml", ".yml")) else self.name
        return name if self.kind == "tokenizer" else f"{name} on {self.latent_of}"


# The CPU configs: what `make bench` trains. Paper sizes can be named with `--targets`, but perf measures on this
# machine's CPU (its Trainer, autocast and matmul roof are the CPU's) even where a GPU is present.
DEFAULT_TARGETS = (
    Target("tokenizer", "sdvae"), Target("tokenizer", "maetok"), Target("tokenizer", "flowmo"), Target("tokenizer", "rae"),
    Target("generator", "dit-ci", "sdvae"), Target("generator", "dit-ci", "maetok"), Target("generator", "dit-ci", "rae"),
    Target("generator", "maskgit-ci", "flowmo"),
)


def parse_target(text: str) -> Target:
    """``sdvae`` (a tokenizer) or ``dit-ci@sdvae`` (a generator config on that tokenizer's latents)."""
    if "@" in text:
        name, latent_of = text.split("@", 1)
        if not name or not latent_of:  # 'dit-ci@' was looked up as a tokenizer named dit-ci
            raise ValueError(f"--targets {text!r}: a generator target is GENERATOR@TOKENIZER, e.g. dit-ci@sdvae")
        return Target("generator", name, latent_of)
    return Target("tokenizer", text)


# ---- the machine's roof ---------------------------------------------------------------------------

def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10, rounds: int = 5) -> float:
    """Best GFLOP/s of ``repeats`` back-to-back n x n x n ``torch.mm`` over ``rounds`` (2 n^3 FLOPs each)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    out = torch.empty(n, n, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b, out=out)
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b, out=out)
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


# ---- timing a Lightning training step -------------------------------------------------------------

def step_clock(count_step: int):
    """A Lightning callback recording each training step's wall time (batch start to batch start) and one step's FLOPs.

    Step ``count_step`` runs under ``FlopCounterMode`` and is not timed. Built by a function so
    that importing this module (the leaderboard reads perf.json) does not import Lightning.
    """
    from lightning.pytorch.callbacks import Callback
    from torch.utils.flop_counter import FlopCounterMode

    class StepClock(Callback):
        def __init__(self):
            self.times: list[float] = []
            self.flops = 0
            self.last: float | None = None
            self.counter: FlopCounterMode | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            now = time.perf_counter()
            if self.last is not None:
                self.times.append(now - self.last)
            self.last = now
            if trainer.global_step == count_step:
                self.counter = FlopCounterMode(display=False)
                self.counter.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.counter is not None:
                self.counter.__exit__(None, None, None)
                self.flops = self.counter.get_total_flops()
                self.counter = None
                self.last = None  # the counted step is slow: the interval ending at the next start is not timed

    return StepClock()


def _train_steps(module, loader, precision: str, steps: int, warmup: int) -> dict[str, Any]:
    """Run ``warmup + 1 + steps + 1`` optimizer steps: ``warmup`` untimed ones, one FLOP-counted (not timed), then
    ``steps`` timed ones; the last step is run only to close the interval of the one before (batch start to batch
    start), and is not timed itself."""
    import lightning as L

    from latentbench.benchmark.harness import _quiet_lightning

    _quiet_lightning()
    clock = step_clock(count_step=warmup)
    trainer = L.Trainer(max_steps=warmup + 1 + steps + 1, max_epochs=-1, precision=precision, accelerator="cpu", devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[clock])
    trainer.fit(module, train_dataloaders=loader)
    timed = clock.times[warmup:]  # the intervals after warm-up, the FLOP-counted step excluded
    return {"step_s": statistics.median(timed) if timed else None, "steps_timed": len(timed), "flops": clock.flops}


# ---- one target, in this process -----------------------------------------------------------------------

def _tokenizer_module(name: str, protocol):
    from latentbench.benchmark.spec import resolve_tokenizer

    spec = resolve_tokenizer(name, protocol)
    module = spec.module_class()(spec.name, spec.init_args, max_steps=protocol.train.max_steps, **spec.module_args)
    return spec, module


def _loader(dataset, batch_size: int):
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def _codec_rate(tokenizer, images: torch.Tensor, bf16: bool, repeats: int = 3, budget_s: float = 20.0) -> tuple[float, float]:
    """(encode images/s, decode images/s): best of ``repeats`` passes over ``images`` in eval mode.

    Passes stop early once ``budget_s`` is spent (at least one runs): a multi-step decoder
    (FlowMo's 25 steps, ~30 s per pass of 250 images in fp32) is timed on one pass, not three.
    """
    from latentbench.tokenizers import decode_seeded

    tokenizer.eval()
    enc, dec, spent = float("inf"), float("inf"), 0.0
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(repeats):
            start = time.perf_counter()
            z = tokenizer.encode(images)
            mid = time.perf_counter()
            decode_seeded(tokenizer, z, seed=0)
            end = time.perf_counter()
            enc, dec, spent = min(enc, mid - start), min(dec, end - mid), spent + end - start
            if spent > budget_s:
                break
    return len(images) / enc, len(images) / dec


def _compiled_decode_rate(tokenizer, images: torch.Tensor) -> dict[str, Any]:
    """Decode images/s after ``compile_decoding`` (as ``bench --compile`` decodes), and the compile cost.

    ``compile_s`` is the first compiled pass's time beyond a steady pass: compiling, or loading the
    kernels from TorchInductor's on-disk cache when an earlier run filled it. Empty for a tokenizer
    that names nothing to compile.
    """
    from latentbench.tokenizers import compile_decoding, decode_seeded

    names = compile_decoding(tokenizer)
    if not names:
        return {"compiled": []}
    with torch.no_grad():
        z = tokenizer.encode(images)
        start = time.perf_counter()
        decode_seeded(tokenizer, z, seed=0)
        first = time.perf_counter() - start
    _, rate = _codec_rate(tokenizer, images, bf16=False)
    return {"compiled": names, "decode_img_s_compiled": rate, "compile_s": max(first - len(images) / rate, 0.0)}


def measure_target(target: Target, protocol_name: str = "ci", steps: int = 8, warmup: int = 3,
                   precisions: tuple[str, ...] = ("32-true", "bf16-mixed"), batch_size: int | None = None,
                   compile: bool = False) -> dict[str, Any]:
    """Step times, FLOPs, codec or sampling throughput of ``target`` (in this process).

    ``batch_size`` overrides the protocol's training batch (None: the protocol's). ``compile``
    also times a tokenizer's compiled decoding (``_compiled_decode_rate``).
    """
    from latentbench.benchmark.harness import _dataset, load_tokenizer
    from latentbench.benchmark.protocol import load_protocol

    torch.manual_seed(0)
    proto = load_protocol(protocol_name)
    data = _dataset(proto, proto.data.train_split, proto.data.num_train, "error")
    row: dict[str, Any] = {"target": target.label, "kind": target.kind, "name": target.name, "protocol": proto.id}
    if target.kind == "tokenizer":
        batch = batch_size or proto.train.batch_size
        if batch > len(data):  # the loader drops an incomplete batch: no step would run, and the row would be all n/a
            raise ValueError(f"a training batch of {batch} images is more than the {len(data)} images of {proto.id}'s "
                             f"training split, so no step could be timed: give --batch_size {len(data)} or less")
        for precision in precisions:
            spec, module = _tokenizer_module(target.name, proto)
            row[precision] = _train_steps(module, _loader(data, batch), precision, steps, warmup)
        row["tokenizer"] = spec.name
        tokenizer = load_tokenizer(spec, None)
        images = torch.stack([data[i][0] for i in range(proto.eval.batch_size)])
        row["encode_img_s"], row["decode_img_s"] = _codec_rate(tokenizer, images, bf16=False)
        if "bf16-mixed" in precisions:
            row["encode_img_s_bf16"], row["decode_img_s_bf16"] = _codec_rate(tokenizer, images, bf16=True)
        if compile:
            row.update(_compiled_decode_rate(tokenizer, images))
    else:
        from torch.utils.data import TensorDataset

        from latentbench.benchmark.spec import resolve_tokenizer
        from latentbench.generators.module import GeneratorModule, resolve_generator

        spec = resolve_tokenizer(target.latent_of, proto)
        tokenizer = load_tokenizer(spec, None)
        shape = tuple(tokenizer.latent_spec.shape)
        discrete = tokenizer.latent_spec.bits_per_token is not None
        gen = resolve_generator(target.name)
        g = torch.Generator().manual_seed(0)
        n = 4 * (batch_size or proto.generator.batch_size)
        z = (torch.randint(0, 2, (n, *shape), generator=g) * 2 - 1).float() if discrete else torch.randn(n, *shape, generator=g)
        classes = data.info["num_classes"]  # the protocol's, as the bench's generator gets them (10 for MNIST)
        y = torch.randint(0, classes, (n,), generator=g)
        batch = batch_size or proto.generator.batch_size
        for precision in precisions:
            module = GeneratorModule(gen.name, list(shape), classes, gen.init_args, gen.transport, max_steps=1000, **gen.module_args)
            row[precision] = _train_steps(module, _loader(TensorDataset(z, y), batch), precision, steps, warmup)
        row["latent_shape"] = list(shape)
        net = module.generator.eval()
        labels = torch.arange(proto.generator.sample_batch_size) % classes
        bf16 = "bf16-mixed" in precisions  # sampling in the precision the bench trains in
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            net.sample(labels[:2], [0, 1])  # a warm-up: the timed call is not the first one through the network
            start = time.perf_counter()
            net.sample(labels, list(range(len(labels))))
            row["sample_img_s"] = len(labels) / (time.perf_counter() - start)
        row["sample_precision"] = "bf16-mixed" if bf16 else "32-true"
    row["batch"] = batch
    row["peak_rss_gib"] = peak_rss_gib()
    return row


def peak_rss_gib() -> float:
    """This process's peak resident memory in GiB: ``ru_maxrss`` is in KiB on Linux, in bytes on macOS."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**30 if sys.platform == "darwin" else 2**20)


# ---- the command ---------------------------------------------------------------------------------------

def _in_subprocess(target: Target, protocol: str, steps: int, warmup: int, batch_size: int | None = None,
                   bf16: bool = True, compile: bool = False) -> dict[str, Any]:
    """``measure_target`` in a fresh process, so its peak memory is its own."""
    text = f"{target.kind}|{target.name}|{target.latent_of or ''}"
    cmd = [sys.executable, "-m", "latentbench.benchmark.perf", text, protocol, str(steps), str(warmup), str(batch_size or 0),
           "32-true,bf16-mixed" if bf16 else "32-true", str(int(compile))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    refused = _refusal(proc.stdout) if proc.returncode == 2 else None
    if refused is not None:  # missing weights, a bad config: its one line, as the command would end on it in-process
        raise ValueError(f"measuring {target.label}: {refused}")
    if proc.returncode != 0:  # anything else is a bug, whose traceback says where
        raise RuntimeError(f"measuring {target.label} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _refusal(stdout: str) -> str | None:
    """The one-line error a ``_in_subprocess`` child ended with (``{"refused": ...}``, its last line), or None."""
    lines = stdout.strip().splitlines()
    try:
        last = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return last.get("refused") if isinstance(last, dict) else None


def summarize(row: dict[str, Any], peak: dict[str, float]) -> dict[str, Any]:
    """Add GFLOP/s and MFU per precision to a measured row."""
    for precision, roof in (("32-true", peak["fp32"]), ("bf16-mixed", peak["bf16"])):
        r = row.get(precision)
        if r and r.get("step_s"):
            r["gflops_per_s"] = r["flops"] / r["step_s"] / 1e9
            r["mfu"] = r["gflops_per_s"] / roof
    return row


def check_counts(steps: int, warmup: int, batch_size: int | None) -> None:
    """ValueError for a count that cannot be measured, before anything is.

    Args:
        steps: timed training steps per precision (their median is reported).
        warmup: untimed steps first.
        batch_size: the training batch, or None for the protocol's.
    """
    if steps < 1:
        raise ValueError(f"--steps must be >= 1 (timed steps, whose median is reported), got {steps}")
    if warmup < 0:
        raise ValueError(f"--warmup must be >= 0 (untimed steps before the timed ones), got {warmup}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1 (leave it out for the protocol's), got {batch_size}")


def check_targets(targets: list[Target], protocol: str) -> None:
    """KeyError / ImportError / FileNotFoundError naming the first target that does not resolve."""
    from latentbench.benchmark.spec import resolve_tokenizer
    from latentbench.benchmark.protocol import load_protocol
    from latentbench.generators import GENERATORS
    from latentbench.generators.module import resolve_generator

    proto = load_protocol(protocol)
    for target in targets:
        resolve_tokenizer(target.latent_of or target.name, proto)
        if target.kind == "generator":
            GENERATORS.get(resolve_generator(target.name).name)


def run_perf(targets: list[Target] | None = None, protocol: str = "ci", steps: int = 8, warmup: int = 3,
             out: str | Path | None = PERF_PATH, log=print, batch_size: int | None = None, compile: bool = False) -> dict[str, Any]:
    """Measure ``targets`` (default: the CPU configs) and the matmul peak; write JSON to ``out``.

    ``compile`` also times compiled decoding where a tokenizer names networks to compile.
    """
    from tqdm.auto import tqdm

    from latentbench.benchmark.machine_load import OtherCpuUse, busy_note
    from latentbench.benchmark.provenance import provenance
    from latentbench.fsutil import atomic_write_text
    from latentbench.precision import bf16_support

    check_counts(steps, warmup, batch_size)
    targets = list(targets or DEFAULT_TARGETS)
    check_targets(targets, protocol)  # an unknown name stops here, not after a minute of timing the roof
    if compile:
        from latentbench.tokenizers.base import require_cxx_compiler

        require_cxx_compiler()  # before minutes of measuring, not after
    bf16, cpu = bf16_support("cpu")
    with OtherCpuUse() as load:  # the roof and every step below are this machine's only when nothing else runs
        # without fast bf16 a 2048^3 product takes ~20 s: the roof is measured on 256^3 products instead
        peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16) if bf16 else matmul_peak(torch.bfloat16, 256, 3, 2)}
        log(f"matmul peak on this machine: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.3g} GFLOP/s "
            f"({torch.get_num_threads()} threads)")
        if not bf16:
            log(f"bf16 steps skipped: {cpu}; the bench trains in fp32 here")
        rows = []
        for target in tqdm(targets, desc="perf", unit="config"):
            rows.append(summarize(_in_subprocess(target, protocol, steps, warmup, batch_size, bf16, compile), peak))
    if load.busy:
        log(f"warning: {busy_note(load.result)}")
    result = {"schema": PERF_SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": platform.node(),
              "cpu": cpu, "bf16_usable": bf16, "threads": torch.get_num_threads(), "matmul_peak_gflops": peak,
              "steps": steps, "warmup": warmup, "rows": rows, "provenance": provenance(),
              "machine_load": load.result}  # other processes' CPU time while it measured (machine_load.OtherCpuUse)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(result, indent=1, sort_keys=True) + "\n")
        if Path(out).resolve() == PERF_PATH.resolve():  # the committed table, and the tables' cost sections from it
            from latentbench.benchmark.leaderboard import render_all

            render_all(LEADERBOARD_DIR)
    log(format_table(result))
    if out is not None:  # elsewhere only the JSON is written: a README.md beside it may be the user's own
        log(f"wrote {out}" + (f" and {PERF_PATH.with_name('README.md')}" if Path(out).resolve() == PERF_PATH.resolve() else ""))
    return result


def _fmt(x, spec: str) -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "n/a"


def _rate(x) -> str:
    """Images/s: whole numbers, with a decimal below 100 (FlowMo decodes ~10 images/s)."""
    return _fmt(x, ".0f" if isinstance(x, (int, float)) and x >= 100 else ".1f")


def _pct(x) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "n/a"


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of a perf result."""
    from latentbench.benchmark.machine_load import busy_note, is_busy

    peak = result["matmul_peak_gflops"]
    protocols = sorted({row["protocol"] for row in result["rows"] if row.get("protocol")})
    lines = [f"{'protocol ' + ', '.join(protocols) + '; ' if protocols else ''}matmul peak: fp32 {peak['fp32']:.0f}, "
             f"bf16 {peak['bf16']:.{0 if peak['bf16'] >= 10 else 1}f} GFLOP/s; step times are medians of {result['steps']} step{'s' if result['steps'] != 1 else ''}", ""]
    if result["steps"] < 3:
        lines += [f"A median of {result['steps']} step(s) is one noisy sample on a shared machine: measure with "
                  "--steps 8 (the default) before reading ratios from it.", ""]
    if result.get("bf16_usable") is False:
        lines += [f"bf16 not measured: {result.get('cpu')}; the bench trains in fp32 on this machine.", ""]
    if is_busy(result.get("machine_load")):  # absent from results measured before it was
        lines += [f"Measured on a shared machine: {busy_note(result['machine_load'], advice=False)}", ""]
    compiled = any(row.get("decode_img_s_compiled") for row in result["rows"])
    lines += ["| config | batch | step fp32 (s) | step bf16 (s) | bf16 speedup | GFLOP/step | GFLOP/s bf16 | MFU bf16 | MFU fp32 | "
              "encode img/s | decode img/s | " + ("decode compiled img/s (compile s) | " if compiled else "")
              + "sample img/s | peak RSS (GiB) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if compiled else "")]
    for row in result["rows"]:
        fp32, bf16 = row.get("32-true") or {}, row.get("bf16-mixed") or {}
        speed = fp32["step_s"] / bf16["step_s"] if fp32.get("step_s") and bf16.get("step_s") else None
        enc = row.get("encode_img_s") and f"{_rate(row['encode_img_s'])} / {_rate(row.get('encode_img_s_bf16'))}"
        dec = row.get("decode_img_s") and f"{_rate(row['decode_img_s'])} / {_rate(row.get('decode_img_s_bf16'))}"
        lines.append(
            f"| {_config(row)} | {row['batch']} | {_fmt(fp32.get('step_s'), '.3f')} | {_fmt(bf16.get('step_s'), '.3f')} | "
            f"{_fmt(speed, '.2f') + 'x' if speed else 'n/a'} | {_fmt((bf16.get('flops') or fp32.get('flops') or 0) / 1e9, '.1f')} "
            f"| {_fmt(bf16.get('gflops_per_s'), '.0f')} | "
            f"{_pct(bf16.get('mfu'))} | {_pct(fp32.get('mfu'))} | "
            f"{enc or 'n/a'} | {dec or 'n/a'} | " + (f"{_compiled_cell(row)} | " if compiled else "")
            + f"{_rate(row.get('sample_img_s'))} | {row['peak_rss_gib']:.2f} |")
    lines.append("")
    lines.append("encode / decode: fp32 (as evaluation runs) / bf16 autocast, eval mode, at the protocol's eval batch.")
    if compiled:
        lines.append("decode compiled: fp32 after `compile_decoding` (as `bench --compile` decodes); compile s: the first "
                     "compiled pass's time beyond a steady one (compiling, or reading TorchInductor's cache).")
    return "\n".join(lines)


def _config(row: dict[str, Any]) -> str:
    """The registered config measured (``sdvae-ci``), not only the alias asked for (``sdvae``)."""
    if row.get("kind") == "tokenizer" and row.get("tokenizer") and row["tokenizer"] != row["target"]:
        return f"{row['target']} ({row['tokenizer']})"
    return row["target"]


def _compiled_cell(row: dict[str, Any]) -> str:
    if not row.get("decode_img_s_compiled"):
        return "n/a"
    return f"{_rate(row['decode_img_s_compiled'])} ({row['compile_s']:.0f})"


MFU_PNG = "mfu.png"
MFU_TARGET = 0.25  # issue 10's target for the CPU configs' training steps: a quarter of the measured bf16 roof


def render_perf_readme(path: str | Path) -> Path:
    """Write the table of the perf JSON at ``path`` as README.md beside it, with its MFU plot (``MFU_PNG``) when a
    row has an MFU (``leaderboard`` re-renders both)."""
    from latentbench.fsutil import atomic_write_text

    result = load_perf(path)
    readme = Path(path).with_name("README.md")
    plot = _plot_mfu(result, readme.with_name(MFU_PNG))
    atomic_write_text(readme, "# latentbench perf\n\n" + format_table(result) + "\n"
                      + (f"\n![training-step MFU of each config, fp32 and bf16]({MFU_PNG})\n" if plot else ""))
    return readme


def _plot_mfu(result: dict[str, Any], path: Path) -> bool:
    """Horizontal bars of each row's training-step MFU, fp32 and bf16 autocast, against the target; False (nothing
    written) when no row has one. Hand-written: a plot of this result's rows."""
    rows = [row for row in result["rows"] if any((row.get(p) or {}).get("mfu") for p in ("32-true", "bf16-mixed"))]
    if not rows:
        return False
    from latentbench.benchmark.plots import pyplot, save_png

    plt = pyplot()

    peak = result["matmul_peak_gflops"]
    fig, ax = plt.subplots(figsize=(7.5, 1.0 + 0.5 * len(rows)), dpi=120)
    highest = 100.0
    for offset, precision, colour, roof in ((0.2, "32-true", "tab:blue", peak["fp32"]),
                                            (-0.2, "bf16-mixed", "tab:orange", peak["bf16"])):
        label = f"{precision} (of its roof, {roof:.0f} GFLOP/s)"
        for y, row in enumerate(reversed(rows)):
            mfu = (row.get(precision) or {}).get("mfu")
            if mfu:
                ax.barh(y + offset, 100 * mfu, height=0.38, color=colour, label=label)
                label = None  # one legend entry per precision, from its first bar drawn
                ax.annotate(f"{100 * mfu:.0f}%", (100 * mfu, y + offset), xytext=(3, 0), textcoords="offset points",
                            va="center", fontsize=7)
                highest = max(highest, 100 * mfu * 1.1)
    # the target is a share of the bf16 roof: marked across the bf16 bars only, not the fp32 ones (their own roof)
    ax.vlines([100 * MFU_TARGET] * len(rows), [y - 0.42 for y in range(len(rows))], [y + 0.02 for y in range(len(rows))],
              color="black", ls="--", lw=1.5, label=f"target: {100 * MFU_TARGET:.0f}% of the bf16 roof (bf16 bars)")
    ax.set_yticks(range(len(rows)), [_config(row) for row in reversed(rows)], fontsize=8)
    ax.set_xlim(0, highest)  # past 100% where a step beat the measured roof
    ax.set_xlabel("training-step MFU (%): model FLOP/s over this machine's measured matrix-product peak")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=7, frameon=False)  # above: bars reach right
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)
    return True


def load_perf(path: str | Path = PERF_PATH) -> dict[str, Any] | None:
    """The last ``latentbench perf`` result (upgraded to the current schema), or None; ValueError naming a damaged file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
        rows = result["rows"]
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise TypeError("'rows' is not a list of objects")
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not a `latentbench perf` result ({type(e).__name__}: {e}): restore it "
                         "(`git checkout` it) or measure again with `make perf`") from None
    if result.get("schema", 1) < 2:  # schema 1 named the sampling rate by its precision when that was bf16
        for row in rows:
            if "sample_img_s_bf16" in row:
                row["sample_img_s"], row["sample_precision"] = row.pop("sample_img_s_bf16"), "bf16-mixed"
            elif "sample_img_s" in row:
                row["sample_precision"] = "32-true"
        result["schema"] = PERF_SCHEMA
    return result


if __name__ == "__main__":  # one target in a fresh process (_in_subprocess): "kind|name|latent_of" protocol steps warmup batch precisions compile
    kind, name, latent_of = sys.argv[1].split("|")
    try:
        measured = measure_target(Target(kind, name, latent_of or None), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
                                  precisions=tuple(sys.argv[6].split(",")), batch_size=int(sys.argv[5]) or None,
                                  compile=bool(int(sys.argv[7])))
    except Exception as e:  # noqa: BLE001 (refusal_line picks the suite's refusals; the rest re-raises)
        from latentbench.cli import refusal_line

        line = refusal_line(e)
        if line is None:
            raise
        print(json.dumps({"refused": line}))  # the parent ends with this line, not two tracebacks (the child's in its)
        sys.exit(2)
    print(json.dumps(measured))
