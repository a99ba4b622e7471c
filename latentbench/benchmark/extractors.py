"""Feature extractors for Fréchet distances, pluggable by name.

Every extractor maps uint8 images ``(B, 3, H, W)`` (metrics quantise to uint8 by rounding
before anything else) to float32 features ``(B, dim)`` and carries what a result must record
about it: an ``id``, the sha256 of its weights, its preprocessing in words, and the name the
distance computed with it must be published under (``metric_name``).

============== ============ ======================================================================
name           metric_name  what
============== ============ ======================================================================
inception-tf   FID          the TF-port Inception-v3 pool3 features torch-fidelity (and every FID
                            paper since Heusel et al.) uses; weights from the torch hub cache
domain-<src>   FID-domain   a small CNN classifier that the suite trains, deterministically, on the
               (<src>)      ``train`` split of data source ``<src>`` (``domain-mnist``,
                            ``domain-shapes``, any ``build_dataset`` source); cached and hashed
dinov2-vitb14  FD-DINOv2    DINOv2 ViT-B/14 CLS features (Stein et al. 2023, "Exposing flaws of
                            generative model evaluation metrics"), timm port
============== ============ ======================================================================

Pretrained weights are never downloaded here: missing ones raise ``WeightsUnavailable`` with
the file, its URL and where to put it, and nothing falls back to random weights (README,
"Checkpoints and pretrained weights"). ``create_extractor(name, weights, cache_dir)``
builds one; ``EXTRACTORS.names()`` lists the registered names.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import tempfile
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from latentbench.cachefiles import (
    announce_training,
    hashed_cache_path,
    read_stored_facts,
    save_with_facts,
)
from latentbench.paths import default_cache_dir
from latentbench.registry import Registry
from latentbench.weights import (
    WeightsUnavailable,
    extract_state_dict,
    load_checkpoint,
    sha256_file,
    torch_hub_file,
)

EXTRACTORS = Registry("extractor")

# how a user names an extractor's weights file. Not through a protocol's extractor_options: they are part
# of its fingerprint, so a machine's path there would make the protocol count as changed
PASS_WEIGHTS = ("for latentbench metrics / stats, pass the file with --extractor_weights FILE; a bench reads the "
                "standard location")


def check_images(images: Tensor) -> None:
    """ValueError unless ``images`` is a uint8 ``(B, 3, H, W)`` tensor."""
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(
            f"feature extractors take uint8 images of shape (B, 3, H, W), got {got}; quantise [-1, 1] "
            "images first with latentbench.benchmark.metrics.to_uint8 (rounding, not truncation)"
        )


class FeatureExtractor(nn.Module, ABC):
    """A frozen network from uint8 images to features, with the facts a result records about it.

    Attributes:
        id: registry name, e.g. "inception-tf", "domain-mnist", "dinov2-vitb14".
        dim: feature dimension.
        weights_sha256: sha256 of the weights file the features come from.
        preprocessing: what happens to the input, in words.
        metric_name: the label of a Fréchet distance computed with these features ("FID",
            "FID-domain(mnist)", "FD-DINOv2"); numbers from different extractors are not comparable.
        info: JSON-serialisable extra facts (weights path, training recipe, val accuracy...).
    """

    id: str
    dim: int
    weights_sha256: str
    preprocessing: str
    metric_name: str
    info: dict[str, Any]

    @abstractmethod
    def forward(self, images: Tensor) -> Tensor:
        """Features of a batch.

        Args:
            images: uint8 ``(B, 3, H, W)``, any H and W (each extractor resizes as it documents).

        Returns:
            float32 ``(B, dim)`` on the extractor's device.
        """

    @property
    def device(self) -> torch.device:
        """Device of the extractor's weights (inputs are moved there)."""
        return next(self.parameters()).device

    def describe(self) -> dict[str, Any]:
        """What a result record stores about the extractor (JSON-serialisable)."""
        return dict(id=self.id, dim=self.dim, weights_sha256=self.weights_sha256, preprocessing=self.preprocessing,
                    metric_name=self.metric_name, info=self.info)

    def _freeze(self) -> FeatureExtractor:
        """Eval mode, no gradients: an extractor is a fixed function."""
        return self.eval().requires_grad_(False)


def create_extractor(
    name: str, weights: str | Path | None = None, cache_dir: str | Path | None = None, **options: Any
) -> FeatureExtractor:
    """Build the feature extractor registered as ``name``.

    Args:
        name: a registered name (``EXTRACTORS.names()``), any ``domain-<source>`` with a
            ``build_dataset`` source string (``domain-shapes:500:100``,
            ``domain-imagefolder:/data/x``), or ``package.module:Class`` (called with
            ``weights``, ``cache_dir`` and ``options``).
        weights: weights file; default: the standard cache location of each extractor
            (torch hub / Hugging Face cache for pretrained ones, ``cache_dir`` for domain ones).
        cache_dir: where suite-trained helpers are cached; default ``$LATENTBENCH_CACHE`` or
            ``~/.cache/latentbench``. Pretrained extractors ignore it.
        **options: extractor-specific keyword arguments (``recipe=DomainRecipe(...)`` for domain-*).

    Returns:
        The extractor, in eval mode, on the CPU.
    """
    if name not in EXTRACTORS and name.startswith(DOMAIN_PREFIX):
        return build_domain_extractor(name[len(DOMAIN_PREFIX):], weights=weights, cache_dir=cache_dir, **options)
    return EXTRACTORS.create(name, weights=weights, cache_dir=cache_dir, **options)


# --------------------------------------------------------------------------------------------
# inception-tf: the FID Inception-v3 of torch-fidelity
# --------------------------------------------------------------------------------------------

# torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3 (the test checks they agree). The
# file is the TF 2015-12-05 Inception graph converted to PyTorch; as in torch hub's convention,
# the 8 hex digits in its name are the start of its sha256.
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_SHA256_PREFIX = "6726825d"


class InceptionTF(FeatureExtractor):
    """FID Inception-v3 (TF port, torch-fidelity's "inception-v3-compat"), 2048-d pool3 features.

    Args:
        weights: the ``.pth`` file torch-fidelity downloads; default: torch hub's checkpoints
            folder (``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``).
        cache_dir: ignored (the weights are pretrained, not trained by the suite).
    """

    dim = 2048  # known before the weights load: the bench checks what a bootstrap of them needs before training

    def __init__(self, weights: str | Path | None = None, cache_dir: str | Path | None = None):
        super().__init__()
        path = Path(weights) if weights is not None else torch_hub_file(INCEPTION_URL)
        if path.suffix == ".safetensors":
            raise ValueError(f"inception-tf reads the torch file torch-fidelity distributes ({INCEPTION_URL}), not {path}")
        if not path.is_file():
            given = f" (the weights file given, {path}, does not exist)" if weights is not None else ""
            raise WeightsUnavailable(
                f"inception-tf (FID) needs torch-fidelity's Inception weights {path.name}, which are not on this "
                f"machine{given}: download {INCEPTION_URL} to {torch_hub_file(INCEPTION_URL)} (or point TORCH_HOME at a "
                f"folder whose hub/checkpoints/ holds it, or {PASS_WEIGHTS}). The suite never "
                "downloads it itself and never computes FID from random weights."
            )
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import (
                FeatureExtractorInceptionV3,
            )
        except ImportError as e:
            raise ImportError(f"inception-tf needs torch-fidelity: pip install 'torch-fidelity>=0.3' ({e})") from None
        # torch-fidelity reads the file with torch.load(weights_only=False); read it safely first, so
        # a file that would run code when unpickled is refused (UnsafeCheckpointError) before that.
        extract_state_dict(load_checkpoint(path, trust_hint=None))
        with torch.random.fork_rng(devices=[]):  # its random init (overwritten) must not move the global RNG
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
        self.id = "inception-tf"
        self.weights_sha256 = sha256_file(path)
        official = self.weights_sha256.startswith(INCEPTION_SHA256_PREFIX)
        # Only the published weights give "FID"; anything else is labelled with its hash.
        self.metric_name = "FID" if official else f"FID(inception-tf weights {self.weights_sha256[:12]})"
        self.preprocessing = (
            "uint8 -> float32 -> bilinear resize to 299x299 as TF1 does (torch-fidelity "
            "interpolate_bilinear_2d_like_tensorflow1x) -> (x - 128) / 128 -> Inception-v3 pool3 (2048)"
        )
        self.info = dict(weights_path=str(path), official_weights=official, url=INCEPTION_URL,
                         implementation="torch_fidelity.FeatureExtractorInceptionV3", features="2048")
        self._freeze()

    def forward(self, images: Tensor) -> Tensor:
        check_images(images)
        (features,) = self.net(images.to(self.device))  # (B, 2048)
        return features.float()


# --------------------------------------------------------------------------------------------
# dinov2-vitb14: FD-DINOv2
# --------------------------------------------------------------------------------------------

DINOV2_TIMM = "vit_base_patch14_dinov2.lvd142m"
DINOV2_HF_REPO = "timm/vit_base_patch14_dinov2.lvd142m"  # its model.safetensors, as timm downloads it
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth"  # Meta's original
DINOV2_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def find_dinov2_weights() -> Path | None:
    """The DINOv2 ViT-B/14 weights in the Hugging Face or torch hub cache, or None (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(DINOV2_HF_REPO, "model.safetensors")
    if isinstance(cached, str) and Path(cached).is_file():  # else None, or a "known missing" sentinel
        return Path(cached)
    hub = torch_hub_file(DINOV2_URL)
    return hub if hub.is_file() else None


class DinoV2(FeatureExtractor):
    """DINOv2 ViT-B/14 (timm port) CLS-token features, 768-d, as in FD-DINOv2.

    The FD-DINOv2 pipeline (dgm-eval) resizes PIL images to 224x224 bicubic, then normalises with
    ImageNet mean/std and takes the CLS token after the final LayerNorm. Here the resize is
    torchvision's antialiased bicubic on uint8 tensors (PIL's filter; results stay uint8, as
    PIL's do). The checkpoint's 37x37 position embeddings are resampled to the 16x16 grid of a
    224 input once, at load, by timm's ``checkpoint_filter_fn`` (bicubic); Meta's hub model
    resamples on the fly instead, so features agree with it closely but not bit for bit.

    Args:
        weights: timm's ``model.safetensors`` or Meta's ``dinov2_vitb14_pretrain.pth``; default:
            the Hugging Face cache (``timm/vit_base_patch14_dinov2.lvd142m``), then torch hub's.
        cache_dir: ignored (pretrained weights).
    """

    dim = 768  # known before the weights load, as InceptionTF's

    def __init__(self, weights: str | Path | None = None, cache_dir: str | Path | None = None):
        super().__init__()
        path = Path(weights) if weights is not None else find_dinov2_weights()
        if path is None or not path.is_file():
            raise WeightsUnavailable(
                f"dinov2-vitb14 (FD-DINOv2) needs the DINOv2 ViT-B/14 weights, which are not on this machine"
                f"{f' ({path} does not exist)' if path is not None else ''}: either `huggingface-cli download "
                f"{DINOV2_HF_REPO} model.safetensors` (into the Hugging Face cache), or download {DINOV2_URL} to "
                f"{torch_hub_file(DINOV2_URL)}, or {PASS_WEIGHTS}. The suite never "
                "downloads them itself and never computes FD-DINOv2 from random weights."
            )
        import timm
        from timm.models.vision_transformer import checkpoint_filter_fn

        with torch.random.fork_rng(devices=[]):  # its random init (overwritten) must not move the global RNG
            self.net = timm.create_model(DINOV2_TIMM, pretrained=False, img_size=DINOV2_SIZE, num_classes=0)
        state = checkpoint_filter_fn(extract_state_dict(load_checkpoint(path, trust_hint=None)), self.net)  # resamples pos_embed
        self.net.load_state_dict(state, strict=True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self.id, self.metric_name = "dinov2-vitb14", "FD-DINOv2"
        self.weights_sha256 = sha256_file(path)
        self.preprocessing = (
            "uint8 -> bicubic resize to 224x224, antialiased, kept uint8 (torchvision; PIL's filter, as dgm-eval) "
            "-> ImageNet mean/std -> DINOv2 ViT-B/14 (timm, pos-embed resampled to 16x16 at load) -> "
            "CLS token after the final LayerNorm (768)"
        )
        self.info = dict(weights_path=str(path), timm_model=DINOV2_TIMM, image_size=DINOV2_SIZE, url=DINOV2_URL)
        self._freeze()

    def pixels(self, images: Tensor) -> Tensor:
        """uint8 (B, 3, H, W) -> uint8 (B, 3, 224, 224), bicubic, antialiased."""
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2.functional import resize

        if images.shape[-2:] == (DINOV2_SIZE, DINOV2_SIZE):
            return images
        return resize(images, [DINOV2_SIZE, DINOV2_SIZE], interpolation=InterpolationMode.BICUBIC, antialias=True)

    def forward(self, images: Tensor) -> Tensor:
        check_images(images)
        x = (self.pixels(images.to(self.device)).float() - self.mean) / self.std  # (B, 3, 224, 224)
        return self.net(x).float()  # (B, 768): num_classes=0 -> pooled CLS token after the final norm


# --------------------------------------------------------------------------------------------
# domain-<source>: a classifier the suite trains on the source's train split
# --------------------------------------------------------------------------------------------

DOMAIN_PREFIX = "domain-"
DOMAIN_FORMAT = "latentbench-domain-v1"  # bump when the network or training code changes: it is part of the cache key


@dataclass(frozen=True)
class DomainRecipe:
    """How a domain classifier is trained; every field is part of its cache key."""

    resolution: int = 32  # the embedded protocols' size; inputs of another size are resized to it
    epochs: int = 10  # mnist val accuracy has plateaued by then (97.7%): 630 steps, ~20 s on one CPU core
    batch_size: int = 64  # small batches: more steps per epoch on a 4,000-image training set
    lr: float = 1e-3  # Adam's default; stable for this small net without warmup or decay
    seed: int = 0  # initialisation and shuffling: the init under this seed, the batches from a torch.Generator
    width: int = 16  # channels of the first conv stage, then 2x and 4x; 32 took 2x as long, no better (97.2%)
    feature_dim: int = 128  # the penultimate layer, whose activations are the FID features
    augmentation: str = "none"  # none: FID features should see images exactly as they are
    limit: int | None = None  # train on the first `limit` images of the split only (tests, quick runs)
    max_steps: int | None = None  # stop after this many optimizer steps (tests)
    threads: int = 1  # convs this small gain nothing from more threads (on 2 busy cores 2 threads ran 5x
    # slower than 1); one thread also keeps float reduction order independent of the machine's core count

    def __post_init__(self):
        if self.augmentation != "none":
            raise ValueError(f"augmentation {self.augmentation!r} is not implemented; only 'none'")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.resolution < 8:
            raise ValueError(f"resolution must be at least 8 (three 2x poolings), got {self.resolution}")


class DomainClassifier(nn.Module):
    """LeNet-like CNN: three (conv 3x3, ReLU, max-pool 2) stages, a ``feature_dim`` layer, a linear head.

    The features are the ``feature_dim`` layer's output before its ReLU. After the ReLU, the
    trained domain-mnist classifier has 55 of its 128 units at zero on every val image, so the
    feature covariance is singular; before it, the covariance is full rank (condition number
    6e4) and the features are closer to the Gaussian the Fréchet distance assumes.
    """

    def __init__(self, num_classes: int, resolution: int = 32, width: int = 16, feature_dim: int = 128):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, w, R/2, R/2)
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 2w, R/4, R/4)
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 4w, R/8, R/8)
            nn.Flatten(),
        )
        self.fc = nn.Linear(4 * w * (resolution // 8) ** 2, feature_dim)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, num_classes))

    def features(self, x: Tensor) -> Tensor:
        """(B, 3, R, R) in [-1, 1] -> (B, feature_dim) penultimate pre-activations."""
        return self.fc(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, R, R) in [-1, 1] -> (B, num_classes) logits."""
        return self.head(self.features(x))


def uint8_to_unit(images: Tensor, resolution: int) -> Tensor:
    """uint8 (B, 3, H, W) -> float32 in [-1, 1], bilinearly resized (antialias=False) to ``resolution`` if needed."""
    x = images.float() / 127.5 - 1.0
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=False)
    return x


class DomainClassifierModule(L.LightningModule):
    """Cross-entropy training of a ``DomainClassifier`` on uint8 images (Adam, constant lr)."""

    def __init__(self, num_classes: int, recipe: DomainRecipe):
        super().__init__()
        self.recipe = recipe
        with torch.random.fork_rng(devices=[]):  # seeded init that leaves the global RNG as it was
            torch.manual_seed(recipe.seed)
            self.net = DomainClassifier(num_classes, recipe.resolution, recipe.width, recipe.feature_dim)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        loss = F.cross_entropy(self.net(uint8_to_unit(images, self.recipe.resolution)), labels)
        self.log("train/loss", loss, prog_bar=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.recipe.lr)


def _split_tensors(source: str, split: str, resolution: int, limit: int | None = None,
                   on_bad_image: str = "error") -> tuple[Tensor, Tensor, dict]:
    """A split of ``source`` as uint8 images (N, 3, R, R), int64 labels (N,) and its ``info``."""
    from latentbench.benchmark.metrics import to_uint8
    from latentbench.data import build_dataset

    data = build_dataset(source, split, resolution, limit=limit, on_bad_image=on_bad_image)
    # An explicit generator: without one, each DataLoader iterator draws a seed from the global RNG.
    loader = DataLoader(data, batch_size=256, shuffle=False, generator=torch.Generator())
    images, labels = zip(*((to_uint8(x), y) for x, y in loader), strict=True)
    return torch.cat(images), torch.cat(labels).long(), data.info


@torch.inference_mode()
def accuracy(net: DomainClassifier, images: Tensor, labels: Tensor, resolution: int, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``net`` on uint8 images."""
    correct = sum(
        (net(uint8_to_unit(images[i:i + batch_size], resolution)).argmax(1) == labels[i:i + batch_size]).sum().item()
        for i in range(0, len(images), batch_size)
    )
    return correct / len(images)


@contextlib.contextmanager
def _num_threads(n: int):
    """Run the block with ``torch.set_num_threads(n)``, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet_lightning():
    """Silence Lightning's start-up lines and its few-workers hint while a helper trains."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(does not have many workers|LeafSpec).*")
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def one_class_error(source: str) -> ValueError:
    """The error for a domain extractor of data with one class: its classifier's single logit gets no gradient, so
    it would stay at its random initialisation and FID-domain would compare random features, silently."""
    return ValueError(f"extractor {DOMAIN_PREFIX}{source} is a classifier of {source!r}'s classes, but it has one class "
                      "(an image folder without class sub-folders): it would learn nothing and measure with random "
                      "features; give the images class sub-folders, or choose another extractor (inception-tf, "
                      "dinov2-vitb14, or domain-<source> of data with classes)")


def train_domain_classifier(source: str, recipe: DomainRecipe, train: tuple, val: tuple) -> tuple[DomainClassifier, dict]:
    """Fit a domain classifier with Lightning on the CPU and measure it on the val split.

    Deterministic on one machine: the weights are initialised from ``recipe.seed`` and the
    batches shuffled by a ``torch.Generator`` seeded with it; training runs in float32 on the
    CPU (even where a GPU exists) with ``recipe.threads`` threads, one process, no data workers.

    Args:
        source: data source string (for the record).
        recipe: the training recipe.
        train: ``(images uint8 (N, 3, R, R), labels (N,), info)`` of the train split.
        val: the same for the val split.

    Returns:
        The trained network (eval mode) and the facts of its training (val accuracy, steps...).
    """
    (x, y, train_info), (vx, vy, _) = train, val
    num_classes = train_info["num_classes"]
    module = DomainClassifierModule(num_classes, recipe)
    loader = DataLoader(TensorDataset(x, y), batch_size=recipe.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(recipe.seed))
    start = time.perf_counter()
    with _quiet_lightning(), _num_threads(recipe.threads), tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            accelerator="cpu", devices=1, precision="32-true", max_epochs=recipe.epochs,
            max_steps=recipe.max_steps if recipe.max_steps is not None else -1,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root,
        )
        trainer.fit(module, train_dataloaders=loader)
        net = module.net.eval()
        val_accuracy = accuracy(net, vx, vy, recipe.resolution)
    facts = dict(
        format=DOMAIN_FORMAT, source=source, num_classes=num_classes, recipe=asdict(recipe),
        train_images=len(x), val_images=len(vx), steps=int(trainer.global_step),
        final_train_loss=float(trainer.callback_metrics["train/loss"]), val_accuracy=val_accuracy,
        train_fingerprint=train_info["fingerprint"], val_fingerprint=val[2]["fingerprint"], torch=torch.__version__,
    )
    return net, facts | dict(train_wall_s=round(time.perf_counter() - start, 2))


# Facts stored inside the safetensors file; they are deterministic, so equal trainings give equal files.
_STORED_FACTS = ("format", "source", "num_classes", "recipe", "train_images", "val_images", "steps",
                 "final_train_loss", "val_accuracy", "train_fingerprint", "val_fingerprint", "torch")


def save_domain_classifier(net: DomainClassifier, facts: dict, path: Path) -> str:
    """Write weights (+ the training facts as metadata) atomically, then a JSON sidecar; return the sha256."""
    return save_with_facts(net, facts, _STORED_FACTS, path)


def load_domain_classifier(path: Path) -> tuple[DomainClassifier, dict]:
    """A domain classifier and its stored training facts from a file ``save_domain_classifier`` wrote."""
    from safetensors.torch import load_file

    facts = read_stored_facts(path, DOMAIN_FORMAT, "domain classifier")
    recipe = DomainRecipe(**facts["recipe"])
    with torch.random.fork_rng(devices=[]):  # its random init (overwritten) must not move the global RNG
        net = DomainClassifier(facts["num_classes"], recipe.resolution, recipe.width, recipe.feature_dim)
    net.load_state_dict(load_file(str(path)), strict=True)
    return net.eval(), facts


def domain_cache_path(cache_dir: Path, source: str, recipe: DomainRecipe, train_info: dict, val_info: dict) -> Path:
    """``<cache_dir>/extractors/domain-<source>-<hash>.safetensors``, hashing all that defines the weights."""
    key = dict(format=DOMAIN_FORMAT, source=source, recipe=asdict(recipe),
               train=train_info["fingerprint"], val=val_info["fingerprint"])
    return hashed_cache_path(cache_dir, "extractors", "domain", source, key)


def _cached_facts(path: Path) -> dict | None:
    """The sidecar facts of a complete cache entry (weights present, sha256 matching), else None."""
    sidecar = path.with_suffix(".json")
    if not (path.is_file() and sidecar.is_file()):
        return None
    try:
        facts = json.loads(sidecar.read_text())
    except json.JSONDecodeError:
        return None
    return facts if facts.get("weights_sha256") == sha256_file(path) else None


class DomainExtractor(FeatureExtractor):
    """Penultimate features of a domain classifier trained by the suite on ``source`` (FID-domain).

    Args:
        source: the data source it was trained on (``mnist``, ``shapes``...).
        net: the trained classifier.
        weights_path: its safetensors file.
        facts: its training facts (val accuracy, recipe, fingerprints...).
    """

    def __init__(self, source: str, net: DomainClassifier, weights_path: Path, facts: dict):
        super().__init__()
        self.net = net
        self.resolution = facts["recipe"]["resolution"]
        self.id = f"{DOMAIN_PREFIX}{source}"
        self.dim = net.fc.out_features
        self.weights_sha256 = sha256_file(weights_path)
        self.metric_name = f"FID-domain({source})"
        self.preprocessing = (
            f"uint8 -> x / 127.5 - 1 -> bilinear resize to {self.resolution}x{self.resolution} (antialias=False) "
            f"when the size differs -> {self.id} CNN penultimate layer ({self.dim}-d, before ReLU)"
        )
        self.info = {k: v for k, v in facts.items() if k != "weights_sha256"} | dict(
            cache_path=str(weights_path), feature_layer="fc (pre-ReLU)")
        self._freeze()

    def forward(self, images: Tensor) -> Tensor:
        check_images(images)
        return self.net.features(uint8_to_unit(images.to(self.device), self.resolution)).float()  # (B, dim)


# How the running bench reads its protocol's data: {source: ((train split, eval split), on_bad_image)}. A classifier
# of that source built without explicit splits reads it as the bench does, wherever it is built: the eval stage's FID
# extractor, and a MAETok teacher or perceptual substitute, which training modules build without knowing the protocol.
_BENCH_READING: dict[str, tuple[tuple[str, str], str]] = {}
_DEFAULT_READING = (("train", "val"), "error")


@contextlib.contextmanager
def bench_data_reading(source: str, splits: tuple[str, str], on_bad_image: str):
    """Within it, ``domain-<source>`` classifiers train on ``splits`` with ``on_bad_image`` unless told otherwise."""
    previous = dict(_BENCH_READING)
    _BENCH_READING[source] = (tuple(splits), on_bad_image)
    try:
        yield
    finally:
        _BENCH_READING.clear()
        _BENCH_READING.update(previous)


def build_domain_extractor(
    source: str, weights: str | Path | None = None, cache_dir: str | Path | None = None, recipe: DomainRecipe | None = None,
    splits: tuple[str, str] | None = None, on_bad_image: str | None = None,
) -> DomainExtractor:
    """The ``domain-<source>`` extractor: from ``weights``, from the cache, or trained now and cached.

    Args:
        source: a ``build_dataset`` source string with the two ``splits``.
        weights: a safetensors file written by this suite (its recipe is read from it); skips training.
        cache_dir: cache root (default ``default_cache_dir()``); the file goes to
            ``<cache_dir>/extractors/domain-<source>-<hash>.safetensors`` with a ``.json`` sidecar.
        recipe: training recipe (default ``DomainRecipe()``).
        splits: the splits it trains and validates on; their data fingerprints are part of the cache key.
            Default: the running bench's when ``source`` is its protocol's (``bench_data_reading``: e.g.
            ``validation`` in Hugging Face datasets), else ``("train", "val")``.
        on_bad_image: unreadable images stop the build (``error``) or are skipped (``skip``); default: the
            running bench's for its protocol's source, else ``error``.

    Returns:
        The extractor; ``info`` holds ``val_accuracy``, ``train_images``, ``recipe``, ``cache_path``.
    """
    if not source:
        raise ValueError("a domain extractor needs a data source: domain-<source>, e.g. domain-mnist")
    if weights is not None:
        net, facts = load_domain_classifier(Path(weights))
        if facts["source"] != source:
            raise ValueError(f"{weights} was trained on {facts['source']!r}, not {source!r}")
        if recipe is not None and asdict(recipe) != facts["recipe"]:
            raise ValueError(f"{weights} was trained with recipe {facts['recipe']}, not {asdict(recipe)}")
        return DomainExtractor(source, net, Path(weights), facts)
    from latentbench.data import BadImageError

    bench_splits, bench_policy = _BENCH_READING.get(source, _DEFAULT_READING)
    splits, on_bad_image = splits or bench_splits, on_bad_image or bench_policy
    recipe = recipe or DomainRecipe()
    try:
        train = _split_tensors(source, splits[0], recipe.resolution, recipe.limit, on_bad_image)
    except BadImageError:  # it resolves: a file of it does not decode, and the error names it and the fix
        raise
    except ValueError as e:  # the data source's own message lists the sources; say whose source it is
        raise ValueError(f"extractor {DOMAIN_PREFIX}{source} is a classifier trained on the data source {source!r}, "
                         f"which does not resolve: {e}") from None
    if train[2]["num_classes"] < 2:
        raise one_class_error(source)
    val = _split_tensors(source, splits[1], recipe.resolution, on_bad_image=on_bad_image)
    path = domain_cache_path(Path(cache_dir) if cache_dir is not None else default_cache_dir(), source, recipe, train[2], val[2])
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=3600):  # a second process waits, then reads the cache
        facts = _cached_facts(path)
        if facts is None:  # absent, or incomplete / altered (sha256 differs from the sidecar's): train anew
            announce_training(f"the FID-domain({source}) classifier", "about 20 s on a 2-core CPU for mnist", path)
            net, facts = train_domain_classifier(source, recipe, train, val)
            save_domain_classifier(net, facts, path)
        net, _ = load_domain_classifier(path)
    return DomainExtractor(source, net, path, facts)


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------

EXTRACTORS.register("inception-tf")(InceptionTF)
EXTRACTORS.register("dinov2-vitb14")(DinoV2)
for _source in ("mnist", "shapes"):
    EXTRACTORS.register(
        f"{DOMAIN_PREFIX}{_source}", help=f"CNN classifier trained by the suite on {_source} (FID-domain({_source}))"
    )(functools.partial(build_domain_extractor, _source))
