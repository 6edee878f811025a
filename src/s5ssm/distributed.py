"""Data-parallel training under torchrun: the process group, each rank's shard, reductions,
per-process seeds and RNG states, rank 0's buffers shared.

`torchrun --nproc_per_node N -m s5ssm train ...` starts N processes with RANK, WORLD_SIZE
and LOCAL_RANK set; `setup` joins them into a process group (gloo on CPU, nccl on CUDA,
one GPU per process). Without those variables (or with WORLD_SIZE=1) nothing changes:
a single process, no process group.

Sharding: `--batch_size` is per process. Global batch k of an epoch is the k-th run of
batch_size·world samples of the epoch's permutation and rank r trains on its r-th
batch_size slice, so N processes at batch_size b take the same steps as one process at
batch size N·b (gradients are averaged by DistributedDataParallel). The permutation is
repeated cyclically to fill the last global batch, so every rank runs the same number of
equal-size steps and no rank waits on a collective the others never reach.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """This process's place in the job: rank 0 of 1 when not distributed."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Only the main process writes logs, metrics, checkpoints and the summary."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(device: str) -> tuple[Context, torch.device]:
    """Join the torchrun job if there is one; returns (context, this process's device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    target = torch.device(device)
    if world <= 1:
        return Context(), target
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if target.type == "cuda":
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
    dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return Context(rank, world), target


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def check_world(ctx: Context, num_train: int) -> None:
    """More processes than training sequences would train every rank on repeats."""
    if ctx.world > num_train:
        raise ValueError(f"WORLD_SIZE={ctx.world} exceeds the {num_train} training sequences; use fewer processes")


def steps_per_epoch(num_train: int, batch_size: int, ctx: Context) -> int:
    return math.ceil(num_train / (batch_size * ctx.world))


def shard(order: np.ndarray, batch_size: int, ctx: Context) -> np.ndarray:
    """This rank's samples of the epoch order, (steps·batch_size,); the order itself when alone."""
    if not ctx.distributed:
        return order
    per_step = batch_size * ctx.world
    steps = steps_per_epoch(len(order), batch_size, ctx)
    filled = np.resize(order, steps * per_step)  # cyclic repeat fills the last global batch
    return filled.reshape(steps, ctx.world, batch_size)[:, ctx.rank].reshape(-1)


def sum_over_ranks(values: list[float], ctx: Context, device: torch.device) -> list[float]:
    """Elementwise sum of the ranks' values (identity when alone)."""
    if not ctx.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def process_seed(seed: int, rank: int) -> int:
    """The torch seed of process `rank` after the model is built: rank 0 keeps the run's
    stream (a single process is unchanged), the others draw their own dropout masks."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def rng_states(ctx: Context) -> list[torch.Tensor]:
    """Every process's torch RNG state, by rank (a collective under torchrun)."""
    state = torch.get_rng_state()
    if not ctx.distributed:
        return [state]
    states: list = [None] * ctx.world
    dist.all_gather_object(states, state)
    return states


def share_buffers(net: torch.nn.Module, ctx: Context) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics, updated by each
    process's own last batch), so all evaluate the model that rank 0 checkpoints."""
    if ctx.distributed:
        for buffer in net.buffers():
            dist.broadcast(buffer, 0)

