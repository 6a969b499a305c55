"""One process or many under ``torchrun``, on one node or several: rank, world size, device, and the
collectives the trainers use.

``torchrun`` tells each process its place through the environment (`Launch`): ``RANK`` of ``WORLD_SIZE`` over
all nodes, ``LOCAL_RANK`` of ``LOCAL_WORLD_SIZE`` on its own node. A process on CUDA takes GPU ``LOCAL_RANK`` of
its node (`local_device`), and the collective backend follows the device (`backend_for`: NCCL between GPUs,
gloo on the CPU). Global rank 0 is the one that writes files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..device import resolve_device
from ..errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Launch:
    """A process's place in a ``torchrun`` launch, as its environment says (one process alone: all defaults)."""

    rank: int = 0
    """``RANK``: this process among all processes of all nodes."""
    world: int = 1
    """``WORLD_SIZE``: processes over all nodes."""
    local_rank: int = 0
    """``LOCAL_RANK``: this process among those of its node."""
    local_world: int = 1
    """``LOCAL_WORLD_SIZE``: processes on this node (``torchrun --nproc-per-node``)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Launch":
        """The launch ``environ`` (default ``os.environ``) describes; an inconsistent one is an `InputError`."""
        env = os.environ if environ is None else environ

        def number(name: str, default: int) -> int:
            text = env.get(name, "")
            try:
                return int(text) if text != "" else default
            except ValueError:
                raise InputError(f"environment variable {name}={text!r} is not a whole number") from None

        world = number("WORLD_SIZE", 1)
        if world <= 1:
            return cls()
        launch = cls(number("RANK", 0), world, number("LOCAL_RANK", 0), number("LOCAL_WORLD_SIZE", 1))
        if not (0 <= launch.rank < world and 0 <= launch.local_rank < launch.local_world <= world):
            raise InputError(f"inconsistent torchrun environment: RANK {launch.rank} of WORLD_SIZE {world}, "
                             f"LOCAL_RANK {launch.local_rank} of LOCAL_WORLD_SIZE {launch.local_world}")
        return launch


def backend_for(device: torch.device) -> str:
    """The collective backend for ranks on ``device``: NCCL between CUDA GPUs, gloo otherwise (CPU, MPS). The one
    place this is chosen."""
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(device: torch.device, launch: Launch, gpus: int) -> torch.device:
    """This process's device: ``device`` itself unless it is CUDA, then GPU ``LOCAL_RANK`` of this node, which
    must have a GPU for each of its processes (``gpus``: how many this process sees)."""
    if device.type != "cuda":
        return device
    if launch.local_world > gpus:
        raise InputError(f"{launch.local_world} processes on this node (torchrun --nproc-per-node) but {gpus} CUDA "
                         f"GPU{'s' if gpus != 1 else ''} visible: start at most {gpus} per node, or train with "
                         f"--device cpu")
    return torch.device("cuda", launch.local_rank)


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

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any of them."""
        if self.world <= 1:
            return bool(flag)
        box = torch.tensor([1.0 if flag else 0.0], device=self.device)
        tdist.all_reduce(box, op=tdist.ReduceOp.MAX)
        return bool(box.item() > 0)

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


def stale_store_risk(environ: Mapping[str, str] | None = None) -> bool:
    """Whether torchrun may restart this run on a rendezvous store it shares between restarts: the processes of a
    restart can then read the addresses of those that were lost and fail or hang while connecting (seen here with
    PyTorch 2.13: the gloo process group of a restart after a lost node failed or hung in 4 of 6 tries, and in
    none of 4 with the store not shared). ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` in torchrun's environment gives every restart a new
    store."""
    env = os.environ if environ is None else environ
    restarts = env.get("TORCHELASTIC_MAX_RESTARTS", "0")
    return env.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and restarts.isdigit() and int(restarts) > 0


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group that ``torchrun`` set up (environment ``WORLD_SIZE`` > 1), else run alone."""
    launch = Launch.from_env()
    dev = resolve_device(device)
    if launch.world <= 1:
        return Dist(0, 1, dev)
    dev = local_device(dev, launch, torch.cuda.device_count() if dev.type == "cuda" else 0)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if launch.rank == 0 and stale_store_risk():
        log.warning("torchrun --max-restarts with a shared rendezvous store: a restart may fail to connect to the "
                    "processes it replaced; start torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its "
                    "environment")
    if not tdist.is_initialized():
        # a CUDA rank binds its GPU to the group (NCCL connects at once, on that GPU, not on GPU 0 at first use)
        tdist.init_process_group(backend_for(dev), device_id=dev if dev.type == "cuda" else None)
    return Dist(tdist.get_rank(), tdist.get_world_size(), dev)


def close_distributed(ok: bool = True) -> None:
    """Leave the process group. After a run that went well every rank first waits for the others: a rank that
    tears its connections down while a peer still reads from them makes gloo abort that peer ("Connection reset
    by peer", SIGABRT). After a failure (``ok`` False) it does not wait: a peer may be gone for good (a lost
    node), and torchrun stops or restarts the others."""
    if tdist.is_available() and tdist.is_initialized():
        if ok:
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
