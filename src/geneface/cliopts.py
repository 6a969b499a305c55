r"""Config dataclasses as command-line options: every setting is declared once, next to its field.

A field of a config dataclass carries its default, its valid range (or choices) and, in the string literal
under it, its documentation::

    @dataclass
    class InferConfig:
        batch: int = opt(4, min=1, max=1024)
        \"""Frames rendered at once.\"""

        def __post_init__(self) -> None:
            check_config(self)

`opt` is `dataclasses.field` with the option's `Option` as metadata: ``min``/``max`` (inclusive), ``above``/
``below`` (exclusive), ``multiple_of``, ``choices``; ``flag`` when the command-line name is not the field's
(``flag="rays"`` makes ``rays_per_frame`` the option ``--rays``), ``why`` to explain a refusal. Every int and
float field of a command's config declares both a lower and an upper bound.

`check_config`, called by the dataclass's ``__post_init__``, is the one check of the values, for the Python API
and the command line alike: it refuses a value outside the range, a NaN or an infinity, a fraction for a whole
number, or a value not among the choices, with an `InputError` that names the command-line option
(``--batch must be at least 1, got 0``).

`add_config_options` makes an option ``--field-name`` of every scalar field (int, float, str, bool, Path, their
Optional forms, and fixed or variable-length tuples of them; nested configs are left out): its help is the
field's docstring with the range and the default. Booleans that default to False are switches (``--force``),
those that default to True have a ``--no-...`` form. The parse only reads numbers (``1e3`` is a whole number);
ranges are checked when `config_from_args` builds the config, so there is one check.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import numbers
import textwrap
import types
import typing
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any

from .device import DEVICE_DEFAULTS
from .errors import InputError

MAX_SEED = 2**32 - 1
"""Largest random seed (numpy's limit)."""
MAX_STEPS = 10_000_000
"""Most training steps of any model (far beyond any run that converges)."""
MAX_SIZE = 4096
"""Largest frame side in pixels."""
MAX_WORKERS = 256
"""Most worker processes."""

_KEY = "geneface.option"


@dataclasses.dataclass(frozen=True)
class Option:
    """How a config field is checked and shown on the command line (the metadata `opt` attaches)."""

    min: float | None = None
    """Smallest valid value (inclusive)."""
    max: float | None = None
    """Largest valid value (inclusive)."""
    above: float | None = None
    """Values must be greater than this."""
    below: float | None = None
    """Values must be less than this."""
    multiple_of: int | None = None
    """Values must be a multiple of this (2: even)."""
    choices: tuple | None = None
    """The only valid values (for a tuple field: of each item)."""
    flag: str | None = None
    """Command-line name (without ``--``) when it is not the field's name with dashes."""
    metavar: str | tuple[str, ...] | None = None
    """Placeholder of the value in ``--help``."""
    why: str = ""
    """Appended to the message that refuses a value."""

    @property
    def bounded(self) -> bool:
        """Both a lower and an upper bound are declared."""
        return (self.min is not None or self.above is not None) and (self.max is not None or self.below is not None)

    def describe(self) -> str:
        """The range as ``--help`` shows it: ``[1, 1024]``, ``(0, 1]``, ``[32, 4096], even``, ``25 only``."""
        if self.min is not None and self.min == self.max:
            return f"{_num(self.min)} only"
        parts = []
        lo = f"[{_num(self.min)}" if self.min is not None else f"({_num(self.above)}" if self.above is not None \
            else "(-inf"
        hi = f"{_num(self.max)}]" if self.max is not None else f"{_num(self.below)})" if self.below is not None \
            else "inf)"
        if self.min is not None or self.above is not None or self.max is not None or self.below is not None:
            parts.append(f"{lo}, {hi}")
        if self.multiple_of == 2:
            parts.append("even")
        elif self.multiple_of:
            parts.append(f"a multiple of {self.multiple_of}")
        return ", ".join(parts)


def opt(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
        min: float | None = None, max: float | None = None, above: float | None = None,
        below: float | None = None, multiple_of: int | None = None, choices: tuple | None = None,
        flag: str | None = None, metavar: str | tuple[str, ...] | None = None, why: str = "") -> Any:
    """A dataclass field (as `dataclasses.field`) with its `Option`: range, choices, command-line name."""
    option = Option(min=min, max=max, above=above, below=below, multiple_of=multiple_of,
                    choices=tuple(choices) if choices is not None else None, flag=flag, metavar=metavar, why=why)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_KEY: option})


def same_as(cls: type, name: str) -> Any:
    """A field declared like field ``name`` of dataclass ``cls``: the same default and `Option`."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)


def option_of(f: dataclasses.Field) -> Option:
    """The `Option` of a field (an empty one when it declares none)."""
    return f.metadata.get(_KEY) or Option()


def flag_of(f: dataclasses.Field) -> str:
    """The command-line option of a field: ``--rays`` for ``rays_per_frame`` with ``flag="rays"``."""
    return "--" + (option_of(f).flag or f.name.replace("_", "-"))


# --- the types of fields --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Shape:
    """What a field's type annotation means for the command line."""

    base: type | None
    """int, float, str, bool or Path; None for anything else (nested configs), which gets no option."""
    optional: bool = False
    """``X | None``."""
    nargs: int | str | None = None
    """A tuple: its length, or ``"+"`` for ``tuple[X, ...]``; None for a scalar."""

    @property
    def numeric(self) -> bool:
        return self.base in (int, float)


@lru_cache(maxsize=None)
def shapes(cls: type) -> dict[str, Shape]:
    """`Shape` of every field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: _shape(hints[f.name]) for f in dataclasses.fields(cls)}


def _shape(hint: Any) -> Shape:
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            return Shape(None)
        hint = args[0]
    nargs: int | str | None = None
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            nargs, hint = "+", args[0]
        elif args and all(a == args[0] for a in args):
            nargs, hint = len(args), args[0]
        else:
            return Shape(None)
    if hint in (int, float, str, bool) or (isinstance(hint, type) and issubclass(hint, PurePath)):
        return Shape(Path if hint is not str and isinstance(hint, type) and issubclass(hint, PurePath) else hint,
                     optional, nargs)
    return Shape(None)


# --- the one check ----------------------------------------------------------------------------------------

def check_config(config: Any) -> None:
    """Refuse any field of dataclass instance ``config`` outside its `Option` (see the module docstring)."""
    kinds = shapes(type(config))
    for f in dataclasses.fields(config):
        shape, value = kinds[f.name], getattr(config, f.name)
        if value is None or shape.base is None:
            continue
        option = option_of(f)
        for item in (value if shape.nargs is not None else (value,)):
            check_value(flag_of(f), option, shape.base, item)


def check_value(name: str, option: Option, base: type, value: Any) -> None:
    """Raise `InputError` naming option ``name`` if ``value`` is not a valid ``base`` within ``option``."""
    why = f": {option.why}" if option.why else ""
    if base in (int, float):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InputError(f"{name} must be a number, got {value!r}")
        if base is int and not isinstance(value, numbers.Integral):
            raise InputError(f"{name} must be a whole number, got {_num(value)}")
        if not math.isfinite(value):
            raise InputError(f"{name} must be a finite number, got {_num(value)}")
        got = f", got {_num(value)}{why}"
        if option.min is not None and option.min == option.max and value != option.min:
            raise InputError(f"{name} must be {_num(option.min)}{got}")
        if option.min is not None and value < option.min:
            raise InputError(f"{name} must be at least {_num(option.min)}{got}")
        if option.above is not None and not value > option.above:
            raise InputError(f"{name} must be above {_num(option.above)}{got}")
        if option.max is not None and value > option.max:
            raise InputError(f"{name} must be at most {_num(option.max)}{got}")
        if option.below is not None and not value < option.below:
            raise InputError(f"{name} must be below {_num(option.below)}{got}")
        if option.multiple_of and value % option.multiple_of:
            what = "even" if option.multiple_of == 2 else f"a multiple of {option.multiple_of}"
            raise InputError(f"{name} must be {what}{got}")
    if option.choices is not None and value not in option.choices:
        raise InputError(f"{name} must be one of {', '.join(map(str, option.choices))}, got {value!r}{why}")


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# --- the command line -------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass ``cls`` or its bases (the string literal after it)."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            docs.update(field_docs(base))
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for prev, node in zip(body, body[1:]):
        if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name) and isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


class Number:
    """The ``type`` of a numeric option: reads an int or a float (``1e3`` is a whole number). The range is
    checked by `check_config` when the config is built; it is kept here for ``--help`` and the tests."""

    def __init__(self, base: type, option: Option) -> None:
        self.base, self.option = base, option
        self.__name__ = base.__name__  # argparse names the type in its messages

    def __call__(self, text: str) -> int | float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if self.base is float:
            return value
        try:
            return int(text)
        except ValueError:
            if math.isfinite(value) and value.is_integer():
                return int(value)
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None

    def __repr__(self) -> str:
        return f"Number({self.base.__name__}, {self.option.describe()})"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help with each option's range and default: ``(range [1, 1024], default: 4)``; no default shown when
    it is None or a switch's False (the help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if "%(default)" in help:
            return help
        parts = []
        if isinstance(action.type, Number) and action.type.option.describe():
            parts.append(f"range {action.type.option.describe()}")
        default = action.default
        if (default is not None and default is not False and default is not argparse.SUPPRESS and default != []
                and (action.option_strings or action.nargs in ("?", "*"))):
            shown = " ".join(map(_num, default)) if isinstance(default, (tuple, list)) else _num(default)
            parts.append(f"default: {shown}".replace("%", "%%"))
        return f"{help} ({'; '.join(parts)})" if parts else help


def config_fields(cls: type, exclude: tuple[str, ...] | list[str] = ()) -> list[dataclasses.Field]:
    """The fields of ``cls`` that become options: scalar ones (see the module docstring) not in ``exclude``."""
    kinds = shapes(cls)
    unknown = set(exclude) - set(kinds)
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {sorted(unknown)}")
    return [f for f in dataclasses.fields(cls) if kinds[f.name].base is not None and f.name not in exclude]


def add_config_options(parser: argparse.ArgumentParser | Any, cls: type,
                       exclude: tuple[str, ...] | list[str] = ()) -> None:
    """An option for every scalar field of dataclass ``cls`` (except ``exclude``), defaulting to the config's;
    `config_from_args` reads them back."""
    docs = field_docs(cls)
    kinds = shapes(cls)
    names = []
    for f in config_fields(cls, exclude):
        shape, option = kinds[f.name], option_of(f)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        help = _help_text(docs.get(f.name, ""))
        flag = flag_of(f)
        kw: dict[str, Any] = {"dest": f.name, "default": default, "help": help}
        if shape.base is bool:
            if default:
                action = parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
                action.help = help  # not BooleanOptionalAction's own default text: the formatter adds it
            else:
                parser.add_argument(flag, action="store_true", **kw)
            names.append(f.name)
            continue
        if shape.numeric:
            kw["type"] = Number(shape.base, option)  # type: ignore[arg-type]
            kw["metavar"] = option.metavar or shape.base.__name__.upper()  # type: ignore[union-attr]
        elif shape.base is Path:
            kw["type"], kw["metavar"] = Path, option.metavar or "PATH"
        elif option.choices is not None and shape.nargs is None:
            kw["choices"] = option.choices
            if option.metavar:
                kw["metavar"] = option.metavar
        else:
            kw["metavar"] = option.metavar or (
                "{" + ",".join(map(str, option.choices)) + "}" if option.choices else "TEXT")
        if shape.nargs is not None:
            kw["nargs"] = shape.nargs
            if isinstance(shape.nargs, int) and isinstance(kw.get("metavar"), str):
                kw["metavar"] = (kw["metavar"],) * shape.nargs
        parser.add_argument(flag, **kw)
        names.append(f.name)
    parser.set_defaults(**{_names_key(cls): tuple(names)})


def _help_text(doc: str) -> str:
    """A field's docstring as option help: no final full stop or rST literals, a lowercase first word (unless it
    is a name such as SyncNet or H.264), ``%`` escaped for argparse."""
    doc = doc.rstrip(".").replace("``", "")
    first = doc.split(" ", 1)[0].replace("-", "")
    if len(first) == 1 or (first[1:].isalpha() and first[1:].islower()):
        doc = doc[0].lower() + doc[1:]
    return doc.replace("%", "%%")


def config_from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """``cls`` built from the options `add_config_options` made and ``extra`` (fields without an option):
    this is where the command line's values are checked (`check_config`)."""
    kinds = shapes(cls)
    values: dict[str, Any] = {}
    for name in getattr(args, _names_key(cls)):
        value = getattr(args, name)
        if kinds[name].nargs is not None and isinstance(value, list):
            if kinds[name].base is str:  # `--features mel whisper` or `--features mel,whisper`
                value = [part.strip() for item in value for part in item.split(",") if part.strip()]
            value = tuple(value)
        values[name] = value
    return cls(**values, **extra)


def device_defaults_help(options: dict[str, str]) -> str:
    """A help epilog with the per-device defaults (`geneface.device.DEVICE_DEFAULTS`) of the options named in
    ``options`` (a `DeviceDefaults` field -> its option): ``defaults on cpu / mps / cuda: --size 128 / ...``."""
    kinds = list(DEVICE_DEFAULTS)
    values = ", ".join(f"{flag} {' / '.join(str(getattr(DEVICE_DEFAULTS[k], name)) for k in kinds)}"
                       for name, flag in options.items())
    return f"Defaults on {' / '.join(kinds)}: {values}."


def _names_key(cls: type) -> str:
    return f"_options_{cls.__module__}.{cls.__qualname__}"
