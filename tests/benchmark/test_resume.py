"""Exact resumption: the samplers draw what torch's do, and replay an epoch's order from the checkpoint's state."""
import itertools
import random

import numpy as np
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
