"""A resumed training continues the interrupted run's trajectory exactly (on as many processes as wrote it).

Lightning restores weights, optimizer and loop counters from ``last.ckpt``, but not the random
streams, and a plain DataLoader cannot be resumed inside an epoch: a rerun would draw other
noise, masks and time steps (``seed_process`` reseeds from the start) and shuffle again from the
loader's first epoch. Here the checkpoint also keeps

* every process's random states (torch on the CPU and on each GPU, NumPy, Python), gathered
  from all ranks, since each draws its own stream, and set again before the first step after
  the resume;
* where the train loader stands: the shuffle generator's state at the start of the epoch and how
  many batches of the epoch were trained; the sampler replays that epoch's draws and skips those
  batches, so the next batch is the one the interrupted run would have drawn.

Neither changes an uninterrupted run: the samplers draw exactly what ``RandomSampler`` and
``DistributedSampler`` draw. A checkpoint written by another number of processes resumes as
Lightning alone resumes it (its weights, optimizer and step), with a warning. Lightning's own resumable loaders (``StatefulDataLoader``) are not
used: they count the batches the loader has *produced*, which runs ahead of training by the
prefetch, where this counts the batches trained.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DistributedSampler, RandomSampler


class _Skips:
    """What a resumable sampler needs: the epoch's starting generator state and the indices to skip once."""

    epoch_state: torch.Tensor | None = None
    epochs_started = 0  # this training's epochs, counted here: Lightning counts the replayed finished epoch again
    _resume: tuple[torch.Tensor | None, int, int, bool] | None = None

    def resume(self, epoch_state: torch.Tensor | None, epoch: int, skip: int, finished: bool = False) -> None:
        """The next epoch is epoch ``epoch`` again, from ``epoch_state`` (when the sampler has a generator), and skips
        ``skip`` indices; ``finished``: the checkpoint's epoch had trained all its batches, so this one yields none."""
        self._resume = (epoch_state, epoch, skip, finished)

    @property
    def replay_pending(self) -> bool:
        """A finished epoch is still to be replayed (empty) by the next iteration."""
        return self._resume is not None and self._resume[3]

    def _iterate(self, draws):
        resume, self._resume = self._resume, None
        state, epoch, skip, finished = resume if resume is not None else (None, self.epochs_started, 0, False)
        self.epoch, self.epochs_started = epoch, epoch + 1  # DistributedSampler's order is a function of seed and epoch
        generator = getattr(self, "generator", None)
        if generator is not None:
            if state is not None:
                generator.set_state(state)
            self.epoch_state = generator.get_state()
        it = draws()
        if finished:  # Lightning replays the checkpoint's finished epoch: draw what it drew (its shuffle), yield nothing
            next(it, None)  # and ask no further, as the interrupted run's loader was not asked past its last batch
            return
        for _ in range(skip):  # indices only: no image is read
            next(it, None)
        yield from it


class ResumableRandomSampler(_Skips, RandomSampler):
    """``RandomSampler`` (its draws, on the loader's generator) that can resume inside an epoch.

    An epoch draws one permutation, as ``RandomSampler`` does before its last index; iterated past it, that draws
    one more, empty (``randperm(n)[:0]``), which a loader with workers does (it fetches indices ahead) and Lightning
    without workers does not (it stops at the loader's length): the next epoch's shuffle depended on the workers.
    """

    def __iter__(self):
        return self._iterate(self._permutation)

    def _permutation(self):
        yield from torch.randperm(len(self.data_source), generator=self.generator).tolist()


class ResumableDistributedSampler(_Skips, DistributedSampler):
    """``DistributedSampler`` (its order is a function of seed and epoch) that can resume inside an epoch; it counts
    its epochs itself (the same 0, 1, 2... as Lightning's ``set_epoch`` in an uninterrupted run)."""

    def set_epoch(self, epoch: int) -> None:
        """Ignored once this sampler counts (Lightning calls it each epoch): ``_iterate`` sets the epoch. Taken before
        its first epoch when no resume is pending (a checkpoint of another world size or without this state): the
        rerun shuffles Lightning's epoch, as ``DistributedSampler`` did, not epoch 0's order again."""
        if self._resume is None and self.epochs_started == 0:
            self.epochs_started = epoch

    def __iter__(self):
        return self._iterate(super().__iter__)


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rng_states() -> dict[str, Any]:
    # plain types and tensors only: checkpoints are read with torch.load(weights_only=True)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "numpy": (kind, keys.tolist(), pos, has_gauss, cached), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ExactResume(Callback):
    """Keeps the random states of every rank and the train loader's place in the checkpoint; restores both.

    Args:
        loader: the train loader, built by ``harness._loader`` (its sampler is a ``ResumableRandomSampler`` or
            ``ResumableDistributedSampler``).
    """

    def __init__(self, loader):
        self.sampler, self._batch_size, self._batches = loader.sampler, loader.batch_size, len(loader)
        self.trained_in_epoch = 0
        self._rng: list[dict[str, Any]] | None = None  # the checkpoint's random states, until they are set
        self._inside_epoch = False  # resumed inside an epoch: its count goes on

    # The random states are set where the interrupted run stood when it saved: before the next step of a
    # resumed epoch, or, when the checkpoint's epoch had ended, at the next epoch's start, before its loader
    # is iterated (a loader without a generator of its own, as under DDP, draws its worker seed from the
    # global stream there). Lightning calls no on_train_epoch_start for an epoch resumed inside. The finished
    # epoch is replayed, empty, by the first loader iterated after the resume: Lightning's replay of it when
    # it was saved after its last step, but the next epoch's when it was saved after that step's validation
    # (Lightning does not iterate it again); the next epoch the interrupted run trained is the one after.

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if not self._inside_epoch:
            self.trained_in_epoch = 0
        if not self.sampler.replay_pending:
            self._set_rng(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._inside_epoch = False
        self._set_rng(trainer)

    def _set_rng(self, trainer) -> None:
        if self._rng:
            _set_rng_states(self._rng[trainer.global_rank])
            self._rng = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.trained_in_epoch += 1  # before ModelCheckpoint, which Lightning runs after the other callbacks

    def state_dict(self) -> dict[str, Any]:
        # every rank builds the checkpoint (rank 0 writes it), so every rank's random states can be gathered here
        states = [_rng_states()]
        if _world_size() > 1:
            local, states = states[0], [None] * _world_size()
            torch.distributed.all_gather_object(states, local)
        return {"rng": states, "epoch_state": self.sampler.epoch_state, "epoch": self.sampler.epochs_started - 1,
                "trained_in_epoch": self.trained_in_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if len(state_dict["rng"]) != _world_size():  # other ranks, other shards: resumed as Lightning alone resumes
            rank_zero_warn(f"the checkpoint was written by {len(state_dict['rng'])} process(es), this run has "
                           f"{_world_size()}: training resumes from its weights and step, not on the interrupted run's "
                           "random streams and batches (resume on the same number of processes for that)")
            return
        trained = state_dict["trained_in_epoch"]
        self._rng, self.trained_in_epoch, self._inside_epoch = state_dict["rng"], trained, trained < self._batches
        rank_zero_info(f"resuming on the interrupted run's random streams and batches: epoch {state_dict['epoch']}, "
                       f"{trained} of its {self._batches} batches trained")
        self.sampler.resume(state_dict["epoch_state"], state_dict["epoch"], trained * self._batch_size,
                            finished=not self._inside_epoch)


class ResumableCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose checkpoints Lightning resumes where they were written.

    * A step whose validation follows (FlowMo's early stopping) is saved after that validation, not in
      ``on_train_batch_end`` before it: Lightning resumes a checkpoint of a validation step past its validation
      (it takes it as run), so the resumed run would never score it.
    * None is written at ``max_steps``: Lightning resumes such a checkpoint by skipping ``fit`` altogether, without
      the last validation nor ``on_train_start`` / ``on_train_end`` (FlowMo's best decoder, RAE's normalization
      record, the generator's EMA weights copied in); a rerun after a kill there trains the last steps again, exactly.
    * Each is written beside the last one (``last.ckpt.partial``) and renamed over it once whole: Lightning's
      ``torch.save`` writes the file in place, so a kill or a full disk during a save cut short the run's only
      checkpoint, and the rerun could only restart the training from step 0. A ``.partial`` left by a kill is
      removed when the next training starts.
    """

    PARTIAL = ".partial"

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath and Path(self.dirpath).is_dir():
            for stale in Path(self.dirpath).glob(f"*.ckpt{self.PARTIAL}"):  # a save a kill cut short
                stale.unlink(missing_ok=True)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        partial = filepath + self.PARTIAL
        super()._save_checkpoint(trainer, partial)  # every rank takes part; rank 0 writes; ends in a barrier
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        self._last_checkpoint_saved = filepath

    def _should_skip_saving_checkpoint(self, trainer) -> bool:
        return super()._should_skip_saving_checkpoint(trainer) or 0 < trainer.max_steps <= trainer.global_step

    # Lightning's internals (2.6: the validation check, ModelCheckpoint's deferred save); where they are missing,
    # it saves as ModelCheckpoint does. tests/benchmark/test_harness.py -k killed holds the behaviour.
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loop = trainer.fit_loop.epoch_loop
        validates = getattr(loop, "_should_check_val_fx", None)
        due = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        if (due and validates is not None and hasattr(self, "_defer_save_until_validation")
                and not self._should_skip_saving_checkpoint(trainer) and validates(trainer.fit_loop._data_fetcher)):
            self._defer_save_until_validation = True  # ModelCheckpoint.on_validation_end saves it
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


__all__ = ["ExactResume", "ResumableCheckpoint", "ResumableDistributedSampler", "ResumableRandomSampler"]
