"""LightningModule that trains an autoencoder-style tokenizer.

Loss (LDM / VQGAN recipe): reconstruction (L1 or MSE) + perceptual (LPIPS, when its
weights exist) + the tokenizer's own terms (e.g. SD-VAE's KL) + a PatchGAN hinge loss with
an adaptive weight, switched on at ``disc_start``. The module receives a registry name and
arguments, not a built network, so ``save_hyperparameters`` can rebuild it from a checkpoint.
"""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from latentbench.registry import require_positive
from latentbench.tokenizers import create_tokenizer, forward_train
from latentbench.tokenizers.parts import (
    FeatureDistance,
    PatchDiscriminator,
    adaptive_gan_weight,
    hinge_d_loss,
    hinge_g_loss,
)
from latentbench.weights import WeightsUnavailable, build_lpips


class AutoencoderModule(L.LightningModule):
    """Trains any tokenizer whose ``forward_train`` returns (reconstruction, extra losses).

    Args:
        tokenizer: registry name or ``package.module:Class``.
        tokenizer_args: keyword arguments for the tokenizer.
        lr: peak Adam learning rate (both networks), after a linear warmup, cosine-decayed to 10%.
        betas: Adam betas; (0.5, 0.9) is the GAN-autoencoder choice of LDM, ViTs want (0.9, 0.95).
        warmup_steps: linear warmup length.
        max_steps: schedule length (the trainer's max_steps).
        rec_loss: "l1" (LDM) or "mse".
        rec_weight: weight of the reconstruction term (RAE: 0.5, as its code takes the L1 of [0, 1] images, half
            the L1 of the [-1, 1] images here, against LPIPS of [-1, 1] images).
        perceptual_weight: LPIPS weight; 0 disables. Without LPIPS weights on the machine the
            term is dropped and ``perceptual_status`` says why (it goes into the result).
        perceptual_net: LPIPS backbone ("vgg" as LDM, "alex").
        perceptual_fallback: when LPIPS weights are absent, a labelled substitute instead of no
            perceptual term: ``"domain-<source>"`` gives LPIPS's recipe (unit-normalised
            activations, equal layer weights) on the suite's frozen domain classifier
            (``parts.FeatureDistance``). None: the term is dropped.
        loss_weights: weights of the tokenizer's own loss terms; defaults to ``tokenizer.loss_weights``.
        disc_weight: GAN loss weight (times the adaptive weight); 0 disables the discriminator.
        disc_start: step at which the GAN losses start.
        disc_channels, disc_layers: PatchGAN size.
        stage_steps: fraction of ``max_steps`` for each of the tokenizer's ``stages``, run in
            order (MAETok: ``{"ae": 0.75, "decoder-ft": 0.25}``); default: all steps in the first.
            Before every step the tokenizer's ``set_stage(stage, progress)`` is called, where it
            has one, so a resumed run picks up the right stage.
    """

    def __init__(
        self,
        tokenizer: str,
        tokenizer_args: dict[str, Any] | None = None,
        lr: float = 4.5e-6 * 64,
        betas: tuple[float, float] = (0.5, 0.9),
        warmup_steps: int = 100,
        max_steps: int = 10_000,
        rec_loss: str = "l1",
        rec_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        perceptual_net: str = "vgg",
        perceptual_fallback: str | None = None,
        loss_weights: dict[str, float] | None = None,
        disc_weight: float = 0.5,
        disc_start: int = 5_000,
        disc_channels: int = 64,
        disc_layers: int = 3,
        stage_steps: dict[str, float] | None = None,
    ):
        super().__init__()
        require_positive(lr=lr, max_steps=max_steps, disc_channels=disc_channels, disc_layers=disc_layers)
        if rec_loss not in ("l1", "mse"):
            raise ValueError(f"rec_loss must be 'l1' or 'mse', got {rec_loss!r}")
        self.save_hyperparameters()
        self.tokenizer = create_tokenizer(tokenizer, **(tokenizer_args or {}))
        declared = getattr(self.tokenizer, "training_module", None)
        if declared:  # FlowMo's flow loss and stage 1b, RAE's latent statistics: not this module's losses
            from latentbench.registry import import_object

            if not isinstance(self, import_object(declared)):
                raise ValueError(f"{tokenizer} trains with {declared}, not {type(self).__qualname__}: set `module: "
                                 f"{declared}` in its tokenizer config (a config without one gets it)")
        self.loss_weights = dict(getattr(self.tokenizer, "loss_weights", {}), **(loss_weights or {}))
        self.perceptual, self.perceptual_status = self._build_perceptual(perceptual_weight, perceptual_net, perceptual_fallback)
        self.discriminator = PatchDiscriminator(3, disc_channels, disc_layers) if disc_weight > 0 else None
        self.stage_plan = plan_stages(tuple(getattr(self.tokenizer, "stages", ("ae",))), stage_steps, max_steps)

    @property
    def discriminator_info(self) -> dict[str, Any] | None:
        """What the discriminator is, for the result record's ``training.discriminator`` (None without one)."""
        if self.discriminator is None:
            return None
        hp = self.hparams
        return {"kind": "patchgan", "channels": hp.disc_channels, "layers": hp.disc_layers, "weight": hp.disc_weight,
                "start": hp.disc_start}

    @staticmethod
    def _build_perceptual(weight: float, net: str, fallback: str | None = None):
        """(perceptual loss module or None, a status string for the result record)."""
        if weight <= 0:
            return None, "off"
        try:
            return build_lpips(net), f"lpips-{net}"
        except WeightsUnavailable as e:
            if fallback is None:
                return None, f"unavailable: {e}"
            from latentbench.tokenizers.teachers import DOMAIN_PREFIX, create_teacher

            if not fallback.startswith(DOMAIN_PREFIX):
                raise ValueError(f"perceptual_fallback must be 'domain-<source>' (e.g. domain-mnist), got {fallback!r}") from None
            teacher = create_teacher(fallback)
            return FeatureDistance(teacher), (
                f"substitute: {fallback} feature distance (LPIPS recipe on the suite's frozen classifier, "
                f"weights sha256 {teacher.weights_sha256[:12]}), not LPIPS; lpips-{net} unavailable: {e}")

    # ---- losses -----------------------------------------------------------------------------

    def _reconstruction_losses(self, x: Tensor, rec: Tensor, extra: dict[str, Tensor]) -> dict[str, Tensor]:
        """Weighted loss terms of the autoencoder (before the GAN term)."""
        rec = rec.float()
        distance = F.l1_loss(rec, x) if self.hparams.rec_loss == "l1" else F.mse_loss(rec, x)
        losses = {"rec": self.hparams.rec_weight * distance}
        if self.perceptual is not None:
            losses["perceptual"] = self.hparams.perceptual_weight * self.perceptual(rec, x).mean()
        for name, value in extra.items():
            if name not in self.loss_weights:
                raise KeyError(f"tokenizer returned loss term {name!r} but no weight for it; set loss_weights")
            losses[name] = self.loss_weights[name] * value.float()
        return losses

    def _gan_active(self) -> bool:
        return self.discriminator is not None and self.global_step >= self.hparams.disc_start

    def _generator_gan_loss(self, rec: Tensor, ae_loss: Tensor) -> Tensor:
        """Adaptively weighted hinge loss of the reconstruction; no gradient reaches the discriminator."""
        self.discriminator.requires_grad_(False)
        g_loss = hinge_g_loss(self.discriminator(rec))
        self.discriminator.requires_grad_(True)
        last = getattr(self.tokenizer, "last_layer", lambda: None)()
        weight = adaptive_gan_weight(ae_loss, g_loss, last) if last is not None else 1.0
        return self.hparams.disc_weight * weight * g_loss

    def current_stage(self, step: int) -> tuple[str, float]:
        """(stage name, fraction of that stage done) at optimizer step ``step``."""
        return stage_at(self.stage_plan, step)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if hasattr(self.tokenizer, "set_stage"):
            name, progress = self.current_stage(self.global_step)
            self.tokenizer.set_stage(name, progress)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """One step for both networks: each loss reaches only its own network's parameters.

        The discriminator sees the reconstruction detached, and the generator's GAN term is
        computed with the discriminator frozen, so one optimizer over both parameter sets is
        the same update as the usual two alternating ones (both use this step's weights).
        """
        x, _ = batch
        rec, extra = forward_train(self.tokenizer, x)
        losses = self._reconstruction_losses(x, rec, extra)
        loss = sum(losses.values())
        d_loss = torch.zeros((), device=x.device)
        if self._gan_active():
            losses["gan"] = self._generator_gan_loss(rec, loss)
            loss = loss + losses["gan"]
            d_loss = hinge_d_loss(self.discriminator(x), self.discriminator(rec.detach()))
            self.log("train/disc", d_loss.detach())
        self.log("train/loss", loss.detach(), prog_bar=True)  # the autoencoder's loss
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()})
        return loss + d_loss

    # ---- optimizer ----------------------------------------------------------------------------

    def _lr_lambda(self, step: int) -> float:
        """Linear warmup, then cosine decay to 10% of the peak."""
        warmup, total = self.hparams.warmup_steps, max(self.hparams.max_steps, 1)
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    def configure_optimizers(self):
        groups = [{"params": [p for p in self.tokenizer.parameters() if p.requires_grad]}]
        if self.discriminator is not None:
            groups.append({"params": list(self.discriminator.parameters())})
        optimizer = torch.optim.Adam(groups, lr=self.hparams.lr, betas=tuple(self.hparams.betas))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_lambda)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def plan_stages(stages: tuple[str, ...], fractions: dict[str, float] | None, max_steps: int) -> list[tuple[str, int, int]]:
    """[(stage, first step, end step)] covering ``max_steps`` in the tokenizer's stage order."""
    fractions = fractions or {stages[0]: 1.0}
    unknown = set(fractions) - set(stages)
    if unknown:
        raise ValueError(f"stage_steps names {sorted(unknown)}, but the tokenizer's stages are {list(stages)}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6 or min(fractions.values()) < 0:
        raise ValueError(f"stage_steps fractions must be >= 0 and sum to 1, got {fractions}")
    chosen = [name for name in stages if fractions.get(name, 0) > 0]
    plan, start = [], 0
    for i, name in enumerate(chosen):
        end = max_steps if i == len(chosen) - 1 else min(start + round(fractions[name] * max_steps), max_steps)
        plan.append((name, start, end))
        start = end
    return plan


def stage_at(plan: list[tuple[str, int, int]], step: int) -> tuple[str, float]:
    """(stage name, fraction of that stage done) at optimizer step ``step`` of a ``plan_stages`` plan."""
    for name, start, end in plan:
        if step < end:
            return name, (step - start) / max(end - start, 1)
    return plan[-1][0], 1.0
