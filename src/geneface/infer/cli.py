"""Render a trained person saying any speech: audio -> features -> landmarks (audio2motion, postnet,
stabilisation, blinks) -> head NeRF + torso over the background, with a head-pose track -> an H.264 mp4
with the speech muxed in. Any audio length and any common audio format."""

from __future__ import annotations

import argparse
from pathlib import Path

from .pipeline import InferConfig, infer


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = InferConfig()
    p.add_argument("--person", type=Path, required=True, help="person model folder (from `geneface train all`)")
    p.add_argument("--audio", type=Path, required=True, help="speech (wav, mp3, flac, m4a, or a video's audio)")
    p.add_argument("--out", type=Path, required=True, help="output video (.mp4)")
    p.add_argument("--temperature", type=float, default=d.temperature,
                   help="motion sampling temperature: 0 = the mean motion, higher = livelier")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed of the motion sample and blinks")
    p.add_argument("--pose", default=d.pose,
                   help="head pose: loop (the training clip's poses forward and back), still, or an .npz "
                        "file holding c2w [N, 4, 4]")
    p.add_argument("--blink", choices=["auto", "off"], default=d.blink, help="add natural blinks or not")
    p.add_argument("--mouth-scale", type=float, default=d.mouth_scale,
                   help="scale the mouth motion (above 1 exaggerates articulation)")
    p.add_argument("--smoothing", type=float, default=d.smoothing,
                   help="temporal smoothing of landmarks, Gaussian sigma in frames (0 = off)")
    p.add_argument("--side-by-side", action="store_true", help="draw the predicted landmarks beside the video")
    p.add_argument("--feature-model", default=None,
                   help="local model folder of the audio features (hubert); default: the one used in training")
    p.add_argument("--batch", type=int, default=d.batch, help="frames rendered at once")
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda", "mps"], help="compute device")


def run(args: argparse.Namespace) -> int:
    config = InferConfig(temperature=args.temperature, seed=args.seed, pose=args.pose, blink=args.blink,
                         mouth_scale=args.mouth_scale, smoothing=args.smoothing, side_by_side=args.side_by_side,
                         batch=args.batch, device=args.device, feature_model=args.feature_model)
    out = infer(args.person, args.audio, args.out, config)
    print(f"wrote {out}")
    return 0
