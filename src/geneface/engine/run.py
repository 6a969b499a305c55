"""A training run's folder and its life cycle.

```
RUN/
  config.json        format, version, model configs, training settings: written last (the run is finished)
  *.safetensors      weights
  train_log.jsonl    losses every few steps
  train_state/       while training: weights, optimizer states and state.json, replaced atomically at each save
```

A folder with ``train_state/`` is resumed by running the same command again; one with ``config.json`` and no
``train_state/`` is finished and is never overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import GeneFaceError, InputError
from ..fileio import atomic_dir, folder_lock, read_json, write_json
from ..weights import load_optimizer, load_weights, read_run_config, save_optimizer, save_weights
from .dist import Dist

STATE_DIR = "train_state"
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
RESTART_LOCK_WAIT = 180.0
"""Seconds rank 0 of a run that torchrun may restart (``--max-restarts``) waits for the run folder's lock: the
rank 0 of a node that was lost may hold it on shared storage until its lease there ends."""


class TrainingError(GeneFaceError):
    """Training cannot go on (a NaN loss, for instance); the last good checkpoint is kept."""


@dataclass(frozen=True)
class RunKind:
    """What a kind of run is called on disk and in messages."""

    format: str
    """``format`` field of its config.json (``geneface-motion``)."""
    version: int
    """Format version this geneface reads and writes."""
    what: str
    """Name in messages (``motion model``)."""
    command: str
    """The command that trains one (``geneface train motion``)."""


class RunFolder:
    """The folder of one training run (see the module docstring); only rank 0 writes."""

    def __init__(self, root: str | os.PathLike, kind: RunKind, dist: Dist | None = None) -> None:
        self.root = Path(root)
        self.kind = kind
        self.dist = dist or Dist()
        self._lock: contextlib.ExitStack | None = None

    def __enter__(self) -> "RunFolder":
        """Hold the folder's lock (rank 0; `geneface.fileio.folder_lock`) while training: one writer per run."""
        stack = contextlib.ExitStack()
        if self.dist.main:
            # whether torchrun may restart this run: TORCHELASTIC_RESTART_COUNT cannot say, it stays 0 in a
            # restart that a node joining again caused
            restarts = os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")
            restartable = restarts.isdigit() and int(restarts) > 0
            stack.enter_context(folder_lock(self.root, wait=RESTART_LOCK_WAIT if restartable else 0.0))
        self._lock = stack
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def finished(self) -> bool:
        return (self.root / CONFIG_FILE).exists() and not self.state_dir.exists()

    # --- starting -------------------------------------------------------------------------------------
    def read_state(self) -> dict | None:
        """``train_state/state.json`` of an interrupted run, or None."""
        path = self.state_dir / STATE_FILE
        if not path.exists():
            return None
        try:
            state = read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path} is corrupt ({e}); delete {self.state_dir} to start over") from None
        if not isinstance(state, dict):
            raise InputError(f"{path} is corrupt; delete {self.state_dir} to start over")
        return state

    def begin(self, finished_hint: str = "choose another --out") -> dict | None:
        """Create the folder; the state of an interrupted run to resume from, or None for a new run. A finished
        run is an error (``finished_hint`` says what to do instead)."""
        state = self.read_state()
        if state is None and (self.root / CONFIG_FILE).exists():
            raise InputError(f"{self.root} already holds a trained {self.kind.what}; {finished_hint}")
        if self.dist.main:
            self.root.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()
        self._check_shared(state)
        return state

    def _check_shared(self, state: dict | None) -> None:
        """Every rank resumes from the checkpoint rank 0 sees, so all of them must see the same folder: on several
        nodes, --out must be on storage they share."""
        if self.dist.world <= 1:
            return
        if self.dist.any(self.dist.from_main(state) != state):
            raise InputError(f"the ranks do not all see the same {self.root} (the checkpoint rank 0 resumes from "
                             f"differs from another rank's): on several nodes, --out must be a folder on storage "
                             f"every node shares")

    def check_same_settings(self, saved: dict, requested: dict, ignore: Iterable[str] = ()) -> None:
        """An interrupted run resumes only with the settings it was started with."""
        diff = differing_settings(saved, requested, ignore)
        if diff:
            raise InputError(f"{self.root} holds an unfinished run with other settings ({', '.join(diff)}); use the "
                             f"same options to resume, or another --out")

    # --- checkpoints ------------------------------------------------------------------------------------
    def save_state(self, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                   state: dict) -> None:
        """Replace ``train_state/`` atomically: ``NAME.safetensors`` per module and optimizer (keys are file
        stems), and ``state.json``."""
        if self.dist.main:
            kept = self.last_checkpoint()
            try:
                with atomic_dir(self.state_dir) as tmp:
                    for name, module in modules.items():
                        save_weights(tmp / f"{name}.safetensors", module)
                    for name, opt in optimizers.items():
                        save_optimizer(tmp / f"{name}.safetensors", opt)
                    write_json(tmp / STATE_FILE, state)
            except OSError as e:
                full = " (the disk is full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
                before = f"the previous checkpoint ({kept}) is kept" if kept else "no checkpoint was saved yet"
                raise TrainingError(f"could not write a checkpoint into {self.state_dir}: "
                                    f"{e.strerror or e}{full}; {before}. Free some space and rerun to resume") from None
        self.dist.barrier()

    def load_state(self, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """Load what `save_state` wrote into ``modules`` and ``optimizers`` (by the same names)."""
        for name, module in modules.items():
            load_weights(self.state_dir / f"{name}.safetensors", module)
        for name, opt in optimizers.items():
            load_optimizer(self.state_dir / f"{name}.safetensors", opt)

    def last_checkpoint(self) -> str:
        """``"<stage> step <n>"`` of the saved state, or "" when there is none (for messages)."""
        try:
            state = self.read_state()
        except InputError:
            return ""
        if not state:
            return ""
        return f"{state.get('stage', state.get('phase', '?'))} step {state.get('step', '?')}"

    # --- finishing --------------------------------------------------------------------------------------
    def write_config(self, record: dict[str, Any]) -> None:
        """``config.json`` with the run's format and version first: call it after every weight file is written."""
        if self.dist.main:
            write_json(self.root / CONFIG_FILE, {"format": self.kind.format, "version": self.kind.version,
                                                 **{k: v for k, v in record.items() if k not in ("format", "version")}})

    def finish(self) -> None:
        """Drop the training state (the folder now holds everything inference needs)."""
        if self.dist.main:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        self.dist.barrier()

    def read_config(self) -> dict:
        """``config.json`` of a finished run, checked for format and version."""
        k = self.kind
        return read_run_config(self.root, k.format, k.version, k.what, k.command, STATE_DIR)


def differing_settings(saved: dict, requested: dict, ignore: Iterable[str] = ()) -> list[str]:
    """Names of the settings whose values differ between two dicts (nested dicts as ``a.b``; ``ignore``d names
    are skipped at every level)."""
    ignore = set(ignore)
    out: list[str] = []
    for key in sorted(set(saved) | set(requested)):
        if key in ignore:
            continue
        a, b = saved.get(key), requested.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}" for k in differing_settings(a, b, ignore)]
        elif _normal(a) != _normal(b):
            out.append(key)
    return out


def _normal(value: Any) -> Any:
    """Tuples and lists compare alike (JSON turns one into the other)."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    return value
