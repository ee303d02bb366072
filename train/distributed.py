"""Where this process runs: torch threads, the device and, under ``torchrun``, the DDP process group.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without them the run is one process. Every rank
calls ``setup`` first; rank 0 alone writes the run folder (``train/run/folder.py``).
"""

from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from train.config import Config
from train.errors import TrainError


@dataclass
class Dist:
    """Where this process runs: rank, world size, device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(cfg: Config) -> Dist:
    """Threads, device and (under ``torchrun``) the process group.

    Raises:
        TrainError: CUDA asked for but absent.
    """
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = cfg.train.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError("train.device=cuda but no CUDA device is visible")
        device = torch.device("cuda", local_rank if world_size > 1 else torch.device(want).index or 0)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank, device)


def leave(env: Dist, wait: bool = True) -> None:
    """Leave the process group at the end of a job (nothing to do in a single process).

    Every rank first waits for the others (``wait``), since rank 0 writes the run folder's last files after the
    loop, then the group is destroyed. A rank that simply exited while another still held its gloo
    connection aborted at exit about half the time ("terminate called without an active exception",
    SIGABRT), and torchrun then ended the other ranks and the job with exit 1. ``wait=False`` on a failure:
    the other ranks may never reach the barrier.
    """
    if env.world_size == 1 or not dist.is_initialized():
        return
    if wait:
        dist.barrier()
    dist.destroy_process_group()


def quiet_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: SIGTERM and SIGINT are the main process's to handle.

    torchrun, SLURM and a terminal's Ctrl-C signal a rank's whole process group, workers included; torch's own
    worker handler dies of a SIGTERM its parent did not send, so the main process, which stops after its step
    with a checkpoint, met dead workers and the run failed without one. The main process still ends them.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def end_workers(batches) -> None:
    """End a DataLoader iterator's workers the way it does when exhausted (a sentinel each, then a join).

    Workers ignore SIGTERM (``quiet_worker``), so an iterator left to the interpreter's exit, where
    multiprocessing ends its children with SIGTERM and joins them, would wait for ever: a batch loop that stops
    early or fails calls this in its ``finally``.
    """
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's own, as its __del__ calls it
    if shutdown is not None:
        shutdown()


def end_children() -> None:
    """SIGKILL what is left of this process's children (DataLoader workers of an iterator something still holds),
    last thing before the process exits: they ignore the SIGTERM multiprocessing would end them with."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (per rank the caller adds the rank)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """All global RNG states, for exact resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def free_memory(device: torch.device) -> int | None:
    """Bytes a run can still have where it trains: the free memory of a CUDA device, the machine's available RAM
    on the CPU (``fracgen.config.available_memory``); None when the system cannot tell."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]  # a CPU-GPU sync point, once at start-up
    from fracgen.config import available_memory

    return available_memory()


def barrier(env: Dist) -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if env.world_size > 1:
        dist.barrier()


def mean_over_ranks(value: float, env: Dist) -> float:
    """The mean of a per-rank float over all ranks (the value itself in a single process)."""
    if env.world_size == 1:
        return value
    reduced = torch.tensor([value], device=env.device)
    dist.all_reduce(reduced)
    return reduced.item() / env.world_size
