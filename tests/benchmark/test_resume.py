"""Exact resumption: the samplers draw what torch's do, and replay an epoch's order from the checkpoint's state."""
import itertools
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from latentbench.benchmark.harness import _loader
from latentbench.benchmark.resume import ExactResume, ResumableDistributedSampler

DATA = TensorDataset(torch.arange(40))


def _epoch(loader):
    """An epoch as Lightning takes it: len(loader) batches, never asking past the last (which would draw the
    sampler's next permutation)."""
    return [b[0].tolist() for b in itertools.islice(iter(loader), len(loader))]


def _epochs(loader, n):
    return [_epoch(loader) for _ in range(n)]


def test_the_train_loader_shuffles_as_torchs_shuffling_loader():
    """An uninterrupted run is unchanged: the same batches as DataLoader(shuffle=True, generator=) over epochs."""
    ours = _epochs(_loader(DATA, 8, True, seed=3, drop_last=True), 3)
    torchs = _epochs(DataLoader(DATA, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3), drop_last=True), 3)
    assert ours == torchs and ours[0] != ours[1]


def test_a_resumed_loader_continues_the_interrupted_epoch_and_the_ones_after():
    plain = _loader(DATA, 8, True, seed=3)
    expected, states = [], []
    for _ in range(3):  # an epoch, and the generator state it started from
        expected.append(_epoch(plain))
        states.append(plain.sampler.epoch_state)
    resumed = _loader(DATA, 8, True, seed=3)
    callback = ExactResume(resumed)
    callback.load_state_dict({**callback.state_dict(), "epoch_state": states[1], "epoch": 1, "trained_in_epoch": 2})  # 2 of 5
    rest = [b[0].tolist() for b in itertools.islice(iter(resumed), 3)]  # Lightning takes the epoch's 3 batches left
    assert rest == expected[1][2:] and _epoch(resumed) == expected[2]
    finished = _loader(DATA, 8, True, seed=3)  # saved after the epoch's last batch: Lightning replays it, empty
    ExactResume(finished).load_state_dict({**callback.state_dict(), "epoch_state": states[0], "epoch": 0,
                                                      "trained_in_epoch": 5})
    assert list(finished) == [] and _epochs(finished, 2) == [expected[1], expected[2]]


def test_a_loader_with_workers_resumed_at_an_epochs_end_shuffles_the_next_epochs_as_the_uninterrupted_one():
    """A loader's workers prefetch past the epoch's last batch, which took RandomSampler's draws to their end, where it
    drew once more: the replay of the finished epoch drew only its shuffle, so every later epoch came in another order
    (a 1-process smoke rae bench with 2 loader workers, killed after its step-8 checkpoint at the end of its first
    epoch, ended with other weights: PSNR 8.00436 against 8.00583). The sampler draws one permutation an epoch however
    far it is asked (``ResumableRandomSampler``), so the replay draws what the interrupted epoch drew."""
    plain = _loader(DATA, 8, True, seed=3, num_workers=2)
    callback = ExactResume(plain)
    expected = [_epoch(plain)]
    state = _through_a_checkpoint({**callback.state_dict(), "trained_in_epoch": 5})  # after epoch 0's last batch
    expected += _epochs(plain, 2)
    resumed = _loader(DATA, 8, True, seed=3, num_workers=2)
    ExactResume(resumed).load_state_dict(state)
    assert list(resumed) == [] and _epochs(resumed, 2) == expected[1:]


def test_the_distributed_sampler_counts_its_epochs_and_resumes_inside_one():
    def epochs(sampler, n):
        return [list(sampler) for _ in range(n)]

    torchs = DistributedSampler(DATA, num_replicas=2, rank=1, shuffle=True, seed=5)
    expected = []
    for epoch in range(3):
        torchs.set_epoch(epoch)
        expected.append(list(torchs))
    ours = ResumableDistributedSampler(DATA, num_replicas=2, rank=1, shuffle=True, seed=5)
    ours.set_epoch(0)
    first = list(ours)
    ours.set_epoch(7)  # Lightning's count is ignored (after a resume at an epoch's end it counts that epoch twice)
    assert [first] + epochs(ours, 2) == expected
    resumed = ResumableDistributedSampler(DATA, num_replicas=2, rank=1, shuffle=True, seed=5)
    resumed.resume(None, epoch=1, skip=6)
    assert epochs(resumed, 2) == [expected[1][6:], expected[2]]
    finished = ResumableDistributedSampler(DATA, num_replicas=2, rank=1, shuffle=True, seed=5)
    finished.resume(None, epoch=0, skip=20, finished=True)
    assert epochs(finished, 2) == [[], expected[1]]


def test_the_random_states_are_kept_through_a_checkpoint_and_set_before_the_first_step_after_the_resume():
    callback = ExactResume(_loader(DATA, 8, True, seed=3))
    torch.manual_seed(11), np.random.seed(11), random.seed(11)
    state = callback.state_dict()
    draws = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)  # what the rerun's seeding leaves
    callback.load_state_dict(_through_a_checkpoint(state))

    class Trainer:
        global_rank = 0
        global_step = 12

    callback.on_train_batch_start(Trainer(), None, None, 0)
    assert torch.equal(torch.rand(3), draws[0]) and np.array_equal(np.random.rand(3), draws[1]) and random.random() == draws[2]


def _through_a_checkpoint(state):
    """Saved and read back as Lightning reads a checkpoint here (``weights_only=True``: plain types and tensors)."""
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_checkpoint_of_another_world_size_resumes_as_lightning_alone_would(recwarn):
    """Other ranks shuffle other shards and draw other streams: no place or state of theirs is taken over."""
    loader = _loader(DATA, 8, True, seed=3)
    callback = ExactResume(loader)
    two_ranks = {**callback.state_dict(), "trained_in_epoch": 2}
    two_ranks["rng"] = two_ranks["rng"] * 2
    callback.load_state_dict(two_ranks)
    assert "written by 2 process(es), this run has 1" in str(recwarn.pop().message)
    assert _epoch(loader) == _epoch(_loader(DATA, 8, True, seed=3)) and callback._rng is None


def test_a_distributed_sampler_resumed_without_its_state_shuffles_lightnings_epoch():
    """A checkpoint of another world size (or without this state): as DistributedSampler, Lightning's epoch's order,
    not epoch 0's again."""
    torchs = DistributedSampler(DATA, num_replicas=2, rank=1, shuffle=True, seed=5)
    torchs.set_epoch(3)
    ours = ResumableDistributedSampler(DATA, num_replicas=2, rank=1, shuffle=True, seed=5)
    ours.set_epoch(3)
    assert list(ours) == list(torchs)
    ours.set_epoch(3)  # counted from here on
    torchs.set_epoch(4)
    assert list(ours) == list(torchs)


def _fit_rank_zero_of_two(tmp_path, monkeypatch, kill_at: int | None = None) -> torch.Tensor:
    """12 steps of rank 0 of a 2-process training (its shard of 5 batches an epoch, a loader without a generator of its
    own, which draws its worker seed from the global stream), validated and so checkpointed every 5th step: epochs'
    ends. ``kill_at``: the step that raises; a rerun resumes from ``tmp_path``'s checkpoint. Returns the weights."""
    import lightning as L

    import latentbench.distributed as distributed
    from latentbench.benchmark.harness import resume_from
    from latentbench.benchmark.resume import ResumableCheckpoint

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):  # its loss on the global random stream, as the generators' noise
            if self.global_step == kill_at:
                raise RuntimeError("killed")
            x = batch[0].float()[:, None]
            return ((self.net(x) - torch.randn_like(x)) ** 2).mean()

        def validation_step(self, batch, batch_idx):  # a validation loop, as the generators': what it computes is moot
            return None

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    loader = _loader(DATA, 4, True, seed=3, distributed=True)
    assert isinstance(loader.sampler, ResumableDistributedSampler) and loader.generator is None
    torch.manual_seed(0)
    module = Module()
    trainer = L.Trainer(max_steps=12, max_epochs=-1, val_check_interval=5, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=True, use_distributed_sampler=False,
                        callbacks=[ResumableCheckpoint(dirpath=tmp_path, filename="last", save_top_k=1,
                                                       enable_version_counter=False), ExactResume(loader)])
    trainer.fit(module, loader, DataLoader(DATA, batch_size=40), ckpt_path=resume_from(tmp_path / "last.ckpt"))
    return module.net.weight.detach().clone()


def test_a_distributed_training_killed_after_a_validated_epochs_end_resumes_exactly(tmp_path, monkeypatch):
    """Resumed from the checkpoint of step 5, which ended an epoch and was written after its validation: Lightning
    does not iterate that finished epoch again, so the next epoch's loader replayed it, empty; it drew a worker seed
    from the global stream after the random states were set, and every later step drew other noise (2-process
    generator trainings killed after an evaluation at an epoch's end: gFID 909.4 against 902.1 uninterrupted)."""
    plain = _fit_rank_zero_of_two(tmp_path / "plain", monkeypatch)
    with pytest.raises(RuntimeError, match="killed"):
        _fit_rank_zero_of_two(tmp_path / "killed", monkeypatch, kill_at=7)
    assert torch.load(tmp_path / "killed/last.ckpt", weights_only=False)["global_step"] == 5
    assert torch.equal(_fit_rank_zero_of_two(tmp_path / "killed", monkeypatch), plain)


def test_a_checkpoint_save_cut_short_leaves_the_last_whole_checkpoint(tmp_path, monkeypatch):
    """Lightning's torch.save wrote last.ckpt in place: a kill (or a full disk) during a save left the run's only
    checkpoint cut short, and the rerun could only restart from step 0. Now the previous checkpoint stands."""
    import lightning.fabric.plugins.io.torch_io as torch_io

    with pytest.raises(RuntimeError, match="killed"):  # checkpoint of step 5; the run then raised at step 7
        _fit_rank_zero_of_two(tmp_path, monkeypatch, kill_at=7)
    real_save = torch_io._atomic_save

    def cut_short(checkpoint, path):  # the save of step 10 ends half-way: a full disk (a kill leaves the same file)
        real_save(checkpoint, path)
        with open(path, "r+b") as f:
            f.truncate(f.seek(0, 2) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch_io, "_atomic_save", cut_short)
    with pytest.raises(OSError, match="No space left"):
        _fit_rank_zero_of_two(tmp_path, monkeypatch)
    assert (tmp_path / "last.ckpt.partial").exists()
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 5  # whole, and the rerun's start
    monkeypatch.setattr(torch_io, "_atomic_save", real_save)
    assert torch.equal(_fit_rank_zero_of_two(tmp_path, monkeypatch), _fit_rank_zero_of_two(tmp_path / "plain", monkeypatch))
    assert not (tmp_path / "last.ckpt.partial").exists()
