"""Data-parallel training with PyTorch's DistributedDataParallel (DDP), started by torchrun.

    torchrun --nproc_per_node 4 -m slm_helpers train --preset tinystories-small

torchrun starts one process per GPU and tells each who it is through environment variables (RANK,
LOCAL_RANK, WORLD_SIZE and where to meet: MASTER_ADDR, MASTER_PORT). Every process holds a full copy
of the model and trains on its own share of each batch; after the backward pass DDP averages the
gradients across processes, so every copy takes the same optimizer step and stays identical.
Without torchrun (no WORLD_SIZE) everything here is a no-op and training runs in one process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> torch.device:
    """Join the process group (NCCL between GPUs, Gloo on CPUs); returns this process's device."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per process
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Only the main process (rank 0) writes files and prints: N processes would write everything N
    times."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (for example until rank 0 has prepared the data)."""
    if dist.is_initialized():
        dist.barrier()
