"""LightningModule that trains FlowMo: stage "1a" (mode matching), then "1b" (mode seeking).

Stage 1a: flow loss (velocity MSE, 10% latent dropout, thick-tailed times) + LPIPS on the
one-step prediction x0 (weight 0.1) + LFQ entropy (0.0025) and commitment (0.000625); the
encoder may be frozen after a fraction of the steps (FlowMo froze it at step 200k of 1.3M).
Stage 1b: encoder frozen; flow loss + a perceptual loss (0.01) on images sampled with an 8-step
sampler and random times, back-propagated through every step; lower learning rate (5e-5);
early stopping on validation PSNR keeps the best decoder, so reward hacking cannot run away.

Honest fallbacks: without LPIPS weights, either AutoencoderModule's labelled substitute
(``perceptual_fallback="domain-<source>"``) serves both stages, or the stage-1a perceptual term
is dropped and stage 1b uses a pixel MSE on the sampled images; ``perceptual_status`` says which
(it goes into the result record). Without validation data, stage 1b runs its full budget and
``early_stopping["status"]`` says so.

Where the encoder freezes (``freeze_encoder_after``, or stage 1b) Adam starts afresh, as FlowMo
rebuilds its optimizer over the decoder's parameters there.

Deviations from the official recipe: no EMA of the weights (FlowMo evaluates an EMA with decay
0.9999, meaningless over a CPU budget of hundreds of steps); stage 1b's perceptual loss is
LPIPS, where FlowMo's post-training used a ResNet-50 perceptual loss.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from latentbench.benchmark.metrics import psnr_per_image
from latentbench.distributed import per_rank_batch
from latentbench.generators.seeding import sample_seed
from latentbench.registry import require_positive
from latentbench.tokenizers import create_tokenizer, flowmo  # noqa: F401  (flowmo registers flowmo-*)
from latentbench.tokenizers.base import decode_per_sample
from latentbench.tokenizers.lfq import CodeUsage
from latentbench.tokenizers.mmdit import block_linear_weights
from latentbench.tokenizers.module import AutoencoderModule, plan_stages, stage_at


class FlowMoModule(L.LightningModule):
    """Trains a FlowMo tokenizer through its stages.

    Args:
        tokenizer: registry name (``flowmo-ci``, ``flowmo-lo``...) or ``package.module:Class``.
        tokenizer_args: keyword arguments for the tokenizer.
        lr: Adam learning rate of stage 1a after a linear warmup, then constant (FlowMo: 1e-4).
        posttrain_lr: learning rate of stage 1b (FlowMo: 5e-5).
        betas: Adam betas (FlowMo: 0.9, 0.95).
        warmup_steps: linear warmup length.
        max_steps: schedule length (the trainer's max_steps).
        perceptual_weight: LPIPS weight on the stage-1a one-step prediction (FlowMo: 0.1); 0 disables.
        perceptual_net: LPIPS backbone (FlowMo: "vgg").
        perceptual_fallback: without LPIPS weights, ``"domain-<source>"`` uses AutoencoderModule's
            labelled substitute (LPIPS's recipe on the suite's frozen domain classifier) for both
            stages; None drops the stage-1a term and gives stage 1b the pixel MSE below.
        posttrain_perceptual_weight: LPIPS weight on the stage-1b samples (FlowMo: 0.01).
        posttrain_pixel_weight: weight of the pixel MSE on the stage-1b samples, used only when
            LPIPS is unavailable (not from the paper: the fallback that keeps stage 1b mode-seeking).
        loss_weights: weights of the tokenizer's own terms; defaults to ``tokenizer.loss_weights``.
        stage_steps: fraction of ``max_steps`` per stage, e.g. ``{"1a": 0.9, "1b": 0.1}``; default all in 1a.
        freeze_encoder_after: fraction of ``max_steps`` after which stage 1a trains the decoder only; None never.
        posttrain_batch: images of each batch that stage 1b samples and scores (FlowMo halved
            its batch for 1b); None uses the whole batch. Global, as the protocol's batch size: on W
            processes each samples ``posttrain_batch / W`` of its images (W must divide it).
        posttrain_checkpoint: recompute decoder activations in the 1b backward pass (memory for time).
        fix_initial_norms: after every step, rescale each trainable Linear weight inside the MMDiT
            blocks to its initial Frobenius norm (FlowMo's ``fix_initial_norms``, mode "l2").
        reset_optimizer_at_freeze: clear Adam's moments and step counts at the step the encoder
            freezes (``freeze_encoder_after``, else the start of stage 1b), as FlowMo rebuilds its
            optimizer over the decoder's parameters there; False carries them over.
        val_every: steps between validations; stage 1b's early stopping needs the trainer to
            validate at this interval (``trainer_kwargs()``), and a multiple of it at the start of 1b
            validates the end of 1a as the baseline 1b must beat.
        val_images: held-out images each validation decodes (the first ones, each once over all processes, so
            the validated set and the kept decoder do not depend on the number of processes); None: all of them.
        patience: stage-1b validations without a PSNR gain of ``min_delta`` dB before stopping.
        min_delta: smallest validation PSNR gain (dB) that counts as an improvement.
        val_seed: seed of the validation decodes (held-out image i's noise: ``sample_seed(val_seed, i)``),
            fixed so validations compare like with like.
    """

    def __init__(
        self,
        tokenizer: str = "flowmo-ci",
        tokenizer_args: dict[str, Any] | None = None,
        lr: float = 1e-4,
        posttrain_lr: float = 5e-5,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        max_steps: int = 10_000,
        perceptual_weight: float = 0.1,
        perceptual_net: str = "vgg",
        perceptual_fallback: str | None = None,
        posttrain_perceptual_weight: float = 0.01,
        posttrain_pixel_weight: float = 1.0,
        loss_weights: dict[str, float] | None = None,
        stage_steps: dict[str, float] | None = None,
        freeze_encoder_after: float | None = None,
        posttrain_batch: int | None = None,
        posttrain_checkpoint: bool = False,
        fix_initial_norms: bool = True,
        reset_optimizer_at_freeze: bool = True,
        val_every: int = 20,
        val_images: int | None = None,
        patience: int = 3,
        min_delta: float = 0.0,
        val_seed: int = 0,
    ):
        super().__init__()
        require_positive(lr=lr, posttrain_lr=posttrain_lr, max_steps=max_steps, posttrain_batch=posttrain_batch, val_every=val_every)
        if freeze_encoder_after is not None and not 0 <= freeze_encoder_after <= 1:
            raise ValueError(f"freeze_encoder_after is a fraction of max_steps in [0, 1], got {freeze_encoder_after}")
        if val_images is not None and val_images < 1:
            raise ValueError(f"val_images is a number of held-out images >= 1 (None: all of them), got {val_images}")
        self.save_hyperparameters()
        self.tokenizer = create_tokenizer(tokenizer, **(tokenizer_args or {}))
        self.loss_weights = dict(getattr(self.tokenizer, "loss_weights", {}), **(loss_weights or {}))
        self.stage_plan = plan_stages(tuple(self.tokenizer.stages), stage_steps, max_steps)
        self.perceptual, self.perceptual_status = self._build_perceptual()
        self.val_psnr = MeanMetric()
        self.val_codes = CodeUsage(self.tokenizer.bits, self.tokenizer.quantizer.group_size)
        self.snapshot_1a: dict[str, Tensor] | None = None  # tokenizer weights at the end of stage 1a
        self.early_stopping: dict[str, Any] = {"metric": "val/psnr", "status": "no stage-1b validation yet",
                                               "best": None, "best_step": None, "evaluations": 0, "stopped_at": None}
        self._best_decoder: dict[str, Tensor] | None = None
        self._bad_evaluations = 0
        self._initial_norms: dict[str, Tensor] | None = None

    def _build_perceptual(self):
        """(LPIPS, its labelled substitute, or None; status string naming the stage-1b pixel fallback if used)."""
        hp = self.hparams
        if hp.perceptual_weight <= 0 and (hp.posttrain_perceptual_weight <= 0 or not self._has_stage("1b")):
            return None, "off"
        lpips, status = AutoencoderModule._build_perceptual(1.0, hp.perceptual_net, hp.perceptual_fallback)
        if lpips is None and self._has_stage("1b"):
            status += f"; stage 1b uses pixel MSE (weight {hp.posttrain_pixel_weight}) on the sampled images instead of LPIPS"
        return lpips, status

    # ---- stages -------------------------------------------------------------------------------

    def _has_stage(self, name: str) -> bool:
        return any(stage == name for stage, _, _ in self.stage_plan)

    def stage_start(self, name: str) -> int | None:
        """First optimizer step of a stage in the plan, None when the plan leaves it out."""
        return next((start for stage, start, _ in self.stage_plan if stage == name), None)

    def current_stage(self, step: int) -> tuple[str, float]:
        """(stage name, fraction of that stage done) at optimizer step ``step``."""
        return stage_at(self.stage_plan, step)

    def _freeze_after_step(self) -> int | None:
        """The step ``freeze_encoder_after`` names, None when it is unset."""
        after = self.hparams.freeze_encoder_after
        return None if after is None else round(after * self.hparams.max_steps)

    def _encoder_frozen_at(self, step: int) -> bool:
        after = self._freeze_after_step()
        return after is not None and step >= after

    def encoder_freeze_step(self) -> int | None:
        """First optimizer step that trains with the encoder frozen (``freeze_encoder_after`` or stage 1b), None: never."""
        return min((s for s in (self.stage_start("1b"), self._freeze_after_step()) if s is not None), default=None)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        step = self.global_step
        name, progress = self.current_stage(step)
        if name == "1b" and self.snapshot_1a is None:
            self.snapshot_1a = _cpu_copy(self.tokenizer.state_dict())
        self.tokenizer.set_stage(name, progress)
        if name == "1a" and self._encoder_frozen_at(step):
            self.tokenizer.freeze_encoder(True)
        # by step, not by the encoder's flag: a run resumed after the freeze keeps the optimizer state it saved
        if self.hparams.reset_optimizer_at_freeze and step == self.encoder_freeze_step():
            self.optimizers(use_pl_optimizer=False).state.clear()  # Adam re-initialises each parameter's moments

    def trainer_kwargs(self) -> dict[str, Any]:
        """Trainer arguments this module's early stopping needs (with a validation loader passed to ``fit``)."""
        return {"val_check_interval": self.hparams.val_every, "check_val_every_n_epoch": None, "num_sanity_val_steps": 0}

    def validation_images(self, held: list[int]) -> int:
        """How many of the ``held`` held-out images each validation decodes: the first ``val_images``, or all."""
        return min(len(held), self.hparams.val_images or len(held))

    def stage_weights(self) -> dict[str, dict[str, Tensor]]:
        """Tokenizer state dicts to evaluate: "1a" (without post-training) and, when 1b ran, "1b".

        The "1b" weights are the current ones, i.e. the best validated decoder once training ended.
        """
        current = _cpu_copy(self.tokenizer.state_dict())
        if self.snapshot_1a is None:
            return {"1a": current}
        return {"1a": self.snapshot_1a, "1b": current}

    # ---- losses -----------------------------------------------------------------------------

    def _weighted(self, name: str, value: Tensor) -> Tensor:
        if name not in self.loss_weights:
            raise KeyError(f"tokenizer returned loss term {name!r} but no weight for it; set loss_weights")
        return self.loss_weights[name] * value.float()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        stage, _ = self.current_stage(self.global_step)
        terms = self.tokenizer.flow_loss(x)
        losses = {name: self._weighted(name, value) for name, value in terms.losses.items()}
        hp = self.hparams
        if stage == "1a" and self.perceptual is not None and hp.perceptual_weight > 0:
            losses["perceptual"] = hp.perceptual_weight * self.perceptual(terms.x0.float(), x).mean()
        if stage == "1b":
            losses.update(self._posttrain_losses(x, terms.code))
        loss = sum(losses.values())
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()})
        return loss

    @staticmethod
    def global_batches(module_args: dict[str, Any]) -> dict[str, int]:
        """This module's own global batch sizes in ``module_args`` (a bench checks them against its world size
        before its first stage): ``posttrain_batch`` where stage 1b runs."""
        n, fractions = module_args.get("posttrain_batch"), module_args.get("stage_steps") or {}
        return {"posttrain_batch": n} if n is not None and fractions.get("1b", 0) > 0 else {}

    def _posttrain_share(self) -> int | None:
        """This process's share of ``posttrain_batch`` (None: the whole batch); ValueError if the processes cannot split it."""
        n = self.hparams.posttrain_batch
        return None if n is None else per_rank_batch(n, "posttrain_batch", self.trainer.world_size)

    def _posttrain_losses(self, x: Tensor, code: Tensor) -> dict[str, Tensor]:
        """Sample-level loss of stage 1b on this process's first ``posttrain_batch / W`` images, through the whole sampler."""
        hp = self.hparams
        n = min(self._posttrain_share() or len(x), len(x))
        sample = self.tokenizer.posttrain_sample(code[:n].detach(), grad_checkpoint=hp.posttrain_checkpoint,
                                                 size=tuple(x.shape[-2:])).float()
        if self.perceptual is not None:
            if hp.posttrain_perceptual_weight <= 0:
                return {}
            return {"sample_perceptual": hp.posttrain_perceptual_weight * self.perceptual(sample, x[:n]).mean()}
        return {"sample_pixel_mse": hp.posttrain_pixel_weight * F.mse_loss(sample, x[:n])}

    # ---- fixed weight norms -----------------------------------------------------------------------

    def on_fit_start(self) -> None:
        if self._has_stage("1b"):
            self._posttrain_share()  # a posttrain_batch the processes cannot split stops the run here, not at stage 1b
        if self.hparams.fix_initial_norms and self._initial_norms is None:
            self._initial_norms = {k: w.detach().norm().cpu() for k, w in block_linear_weights(self.tokenizer).items()}

    def optimizer_step(self, *args, **kwargs) -> None:
        # rescaled with the step itself, not in on_train_batch_end, which Lightning calls after the callbacks' (its
        # ModelCheckpoint's): the checkpoint holds the weights the next step reads, so a resumed run reads them too
        super().optimizer_step(*args, **kwargs)
        if not self.hparams.fix_initial_norms:
            return
        with torch.no_grad():
            for name, w in block_linear_weights(self.tokenizer).items():
                if w.requires_grad:  # a frozen encoder stays bit-identical
                    w.mul_(self._initial_norms[name].to(w.device) / w.norm())

    # ---- validation and early stopping ----------------------------------------------------------

    def _validating(self) -> bool:
        """Validation is computed from the start of stage 1b on (decoding is costly; 1a has no use for it)."""
        start = self.stage_start("1b")
        return start is not None and self.global_step >= start

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        """``batch``: (indices, images, labels) of the held-out images, each index once over all ranks
        (``evaluate.Indexed`` under a ``ShardSampler``)."""
        if not self._validating():
            return
        index, x, _ = batch
        z = self.tokenizer.encode(x)
        # each image's decoder noise from its index alone: the score, and so the kept decoder, does not
        # depend on the batch size or the number of processes
        rec = decode_per_sample(self.tokenizer, z, [sample_seed(self.hparams.val_seed, int(i)) for i in index])
        self.val_psnr.update(psnr_per_image(x.float(), rec.float()))
        self.val_codes.update(z)

    def on_validation_epoch_end(self) -> None:
        if not self._validating() or self.val_psnr.update_count == 0:
            return
        score = float(self.val_psnr.compute())
        codes = self.val_codes.compute()
        self.val_psnr.reset()
        self.val_codes.reset()
        # every process holds the same values (the metrics synced themselves): sync_dist keeps them, and keeps Lightning
        # from warning that they are one process's
        self.log_dict({"val/psnr": score, "val/code_usage": codes["usage"], "val/code_entropy_bits": codes["entropy_bits"]},
                      sync_dist=True)
        if not self.trainer.sanity_checking:
            self._early_stopping_update(score)

    def _early_stopping_update(self, score: float) -> None:
        """Keep the best decoder; stop after ``patience`` validations without improvement."""
        es, step = self.early_stopping, self.global_step
        es["evaluations"] += 1
        if es["best"] is None or score > es["best"] + self.hparams.min_delta:
            es.update(best=score, best_step=step, status="running")
            self._best_decoder = _cpu_copy(self.tokenizer.decoder.state_dict())
            self._bad_evaluations = 0
            return
        self._bad_evaluations += 1
        if self._bad_evaluations >= self.hparams.patience:
            self.restore_best_decoder()
            es.update(stopped_at=step, status=f"stopped: no gain in {self.hparams.patience} validations")
            self.trainer.should_stop = True

    def restore_best_decoder(self) -> None:
        """Load the best validated stage-1b decoder (a no-op before any stage-1b validation)."""
        if self._best_decoder is not None:
            self.tokenizer.decoder.load_state_dict(self._best_decoder)

    def on_train_end(self) -> None:
        es = self.early_stopping
        if self._best_decoder is not None:
            self.restore_best_decoder()
            if es["stopped_at"] is None:
                es["status"] = f"ran to max_steps; kept the best validated decoder (step {es['best_step']})"
            # the first 1b validation scores the end of 1a: when none beat it, the "1b" result is 1a's decoder
            es["kept"] = ("stage 1a's decoder: no stage-1b validation beat it" if es["best_step"] == self.stage_start("1b")
                          else f"stage 1b's decoder of step {es['best_step']}")
        elif self._has_stage("1b"):
            es["status"] = "off: no validation data reached stage 1b, so 1b ran its full budget unselected"
        else:
            es["status"] = "off: the stage plan has no stage 1b"

    # ---- checkpoint ---------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["flowmo"] = {
            "snapshot_1a": self.snapshot_1a, "best_decoder": self._best_decoder, "bad_evaluations": self._bad_evaluations,
            "early_stopping": dict(self.early_stopping), "initial_norms": self._initial_norms,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("flowmo", {})
        self.snapshot_1a = state.get("snapshot_1a")
        self._best_decoder = state.get("best_decoder")
        self._bad_evaluations = state.get("bad_evaluations", 0)
        self.early_stopping.update(state.get("early_stopping", {}))
        self._initial_norms = state.get("initial_norms")

    # ---- optimizer ----------------------------------------------------------------------------

    def _lr_lambda(self, step: int) -> float:
        """Linear warmup to ``lr``, constant through stage 1a, ``posttrain_lr`` in stage 1b."""
        if self.current_stage(step)[0] == "1b":
            return self.hparams.posttrain_lr / self.hparams.lr
        warmup = self.hparams.warmup_steps
        return (step + 1) / warmup if step < warmup else 1.0

    def configure_optimizers(self):
        # every tokenizer parameter is in the optimizer (frozen ones get no gradient, so Adam skips
        # them), so a run resumed inside a stage restores the same parameter groups
        optimizer = torch.optim.Adam(self.tokenizer.parameters(), lr=self.hparams.lr, betas=tuple(self.hparams.betas))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_lambda)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _cpu_copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

