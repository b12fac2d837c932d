"""The processes of a dataset run or evaluation: rank, world size and device under torchrun (or
alone), a reduction over them, and rank 0's hold on the output folder shared with every rank."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import DatasetRunError
from .folder import owned_folder


@dataclass(frozen=True)
class Workers:
    """This process's place in the run: rank, world size, device, and whether it created the
    process group (and so destroys it at the end)."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool

    def reduce(self, values: list, op: str = "sum") -> list:
        """``values`` summed (``op="max"``: their maximum) over all processes."""
        if self.world == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return tensor.tolist()


def start_workers() -> Workers:
    """Join the process group when launched by torchrun with ``WORLD_SIZE > 1`` (gloo on CPU,
    nccl on GPU); each process uses GPU ``LOCAL_RANK`` when CUDA is available."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    owns_group = False
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    elif world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns_group = True
    return Workers(rank, world, device, owns_group)


@contextlib.contextmanager
def claim(out: Path, workers: Workers):
    """Rank 0 holds ``out`` (:func:`~sas_fast.dataset.folder.owned_folder`) for the run; when it
    cannot, every process stops with its reason."""
    with contextlib.ExitStack() as held:
        refused = None
        if workers.rank == 0:
            try:
                held.enter_context(owned_folder(out))
            except DatasetRunError as err:
                refused = err
        if workers.reduce([float(refused is not None)], op="max")[0]:
            raise refused or DatasetRunError(f"{out}: rank 0 could not take the output folder")
        yield
