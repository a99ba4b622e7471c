"""Frozen representation encoders for RAE: pretrained timm ViTs (local weights only) and the
suite's own MAE-pretrained small ViT for the embedded protocols.

RAE (Zheng et al. 2025, Sec. 3) keeps a pretrained representation encoder frozen and reads its
patch tokens after the last LayerNorm *without* its affine parameters, class and register
tokens dropped. ``FrozenEncoder`` does exactly that for any ViT with timm's interface
(``forward_features``, ``norm``, ``num_prefix_tokens``, ``embed_dim``):

================== ========================================= =====================================
name               what                                      weights
================== ========================================= =====================================
dinov2-vitb14-reg4 DINOv2-B/14 with 4 registers (RAE default) timm file from the HF cache, Meta's
                   ``vit_base_patch14_reg4_dinov2.lvd142m``   ``dinov2_vitb14_reg4_pretrain.pth``
                                                             from torch hub's, or ``weights=``
siglip2-vitb16     SigLIP2-B/16 at 256 (``...siglip_256.v2``) HF cache or ``weights=``
mae-vitb16         MAE-B/16 (``vit_base_patch16_224.mae``)    HF cache or ``weights=``
<any timm ViT>     a timm model name                         HF cache ``timm/<name>`` or ``weights=``
mae-<source>       the suite's small ViT, MAE-pretrained on   trained here (deterministic, CPU) and
                   the train split of ``<source>``            cached under the suite's cache dir
================== ========================================= =====================================

Pretrained weights are never downloaded and never replaced by random ones: missing weights
raise ``WeightsUnavailable`` naming the file and where to put it. A random-init encoder is
built only with ``random_init=True`` and says so in ``info["kind"]``.
"""
from __future__ import annotations

import hashlib
import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from latentbench.benchmark.extractors import (
    _cached_facts,
    _num_threads,
    _quiet_lightning,
    _split_tensors,
)
from latentbench.cachefiles import (
    announce_training,
    hashed_cache_path,
    read_stored_facts,
    save_with_facts,
)
from latentbench.paths import default_cache_dir
from latentbench.precision import BF16, FALLBACK, resolve_precision
from latentbench.tokenizers.teachers import (
    hf_cached_file,
    load_timm_vit,
    normalize_targets,
)
from latentbench.tokenizers.vit import (
    Block,
    PatchEmbed,
    Transformer,
    init_vit_weights,
    patchify,
    sincos_1d,
)
from latentbench.weights import WeightsUnavailable, sha256_file, torch_hub_file

MAE_PREFIX = "mae-"  # mae-<source>: the suite's own MAE-pretrained encoder
MAE_FORMAT = "latentbench-mae-vit-v1"  # bump when the network or training code changes: part of the cache key

# Short names of the encoders of the RAE paper (timm ports).
ENCODER_ALIASES = {
    "dinov2-vitb14-reg4": "vit_base_patch14_reg4_dinov2.lvd142m",
    "siglip2-vitb16": "vit_base_patch16_siglip_256.v2_webli",
    "mae-vitb16": "vit_base_patch16_224.mae",
}
# Meta's original DINOv2-with-registers checkpoint (timm's checkpoint_filter_fn converts its keys).
TORCH_HUB_URLS = {
    "vit_base_patch14_reg4_dinov2.lvd142m": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
}
HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub loader reads, in its order
RAE_GRID = 16  # RAE reads 16 x 16 tokens: 224 px for patch 14 (DINOv2), 256 px for patch 16 (SigLIP2, MAE)


def sincos_2d(grid: tuple[int, int], dim: int) -> Tensor:
    """Fixed 2D sine-cosine positions (gh*gw, dim): the first half of the channels encodes the row, the second the column.

    Each half is ``sincos_1d`` (MAE's 1D table). MAE's ``get_2d_sincos_pos_embed`` (and DiT's, its copy)
    puts the column first, so this table is theirs with the halves swapped: the same positions for
    a network trained with it, but not the table a checkpoint of theirs was trained with.
    """
    if dim % 4:
        raise ValueError(f"2D sine-cosine positions need a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    table_h, table_w = sincos_1d(grid[0], dim // 2), sincos_1d(grid[1], dim // 2)  # (gh, D/2), (gw, D/2)
    return torch.cat([table_h[rows.reshape(-1)], table_w[cols.reshape(-1)]], dim=1)  # (N, D)


# ---- the suite's small ViT and its MAE pretraining -----------------------------------------------

class SmallViT(nn.Module):
    """A plain ViT with timm's interface: class token, fixed 2D sine-cosine positions, pre-norm blocks, final norm.

    ``forward_features`` returns (B, 1 + N, D) after the final LayerNorm, class token first, as
    timm's ``VisionTransformer.forward_features``; ``visible`` runs only a subset of the patches
    (MAE's encoder).
    """

    num_prefix_tokens = 1

    def __init__(self, img_size: int, patch_size: int, dim: int, depth: int, heads: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size, self.patch_size, self.embed_dim = img_size, patch_size, dim
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.patch_embed = PatchEmbed(patch_size, 3, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.register_buffer("pos_embed", sincos_2d(self.grid, dim)[None], persistent=False)  # (1, N, D)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(init_vit_weights)

    def _run(self, tokens: Tensor) -> Tensor:
        cls = self.cls_token.to(tokens.dtype).expand(len(tokens), -1, -1)  # (B, 1, D)
        x = torch.cat([cls, tokens], dim=1)  # (B, 1 + n, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def patch_tokens(self, x: Tensor) -> Tensor:
        """Images (B, 3, S, S) -> patch tokens with positions (B, N, D)."""
        return self.patch_embed(x) + self.pos_embed.to(x.dtype)  # (B, N, D)

    def forward_features(self, x: Tensor) -> Tensor:
        return self._run(self.patch_tokens(x))  # (B, 1 + N, D)

    def visible(self, x: Tensor, keep: Tensor) -> Tensor:
        """Encode only the patches ``keep`` (B, n) indexes: (B, 1 + n, D)."""
        tokens = self.patch_tokens(x)  # (B, N, D)
        return self._run(torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1])))


class MAEDecoder(nn.Module):
    """MAE's light decoder: visible tokens + mask tokens in place, fixed positions, blocks, per-patch pixels."""

    def __init__(self, grid: tuple[int, int], in_dim: int, dim: int, depth: int, heads: int, out_dim: int):
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.register_buffer("pos_embed", sincos_2d(grid, dim)[None], persistent=False)  # (1, N, D)
        self.transformer = Transformer(dim, depth, heads)
        self.head = nn.Linear(dim, out_dim)
        self.apply(init_vit_weights)

    def forward(self, encoded: Tensor, restore: Tensor) -> Tensor:
        """encoded (B, 1 + n, D_e) of the kept patches; ``restore`` (B, N) un-shuffles -> (B, N, out_dim)."""
        x = self.embed(encoded)  # (B, 1 + n, D)
        b, n = restore.shape
        masks = self.mask_token.to(x.dtype).expand(b, n - (x.shape[1] - 1), -1)  # (B, N - n, D)
        patches = torch.cat([x[:, 1:], masks], dim=1)  # (B, N, D) in shuffled order
        patches = torch.gather(patches, 1, restore[..., None].expand(-1, -1, x.shape[-1]))  # (B, N, D)
        x = torch.cat([x[:, :1], patches + self.pos_embed.to(x.dtype)], dim=1)  # (B, 1 + N, D)
        return self.head(self.transformer(x)[:, 1:])  # (B, N, out_dim)


@dataclass(frozen=True)
class MAERecipe:
    """How the suite's MAE encoder is pre-trained; every field is part of its cache key."""

    resolution: int = 32  # the embedded protocols' size
    patch_size: int = 4  # 8 x 8 patch grid at 32 px
    width: int = 128  # the latent's channels C
    depth: int = 4
    heads: int = 4
    decoder_width: int = 64  # MAE: a decoder much lighter than the encoder; it dominates the step time here
    decoder_depth: int = 1
    decoder_heads: int = 2
    mask_ratio: float = 0.75  # MAE's
    norm_pix_loss: bool = True  # MAE's per-patch normalised pixel targets (better representations, He et al. Table 1d)
    batch_size: int = 64
    # 600 steps (9.6 epochs of the 4,000 mnist images) take ~60 s on one busy CPU core in bf16:
    # masked loss 1.40 -> 0.27 on val. Batch 128 with a 2-layer decoder ran 2.5x slower per step.
    max_steps: int = 600
    lr: float = 1.5e-3  # AdamW, betas (0.9, 0.95), weight decay 0.05 as MAE; a higher peak for a short run
    weight_decay: float = 0.05
    warmup_steps: int = 40
    seed: int = 0  # initialisation, shuffling and masks
    limit: int | None = None  # train on the first `limit` images of the split only (tests)
    # One thread: a fixed float reduction order whatever the machine's core count, and on 2 busy
    # cores 2 threads ran 3-10x slower than 1 (measured).
    threads: int = 1
    precision: str = "bf16-mixed"  # CPU autocast: 1.5-2x faster than float32 with AVX512/AMX; float32 without (build_mae_encoder)

    def __post_init__(self):
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {self.mask_ratio}")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")


def random_keep(batch: int, tokens: int, keep: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """MAE's per-sample random masking: (indices kept (B, keep), un-shuffling permutation (B, N))."""
    shuffle = torch.rand(batch, tokens, generator=generator).argsort(dim=1)  # (B, N)
    return shuffle[:, :keep], shuffle.argsort(dim=1)


def mae_loss(encoder: SmallViT, decoder: MAEDecoder, x: Tensor, recipe: MAERecipe,
             generator: torch.Generator | None = None) -> Tensor:
    """Mean squared error on the masked patches (He et al. 2022, Sec. 3), targets normalised per patch if asked."""
    n = encoder.grid[0] * encoder.grid[1]
    keep, restore = random_keep(len(x), n, round(n * (1 - recipe.mask_ratio)), generator)
    keep, restore = keep.to(x.device), restore.to(x.device)
    pred = decoder(encoder.visible(x, keep), restore).float()  # (B, N, 3*p*p)
    target = patchify(x, encoder.patch_size)  # (B, N, 3*p*p) in the unpatchify layout the head predicts
    if recipe.norm_pix_loss:
        target = normalize_targets(target)
    masked = torch.ones(len(x), n, device=x.device)
    masked.scatter_(1, keep, 0.0)  # (B, N): 1 = masked
    return (((pred - target) ** 2).mean(-1) * masked).sum() / masked.sum()


def _build_mae(recipe: MAERecipe) -> tuple[SmallViT, MAEDecoder]:
    encoder = SmallViT(recipe.resolution, recipe.patch_size, recipe.width, recipe.depth, recipe.heads)
    decoder = MAEDecoder(encoder.grid, recipe.width, recipe.decoder_width, recipe.decoder_depth, recipe.decoder_heads,
                         3 * recipe.patch_size ** 2)
    return encoder, decoder


class MAEPretrainModule(L.LightningModule):
    """MAE pretraining of a ``SmallViT`` on uint8 images: AdamW, linear warmup then cosine decay to 0."""

    def __init__(self, recipe: MAERecipe):
        super().__init__()
        self.recipe = recipe
        self.encoder, self.decoder = _build_mae(recipe)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, _ = batch
        loss = mae_loss(self.encoder, self.decoder, images.float() / 127.5 - 1, self.recipe)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        r = self.recipe
        decay = [p for p in self.parameters() if p.ndim >= 2]  # no decay on biases, norms, tokens' gains
        rest = [p for p in self.parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                                      lr=r.lr, betas=(0.9, 0.95))

        def schedule(step: int) -> float:
            if step < r.warmup_steps:
                return (step + 1) / r.warmup_steps
            return 0.5 * (1 + math.cos(math.pi * min((step - r.warmup_steps) / max(r.max_steps - r.warmup_steps, 1), 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@torch.no_grad()
def mae_val_loss(encoder: SmallViT, decoder: MAEDecoder, images: Tensor, recipe: MAERecipe, batch_size: int = 500) -> float:
    """Masked-patch loss on uint8 images with masks from a fixed seed (comparable across runs)."""
    generator = torch.Generator().manual_seed(recipe.seed + 1)
    total = 0.0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].float() / 127.5 - 1
        total += mae_loss(encoder.eval(), decoder.eval(), x, recipe, generator).item() * len(x)
    return total / len(images)


def train_mae_encoder(source: str, recipe: MAERecipe, train: tuple, val: tuple) -> tuple[SmallViT, dict]:
    """MAE-pretrain a ``SmallViT`` with Lightning on the CPU; return it (eval mode) and the facts of its training.

    Deterministic on one machine: the weights, the batch order and the masks all come from
    ``recipe.seed`` (the global RNG is restored afterwards), and training runs on the CPU with
    ``recipe.threads`` threads, one process, no data workers.
    """
    (x, y, train_info), (vx, _, val_info) = train, val
    loader = DataLoader(TensorDataset(x, y), batch_size=recipe.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(recipe.seed))
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]), _quiet_lightning(), _num_threads(recipe.threads), \
            tempfile.TemporaryDirectory() as root:
        torch.manual_seed(recipe.seed)  # initialisation, then the masks of every step
        module = MAEPretrainModule(recipe)
        trainer = L.Trainer(
            accelerator="cpu", devices=1, precision=recipe.precision, max_steps=recipe.max_steps, max_epochs=-1,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root,
        )
        trainer.fit(module, train_dataloaders=loader)
        wall = time.perf_counter() - start
        val_loss = mae_val_loss(module.encoder, module.decoder, vx, recipe)
    facts = dict(
        format=MAE_FORMAT, source=source, recipe=asdict(recipe), train_images=len(x), val_images=len(vx),
        steps=int(trainer.global_step), final_train_loss=float(trainer.callback_metrics["train/loss"]),
        val_masked_loss=val_loss, train_fingerprint=train_info["fingerprint"], val_fingerprint=val_info["fingerprint"],
        torch=torch.__version__,
    )
    return module.encoder.eval(), facts | dict(train_wall_s=round(wall, 2))


# Facts stored inside the safetensors file; they are deterministic, so equal trainings give equal files.
_STORED_FACTS = ("format", "source", "recipe", "train_images", "val_images", "steps", "final_train_loss",
                 "val_masked_loss", "train_fingerprint", "val_fingerprint", "torch")


def save_mae_encoder(net: SmallViT, facts: dict, path: Path) -> str:
    """Write weights (+ the training facts as metadata) atomically, then a JSON sidecar; return the sha256."""
    return save_with_facts(net, facts, _STORED_FACTS, path)


def load_mae_encoder(path: Path) -> tuple[SmallViT, dict]:
    """The encoder and its stored training facts from a file ``save_mae_encoder`` wrote."""
    from safetensors.torch import load_file

    facts = read_stored_facts(path, MAE_FORMAT, "MAE encoder")
    r = MAERecipe(**facts["recipe"])
    with torch.random.fork_rng(devices=[]):  # its random init (overwritten) must not move the global RNG
        net = SmallViT(r.resolution, r.patch_size, r.width, r.depth, r.heads)
    net.load_state_dict(load_file(str(path)), strict=True)
    return net.eval(), facts


def _recipe_gives(recipe: MAERecipe, stored: dict[str, Any]) -> bool:
    """Whether weights pre-trained with the ``stored`` recipe are what ``recipe`` trains: the same fields, the
    precision as it resolved on the machine that trained them (a bf16 recipe runs in float32 where bf16 is slow, and
    its file says so; without this, such a file, the cache's own, was refused when passed back as ``weights``)."""
    could = {recipe.precision} | ({FALLBACK} if recipe.precision in BF16 else set())
    return stored.get("precision") in could and asdict(replace(recipe, precision=stored["precision"])) == stored


def mae_cache_path(cache_dir: Path, source: str, recipe: MAERecipe, train_info: dict, val_info: dict) -> Path:
    """``<cache_dir>/encoders/mae-<source>-<hash>.safetensors``, hashing all that defines the weights."""
    key = dict(format=MAE_FORMAT, source=source, recipe=asdict(recipe), train=train_info["fingerprint"],
               val=val_info["fingerprint"])
    return hashed_cache_path(cache_dir, "encoders", "mae", source, key)


def build_mae_encoder(source: str, weights: str | Path | None = None, cache_dir: str | Path | None = None,
                      recipe: MAERecipe | None = None) -> tuple[SmallViT, dict, Path]:
    """The suite's ``mae-<source>`` encoder: from ``weights``, from the cache, or pre-trained now and cached.

    Args:
        source: a ``build_dataset`` source string with ``train`` and ``val`` splits.
        weights: a safetensors file ``save_mae_encoder`` wrote (its recipe is read from it); skips training.
        cache_dir: cache root (default ``default_cache_dir()``); the file goes to
            ``<cache_dir>/encoders/mae-<source>-<hash>.safetensors`` with a ``.json`` sidecar.
        recipe: pretraining recipe (default ``MAERecipe()``).

    Returns:
        (encoder in eval mode, training facts, weights file).
    """
    if not source:
        raise ValueError("an MAE encoder needs a data source: mae-<source>, e.g. mae-mnist")
    if weights is not None:
        net, facts = load_mae_encoder(Path(weights))
        if facts["source"] != source:
            raise ValueError(f"{weights} was pre-trained on {facts['source']!r}, not {source!r}")
        if recipe is not None and not _recipe_gives(recipe, facts["recipe"]):
            raise ValueError(f"{weights} was pre-trained with recipe {facts['recipe']}, not {asdict(recipe)}")
        return net, facts, Path(weights)
    recipe = recipe or MAERecipe()
    # bf16 where this CPU runs it at speed, else float32 (latentbench.precision); the cache key has the one used
    recipe = replace(recipe, precision=resolve_precision(recipe.precision, device="cpu").used)
    train = _split_tensors(source, "train", recipe.resolution, recipe.limit)
    val = _split_tensors(source, "val", recipe.resolution)
    path = mae_cache_path(Path(cache_dir) if cache_dir is not None else default_cache_dir(), source, recipe, train[2], val[2])
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=3600):  # a second process waits, then reads the cache
        facts = _cached_facts(path)
        if facts is None:  # absent, or incomplete / altered (sha256 differs from the sidecar's): train anew
            announce_training(f"the mae-{source} encoder RAE reads", "about 60 s on a 2-core CPU for mnist", path)
            net, facts = train_mae_encoder(source, recipe, train, val)
            save_mae_encoder(net, facts, path)
        net, _ = load_mae_encoder(path)
    return net, facts, path


# ---- the frozen encoder RAE reads ------------------------------------------------------------------

def state_digest(module: nn.Module) -> str:
    """sha256 over a module's tensors (names, dtypes, shapes, bytes): the same weights give the same digest
    whichever file format they came from."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FrozenEncoder(nn.Module):
    """A frozen ViT read as RAE reads it: images in [-1, 1] -> latent (B, C, h, w).

    [-1, 1] -> [0, 1] -> bicubic resize to ``input_size`` (``antialias=False``, as the official
    code's ``F.interpolate``; skipped at that size) -> (x - mean) / std -> the ViT -> the last
    LayerNorm without affine parameters -> prefix (class, register) tokens dropped -> (C, h, w).
    Always in eval mode and without gradients (``train()`` leaves it in eval mode).

    Args:
        net: a ViT with timm's interface; its final ``norm`` is replaced by a LayerNorm of the same
            eps without affine parameters.
        input_size: side of the square input the ViT reads.
        mean, std: per-channel normalisation of [0, 1] pixels the ViT was trained with.
        info: JSON-serialisable facts (name, kind, weights path and sha256, ...).
    """

    def __init__(self, net: nn.Module, input_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 info: dict[str, Any]):
        super().__init__()
        norm = net.norm
        net.norm = nn.LayerNorm(net.embed_dim, eps=norm.eps, elementwise_affine=False)  # RAE: no affine
        self.net = net
        self.input_size, self.dim = input_size, net.embed_dim
        patch = net.patch_embed.patch_size
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        if input_size % patch:
            raise ValueError(f"encoder input size {input_size} is not a multiple of its patch size {patch}")
        self.grid = (input_size // patch, input_size // patch)
        self.mean, self.std = tuple(mean), tuple(std)
        self.register_buffer("pixel_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        self.info = info | dict(
            input_size=input_size, mean=list(self.mean), std=list(self.std), dim=self.dim, grid=list(self.grid),
            dropped_prefix_tokens=int(net.num_prefix_tokens), final_norm=f"LayerNorm without affine (eps {norm.eps:g})",
            weights_digest=state_digest(self),
            preprocessing=(f"[-1, 1] -> [0, 1] -> bicubic resize to {input_size}x{input_size} (antialias=False) "
                           f"-> (x - {list(self.mean)}) / {list(self.std)}"),
        )

    def train(self, mode: bool = True) -> FrozenEncoder:
        return super().train(False)  # frozen: dropout / drop-path never on

    def requires_grad_(self, requires_grad: bool = True) -> FrozenEncoder:
        return super().requires_grad_(False)  # frozen (forward runs without gradient anyway)

    def pixels(self, x: Tensor) -> Tensor:
        """[-1, 1] images -> the ViT's normalised input (B, 3, S, S)."""
        x = (x + 1) / 2  # (B, 3, H, W) in [0, 1]
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bicubic", align_corners=False, antialias=False)
        return (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> latent (B, C, h, w), no gradient."""
        with torch.no_grad():
            tokens = self.net.forward_features(self.pixels(x))[:, self.net.num_prefix_tokens:]  # (B, h*w, C)
        return tokens.transpose(1, 2).reshape(len(x), self.dim, *self.grid)  # (B, C, h, w)


def _find_timm_weights(model: str) -> Path | None:
    """The weights of timm model ``model`` in the HF cache (``timm/<model>``) or torch hub's, or None."""
    cached = hf_cached_file(f"timm/{model}", HF_FILES)
    if cached is not None:
        return cached
    url = TORCH_HUB_URLS.get(model)
    return torch_hub_file(url) if url is not None and torch_hub_file(url).is_file() else None


def _missing_weights(name: str, model: str, path: Path | None) -> WeightsUnavailable:
    url = TORCH_HUB_URLS.get(model)
    hub = f", or download {url} to {torch_hub_file(url)}" if url else ""
    return WeightsUnavailable(
        f"the RAE encoder {name!r} needs the pretrained weights of timm model {model}, which are not on this "
        f"machine{f' ({path} does not exist)' if path is not None else ''}: `huggingface-cli download timm/{model} "
        f"model.safetensors` (into the Hugging Face cache){hub}, or pass encoder_weights=/path/to/model.safetensors. "
        "The suite never downloads them itself and never uses a random-weights encoder unless asked "
        "(random_encoder=True, labelled so); offline, use the suite's own encoder mae-<source> (e.g. mae-mnist)."
    )


def create_encoder(name: str, weights: str | Path | None = None, input_size: int | None = None,
                   random_init: bool = False, cache_dir: str | Path | None = None,
                   recipe: MAERecipe | None = None, seed: int = 0) -> FrozenEncoder:
    """Build RAE's frozen encoder.

    Args:
        name: an alias (``dinov2-vitb14-reg4``, ``siglip2-vitb16``, ``mae-vitb16``), any timm ViT
            name, or ``mae-<source>`` (the suite's MAE-pretrained small ViT, e.g. ``mae-mnist``).
        weights: a local weights file (timm / Meta / OpenCLIP layouts for timm models; a file
            ``save_mae_encoder`` wrote for ``mae-<source>``); default: the HF / torch hub cache,
            or the suite's cache for ``mae-<source>`` (pre-trained there if absent).
        input_size: side of the encoder's input; default 16 patches per side (RAE's 16 x 16
            tokens), or the suite encoder's own resolution.
        random_init: build the architecture with random weights (seeded by ``seed``), no weights
            read; ``info["kind"]`` says "random-init". Only for pipeline checks, never a result.
        cache_dir: the suite's cache root for ``mae-<source>``.
        recipe: pretraining recipe of ``mae-<source>``.
        seed: initialisation seed of a random-init encoder.
    """
    if name not in ENCODER_ALIASES and name.startswith(MAE_PREFIX):
        return _suite_encoder(name, weights, input_size, random_init, cache_dir, recipe, seed)
    import timm

    model = ENCODER_ALIASES.get(name, name)
    path = None
    if not random_init:
        path = Path(weights) if weights is not None else _find_timm_weights(model)
        if path is None or not path.is_file():
            raise _missing_weights(name, model, path)
    with torch.device("meta"):  # the architecture's facts only: no memory, no RNG
        probe = timm.create_model(model, pretrained=False, num_classes=0)
    cfg = probe.pretrained_cfg
    size = input_size or RAE_GRID * probe.patch_embed.patch_size[0]
    info = dict(name=name, timm_model=model)
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = timm.create_model(model, pretrained=False, img_size=size, num_classes=0)
        info |= dict(kind="random-init", pretrained=False, seed=seed, weights_path=None, weights_sha256=None)
    else:
        net = load_timm_vit(model, size, path)
        info |= dict(kind="pretrained", pretrained=True, weights_path=str(path), weights_sha256=sha256_file(path))
    return FrozenEncoder(net, size, cfg["mean"], cfg["std"], info)


def _suite_encoder(name: str, weights, input_size, random_init, cache_dir, recipe, seed) -> FrozenEncoder:
    source = name[len(MAE_PREFIX):]
    if random_init:
        recipe = recipe or MAERecipe()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = SmallViT(recipe.resolution, recipe.patch_size, recipe.width, recipe.depth, recipe.heads)
        info = dict(name=name, kind="random-init", pretrained=False, seed=seed, weights_path=None, weights_sha256=None,
                    architecture={k: getattr(recipe, k) for k in ("resolution", "patch_size", "width", "depth", "heads")})
    else:
        net, facts, path = build_mae_encoder(source, weights, cache_dir, recipe)
        info = dict(name=name, kind="suite-mae", pretrained=True, weights_path=str(path), weights_sha256=sha256_file(path),
                    training={k: v for k, v in facts.items() if k != "weights_sha256"})
    if input_size not in (None, net.img_size):
        raise ValueError(f"{name} reads {net.img_size} px (its fixed positions); input_size={input_size} does not fit")
    return FrozenEncoder(net, net.img_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), info)


__all__ = ["ENCODER_ALIASES", "FrozenEncoder", "MAEDecoder", "MAERecipe", "SmallViT", "build_mae_encoder",
           "create_encoder", "mae_loss", "sincos_2d", "state_digest", "train_mae_encoder"]
