"""One process or many under ``torchrun``: rank, world size, device, and the collectives the trainers use."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..device import resolve_device


@dataclass
class Dist:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and logs."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over the ranks (``values`` itself when alone)."""
        if self.world > 1:
            values = values.clone()
            tdist.all_reduce(values)
            values /= self.world
        return values

    def from_main(self, value):
        """Rank 0's ``value`` on every rank (a picklable Python object made by the program, never read from a file)."""
        if self.world > 1:
            box = [value]
            tdist.broadcast_object_list(box, src=0)
            value = box[0]
        return value

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` under DistributedDataParallel when there are several ranks."""
        if self.world <= 1:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group that ``torchrun`` set up (environment ``WORLD_SIZE`` > 1), else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return Dist(0, 1, dev)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(tdist.get_rank(), tdist.get_world_size(), dev)


def close_distributed() -> None:
    """Leave the process group. Every rank first waits for the others: a rank that tears its connections down
    while a peer still reads from them makes gloo abort that peer ("Connection reset by peer", SIGABRT)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


class LossCall(nn.Module):
    """Makes ``module.<method>`` the forward, so DistributedDataParallel can wrap a model's loss method."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, *args, **kwargs):
        return getattr(self.module, self.method)(*args, **kwargs)
