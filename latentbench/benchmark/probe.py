"""Linear probe of tokenizer latents: how linearly decodable the class is from the latent.

The recipe is fixed, so probe accuracies compare within one protocol version (it is not the
recipe of any paper: RAE, MAETok and MAE probe ImageNet features with their own schedules,
and their numbers are not comparable to these):

1. Pooling. ``"flatten"`` uses every latent element as a feature (C*h*w, or L*C for 1D
   tokens); ``"mean"`` averages over spatial positions or tokens, leaving C features.
2. Standardisation. Each feature is centred and scaled with the TRAIN split's mean and
   standard deviation (population std + ``eps``; a constant feature becomes 0). This is
   MAE's BatchNorm-without-affine in front of the head, frozen to the train statistics.
3. Classifier. One ``nn.Linear`` (features -> classes), zero-initialised (the problem is
   convex; zero init removes a source of randomness), trained with cross-entropy and AdamW
   under a cosine learning-rate schedule, mini-batches drawn by a seeded generator.
4. Score. Top-1 accuracy of the final weights on the test split (no early stopping, no
   model selection on the test split).

Everything runs in float32 on the device of ``train_x`` (on CPU, the head trains on one
thread); the global RNG is never touched. On CPU the same inputs give the same accuracy on
every run.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOLINGS = ("flatten", "mean")


@dataclass(frozen=True)
class ProbeRecipe:
    """Optimisation budget of the linear probe; every default carries its reason."""

    lr: float = 1e-2  # peak AdamW lr; 1e-3 underfits in this budget (MNIST latents: train top-1 0.90 vs 0.95)
    weight_decay: float = 1e-2  # decoupled, mild: flatten probes often have more features than samples
    epochs: int = 60  # 960 steps on 4,000 samples; 100 epochs changed MNIST top-1 by < 0.01
    batch_size: int = 256  # 16 steps per epoch on 4,000 samples; 4,000 x 256 features train in ~1 s
    warmup_epochs: int = 2  # linear warm-up, then cosine decay to 0: the final weights are a settled point
    seed: int = 0  # the shuffling order (the weights start at zero)
    eps: float = 1e-6  # added to each feature's std before dividing


def pool(latents: Tensor, pooling: str) -> Tensor:
    """(N, C, h, w) or (N, L, C) latents -> (N, D) float32 features."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if latents.ndim not in (3, 4):
        raise ValueError(f"latents must be (N, C, h, w) or (N, L, C), got shape {tuple(latents.shape)}")
    latents = latents.detach().float()
    if pooling == "flatten":
        return latents.flatten(1)
    return latents.mean(dim=(2, 3)) if latents.ndim == 4 else latents.mean(dim=1)  # (N, C)


def standardize(train: Tensor, test: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Both splits centred and scaled by the train split's per-feature mean and std."""
    mean, std = train.mean(0), train.std(0, unbiased=False) + eps
    return (train - mean) / std, (test - mean) / std


def train_linear(x: Tensor, y: Tensor, num_classes: int, recipe: ProbeRecipe) -> nn.Linear:
    """The linear classifier of the recipe, trained on features ``x`` (N, D) and labels ``y``."""
    head = nn.utils.skip_init(nn.Linear, x.shape[1], num_classes, device=x.device)  # no draw from the global RNG
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW(head.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(x) / recipe.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, _warmup_cosine(recipe.warmup_epochs * steps_per_epoch, recipe.epochs * steps_per_epoch))
    gen = torch.Generator().manual_seed(recipe.seed)
    with torch.enable_grad(), _one_cpu_thread(x.device):
        for _ in range(recipe.epochs):
            for idx in torch.randperm(len(x), generator=gen).to(x.device).split(recipe.batch_size):
                loss = F.cross_entropy(head(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
    return head.requires_grad_(False)


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Train a CPU head on one intra-op thread, then restore the thread count.

    The head's ops are tiny (a (256, D) x (D, classes) matmul), so extra threads only add
    synchronisation: on a loaded 2-core machine two threads ran the default probe 10x slower
    than one. One thread also fixes the summation order, whatever the machine's core count.
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _warmup_cosine(warmup: int, total: int):
    """lr multiplier of step s: linear warm-up over ``warmup`` steps, then cosine to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return factor


@torch.no_grad()
def accuracy(head: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy in [0, 1]."""
    return (head(x).argmax(1) == y).double().mean().item()


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    pooling: str = "flatten",
    recipe: ProbeRecipe = ProbeRecipe(),
) -> dict:
    """Top-1 accuracy of a linear classifier on latents, under the module's fixed recipe.

    Args:
        train_x: train latents, (N, C, h, w) for 2D latents or (N, L, C) for 1D tokens.
        train_y: (N,) integer labels in [0, num_classes).
        test_x: test latents, same per-sample shape as ``train_x``.
        test_y: (M,) integer labels in [0, num_classes).
        num_classes: number of classes (at least 2).
        pooling: ``"flatten"`` (every latent element) or ``"mean"`` (average over positions/tokens).
        recipe: optimisation budget; keep the default to compare within a protocol.

    Returns:
        ``{"top1": test accuracy in [0, 1], "train_top1": train accuracy, "n_train", "n_test",
        "pooling", "feature_dim", "recipe": the recipe as a dict}``.
    """
    _check_split("train", train_x, train_y, num_classes)
    _check_split("test", test_x, test_y, num_classes)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"train and test latents differ in shape per sample: {tuple(train_x.shape[1:])} vs {tuple(test_x.shape[1:])}")
    return probe_features(pool(train_x, pooling), train_y, pool(test_x.to(train_x.device), pooling), test_y, num_classes,
                          pooling, recipe)


def probe_features(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    test_y: Tensor,
    num_classes: int,
    pooling: str,
    recipe: ProbeRecipe = ProbeRecipe(),
) -> dict:
    """``linear_probe`` on features already pooled, (N, D) each (``pool`` of the latents).

    Pooling is per sample, so a caller may pool batch by batch and keep only the features:
    ``imagenet256``'s 50k RAE latents are 39 GB, their mean-pooled features 150 MB.
    ``pooling`` names the pooling that made them, for the result.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    for name, f, y in (("train", train_f, train_y), ("test", test_f, test_y)):
        _check_split(name, f, y, num_classes, features=True)
    if train_f.shape[1] != test_f.shape[1]:
        raise ValueError(f"train and test features differ in dimension: {train_f.shape[1]} vs {test_f.shape[1]}")
    test_f = test_f.to(train_f.device)
    if not (torch.isfinite(train_f).all() and torch.isfinite(test_f).all()):
        raise ValueError("latents contain NaN or Inf")
    train_f, test_f = standardize(train_f.float(), test_f.float(), recipe.eps)
    train_y, test_y = train_y.to(train_f.device).long(), test_y.to(train_f.device).long()
    head = train_linear(train_f, train_y, num_classes, recipe)
    return {
        "top1": accuracy(head, test_f, test_y),
        "train_top1": accuracy(head, train_f, train_y),
        "n_train": len(train_f),
        "n_test": len(test_f),
        "pooling": pooling,
        "feature_dim": train_f.shape[1],
        "recipe": asdict(recipe),
    }


def _check_split(name: str, x: Tensor, y: Tensor, num_classes: int, features: bool = False) -> None:
    """Raise ValueError unless ``x`` is 3D/4D latents (2D ``features``) and ``y`` matching labels in [0, num_classes)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if features and x.ndim != 2:
        raise ValueError(f"{name} features must be (N, D), got shape {tuple(x.shape)}")
    if not features and x.ndim not in (3, 4):
        raise ValueError(f"{name} latents must be (N, C, h, w) or (N, L, C), got shape {tuple(x.shape)}")
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"{name} labels must be a 1D integer tensor, got {y.dtype} of shape {tuple(y.shape)}")
    if len(x) != len(y):
        raise ValueError(f"{name} latents and labels differ in N: {len(x)} vs {len(y)}")
    if len(y) == 0:
        raise ValueError(f"{name} split is empty")
    lo, hi = y.min().item(), y.max().item()
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name} labels must be in [0, {num_classes}), got values in [{lo}, {hi}]")
