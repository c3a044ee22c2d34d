"""Data-parallel training: one process per GPU, launched by ``torchrun``.

Backs the training section of *A discretized VAE codec* (training on several
GPUs) and the ``dvae train`` command. Plain PyTorch
``DistributedDataParallel`` (Li et al. 2020, *PyTorch Distributed*): every
process holds the whole model, takes its share of each global batch, and the
gradients are averaged before each optimizer step, so the weights stay equal
on every process.

The contract :func:`~dvae_tutorial.training.fit` keeps:

- the global batch is ``TrainConfig.batch_size`` whatever the number of
  processes: process ``rank`` of ``world`` takes slots ``rank, rank + world,
  …`` of the same keyed batch (:func:`shard`), so the averaged gradient is the
  single-process gradient (up to summation order and the noise, below);
- each process draws its own uniform noise (:func:`noise_seed`): with equal
  seeds the ``world`` shards would share one noise pattern, a correlation a
  single process never has;
- decisions that change control flow (skip a step) are all-reduced, so every
  process takes the same branch (otherwise DDP waits forever);
- only rank 0 shows progress, validates, writes checkpoints and exports.

In a single process (no process group) nothing changes: :func:`shard` gives
the whole batch, :func:`noise_seed` the seed itself, and :func:`wrap`,
:func:`mean_over_ranks_` and :func:`barrier` do nothing.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import DVAEError


class World(NamedTuple):
    """This process's place: ``rank`` in ``0 … size - 1``."""

    rank: int
    size: int


def world() -> World:
    """The current process group's ``(rank, size)``; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World(0, 1)


def launched_size() -> int:
    """How many processes ``torchrun`` started (its ``WORLD_SIZE``; 1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start(device: str) -> torch.device:
    """Join the process group ``torchrun`` set up; returns this process's device.

    NCCL on CUDA (device ``cuda:LOCAL_RANK``), gloo on CPU. Call once per
    process, then :func:`stop` at the end.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if local_rank >= torch.cuda.device_count():
            raise DVAEError(f"process {local_rank} of this machine has no GPU: torch "
                            f"sees {torch.cuda.device_count()}; start at most that "
                            "many processes per node (torchrun --nproc_per_node)")
        gpu = torch.device("cuda", local_rank)
        torch.cuda.set_device(gpu)
        dist.init_process_group("nccl", device_id=gpu)  # barriers use this GPU
        return gpu
    dist.init_process_group("gloo")
    return torch.device("cpu")


def stop() -> None:
    """Leave the process group (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch_size: int, where: World) -> range:
    """The slots of a global batch this process takes: ``rank::size``.

    Raises:
        DVAEError: ``batch_size`` is not divisible by the number of processes
            (each would take a different share, and the mean of their
            gradients would weight the patches unequally).
    """
    if batch_size % where.size:
        raise DVAEError(f"the batch of {batch_size} patches is not divisible by "
                        f"the {where.size} processes; pass a --batch that is a "
                        f"multiple of {where.size}, or start fewer processes")
    return range(where.rank, batch_size, where.size)


def noise_seed(seed: int, rank: int, step: int = 0) -> int:
    """Seed of the uniform noise of process ``rank`` from step ``step`` on.

    ``seed`` itself for rank 0 at step 0, so a single process draws exactly
    the noise it always did; otherwise a hash of ``(seed, rank, step)``
    (NumPy's ``SeedSequence``), different for every rank. A resumed run
    restores rank 0's saved generator and reseeds the others at ``step``, so
    a multi-process run is not bit-identical across a resume (a single CPU
    process still is).
    """
    if rank == 0 and step == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, "u8")[0])


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` within a process group of size > 1,
    else ``model`` itself. DDP copies rank 0's weights to the others."""
    if world().size == 1:
        return model
    if device.type != "cuda":
        return nn.parallel.DistributedDataParallel(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return nn.parallel.DistributedDataParallel(model, device_ids=[index])


def mean_over_ranks_(values: Tensor) -> Tensor:
    """Average ``values`` over the processes, in place (a no-op in one process).

    A NaN or inf on any process makes the result non-finite on all of them:
    :func:`~dvae_tutorial.training.train_step` decides its skip from it.
    """
    size = world().size
    if size > 1:
        dist.all_reduce(values)  # SUM: gloo has no AVG
        values /= size
    return values


def barrier() -> None:
    """Wait until every process is here (a no-op in one process)."""
    if world().size > 1:
        dist.barrier()
