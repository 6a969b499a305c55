"""Command-line options made from config dataclasses: the field docstrings become the ``--help`` text."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass ``cls`` or its bases (the string literal after it)."""
    docs: dict[str, str] = {}
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            docs.update(field_docs(base))
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for prev, node in zip(body, body[1:]):
        if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name) and isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def add_config_options(parser: argparse.ArgumentParser | Any, cls: type, names: list[str]) -> None:
    """Options ``--field-name`` for the given scalar fields of dataclass ``cls``, defaulting to the config's."""
    docs = field_docs(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = cls()
    for name in names:
        default = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default,
                            metavar=type(default).__name__.upper(), help=docs.get(name, "").rstrip("."))
        assert name in fields


def config_from_args(cls: type, args: argparse.Namespace, names: list[str], **extra: Any) -> Any:
    """``cls`` with the values of the options made by :func:`add_config_options`."""
    return cls(**extra, **{n: getattr(args, n) for n in names})
