"""Running the bench on many processes: launch, process group, rank-0 writes, Trainer settings.

Every stage of a bench is written so that N processes give the numbers of 1 process:
evaluation shards samples without padding and sums metric states (``benchmark.evaluate``),
sampling seeds each sample by its global index (``generators.seeding``), the latent cache is
written in per-rank shards and read by any world size (``generators.latents``). What this
module adds is the plumbing around it:

* ``Launch``: the ``--strategy / --devices / --num_nodes`` a user asked for.
* ``maybe_relaunch``: ``latentbench bench --devices 8`` on one machine re-executes itself under
  ``torch.distributed.run`` (torchrun), one process per device. Under torchrun or SLURM
  (``srun``) the processes already exist and nothing is relaunched.
* ``init_process_group``: the harness joins the process group *before* its first stage, so
  stages without a Lightning Trainer (evaluation, sampling, the latent cache) shard too;
  Lightning finds the group initialised and uses it.
* ``run_on_rank_zero`` / ``broadcast``: stage results, records and leaderboards are written by
  rank 0 only; the other ranks receive rank 0's result.

The protocol's batch sizes are global: each of W processes takes ``batch_size / W`` per step,
so one optimizer step sees the same number of images at any world size.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
STRATEGIES = ("auto", "ddp")
LAUNCHER_PID = "LATENTBENCH_LAUNCHER_PID"  # maybe_relaunch's torchrun, for the processes it starts (die_with_launcher)
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies
# FSDP was wired through Lightning once, but a review found it cannot have worked: Lightning's
# EMAWeightAveraging copies the unsharded generator before FSDP wraps it and then fails on the
# flat shards, and ``state_dict()`` outside FSDP's full-state API exports each rank's shard.
# Without a GPU to run it on, it is refused rather than shipped untested.
FSDP_REFUSED = ("--strategy fsdp is not supported: generator training's EMA and weight export need unsharded "
                "parameters, and FSDP has never been run here; use --strategy ddp (for a generator too large for one "
                "GPU's memory at the protocol's batch size, use more GPUs or larger ones)")


@dataclass(frozen=True)
class Launch:
    """How many processes a bench runs on and how Lightning distributes training.

    Args:
        strategy: ``auto`` (DDP when more than one process, else a single device) or ``ddp``.
            ``fsdp`` is refused with the reason (``FSDP_REFUSED``).
        devices: processes per node (GPUs per node; CPU processes on a machine without GPUs).
        num_nodes: machines.
    """

    strategy: str = "auto"
    devices: int = 1
    num_nodes: int = 1

    def __post_init__(self):
        if self.strategy == "fsdp":
            raise ValueError(FSDP_REFUSED)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.devices < 1 or self.num_nodes < 1:
            raise ValueError(f"--devices and --num_nodes must be >= 1, got {self.devices} and {self.num_nodes}")

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "devices": self.devices, "num_nodes": self.num_nodes, "world_size": self.world_size}


def cluster_environment():
    """Lightning's description of the launcher that started this process (torchrun, SLURM), or None."""
    from lightning.fabric.plugins.environments import (
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    if TorchElasticEnvironment.detect():
        return TorchElasticEnvironment()
    if SLURMEnvironment.detect():
        return SLURMEnvironment()
    return None


def resolve_launch(launch: Launch) -> Launch:
    """Check ``launch`` against the launcher's processes (under torchrun or SLURM); return what actually runs.

    Raises:
        ValueError: when the processes the launcher started do not match ``--devices x --num_nodes``.
    """
    env = cluster_environment()
    if env is None:
        return launch
    size = env.world_size()
    if size == 1 and launch.world_size == 1:
        return launch
    if launch.world_size == 1:  # launched by torchrun/srun without flags: take the launcher's layout
        local = processes_per_node(default=size)
        return Launch(launch.strategy, local, max(size // local, 1))
    if launch.world_size != size:
        raise ValueError(f"--devices {launch.devices} x --num_nodes {launch.num_nodes} = {launch.world_size} processes, "
                         f"but the launcher started {size}; make them agree (torchrun --nproc_per_node / --nnodes, "
                         f"srun --ntasks-per-node / --nodes)")
    return launch


def maybe_relaunch(launch: Launch, argv: list[str], check: Callable[[int], None] | None = None) -> None:
    """On one machine, re-execute ``latentbench <argv>`` under torchrun with ``launch.devices`` processes.

    Does nothing for one process or when a launcher already started the processes (one this call's
    torchrun started dies with it: ``die_with_launcher``). Several nodes need a launcher on each (srun,
    or torchrun per node): the error says how.

    Args:
        launch: the processes asked for.
        argv: the command line to re-execute, without the program name.
        check: called with the world size before relaunching; what it raises stops the command
            here, once, instead of in every launched process (each printing it, then torchrun's
            traceback of the failed children).
    """
    if launch.world_size == 1:
        return
    if cluster_environment() is not None:
        die_with_launcher()
        return
    if check is not None:
        check(launch.world_size)
    if launch.num_nodes > 1:
        raise SystemExit(
            f"--num_nodes {launch.num_nodes} needs a process on every node: run under SLURM "
            f"(srun --nodes {launch.num_nodes} --ntasks-per-node {launch.devices} latentbench {' '.join(argv)}) "
            f"or start torchrun on each node (see README, 'Scaling out')")
    cmd = [sys.executable, "-m", "latentbench.torchrun", "--standalone", f"--nproc_per_node={launch.devices}",  # torchrun
           "-m", "latentbench.cli", *argv]
    print(f"launching {launch.devices} processes: {' '.join(cmd[1:])}", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[LAUNCHER_PID] = str(os.getpid())  # torchrun runs as this very process (execv keeps the pid)
    os.execv(sys.executable, cmd)


def die_with_launcher() -> None:
    """Have the kernel kill this process when the torchrun of ``maybe_relaunch`` that started it dies.

    torchrun starts each worker in a session of its own and stops them when it is interrupted (Ctrl-C, SIGTERM),
    but a SIGKILL of the launcher (``kill -9``, of its process group too, or the OOM killer) reaches no worker: they
    went on in the background, finished the bench and appended its row, and a rerun meanwhile was refused as "another
    bench of this run is running". Linux only (``PR_SET_PDEATHSIG``); processes a user's own torchrun or srun
    started are left to that launcher.
    """
    # another parent: not started by it, or it is gone already (then no process group can be joined without its store)
    if os.environ.get(LAUNCHER_PID) != str(os.getppid()) or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def init_process_group(launch: Launch) -> bool:
    """Join the launcher's process group (``process_group_backend``: gloo, and NCCL too on GPUs); a no-op for one process.

    Returns whether this call created the group: its creator destroys it
    (:func:`destroy_process_group`) before the process exits.
    """
    if launch.world_size == 1 or not dist.is_available() or dist.is_initialized():
        return False
    env = cluster_environment()
    if env is None:
        raise RuntimeError(f"{launch.world_size} processes requested but no launcher environment found "
                           "(use `latentbench bench --devices N` on one machine, torchrun, or srun)")
    os.environ["MASTER_ADDR"] = env.main_address
    os.environ["MASTER_PORT"] = str(env.main_port)
    import warnings

    # CPU convolution backward returns 1x1-kernel gradients in channels-last strides; DDP copies
    # them into its flat buckets and warns once per process. Numbers are unaffected.
    warnings.filterwarnings("ignore", message=r"Grad strides do not match bucket view strides")
    # torch._dynamo imported after the group exists (torchvision, torchmetrics and Lightning import
    # it) holds references to the group that outlive destroy_process_group (10, measured), and with
    # them its gloo worker threads. One of those, freeing a finished collective's tensors while the
    # interpreter finalizes, needs the GIL and aborts the process ("terminate called without an
    # active exception"; core dump: ~AsyncAllgatherWork -> take_gil -> PyThread_exit_thread; 4 of
    # 20 two-process runs of a test script that imported the gFID module after creating its group).
    # cluster_environment's Lightning import has already brought it in; this makes that a rule.
    import torch._dynamo  # noqa: F401

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(env.local_rank())
    dist.init_process_group(process_group_backend(cuda), rank=env.global_rank(), world_size=env.world_size())
    return True


def compute_device() -> torch.device:
    """Where this process's evaluation runs: its GPU (the one ``init_process_group`` selected), else the CPU.

    Training runs where Lightning puts it; the stages without a Trainer (reconstruction and its
    metrics, the probe's and the latent cache's encoding, reference statistics, gFID decoding)
    move their networks here, and their loops move each batch to their network's device.
    """
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for a module with neither."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def process_group_backend(cuda: bool) -> str:
    """gloo on CPU machines; on GPU machines NCCL for CUDA tensors *and* gloo for CPU tensors.

    NCCL alone refuses CPU tensors ("No backend type associated with device type cpu"), and the
    bench reduces some on the CPU on any machine: evaluation's throughput counters, the scan's
    file reports, statistics kept in numpy. With ``cpu:gloo,cuda:nccl`` each tensor takes the
    backend of its device, and object collectives go through gloo.
    """
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def destroy_process_group() -> None:
    """Leave the process group, if one is joined.

    A gloo group left to the interpreter's exit is torn down while Python finalizes, and about
    one exit in seven aborted there in C++ ("terminate called without an active exception",
    exit code -6 on rank 0 after every stage had finished and written; 1 of 7 two-process
    smoke benches on a 2-core CPU). Destroying it explicitly, as PyTorch asks, frees the group and
    joins its worker threads while the interpreter is whole, provided nothing else holds the
    group (``init_process_group`` sees to it that ``torch._dynamo`` does not).
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(launch: Launch) -> Iterator[None]:
    """The launcher's process group for the ``with`` block; left at its end if the block joined it."""
    created = init_process_group(launch)
    try:
        yield
    finally:
        if created:
            destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def launcher_rank() -> int:
    """This process's global rank as its launcher (torchrun, srun) numbered it; 0 without one.

    Unlike :func:`rank` it holds before the process group is joined and after it is left.
    """
    env = cluster_environment()
    return env.global_rank() if env is not None else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_rank_zero() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast(obj: T, src: int = 0) -> T:
    """``obj`` from rank ``src`` on every rank (pickled; for small results, not tensors of data)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank (pickled, as ``broadcast``)."""
    if world_size() == 1:
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_over_processes(value: float) -> float:
    """The mean of every process's ``value`` (``value`` itself on one process). For per-process figures of equal
    shares, such as the last step's logged loss, each process's over its ``batch_size / W`` images."""
    values = all_gather(float(value))
    return values[0] if len(values) == 1 else sum(values) / len(values)


def require_agreement(value: Any, what: str, fix: str) -> None:
    """ValueError on every rank unless every rank holds the same ``value`` (a small, comparable one).

    For what each process decides from its own machine (which weight files it finds): ranks
    that disagree would build different metrics and then sum mismatched states.
    """
    values = all_gather(value)
    odd = [r for r, v in enumerate(values) if v != values[0]]
    if odd:
        raise ValueError(f"the processes disagree on {what}: {values[0]} on rank 0, {values[odd[0]]} on rank {odd[0]}; {fix}")


def processes_per_node(default: int = 1) -> int:
    """Processes the launcher started on this machine: torchrun's LOCAL_WORLD_SIZE, else srun's SLURM_NTASKS_PER_NODE
    or SLURM_TASKS_PER_NODE, whose compressed form (``2(x3),1``: three nodes of 2 tasks, then one of 1) is read at
    this node's SLURM_NODEID."""
    if os.environ.get("LOCAL_WORLD_SIZE"):
        return int(os.environ["LOCAL_WORLD_SIZE"])
    for name in ("SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if os.environ.get(name):
            return _slurm_tasks_on_node(name, os.environ[name], int(os.environ.get("SLURM_NODEID") or 0))
    return default


def _slurm_tasks_on_node(name: str, value: str, node: int) -> int:
    """The count for node ``node`` in SLURM's compressed task list ``value`` (``4``, ``2(x3)``, ``2(x2),1``)."""
    counts = []
    for part in value.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if match is None:
            raise ValueError(f"{name}={value!r} is not a SLURM task count (e.g. 4, 2(x3) or 2(x2),1): launch with "
                             "srun's --ntasks-per-node, or give --devices and --num_nodes")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts[node] if node < len(counts) else counts[0]


class RankZeroFailed(RuntimeError):
    """Raised on the other ranks when what rank 0 ran for all of them (``run_on_rank_zero``) raised."""


def run_on_rank_zero(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only (it writes files); every rank returns its result.

    If ``fn`` raises, rank 0 re-raises it and the other ranks raise ``RankZeroFailed`` with its
    message, instead of failing (gloo) or hanging (NCCL) in a collective rank 0 never joins.
    """
    if world_size() == 1:
        return fn()
    if is_rank_zero():
        try:
            result = fn()
        except BaseException as e:
            with contextlib.suppress(Exception):  # the other ranks may be gone already: keep rank 0's own error
                broadcast((False, f"{type(e).__name__}: {e}"))
            raise
        return broadcast((True, result))[1]
    ok, payload = broadcast(None)
    if not ok:
        raise RankZeroFailed(f"rank 0 stopped, so this rank stops too; rank 0's error: {payload}")
    return payload


def per_rank_batch(global_batch: int, what: str, processes: int | None = None) -> int:
    """This process's share of a protocol's global batch size.

    Args:
        global_batch: the protocol's batch size.
        what: its name in the error.
        processes: the world size to split it over; default: the process group's (a launcher
            that has not started its processes yet passes the number it will start).
    """
    size = world_size() if processes is None else processes
    if global_batch % size:
        raise ValueError(f"{what} {global_batch} is not divisible by the {size} processes; choose a world size that divides "
                         f"it (the protocol's training batch sizes are global, so every world size trains on the same batch size)")
    return global_batch // size


def per_rank_eval_batch(global_batch: int) -> int:
    """This process's batch for evaluation, encoding and sampling: ``ceil(global_batch / W)``.

    Unlike a training batch it decides no sample's randomness (that comes from the sample's global
    index; ``evaluate.ShardSampler`` gives ranks their samples), only memory, speed and float32
    rounding, so W need not divide it.
    """
    return max(1, -(-global_batch // world_size()))


def trainer_kwargs(launch: Launch, *, find_unused_parameters: bool = False) -> dict[str, Any]:
    """``strategy``, ``devices`` and ``num_nodes`` for a Lightning Trainer of this launch.

    Args:
        find_unused_parameters: DDP's search for parameters without a gradient in a step
            (tokenizer modules with a discriminator or auxiliary heads that are idle in some steps).
    """
    if launch.world_size == 1:
        return {"strategy": "auto", "devices": 1, "num_nodes": 1}
    from lightning.pytorch.strategies import DDPStrategy

    strategy = DDPStrategy(find_unused_parameters=find_unused_parameters)
    return {"strategy": strategy, "devices": launch.devices, "num_nodes": launch.num_nodes}
