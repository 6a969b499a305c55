"""Turn a video of one person talking into a training dataset: 25 fps square face crops, 16 kHz audio,
the 478-point face mesh, head poses (the NeRF cameras), canonical and 68-point motion landmarks, head and
torso masks, the static background and audio features. Every video is resampled to 25 fps. A rerun resumes
after the last finished step. The folder's format is described in docs/dataset-format.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..constants import FEATURE_RATE, FPS
from ..errors import InputError
from .pipeline import ProcessConfig, process


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ProcessConfig()
    p.add_argument("video", type=Path, help="video of one person talking (mp4, mov, mkv, webm, ...)")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to create (or resume)")
    p.add_argument("--size", type=int, default=d.size, help="side of the square output frames in pixels")
    p.add_argument("--fps", type=float, default=FPS,
                   help=f"frame rate of the dataset: always {FPS} (the audio features give two rows per frame at "
                        f"{FEATURE_RATE} Hz), every video is resampled to it; other values are refused")
    p.add_argument("--audio", type=Path, default=None,
                   help="speech to use instead of the video's own audio track (wav, mp3, flac, m4a, ...)")
    p.add_argument("--features", default=",".join(d.features),
                   help="audio feature kinds, comma separated: mel, whisper, hubert")
    p.add_argument("--feature-model", type=Path, default=None,
                   help="model folder for whisper or hubert features")
    p.add_argument("--pose-smoothing", type=float, default=d.pose_smoothing,
                   help="temporal smoothing of the head pose (Gaussian sigma in frames, 0 = off)")


def run(args: argparse.Namespace) -> int:
    if args.fps != FPS:
        raise InputError(f"--fps {args.fps:g}: datasets are always {FPS} fps, since the audio features give two "
                         f"rows per frame at {FEATURE_RATE} Hz; every video is resampled to {FPS} fps, so leave "
                         f"--fps out")
    config = ProcessConfig(size=args.size, audio=args.audio,
                           features=tuple(k.strip() for k in args.features.split(",") if k.strip()),
                           feature_model=args.feature_model, pose_smoothing=args.pose_smoothing)
    process(args.video, args.out, config)
    print(f"dataset written to {args.out}")
    return 0
