"""Save and load of configured modules: config dataclasses as JSON dicts, weights as safetensors."""

from __future__ import annotations

import os
from typing import Any, ClassVar, TypeVar

from ..errors import InputError
from ..weights import config_from_dict, config_to_dict, load_weights, save_weights

M = TypeVar("M", bound="Savable")


class Savable:
    """Mixin for an ``nn.Module`` built from config dataclasses: ``Model(**{arg: Config(...)})``.

    ``config_args`` maps each constructor argument (kept as an attribute of the same name) to its dataclass.
    `config_record` gives what a run's config.json stores: the config's dict for a module with one config,
    else ``{arg: dict}``; `from_config_record` rebuilds the module from it through the one deserialiser
    (`geneface.weights.config_from_dict`: unknown or missing settings are an ``InputError``). Weights go
    through `save` / `load` (safetensors; a mismatch is an ``InputError``).
    """

    config_args: ClassVar[dict[str, type]] = {}
    """Constructor argument -> config dataclass."""
    record_keys: ClassVar[dict[str, str]] = {}
    """Constructor argument -> its key in `config_record` where that differs from the argument's name."""

    def config_record(self) -> dict[str, Any]:
        record = {self.record_keys.get(arg, arg): config_to_dict(getattr(self, arg)) for arg in self.config_args}
        return next(iter(record.values())) if len(record) == 1 else record

    @classmethod
    def from_config_record(cls: type[M], record: Any, where: str) -> M:
        """A new module from `config_record`'s output (``where`` names the file in messages)."""
        keys = {arg: cls.record_keys.get(arg, arg) for arg in cls.config_args}
        if len(keys) == 1:
            record = {next(iter(keys.values())): record}
        missing = [key for key in keys.values() if not isinstance(record, dict) or not isinstance(record.get(key), dict)]
        if missing:
            raise InputError(f"{where}: no {', '.join(missing)} settings for {cls.__name__}")
        return cls(**{arg: config_from_dict(cls.config_args[arg], record[key], where) for arg, key in keys.items()})

    def save(self, path: str | os.PathLike) -> None:
        """Weights and buffers as safetensors (atomically)."""
        save_weights(path, self)  # type: ignore[arg-type]

    def load(self: M, path: str | os.PathLike) -> M:
        """Load weights saved by `save` into this module; returns it."""
        load_weights(path, self)  # type: ignore[arg-type]
        return self
