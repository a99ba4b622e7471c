"""Images/s of the suite's metrics against torchmetrics' own classes on the same images.

    .venv/bin/python benchmarks/metrics_speed.py                          # 1,000 pairs at 32x32
    .venv/bin/python benchmarks/metrics_speed.py --size 256 --n 200 --json speed.json
    .venv/bin/python benchmarks/metrics_speed.py --lpips-random-backbone   # LPIPS timing without ImageNet weights

Every implementation streams the same (real, fake) pairs in [-1, 1] through ``update`` in
batches, then ``compute``; one untimed warm-up batch, then the median of ``--runs`` timed
passes over all images. The pairs compared:

* PSNR: ours (uint8-rounded, per image, float64 sums) vs
  ``torchmetrics.image.PeakSignalNoiseRatio(data_range=2.0)`` (raw floats, pooled MSE);
* SSIM: ours (uint8-rounded, float64, valid-window mean) vs
  ``torchmetrics.image.StructuralSimilarityIndexMeasure(data_range=2.0)`` (float32, padded map);
* LPIPS: ours vs the ``lpips`` package called directly on the raw floats (same network
  object), plus ``torchmetrics.image.LearnedPerceptualImagePatchSimilarity`` when the
  backbone's ImageNet weights are in torchvision's cache (it cannot be built without them);
* FID-2048 (``--fid-dim``): ours (``fid.FrechetDistance``: float64 sums, the trace root from two symmetric
  eigensolves) vs ``torchmetrics.image.fid.FrechetInceptionDistance`` (float64 sums,
  ``eigvals(S1 S2)``), both on the same fixed 2048-d features of the uint8 images (a seeded
  random projection of the 16x16-pooled pixels, standing in for Inception, whose weights are
  not here and whose cost is the same network in both): the update and compute machinery;
* pipeline: everything a bench computes per reconstruction batch except rFID features, as it
  computes it (``evaluate.ReconstructionMetrics``: the images quantised once, PSNR, SSIM and,
  where timed, LPIPS) vs torchmetrics' PSNR and SSIM classes plus the same LPIPS reference,
  updated one after the other on the same batch. Its value column is PSNR.

The values differ by design (quantisation, per-image means); they are printed so a speed
gain never hides a changed number. This is a benchmark, not a test: numbers depend on the
machine and its load. On a shared CPU, pass ``--threads 1``: with more intra-op threads
than idle cores, OpenMP synchronisation makes small-op timings swing by 10x between runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from latentbench.benchmark.metrics import PSNR, SSIM
from latentbench.benchmark.perceptual import LPIPS, lpips_status
from latentbench.weights import build_lpips


@dataclass
class Timing:
    """One implementation's result on the benchmark images."""

    metric: str
    implementation: str
    images_per_s: float
    median_s: float
    runs_s: list[float]
    value: float


class LpipsPackage(Metric):
    """The lpips package called directly (no checks, no quantisation): the reference loop."""

    full_state_update = False

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, real: Tensor, fake: Tensor) -> None:
        values = self.model(real, fake)
        self.total += values.sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        return self.total / self.count


class BenchMetrics(Metric):
    """What a bench computes per reconstruction batch (``evaluate.ReconstructionMetrics``: the
    images quantised once for PSNR, SSIM and, when given, LPIPS); ``compute`` returns PSNR."""

    full_state_update = False

    def __init__(self, lpips: Metric | None = None):
        super().__init__()
        self.lpips = lpips
        self.reset()

    def reset(self) -> None:
        super().reset()
        from latentbench.benchmark.evaluate import ReconstructionMetrics

        if self.lpips is not None:
            self.lpips.reset()
        self.inner = ReconstructionMetrics(lpips=self.lpips)

    def update(self, real: Tensor, fake: Tensor) -> None:
        self.inner.update(torch.arange(len(real)), real, fake)

    def compute(self) -> Tensor:
        return torch.tensor(self.inner.results()["psnr"]["value"], dtype=torch.float64)


class InTurn(Metric):
    """Several metrics updated one after the other on each batch; ``compute`` returns the first one's value."""

    full_state_update = False

    def __init__(self, parts: list[Metric]):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def reset(self) -> None:
        super().reset()
        for part in self.parts:
            part.reset()

    def update(self, real: Tensor, fake: Tensor) -> None:
        for part in self.parts:
            part.update(real, fake)

    def compute(self) -> Tensor:
        return self.parts[0].compute()


class ProjectedFeatures(nn.Module):
    """Fixed 2048-d features of uint8 images: 16x16 average pooling, then a seeded random projection.

    A stand-in for the FID Inception (same input, same feature size) that costs little, so the
    FID rows time the metric, not the network; both implementations call this same module.
    """

    def __init__(self, dim: int = 2048, pooled: int = 16, seed: int = 0):
        super().__init__()
        self.pooled = pooled
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(3 * pooled * pooled, dim, generator=g) / (3 * pooled * pooled) ** 0.5)

    def forward(self, images: Tensor) -> Tensor:
        x = nn.functional.adaptive_avg_pool2d(images.float() / 255, self.pooled).flatten(1)
        return torch.tanh(x @ self.projection)  # non-linear, so the features are not Gaussian


class OursFID(Metric):
    """``fid.FrechetDistance`` on ``ProjectedFeatures`` of the uint8-quantised pairs; ``compute`` returns FID."""

    full_state_update = False

    def __init__(self, dim: int = 2048):
        super().__init__()
        from latentbench.benchmark.fid import FrechetDistance

        self.features = ProjectedFeatures(dim)
        self.fid = FrechetDistance(dim)

    def reset(self) -> None:
        super().reset()
        self.fid.reset()

    def update(self, real: Tensor, fake: Tensor) -> None:
        from latentbench.benchmark.metrics import to_uint8

        self.fid.update(self.features(to_uint8(fake)), real=self.features(to_uint8(real)))

    def compute(self) -> Tensor:
        return torch.tensor(self.fid.compute()["value"], dtype=torch.float64)


class TorchmetricsFID(Metric):
    """torchmetrics' ``FrechetInceptionDistance`` with ``ProjectedFeatures`` as its feature network."""

    full_state_update = False

    def __init__(self, dim: int = 2048):
        super().__init__()
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.fid = FrechetInceptionDistance(feature=ProjectedFeatures(dim))

    def reset(self) -> None:
        super().reset()
        self.fid.reset()

    def update(self, real: Tensor, fake: Tensor) -> None:
        self.fid.update(((real + 1) * 127.5).round().to(torch.uint8), real=True)
        self.fid.update(((fake + 1) * 127.5).round().to(torch.uint8), real=False)

    def compute(self) -> Tensor:
        return self.fid.compute().to(torch.float64)


def make_images(n: int, size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` smooth random images in [-1, 1] and noisy copies, (n, 3, size, size) float32 each."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(1, size // 4), max(1, size // 4), generator=g)
    real = nn.functional.interpolate(coarse, size=size, mode="bilinear") * 2 - 1
    fake = (real + 0.1 * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    return real, fake


def run_once(metric: Metric, real: Tensor, fake: Tensor, batch_size: int) -> tuple[float, float]:
    """(seconds, value) of one full update-then-compute pass over the images."""
    metric.reset()
    start = time.perf_counter()
    for i in range(0, len(real), batch_size):
        metric.update(real[i:i + batch_size], fake[i:i + batch_size])
    value = metric.compute().item()  # .item() waits for the device
    return time.perf_counter() - start, value


def time_metric(name: str, implementation: str, metric: Metric, real: Tensor, fake: Tensor,
                batch_size: int, runs: int) -> Timing:
    """Warm up on one batch (lazy initialisation, allocator), then the median of ``runs`` timed passes."""
    metric = metric.to(real.device)
    run_once(metric, real[:batch_size], fake[:batch_size], batch_size)
    times, values = zip(*(run_once(metric, real, fake, batch_size) for _ in range(runs)), strict=True)
    median = statistics.median(times)
    return Timing(name, implementation, len(real) / median, median, [round(t, 4) for t in times], values[-1])


def lpips_model(net: str, random_backbone: bool) -> tuple[nn.Module | None, str]:
    """(lpips network or None, label or the reason it is skipped)."""
    status = lpips_status(net)
    if status == f"lpips-{net}":
        return build_lpips(net), "pretrained"
    if not random_backbone:
        return None, f"LPIPS skipped: {status.removeprefix('unavailable: ')} Pass --lpips-random-backbone to time it anyway."
    import lpips

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval().requires_grad_(False)
    return model, "random backbone: timing only, values meaningless"


def candidates(args: argparse.Namespace) -> tuple[list[tuple[str, str, Callable[[], Metric]]], list[str]]:
    """(metric, implementation, factory) triples to time, and the reasons for what is skipped."""
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    def tm_psnr() -> Metric:
        return PeakSignalNoiseRatio(data_range=2.0)

    def tm_ssim() -> Metric:
        return StructuralSimilarityIndexMeasure(data_range=2.0)

    todo = [("PSNR", "latentbench", PSNR), ("PSNR", "torchmetrics", tm_psnr),
            ("SSIM", "latentbench", SSIM), ("SSIM", "torchmetrics", tm_ssim)]
    skipped = []
    model, note = lpips_model(args.lpips_net, args.lpips_random_backbone)
    ours_lpips = theirs_lpips = None  # factories of the LPIPS metric each pipeline includes
    if model is None:
        skipped.append(note)
    else:
        name = f"LPIPS-{args.lpips_net}"
        ours_lpips, package = (lambda: LPIPS(args.lpips_net, model=model)), (lambda: LpipsPackage(model))
        todo += [(name, "latentbench", ours_lpips), (name, "lpips package", package)]
        if note == "pretrained":
            from torchmetrics.image import LearnedPerceptualImagePatchSimilarity

            theirs_lpips = lambda: LearnedPerceptualImagePatchSimilarity(net_type=args.lpips_net)  # noqa: E731
            todo.append((name, "torchmetrics", theirs_lpips))
            skipped.append(f"pipeline: {name} in both, torchmetrics' class in the reference")
        else:
            theirs_lpips = package
            skipped += [f"{name}: {note}",
                        f"{name} torchmetrics skipped: it loads torchvision's ImageNet backbone weights, not on this machine",
                        f"pipeline: {name} in both, the lpips package in the reference"]
    fid = f"FID-{args.fid_dim}"
    todo += [(fid, "latentbench", lambda: OursFID(args.fid_dim)), (fid, "torchmetrics", lambda: TorchmetricsFID(args.fid_dim))]
    todo += [("pipeline", "latentbench", lambda: BenchMetrics(ours_lpips() if ours_lpips else None)),
             ("pipeline", "torchmetrics", lambda: InTurn([tm_psnr(), tm_ssim()] + ([theirs_lpips()] if theirs_lpips else [])))]
    return todo, skipped


def speed_ratios(timings: list[Timing]) -> dict[str, dict[str, float]]:
    """Per metric: ours' images/s divided by each other implementation's."""
    ratios: dict[str, dict[str, float]] = {}
    for t in timings:
        ours = next(o for o in timings if o.metric == t.metric and o.implementation == "latentbench")
        if t is not ours:
            ratios.setdefault(t.metric, {})[t.implementation] = ours.images_per_s / t.images_per_s
    return ratios


def print_table(timings: list[Timing], ratios: dict[str, dict[str, float]], skipped: list[str], title: str) -> None:
    """The results as a rich table, then the skipped items."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("metric", "implementation", "images/s", "median s", "runs s", "value", "ours / this"):
        table.add_column(column, justify="left" if column in ("metric", "implementation") else "right")
    for t in timings:
        ratio = ratios.get(t.metric, {}).get(t.implementation)
        table.add_row(t.metric, t.implementation, f"{t.images_per_s:,.0f}", f"{t.median_s:.4g}",
                      " ".join(f"{s:.4g}" for s in t.runs_s), f"{t.value:.5f}", "" if ratio is None else f"{ratio:.3g}x")
    console = Console(width=140)
    console.print(table)
    for line in skipped:
        console.print(f"[yellow]{line}[/yellow]")


def environment(args: argparse.Namespace, device: torch.device) -> dict:
    """What the numbers depend on besides the code."""
    import torchmetrics

    return {"n": args.n, "size": args.size, "batch_size": args.batch_size, "runs": args.runs, "device": str(device),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.processor(),
            "torch": torch.__version__, "torchmetrics": torchmetrics.__version__}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of image pairs")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (32, 64, 256...)")
    parser.add_argument("--batch-size", type=int, default=100, help="pairs per update call")
    parser.add_argument("--runs", type=int, default=3, help="timed passes; the median is reported")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--lpips-net", default="alex", choices=("alex", "vgg"))
    parser.add_argument("--lpips-random-backbone", action="store_true",
                        help="without the ImageNet backbone weights, time LPIPS on a seeded random backbone")
    parser.add_argument("--fid-dim", type=int, default=2048, help="feature size of the FID rows (Inception's: 2048)")
    parser.add_argument("--only", nargs="*", default=None, help="metric names to run (PSNR SSIM LPIPS-alex FID-2048 pipeline ...)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Time every candidate, print the table, and write JSON when asked."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    real, fake = (x.to(device) for x in make_images(args.n, args.size))
    todo, skipped = candidates(args)
    timings = [time_metric(name, impl, factory(), real, fake, args.batch_size, args.runs)
               for name, impl, factory in todo if args.only is None or name in args.only]
    ratios = speed_ratios(timings)
    env = environment(args, device)
    print_table(timings, ratios, skipped, f"{args.n} pairs at {args.size}x{args.size}, {device}, "
                                          f"{env['torch_threads']} threads, batch {args.batch_size}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "timings": [asdict(t) for t in timings], "ours_speedup": ratios,
                       "skipped": skipped}, f, indent=2)


if __name__ == "__main__":
    main()
