"""LightningModule that trains an RAE decoder: ``AutoencoderModule`` plus the latent statistics.

RAE's decoder losses are the LDM recipe ``AutoencoderModule`` already implements: L1 + LPIPS
(1.0; or its labelled substitute offline) + an adaptively weighted hinge GAN loss that starts
late (0.75). The noise augmentation lives in the tokenizer (``RAE.forward_train``). What this
module adds: before the first training step, unless the tokenizer's statistics are already
fitted (a resumed run, or a tokenizer loaded with them), it fits the per-element latent mean
and variance over the training split, in a fixed order (no shuffling), so the normalisation
is deterministic and the decoder never trains on an unnormalised latent.

Discriminator: ``AutoencoderModule``'s PatchGAN by default; ``disc_backbone`` gives RAE's kind,
trained heads on a frozen encoder's tokens (``rae_parts.FeatureDiscriminator``; the paper's is a
frozen DINO ViT-S, e.g. ``disc_backbone="vit_small_patch16_224.dino"`` with its weights on the
machine, or offline the suite's ``mae-<source>``).
"""
from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Subset

from latentbench.tokenizers import rae  # noqa: F401  (registers the rae-* names)
from latentbench.tokenizers.module import AutoencoderModule
from latentbench.tokenizers.rae_encoders import MAERecipe, create_encoder
from latentbench.tokenizers.rae_parts import FeatureDiscriminator


class RAEModule(AutoencoderModule):
    """Trains an RAE decoder (the encoder is frozen; its parameters never reach the optimizer).

    Args:
        tokenizer: registry name (``rae-ci``, ``rae-dinov2-b``...) or ``package.module:Class``.
        tokenizer_args: keyword arguments for the tokenizer.
        stats_images: fit the latent statistics on the first ``stats_images`` training images
            (in dataset order, counted over all processes); None: the whole training split (the paper's choice).
        stats_batch_size: batch size of the statistics pass; default: the training loader's.
        disc_backbone: None: ``AutoencoderModule``'s PatchGAN. Else the frozen encoder of a
            ``FeatureDiscriminator`` (a ``create_encoder`` name: a timm ViT with local weights, or
            ``mae-<source>``); its heads are ``disc_channels`` wide. Used when ``disc_weight > 0``.
        disc_backbone_args: ``create_encoder`` keyword arguments (``weights``, ``input_size``,
            ``recipe`` as a dict of ``MAERecipe`` fields, ``cache_dir``).
        disc_blocks: backbone blocks the heads read; default four spread to the last block.
        **kwargs: ``AutoencoderModule`` arguments (lr, betas, rec_loss, perceptual_*, disc_*...).
    """

    def __init__(self, tokenizer: str = "rae-ci", tokenizer_args: dict[str, Any] | None = None,
                 stats_images: int | None = None, stats_batch_size: int | None = None, disc_backbone: str | None = None,
                 disc_backbone_args: dict[str, Any] | None = None, disc_blocks: tuple[int, ...] | None = None,
                 **kwargs: Any):
        super().__init__(tokenizer, tokenizer_args, **kwargs)
        self.normalization: dict[str, Any] | None = None  # facts of the statistics pass, once it ran
        if disc_backbone is not None and self.discriminator is not None:
            args = dict(disc_backbone_args or {})
            if isinstance(args.get("recipe"), dict):
                args["recipe"] = MAERecipe(**args["recipe"])
            backbone = create_encoder(disc_backbone, **args)
            self.discriminator = FeatureDiscriminator(backbone, disc_blocks, self.hparams.disc_channels)

    @property
    def discriminator_info(self) -> dict[str, Any] | None:
        """``AutoencoderModule.discriminator_info``, with RAE's frozen-backbone discriminator described."""
        d, hp = self.discriminator, self.hparams
        if isinstance(d, FeatureDiscriminator):
            return {"kind": "frozen-feature", "backbone": d.backbone.info, "blocks": list(d.layers), "channels": hp.disc_channels,
                    "weight": hp.disc_weight, "start": hp.disc_start}
        return super().discriminator_info

    def on_train_start(self) -> None:
        if self.tokenizer.normalization_fitted:  # by this run before a resume (its facts are in the checkpoint), or before it
            self.normalization = self.normalization or {"images": int(self.tokenizer.latent_stats_images),
                                                        "fitted": "before this run"}
            return
        self.normalization = self.tokenizer.fit_normalization(self._stats_loader())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rae_normalization"] = self.normalization

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.normalization = checkpoint.get("rae_normalization")

    def _stats_loader(self) -> DataLoader:
        """The first ``stats_images`` training images (all: None) in dataset order, this rank's shard
        (every world_size-th): the statistics are those of the same images on any number of processes."""
        train = self.trainer.train_dataloader
        dataset = train.dataset
        n = len(dataset) if self.hparams.stats_images is None else min(len(dataset), self.hparams.stats_images)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        if world > 1 or n < len(dataset):
            dataset = Subset(dataset, range(rank, n, world))
        return DataLoader(dataset, batch_size=self.hparams.stats_batch_size or train.batch_size or 64, shuffle=False,
                          num_workers=train.num_workers)
