"""Render a trained person saying any speech: audio -> features -> landmarks (audio2motion, postnet,
stabilisation, blinks) -> head NeRF + torso over the background, with a head-pose track -> an H.264 mp4
with the speech muxed in. Any audio length and any common audio format."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cliopts import add_config_options, config_from_args
from .pipeline import InferConfig, infer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--person", type=Path, required=True, help="person model folder (from `geneface train all`)")
    p.add_argument("--audio", type=Path, required=True, help="speech (wav, mp3, flac, m4a, or a video's audio)")
    p.add_argument("--out", type=Path, required=True, help="output video (.mp4)")
    add_config_options(p, InferConfig)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(InferConfig, args)
    out = infer(args.person, args.audio, args.out, config)
    print(f"wrote {out}")
    return 0
