"""Weights and optimizer state as safetensors, and typed configs as JSON: shared by every trained model."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, TypeVar

import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

from .errors import InputError, MissingModelError
from .fileio import atomic_path, read_json

T = TypeVar("T")


def config_to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(cls: type[T], data: dict, where: str) -> T:
    """Build dataclass ``cls`` from ``data`` (as `config_to_dict` wrote it): the one deserialiser of configs.

    Unknown or missing settings are an :class:`InputError` (never silently ignored); JSON lists become tuples
    where the field is a tuple; settings added after files were written take the value in ``cls.LEGACY``
    (a class attribute ``{field: value}``, the behaviour of those older files) when given.
    """
    if not isinstance(data, dict):
        raise InputError(f"{where}: {cls.__name__} settings must be a JSON object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(f"{where}: unknown {cls.__name__} settings {', '.join(unknown)} "
                         f"(written by a newer geneface?)")
    values = {**getattr(cls, "LEGACY", {}), **data}
    for name, value in values.items():
        if isinstance(value, list) and str(fields[name].type).startswith("tuple"):
            values[name] = tuple(value)
    try:
        return cls(**values)
    except TypeError as e:
        raise InputError(f"{where}: incomplete {cls.__name__} settings ({e})") from None


def save_weights(path: str | os.PathLike, module: nn.Module, metadata: dict[str, str] | None = None) -> None:
    """Write a module's parameters and buffers as safetensors (atomically)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (flushed to the disk before the rename): a full disk
    or any other write error is an ``OSError`` and leaves what was at ``path`` before."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a missing or unreadable file is an :class:`InputError`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"missing checkpoint {path}")
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as e:  # safetensors raises several types for truncated or garbled files
        raise InputError(f"checkpoint {path} is corrupt or incomplete ({type(e).__name__}: {e}); "
                         f"train again or restore the file") from None


def load_weights(path: str | os.PathLike, module: nn.Module) -> None:
    """Load a safetensors file into ``module``; missing, extra or misshapen tensors are an :class:`InputError`."""
    tensors = read_weights(path)
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    bad = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or extra or bad:
        detail = "; ".join(x for x in (
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(extra[:3])}" if extra else "",
            f"wrong shape {', '.join(bad[:3])}" if bad else "") if x)
        raise InputError(f"checkpoint {path} does not match the model in its config ({detail})")
    module.load_state_dict(tensors)


def save_optimizer(path: str | os.PathLike, optimizer: torch.optim.Optimizer) -> None:
    """Write an optimizer's state: tensors as safetensors, the rest as JSON metadata (no pickle)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    meta = {"param_groups": json.dumps(state["param_groups"]), "scalars": json.dumps(scalars)}
    write_bytes(path, safetensors.torch.save(tensors, metadata=meta))


def load_optimizer(path: str | os.PathLike, optimizer: torch.optim.Optimizer) -> None:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
                  for g in json.loads(meta["param_groups"])]  # JSON made the tuples (betas) lists
        scalars = json.loads(meta["scalars"])
    except Exception as e:
        raise InputError(f"optimizer state {path} is corrupt ({type(e).__name__}: {e}); delete "
                         f"{path.parent} to restart training") from None
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, entry in scalars.items():
        state.setdefault(int(idx), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def package_file(package: str, relative: str, purpose: str, hint: str) -> Path:
    """Path of a data file inside an installed package, found without importing the package; a missing
    package or file is a :class:`MissingModelError` naming ``purpose`` (e.g. "LPIPS") and the install ``hint``."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelError(f"{purpose} needs the weights of the '{package}' package: {hint}")
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise MissingModelError(f"'{package}' is installed but lacks {relative}; reinstall it: {hint}")


def read_run_config(run: str | os.PathLike, fmt: str, version: int, what: str, command: str,
                    state_dir: str = "train_state") -> dict:
    """``config.json`` of a finished training run, checked for ``fmt`` and ``version``; ``what`` names the run
    in messages ("motion model") and ``command`` is the one that trains it."""
    run = Path(run)
    if not run.is_dir():
        raise InputError(f"no {what} folder {run} (train one with `{command}`)")
    path = run / "config.json"
    if not path.exists():
        hint = " (training did not finish; rerun the same command to resume)" if (run / state_dir).exists() else ""
        raise InputError(f"{run} is not a trained {what}: no config.json{hint}")
    try:
        config = read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is corrupt ({e})") from None
    if not isinstance(config, dict) or config.get("format") != fmt:
        raise InputError(f"{run} is not a geneface {what}")
    if config.get("version") != version:
        raise InputError(f"{run} has {what} version {config.get('version')}; this geneface reads version {version}")
    return config
