"""The `geneface` command: one subcommand per job, each defined in the module that does the work."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import typing

from . import OMP_POLICY_GIVEN, __version__
from .cliopts import HelpFormatter
from .errors import GeneFaceError
from .logs import setup_logging

# (name, module, one-line help). Each module defines `add_arguments(parser)` and `run(args) -> int | None`;
# its settings are options made from its config dataclass (`geneface.cliopts`), and `run` builds that config
# first, so that a bad value is refused before any file is read or written.
# A name with a space ("train render") is a subcommand of a group ("train").
COMMANDS = [
    ("synth", "geneface.synth.cli", "make a synthetic talking-head video from a face photo and speech"),
    ("process", "geneface.process.cli", "turn a video of one person into a training dataset"),
    ("train motion", "geneface.motion.cli_train", "train the landmark SyncNet and audio2motion generator"),
    ("train postnet", "geneface.motion.cli_postnet", "adapt a pretrained audio2motion run to one person"),
    ("train render", "geneface.render.cli", "train a person's head NeRF and torso field"),
    ("train sr", "geneface.render.cli_sr", "train a person's super-resolution network on a trained renderer"),
    ("train all", "geneface.infer.cli_train_all", "process a video and train every model of a person"),
    ("motion", "geneface.motion.cli_infer", "predict facial landmarks from speech"),
    ("infer", "geneface.infer.cli", "render a person saying the given speech"),
    ("demo", "geneface.infer.cli_demo", "render the bundled demo person"),
    ("evaluate", "geneface.evaluate.cli", "measure a person model's quality and lip sync"),
    ("corpus prepare", "geneface.corpus.cli", "prepare a folder of many speakers' clips for motion pretraining"),
    ("corpus synth", "geneface.corpus.cli_synth", "make a synthetic many-speaker corpus of talking-head clips"),
    ("serve", "geneface.serve.cli", "serve a local web app and API: speak, live, train, evaluate"),
]
GROUP_HELP = {"train": "train models", "corpus": "work with multi-speaker corpora"}


class Parser(argparse.ArgumentParser):
    """A parser whose usage errors are one line, like every other error: ``error: ...``, exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="geneface",
        description="Audio-driven 3D talking-face synthesis: learn a person from a video, then make "
                    "them say any speech.")
    parser.add_argument("--version", action="version", version=f"geneface {__version__}")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbosity", default=0,
                      help="print warnings and errors only")
    loud.add_argument("-v", "--verbose", action="store_const", const=1, dest="verbosity",
                      help="print debugging detail too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, module_name, help_text in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and module_name.startswith(e.name):
                continue  # a command not built yet
            raise
        target = sub
        if " " in name:
            group, name = name.split(" ", 1)
            if group not in groups:
                gp = sub.add_parser(group, help=GROUP_HELP[group], description=GROUP_HELP[group])
                groups[group] = gp.add_subparsers(dest=f"{group}_command", metavar="COMMAND", required=True)
            target = groups[group]
        p = target.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                              formatter_class=HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


SPIN_COUNT = "30M"
"""Busy-wait iterations of an idle OpenMP thread before it sleeps, in training (libgomp's ``GOMP_SPINCOUNT``)."""


def spin_for_training(argv: list[str]) -> None:
    """For `geneface train ...`: idle OpenMP threads busy-wait a while instead of sleeping at once.

    A training step is hundreds of small torch operations; with the package's passive default, each wakes the
    other threads anew, and steps on 2 CPU cores take up to twice as long (benchmarks/train_all.py). Training
    owns the CPU, so its threads spin for up to ``SPIN_COUNT`` iterations (libgomp's own default when there
    are more threads than cores stays lower). Nothing changes when the user set ``OMP_WAIT_POLICY``, or when
    torch is already imported (the policy is read once, as torch loads).
    """
    if argv[:1] == ["train"] and not OMP_POLICY_GIVEN and "torch" not in sys.modules:
        os.environ.pop("OMP_WAIT_POLICY", None)
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


def main(argv: list[str] | None = None) -> int:
    spin_for_training([a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")][:1])
    args = build_parser().parse_args(argv)
    setup_logging(args.verbosity)
    try:
        return int(args._run(args) or 0)
    except GeneFaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
