"""Every command's options: made from config dataclasses, each numeric one with a declared range that the config
enforces (for the Python API too), a value outside it refused in one line that names the option before any file
is touched, and a --help that documents every option."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geneface.cli import COMMANDS, build_parser, main
from geneface.cliopts import Number, Option
from geneface.errors import InputError

NAMES = [name for name, _, _ in COMMANDS]
VALUES = ("0", "-1", "nan", "inf", "1e12")
EXTRA = {
    "synth": ["--face", "{tmp}/missing.png"],  # no photo: never the bundled one, so nothing is synthesised
    "demo": ["--export", "{tmp}/export"],  # --export without --retrain: refused before any rendering
    "serve": ["--host", "192.0.2.1"],  # another machine's address without --token: refused before listening
}
"""Arguments that make a command with valid options stop at once (on a placeholder that does not exist)."""
AS_FILE = {("corpus synth", "out")}
"""Placeholders that are an existing file (refused where a folder is needed) rather than a missing path."""


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for word in name.split():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def _is_numeric(action: argparse.Action) -> bool:
    if isinstance(action.type, Number) or action.type in (int, float):
        return True
    default = action.default
    return (isinstance(default, (int, float)) and not isinstance(default, bool) and action.nargs != 0
            and not isinstance(action, (argparse._StoreConstAction, argparse.BooleanOptionalAction)))


@functools.cache
def _options(name: str) -> tuple[argparse.Action, ...]:
    """The options of command ``name``, from one parser for every test (they only read it; `main` builds its own)."""
    return tuple(a for a in _subparser(build_parser(), name)._actions if not isinstance(a, argparse._HelpAction))


def _numeric_cases() -> list[tuple[str, str, str]]:
    return [(name, action.option_strings[0], value) for name in NAMES for action in _options(name)
            if _is_numeric(action) for value in VALUES]


def _placeholders(name: str, tmp: Path, extra: bool = True) -> list[str]:
    """Required arguments of command ``name``, as paths that do not exist (or files where folders are needed),
    and (``extra``) its `EXTRA` arguments."""
    argv: list[str] = []
    for action in _options(name):
        if action.option_strings and not action.required:
            continue
        path = tmp / "missing" / action.dest
        if (name, action.dest) in AS_FILE:
            path = tmp / f"{action.dest}.file"
            path.write_text("not a folder")
        argv += ([action.option_strings[0]] if action.option_strings else []) + [str(path)]
    return argv + ([a.format(tmp=tmp) for a in EXTRA.get(name, [])] if extra else [])


def _outside(option: Option, base: type, text: str) -> bool:
    value = float(text)
    if not math.isfinite(value) or (base is int and not value.is_integer()):
        return True
    return ((option.min is not None and value < option.min) or (option.max is not None and value > option.max)
            or (option.above is not None and not value > option.above)
            or (option.below is not None and not value < option.below)
            or bool(option.multiple_of and value % option.multiple_of))


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own errors
        return e.code  # type: ignore[return-value]


@pytest.mark.parametrize("name, flag, value", _numeric_cases())
def test_numeric_option_values_are_one_line_errors(name, flag, value, tmp_path, capsys):
    action = next(a for a in _options(name) if flag in a.option_strings)
    argv = name.split() + _placeholders(name, tmp_path)
    before = sorted(tmp_path.rglob("*"))
    count = action.nargs if isinstance(action.nargs, int) else 1
    code = _run([*argv, flag, *[value] * count])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    if _outside(action.type.option, action.type.base, value):
        assert flag in lines[0], lines[0]
        assert sorted(tmp_path.rglob("*")) == before, "a refused value must not touch any file"


def test_every_numeric_option_declares_a_range():
    missing = [f"{name} {a.option_strings[0]}" for name in NAMES for a in _options(name)
               if _is_numeric(a) and not (isinstance(a.type, Number) and a.type.option.bounded)]
    assert not missing, f"numeric options without a declared range (use geneface.cliopts.opt): {missing}"
    assert len(_numeric_cases()) > 100


@pytest.mark.parametrize("name", NAMES)
def test_help_documents_every_option(name):
    parser = _subparser(build_parser(), name)
    text = parser.format_help()
    for action in _options(name):
        assert action.help and action.help.strip() and action.help is not argparse.SUPPRESS, action
        shown = action.option_strings or [action.metavar or action.dest]
        assert all(s in text for s in shown), (name, shown)
        if isinstance(action.type, Number):
            assert f"range {action.type.option.describe()}" in " ".join(text.split())


@pytest.mark.parametrize("name", NAMES)
def test_cli_defaults_are_the_config_defaults(name, tmp_path):
    """Parsing only the required arguments builds the config dataclass's own defaults: one set of defaults."""
    args = _subparser(build_parser(), name).parse_args(_placeholders(name, tmp_path, extra=False))
    from geneface.cliopts import config_from_args

    keys = [k for k in vars(args) if k.startswith("_options_")]
    assert keys, f"{name} makes no options from a config dataclass"
    for key in keys:
        module, qualname = key[len("_options_"):].rsplit(".", 1)
        cls = getattr(importlib.import_module(module), qualname)
        assert config_from_args(cls, args) == cls()


def test_api_and_cli_share_the_check():
    from geneface import InferConfig
    from geneface.motion.train import MotionTrainConfig
    from geneface.render.train import RenderTrainConfig
    from geneface.synth import SynthConfig
    from geneface.synth.corpus import CorpusConfig

    with pytest.raises(InputError, match=r"^--batch must be at least 1, got 0$"):
        InferConfig(batch=0)
    with pytest.raises(InputError, match=r"^--rays must be at least 1, got -5$"):  # a renamed option
        RenderTrainConfig(rays_per_frame=-5)
    with pytest.raises(InputError, match=r"^--temperature must be a finite number, got nan$"):
        InferConfig(temperature=float("nan"))
    with pytest.raises(InputError, match=r"^--batch must be a whole number, got 2.5$"):
        InferConfig(batch=2.5)
    with pytest.raises(InputError, match="--window must be a multiple of 4, got 18"):
        MotionTrainConfig(window=18)
    with pytest.raises(InputError, match="--head-amplitude must be at most 90, got 100"):
        SynthConfig(head_amplitude=(1.0, 100.0, 1.0))
    with pytest.raises(InputError, match="--device must be one of auto, cpu, cuda, mps, got 'gpu'"):
        InferConfig(device="gpu")
    with pytest.raises(InputError, match="--clips must be at least 1"):
        CorpusConfig(clips_per_speaker=0)
    assert dataclasses.replace(InferConfig(), batch=8).batch == 8


def test_argparse_errors_are_one_line(capsys):
    assert _run(["infer", "--batch", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the following arguments are required: --person, --audio, --out")
    assert len(err.strip().splitlines()) == 1
    assert _run(["infer", "--person", "p", "--audio", "a", "--out", "o.mp4", "--batch", "many"]) == 2
    assert "error: argument --batch: expected a number, got 'many'" in capsys.readouterr().err


@pytest.mark.parametrize("command, given, expected", [
    ("train", None, "None 30M"),  # training spins: the policy geneface sets is taken back
    ("infer", None, "PASSIVE None"),  # everything else waits passively
    ("train", "ACTIVE", "ACTIVE None"),  # the user's choice stays
])
def test_training_lets_idle_openmp_threads_spin(command, given, expected):
    """`geneface train` unsets the passive OpenMP wait policy before torch loads, unless the user chose one."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = ("import os, sys, geneface.cli as cli; cli.spin_for_training(sys.argv[1:]); "
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, command], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [*expected.split(), "False"]
