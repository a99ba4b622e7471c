"""Frozen teacher encoders whose per-patch features MAETok's auxiliary decoders predict.

MAETok (Chen et al. 2025) trains shallow auxiliary decoders to regress, for the masked image
tokens, the features of frozen encoders (HOG, DINOv2, SigLIP; MSE in the paper, a negative cosine on
the teachers' features in the official code: ``MAETok(teacher_loss=...)``). A teacher here maps float
images in [-1, 1] to its own spatial feature map ``(B, dim, h, w)`` and resamples it onto the
tokenizer's patch grid ``(gh, gw)``, so token ``i`` of the tokenizer and row ``i`` of the
targets cover the same image region. HOG needs no network and lives in ``hog.py``.

==================== ===== =========== ================================================================
name                 dim   native grid what
==================== ===== =========== ================================================================
dinov2-vitb14        768   16 x 16     DINOv2 ViT-B/14 patch tokens after the final norm at 224x224 (timm
                                       ``vit_base_patch14_dinov2.lvd142m``); weights from the HF / torch
                                       hub cache
siglip-b16           768   14 x 14     SigLIP ViT-B/16 (WebLI, v1) patch tokens after the final norm at
                                       224x224 (timm ``vit_base_patch16_siglip_224.webli``); weights
                                       from the HF cache
maetok-dinov2-vitl   1024  16 x 16     the official MAETok code's DINO target: DINOv2 ViT-L/14 (timm
                                       ``vit_large_patch14_dinov2.lvd142m``) built with a 16x16 patch at
                                       256x256 (patch embedding resampled at load), ImageNet mean / std,
                                       no resize; weights from the HF / torch hub cache
maetok-siglip-so400m 1152  16 x 16     its CLIP target: SigLIP so400m/14 (WebLI, v1; timm
                                       ``vit_so400m_patch14_siglip_gap_224.webli``) built the same way,
                                       with ImageNet's mean / std as the official code (not SigLIP's
                                       0.5 / 0.5); weights from the HF cache
domain-<src>         4w    R/8 x R/8   the last conv feature map of the suite's own ``domain-<src>``
                                       classifier (``extractors.build_domain_extractor``; 64 x 4 x 4
                                       with the default recipe); trained and cached offline, so usable
                                       on any machine
==================== ===== =========== ================================================================

Pretrained weights are never downloaded and never replaced by random ones: missing weights
raise ``WeightsUnavailable`` naming the file and where to put it (README, "Checkpoints
and pretrained weights"). Per-token standardisation of the targets is the tokenizer's choice
(``normalize_targets``), not the teacher's. ``create_teacher(name, weights, cache_dir)`` builds
one; ``teacher_names()`` lists the registered names.
"""
from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentbench.benchmark.extractors import (
    DINOV2_HF_REPO,
    DINOV2_SIZE,
    DINOV2_TIMM,
    DINOV2_URL,
    DOMAIN_PREFIX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DomainRecipe,
    build_domain_extractor,
    find_dinov2_weights,
)
from latentbench.registry import Registry
from latentbench.weights import (
    WeightsUnavailable,
    extract_state_dict,
    load_checkpoint,
    sha256_file,
    torch_hub_file,
)

TEACHERS = Registry("teacher")


def check_teacher_input(x: Tensor, grid: tuple[int, int]) -> None:
    """ValueError unless ``x`` is a float ``(B, 3, H, W)`` tensor and ``grid`` two positive ints."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 4 or x.shape[1] != 3:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"teachers take float images in [-1, 1] of shape (B, 3, H, W), got {got}; "
            "convert uint8 images with x.float() / 127.5 - 1"
        )
    if not isinstance(grid, (tuple, list)) or len(grid) != 2 or not all(isinstance(g, int) and g > 0 for g in grid):
        raise ValueError(f"grid must be the tokenizer's patch grid (gh, gw) of positive ints, got {grid!r}")


def resample_to_grid(features: Tensor, grid: tuple[int, int]) -> Tensor:
    """Feature map (B, D, h, w) -> (B, gh*gw, D) tokens, row-major over the grid ``(gh, gw)``.

    Where the grid is no finer than the map in either direction (gh <= h and gw <= w) each
    token is ``adaptive_avg_pool2d``'s mean of the map cells its window touches, each weighing
    the same (identity for equal sizes): the area average where gh divides h and gw divides w;
    otherwise a cell on a window's edge counts whole in both neighbours (14 -> 8: windows of 2
    and 3 cells that overlap). Where the grid is finer the map is interpolated bilinearly
    (``align_corners=False``).
    """
    (h, w), (gh, gw) = features.shape[-2:], grid
    if gh <= h and gw <= w:
        features = F.adaptive_avg_pool2d(features, (gh, gw))  # (B, D, gh, gw)
    else:
        features = F.interpolate(features, size=(gh, gw), mode="bilinear", align_corners=False)  # (B, D, gh, gw)
    return features.flatten(2).transpose(1, 2)  # (B, gh*gw, D)


def normalize_targets(t: Tensor, eps: float = 1e-6) -> Tensor:
    """Standardise every target vector over its last dim: LayerNorm without affine parameters.

    As MAE's normalised-pixel targets (He et al. 2022, Sec. 4), ``(t - mean) / sqrt(var + eps)``
    per token, except that the variance is the biased one (LayerNorm's; MAE's code uses the
    unbiased ``Tensor.var``, larger by D / (D - 1)). Returns float32.
    """
    return F.layer_norm(t.float(), t.shape[-1:], eps=eps)


class Teacher(nn.Module, ABC):
    """A frozen network from [-1, 1] images to per-patch features on a tokenizer's grid.

    Attributes:
        name: registry name, e.g. "dinov2-vitb14", "domain-mnist".
        dim: feature width D.
        native_grid: (h, w) of the teacher's own feature map for its input size.
        weights_sha256: sha256 of the weights file the features come from.
        weights_path: that file.
        preprocessing: what happens to the input, in words.
        info: JSON-serialisable extra facts (timm model, training recipe, val accuracy...).
    """

    name: str
    dim: int
    native_grid: tuple[int, int]
    weights_sha256: str
    weights_path: str
    preprocessing: str
    info: dict[str, Any]

    @abstractmethod
    def feature_map(self, x: Tensor) -> Tensor:
        """float images (B, 3, H, W) in [-1, 1] on the teacher's device -> (B, dim, h, w)."""

    @torch.no_grad()
    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """Teacher features of every patch of the tokenizer's grid.

        Args:
            x: float images (B, 3, H, W) in [-1, 1], any H and W (each teacher resizes as it
                documents); never differentiated through (computed under ``torch.no_grad``).
            grid: the tokenizer's patch grid (gh, gw).

        Returns:
            float32 (B, gh*gw, dim) on the teacher's device, row-major over the grid; the
            native map is resampled with ``resample_to_grid`` (windowed mean when the grid is
            no finer, else bilinear with ``align_corners=False``).
        """
        check_teacher_input(x, grid)
        features = self.feature_map(x.to(self.device, torch.float32))  # (B, dim, h, w)
        return resample_to_grid(features.float(), tuple(grid))  # (B, gh*gw, dim)

    @property
    def device(self) -> torch.device:
        """Device of the teacher's weights (inputs are moved there)."""
        return next(self.parameters()).device

    def describe(self) -> dict[str, Any]:
        """What a training record stores about the teacher (JSON-serialisable)."""
        return {"name": self.name, "dim": self.dim, "native_grid": list(self.native_grid),
                "weights_sha256": self.weights_sha256, "weights_path": self.weights_path,
                "preprocessing": self.preprocessing, "info": self.info}

    def _freeze(self) -> Teacher:
        """Eval mode, no gradients: a teacher is a fixed function."""
        return self.eval().requires_grad_(False)


def create_teacher(
    name: str, weights: str | Path | None = None, cache_dir: str | Path | None = None, **options: Any
) -> Teacher:
    """Build the teacher registered as ``name``.

    Args:
        name: a registered name (``teacher_names()``), any ``domain-<source>`` with a
            ``build_dataset`` source string, or ``package.module:Class``.
        weights: weights file; default: the standard cache location of each teacher (Hugging
            Face / torch hub cache for pretrained ones, ``cache_dir`` for domain ones).
        cache_dir: where suite-trained classifiers are cached (domain-*); default
            ``$LATENTBENCH_CACHE`` or ``~/.cache/latentbench``. Pretrained teachers ignore it.
        **options: teacher-specific keyword arguments (``recipe=DomainRecipe(...)`` for domain-*).

    Returns:
        The teacher, frozen (eval mode, no gradients), on the CPU.
    """
    if name not in TEACHERS and name.startswith(DOMAIN_PREFIX):
        return DomainTeacher(name[len(DOMAIN_PREFIX):], weights=weights, cache_dir=cache_dir, **options)
    return TEACHERS.create(name, weights=weights, cache_dir=cache_dir, **options)


def teacher_names() -> list[str]:
    """Registered teacher names, sorted (any ``domain-<source>`` works besides the listed ones)."""
    return TEACHERS.names()


# --------------------------------------------------------------------------------------------
# pretrained ViTs (timm)
# --------------------------------------------------------------------------------------------


def hf_cached_file(repo: str, filenames: tuple[str, ...]) -> Path | None:
    """The first of ``filenames`` of Hugging Face repo ``repo`` in the local cache, or None (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        cached = try_to_load_from_cache(repo, filename)
        if isinstance(cached, str) and Path(cached).is_file():  # else None, or a "known missing" sentinel
            return Path(cached)
    return None


def require_weights(path: Path | None, teacher: str, what: str, how: str) -> Path:
    """``path`` if it is a file, else WeightsUnavailable saying what ``teacher`` needs and ``how`` to get it."""
    if path is not None and path.is_file():
        return path
    raise WeightsUnavailable(
        f"the {teacher} teacher needs the {what} weights, which are not on this machine"
        f"{f' ({path} does not exist)' if path is not None else ''}: {how}. The suite never downloads them "
        "itself and never trains against a random-weights teacher; offline, use a domain-<source> teacher "
        "(e.g. domain-mnist, trained by the suite) or the HOG target."
    )


TIMM_HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub loader reads, in its order


def hf_teacher_weights(weights: str | Path | None, teacher: str, what: str, repo: str) -> Path:
    """``weights``, else the Hugging Face cache's file of timm repo ``repo``; WeightsUnavailable naming the download."""
    return require_weights(
        Path(weights) if weights is not None else hf_cached_file(repo, TIMM_HF_FILES), teacher, what,
        f"`huggingface-cli download {repo} model.safetensors` (into the Hugging Face cache), "
        "or pass weights=/path/to/model.safetensors",
    )


def load_timm_vit(model_name: str, img_size: int, path: Path, patch_size: int | None = None) -> nn.Module:
    """timm ViT ``model_name`` at ``img_size`` with the weights of ``path`` (safe loading, strict).

    timm's ``checkpoint_filter_fn`` maps other layouts (Meta's DINOv2, OpenCLIP) to timm's and
    resamples the position embeddings to the ``img_size`` grid (bicubic), once, at load. With
    ``patch_size`` the network is built with that patch instead of its own and the same filter
    resamples the checkpoint's patch embedding to it (``resample_patch_embed``: bicubic,
    antialiased), as ``timm.create_model(..., pretrained=True, patch_size=...)`` does.
    """
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    override = {"patch_size": patch_size} if patch_size is not None else {}
    with torch.random.fork_rng(devices=[]):  # its random init (overwritten) must not move the global RNG
        net = timm.create_model(model_name, pretrained=False, img_size=img_size, num_classes=0, **override)
    net.load_state_dict(checkpoint_filter_fn(extract_state_dict(load_checkpoint(path, trust_hint=None)), net), strict=True)
    return net


class TimmViTTeacher(Teacher):
    """Patch tokens of a timm ViT after its final norm, prefix (CLS/register) tokens dropped.

    Subclasses set the timm model, input size and per-channel normalisation of [0, 1] pixels,
    and may set ``patch_size`` to build the network with another patch than its own (the
    checkpoint's patch embedding is resampled at load: ``load_timm_vit``); None keeps timm's.
    Input: [-1, 1] -> [0, 1] -> bicubic resize to ``size`` x ``size`` when it differs -> (x -
    mean) / std. The resize is PyTorch's ``antialias=True`` bicubic, which is PIL's filter
    (a = -0.5, widened when shrinking) both ways, as the FD-DINOv2 extractor's; the result is
    not clamped. Runs in whatever precision the caller's autocast sets; the output is float32.
    """

    timm_model: str
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int | None = None

    def __init__(self, name: str, path: Path):
        super().__init__()
        self.net = load_timm_vit(self.timm_model, self.size, path, self.patch_size)
        self.register_buffer("pixel_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.name, self.dim = name, self.net.embed_dim
        self.native_grid = tuple(self.net.patch_embed.grid_size)
        self.weights_path, self.weights_sha256 = str(path), sha256_file(path)
        h, w = self.native_grid
        p = self.patch_size
        patch = f", patch embedding resampled to {p}x{p} at load" if p is not None else ""
        self.preprocessing = (
            f"[-1, 1] -> (x + 1) / 2 -> bicubic resize to {self.size}x{self.size} (antialias=True: PIL's filter; "
            f"float, unclamped) -> (x - {self.mean}) / {self.std} -> {self.timm_model} (timm{patch}) -> patch tokens "
            f"after the final norm, prefix tokens dropped -> ({self.dim}, {h}, {w})"
        )
        self.info = {"timm_model": self.timm_model, "image_size": self.size}
        if p is not None:  # only where overridden: the other teachers' records stay as they were
            self.info["patch_size"] = p
        self._freeze()

    def feature_map(self, x: Tensor) -> Tensor:
        x = (x + 1) / 2  # (B, 3, H, W) in [0, 1]
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=True)
        x = (x - self.pixel_mean) / self.pixel_std  # (B, 3, S, S)
        tokens = self.net.forward_features(x)[:, self.net.num_prefix_tokens:]  # (B, h*w, D)
        h, w = self.native_grid
        return tokens.transpose(1, 2).reshape(len(x), self.dim, h, w)  # (B, D, h, w)


class DinoV2Teacher(TimmViTTeacher):
    """DINOv2 ViT-B/14 (timm port) patch tokens at 224x224: 768 x 16 x 16.

    The same weights and loading as the FD-DINOv2 extractor (``extractors.DinoV2``): the
    checkpoint's 37x37 position embeddings are resampled to 16x16 at load (bicubic, timm).

    Args:
        weights: timm's ``model.safetensors`` or Meta's ``dinov2_vitb14_pretrain.pth``; default:
            the Hugging Face cache (``timm/vit_base_patch14_dinov2.lvd142m``), then torch hub's.
        cache_dir: ignored (pretrained weights).
    """

    timm_model, size, mean, std = DINOV2_TIMM, DINOV2_SIZE, IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, weights: str | Path | None = None, cache_dir: str | Path | None = None):
        path = require_weights(
            Path(weights) if weights is not None else find_dinov2_weights(), "dinov2-vitb14", "DINOv2 ViT-B/14",
            f"either `huggingface-cli download {DINOV2_HF_REPO} model.safetensors` (into the Hugging Face cache), "
            f"or download {DINOV2_URL} to {torch_hub_file(DINOV2_URL)}, or pass weights=/path/to/model.safetensors",
        )
        super().__init__("dinov2-vitb14", path)
        self.info |= {"url": DINOV2_URL, "hf_repo": DINOV2_HF_REPO}


SIGLIP_TIMM = "vit_base_patch16_siglip_224.webli"  # SigLIP v1 ViT-B/16 (WebLI), the image tower only
SIGLIP_HF_REPO = f"timm/{SIGLIP_TIMM}"
SIGLIP_HF_FILES = TIMM_HF_FILES
SIGLIP_SIZE = 224


class SigLIPTeacher(TimmViTTeacher):
    """SigLIP ViT-B/16 (WebLI, timm) patch tokens at 224x224: 768 x 14 x 14.

    SigLIP normalises [0, 1] pixels with mean = std = 0.5, so its input is the [-1, 1] image
    itself. It has no CLS token (its pooled output comes from an attention-pool head, unused
    here; its weights are loaded all the same, so loading stays strict).

    Args:
        weights: timm's ``model.safetensors`` / ``pytorch_model.bin`` of
            ``timm/vit_base_patch16_siglip_224.webli``, or an OpenCLIP ``ViT-B-16-SigLIP``
            checkpoint (its ``visual.trunk.`` weights); default: the Hugging Face cache.
        cache_dir: ignored (pretrained weights).
    """

    timm_model, size, mean, std = SIGLIP_TIMM, SIGLIP_SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def __init__(self, weights: str | Path | None = None, cache_dir: str | Path | None = None):
        path = hf_teacher_weights(weights, "siglip-b16", "SigLIP ViT-B/16", SIGLIP_HF_REPO)
        super().__init__("siglip-b16", path)
        self.info |= {"hf_repo": SIGLIP_HF_REPO}


# --------------------------------------------------------------------------------------------
# the official MAETok training code's teachers (maetok-b-128)
# --------------------------------------------------------------------------------------------

# The official MaskAEModel builds both teachers with ``timm.create_model(name, pretrained=True,
# img_size=config.image_size, patch_size=config.repa_patch_size)``: 256 and 16 in its
# configs/maetok-b-*.yaml, so two /14 networks run with a 16x16 patch on a 16x16 grid, the
# tokenizer's own, and its 256x256 images go in unresized.
MAETOK_TEACHER_SIZE = 256
MAETOK_TEACHER_PATCH = 16
MAETOK_DINO_TIMM = "vit_large_patch14_dinov2.lvd142m"
MAETOK_DINO_HF_REPO = f"timm/{MAETOK_DINO_TIMM}"
MAETOK_DINO_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"  # Meta's original
# The official code names the architecture without a tag, which timm resolves to its first
# pretrained tag. Its requirements pin timm 1.0.12, older than SigLIP 2 (February 2025), whose
# ``v2_webli`` tags were put ahead of ``webli`` in later timm releases; under 1.0.12 the first
# tag was ``webli``: SigLIP v1. (A current timm would resolve the same call to SigLIP 2.)
MAETOK_SIGLIP_TIMM = "vit_so400m_patch14_siglip_gap_224.webli"
MAETOK_SIGLIP_HF_REPO = f"timm/{MAETOK_SIGLIP_TIMM}"


class MAETokDinoV2LTeacher(TimmViTTeacher):
    """DINOv2 ViT-L/14 (timm port) with a 16x16 patch at 256x256: 1024 x 16 x 16, the official DINO target.

    The official MAETok code's ``repa_model`` (``vit_large_patch14_dinov2.lvd142m``, created with
    ``img_size=256, patch_size=16``): timm's checkpoint filter resamples the 14x14 patch
    embedding to 16x16 and the 37x37 position table to 16x16, once, at load, as timm's own
    pretrained loading does. Input as the official: [-1, 1] -> [0, 1] -> ImageNet mean / std,
    no resize at 256x256 (other sizes are resized to 256 bicubically; the official code sees
    256 only). Patch tokens after the final norm, the class token dropped.

    Args:
        weights: timm's ``model.safetensors`` / ``pytorch_model.bin`` or Meta's
            ``dinov2_vitl14_pretrain.pth``; default: the Hugging Face cache
            (``timm/vit_large_patch14_dinov2.lvd142m``), then torch hub's.
        cache_dir: ignored (pretrained weights).
    """

    timm_model, size, patch_size = MAETOK_DINO_TIMM, MAETOK_TEACHER_SIZE, MAETOK_TEACHER_PATCH
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, weights: str | Path | None = None, cache_dir: str | Path | None = None):
        hub = torch_hub_file(MAETOK_DINO_URL)
        found = hf_cached_file(MAETOK_DINO_HF_REPO, TIMM_HF_FILES) or (hub if hub.is_file() else None)
        path = require_weights(
            Path(weights) if weights is not None else found, "maetok-dinov2-vitl", "DINOv2 ViT-L/14",
            f"either `huggingface-cli download {MAETOK_DINO_HF_REPO} model.safetensors` (into the Hugging Face "
            f"cache), or download {MAETOK_DINO_URL} to {hub}, or pass weights=/path/to/model.safetensors",
        )
        super().__init__("maetok-dinov2-vitl", path)
        self.info |= {"url": MAETOK_DINO_URL, "hf_repo": MAETOK_DINO_HF_REPO}


class MAETokSigLIPTeacher(TimmViTTeacher):
    """SigLIP so400m/14 (WebLI, v1; timm) with a 16x16 patch at 256x256: 1152 x 16 x 16, the official CLIP target.

    The official MAETok code's ``clip_model`` (``vit_so400m_patch14_siglip_gap_224``, created with
    ``img_size=256, patch_size=16``): patch embedding and position table resampled at load, as
    for ``maetok-dinov2-vitl``. The tag is ``webli`` (SigLIP v1), what the untagged name meant
    under the timm the official code pins (1.0.12; see ``MAETOK_SIGLIP_TIMM``). The input is
    normalised with ImageNet's mean / std, NOT SigLIP's own 0.5 / 0.5 (timm's pretrained cfg):
    the official code does so (``clip_scale``), and its targets are this input's features. The
    ``gap`` variant has no prefix tokens and no pooling head: every token is a patch token.

    Args:
        weights: timm's ``model.safetensors`` / ``pytorch_model.bin`` of
            ``timm/vit_so400m_patch14_siglip_gap_224.webli``; default: the Hugging Face cache.
        cache_dir: ignored (pretrained weights).
    """

    timm_model, size, patch_size = MAETOK_SIGLIP_TIMM, MAETOK_TEACHER_SIZE, MAETOK_TEACHER_PATCH
    mean, std = IMAGENET_MEAN, IMAGENET_STD  # the official code's, not SigLIP's (0.5, 0.5)

    def __init__(self, weights: str | Path | None = None, cache_dir: str | Path | None = None):
        path = hf_teacher_weights(weights, "maetok-siglip-so400m", "SigLIP so400m/14", MAETOK_SIGLIP_HF_REPO)
        super().__init__("maetok-siglip-so400m", path)
        self.info |= {"hf_repo": MAETOK_SIGLIP_HF_REPO}


# --------------------------------------------------------------------------------------------
# domain-<source>: the suite's own classifier, trained offline
# --------------------------------------------------------------------------------------------


class DomainTeacher(Teacher):
    """Last conv feature map of the ``domain-<source>`` classifier (the FID-domain network).

    The classifier is the one ``extractors.build_domain_extractor`` loads from ``weights``,
    finds in the cache, or trains now (deterministically, on the CPU) and caches. Features are
    its conv body before the final flatten: (4 * width, R/8, R/8) for the recipe resolution R
    (64 x 4 x 4 by default), after ReLU and max-pooling.

    Args:
        source: a ``build_dataset`` source string with train and val splits (``mnist``, ``shapes``...).
        weights: a safetensors file written by the suite; skips training.
        cache_dir: cache root (default ``$LATENTBENCH_CACHE`` or ``~/.cache/latentbench``).
        recipe: training recipe (default ``DomainRecipe()``).
    """

    def __init__(self, source: str, weights: str | Path | None = None, cache_dir: str | Path | None = None,
                 recipe: DomainRecipe | None = None):
        super().__init__()
        extractor = build_domain_extractor(source, weights=weights, cache_dir=cache_dir, recipe=recipe)
        body = extractor.net.body
        if not isinstance(body[-1], nn.Flatten):
            raise TypeError(f"the domain classifier's body should end with nn.Flatten, got {body[-1]!r}")
        self.convs = body[:-1]  # shares the extractor's modules (and weights)
        self.resolution = extractor.resolution
        self.name = f"{DOMAIN_PREFIX}{source}"
        self.dim = [m for m in self.convs if isinstance(m, nn.Conv2d)][-1].out_channels
        self.native_grid = (self.resolution // 8, self.resolution // 8)
        self.weights_path, self.weights_sha256 = extractor.info["cache_path"], extractor.weights_sha256
        self.preprocessing = (
            f"[-1, 1] -> bilinear resize to {self.resolution}x{self.resolution} (antialias=False) when the size "
            f"differs -> {self.name} CNN conv body before flatten (conv-ReLU-maxpool x 3) -> "
            f"({self.dim}, {self.native_grid[0]}, {self.native_grid[1]})"
        )
        self.info = {k: v for k, v in extractor.info.items() if k != "cache_path"} | {"feature_layer": "body[:-1]"}
        self._freeze()

    def feature_map(self, x: Tensor) -> Tensor:
        r = self.resolution
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=False)  # (B, 3, R, R)
        return self.convs(x)  # (B, 4w, R/8, R/8)


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------

TEACHERS.register("dinov2-vitb14")(DinoV2Teacher)
TEACHERS.register("siglip-b16")(SigLIPTeacher)
TEACHERS.register("maetok-dinov2-vitl")(MAETokDinoV2LTeacher)
TEACHERS.register("maetok-siglip-so400m")(MAETokSigLIPTeacher)
for _source in ("mnist", "shapes"):
    TEACHERS.register(
        f"{DOMAIN_PREFIX}{_source}", help=f"conv features of the classifier the suite trains on {_source} (offline)"
    )(functools.partial(DomainTeacher, _source))


__all__ = ["TEACHERS", "DinoV2Teacher", "DomainTeacher", "MAETokDinoV2LTeacher", "MAETokSigLIPTeacher", "SigLIPTeacher",
           "Teacher", "create_teacher",
           "normalize_targets", "resample_to_grid", "teacher_names"]
