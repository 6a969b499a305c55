"""Turn a video of one person talking into a training dataset: 25 fps square face crops, 16 kHz audio,
the 478-point face mesh, head poses (the NeRF cameras), canonical and 68-point motion landmarks, head and
torso masks, the static background and audio features. Every video is resampled to 25 fps. A rerun resumes
after the last finished step. The folder's format is described in docs/dataset-format.md."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..cliopts import add_config_options, check_config, config_from_args, opt
from ..constants import FEATURE_RATE, FPS
from .pipeline import ProcessConfig, process


@dataclass
class CommandOptions:
    """Options of `geneface process` that are no setting of `ProcessConfig`."""

    fps: float = opt(float(FPS), min=FPS, max=FPS,
                     why=f"datasets are always {FPS} fps, since the audio features give two rows per frame at "
                         f"{FEATURE_RATE} Hz; every video is resampled to {FPS} fps, so leave --fps out")
    """Frame rate of the dataset: always 25 (the audio features give two rows per frame at 50 Hz); every video
    is resampled to it, other values are refused."""

    def __post_init__(self) -> None:
        check_config(self)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", type=Path, help="video of one person talking (mp4, mov, mkv, webm, ...)")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to create (or resume)")
    add_config_options(p, ProcessConfig)
    add_config_options(p, CommandOptions)


def run(args: argparse.Namespace) -> int:
    config_from_args(CommandOptions, args)
    config = config_from_args(ProcessConfig, args)
    process(args.video, args.out, config)
    print(f"dataset written to {args.out}")
    return 0
