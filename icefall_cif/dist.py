"""Process-group setup for DDP training, launched by `torch.multiprocessing.spawn` or torchrun.

Two launch styles, as in icefall:

- `train.py --world-size N` spawns N processes on this node and each calls
  `setup_dist(rank, N, master_port)`;
- `torchrun --nproc_per_node N train.py ...` starts the processes itself and exports
  RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; `setup_dist` then takes
  everything from the environment.

The backend is NCCL when CUDA is available and gloo otherwise, so the same recipe runs
multi-process on a CPU-only machine.
"""
import logging
import os
from typing import Optional

import torch
import torch.distributed as dist

DEFAULT_MASTER_PORT = 12354


def is_torchrun() -> bool:
    """True when this process was started by torchrun (torch elastic)."""
    return dist.is_torchelastic_launched()


def setup_dist(
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    master_port: Optional[int] = None,
    backend: Optional[str] = None,
    master_addr: Optional[str] = None,
) -> None:
    """Join the default process group.

    Args:
      rank: this process's rank (0 .. world_size-1); ignored under torchrun.
      world_size: the number of processes; ignored under torchrun.
      master_port: TCP port of the rendezvous; defaults to $MASTER_PORT, then 12354.
        Ignored under torchrun, whose agent owns the rendezvous.
      backend: "nccl" or "gloo"; default nccl when CUDA is available, gloo otherwise.
      master_addr: host of rank 0; defaults to $MASTER_ADDR, then localhost.
    """
    if is_torchrun():
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        if master_port is not None and str(master_port) != os.environ.get("MASTER_PORT"):
            logging.info(
                f"Launched by torchrun: using its MASTER_PORT={os.environ.get('MASTER_PORT')}, "
                f"not {master_port}"
            )
    else:
        if rank is None or world_size is None:
            raise ValueError(
                "setup_dist needs rank and world_size unless the process is started by "
                "torchrun; pass them (e.g. from torch.multiprocessing.spawn)"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        # spawn starts all processes on this node, so the local rank is the rank.
        local_rank = rank
        if master_addr is not None:
            os.environ["MASTER_ADDR"] = master_addr
        os.environ.setdefault("MASTER_ADDR", "localhost")
        if master_port is not None:
            os.environ["MASTER_PORT"] = str(master_port)
        os.environ.setdefault("MASTER_PORT", str(DEFAULT_MASTER_PORT))
        # Exported like torchrun does, so code that reads the environment (setup_logger,
        # get_rank before the group exists) sees the same values under both launchers.
        os.environ["RANK"] = str(rank)
        os.environ["WORLD_SIZE"] = str(world_size)
        os.environ["LOCAL_RANK"] = str(local_rank)

    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        # NCCL binds each process to one GPU; without this every rank would use GPU 0.
        torch.cuda.set_device(local_rank)
    logging.info(
        f"Initializing {backend} process group: rank {rank}/{world_size}, local rank "
        f"{local_rank}, {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    )
    dist.init_process_group(backend, rank=rank, world_size=world_size)


def cleanup_dist() -> None:
    """Leave the default process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_world_size() -> int:
    """The number of processes: from the process group, else $WORLD_SIZE, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def get_rank() -> int:
    """This process's global rank: from the process group, else $RANK, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def get_local_rank() -> int:
    """This process's rank on its node ($LOCAL_RANK, set by torchrun or setup_dist), else 0."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The inner module of a DDP / DataParallel wrapper (or `model` itself), e.g. so that saved
    keys have no `module.` prefix."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model
