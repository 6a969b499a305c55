"""Make a person model from one video: process it, train the audio2motion model (or adapt a pretrained
prior with the postnet) and the head NeRF + torso, with sensible defaults for the device. Each stage
resumes when the command is run again; a finished stage is kept when its settings are the ones asked for,
else the command stops and names the settings that differ (--force trains it again)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..device import DEVICES
from .train import TrainConfig, train_person


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", type=Path, help="video of the person talking")
    p.add_argument("--out", type=Path, required=True, help="person model folder to create (or resume)")
    p.add_argument("--size", type=int, default=None, help="frame size (default: 512 on CUDA, 256 on MPS, 128 on the CPU)")
    p.add_argument("--features", default="mel", help="audio feature kind: mel, whisper or hubert")
    p.add_argument("--feature-model", type=Path, default=None,
                   help="local model folder for --features hubert (a transformers HubertModel; recorded in the "
                        "person model for infer)")
    p.add_argument("--audio", type=Path, default=None, help="speech to use instead of the video's audio track")
    p.add_argument("--prior", type=Path, default=None,
                   help="a pretrained audio2motion run to adapt with the postnet instead of training from scratch")
    p.add_argument("--motion-preset", default=None, help="motion model sizes: geneface, small or tiny")
    p.add_argument("--motion-steps", type=int, default=None, help="audio2motion training steps (default per device)")
    p.add_argument("--render-steps", type=int, default=None, help="renderer training steps (default per device)")
    p.add_argument("--force", action="store_true", help="train again the finished stages whose settings differ")
    p.add_argument("--device", default="auto", choices=DEVICES, help="compute device")


def run(args: argparse.Namespace) -> int:
    config = TrainConfig(size=args.size, features=args.features, feature_model=args.feature_model, audio=args.audio,
                         prior=args.prior, motion_preset=args.motion_preset, motion_steps=args.motion_steps,
                         render_steps=args.render_steps, device=args.device, force=args.force)
    train_person(args.video, args.out, config)
    return 0
