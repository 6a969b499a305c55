"""Make a person model from one video: process it, train the audio2motion model (or adapt a pretrained
prior with the postnet), the head NeRF + torso at --render-size and, when --size is 2x or 4x that, a
super-resolution network that brings its frames up to --size, with sensible defaults for the device. Each stage
resumes when the command is run again; a finished stage is kept when its settings are the ones asked for,
else the command stops and names the settings that differ (--force trains it again)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cliopts import add_config_options, config_from_args, device_defaults_help
from .train import TrainConfig, train_person


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", type=Path, help="video of the person talking")
    p.add_argument("--out", type=Path, required=True, help="person model folder to create (or resume)")
    add_config_options(p, TrainConfig)
    p.epilog = device_defaults_help({"output_size": "--size", "render_size": "--render-size",
                                     "render_steps": "--render-steps",
                                     "motion_preset": "--motion-preset"})


def run(args: argparse.Namespace) -> int:
    train_person(args.video, args.out, config_from_args(TrainConfig, args))
    return 0
