"""Make a synthetic talking-head video: a face photo animated in sync with speech.

The face's jaw, lips, eyelids and head move with the audio (phones from pocketsphinx where it is
installed, spectral features otherwise); the photo is warped piecewise-affinely and a mouth interior
is drawn where the lips part. Writes VIDEO.mp4 (H.264 + AAC) and VIDEO.truth.npz, the exact ground
truth: per-frame 478-point mesh, head pose, mouth opening, blinks, camera intrinsics.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from ..cliopts import add_config_options, config_from_args
from ..media import read_audio
from .degrade import DegradeConfig, degrade
from .generator import SynthConfig, synthesize
from .photo import load_face
from .speech import speak


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--face", metavar="PHOTO", type=Path, default=None,
                        help="a photo with one clear, roughly frontal face (default: the bundled astronaut photo)")
    speech = parser.add_mutually_exclusive_group()
    speech.add_argument("--audio", metavar="SPEECH", type=Path, default=None,
                        help="speech in any audio or video format (default: the bundled English clip)")
    speech.add_argument("--text", default=None,
                        help="speak this text with espeak-ng instead of --audio (needs espeak-ng installed)")
    parser.add_argument("--out", metavar="VIDEO.mp4", type=Path, required=True,
                        help="output video; the ground truth goes to VIDEO.truth.npz beside it")
    add_config_options(parser, SynthConfig, exclude=("progress",))
    real = parser.add_argument_group("real-footage artefacts (applied after rendering, the truth follows them; "
                                     "see geneface.synth.degrade)")
    add_config_options(real, DegradeConfig, exclude=("seed", "crf"))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(SynthConfig, args, progress=not args.quiet)
    artefacts = config_from_args(DegradeConfig, args, seed=config.seed, crf=config.crf)  # every check before files
    start = time.perf_counter()
    face = load_face(args.face) if args.face is not None else None
    if args.text is not None:
        audio = speak(args.text)
    elif args.audio is not None:
        audio = read_audio(args.audio)
    else:
        audio = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if artefacts == DegradeConfig(seed=config.seed, crf=config.crf):
            truth = synthesize(args.out, face=face, audio=audio, config=config)
        else:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:
                synthesize(Path(tmp) / "clean.mp4", face=face, audio=audio, config=config)
                truth = degrade(Path(tmp) / "clean.mp4", args.out, artefacts)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    with np.load(truth) as t:
        frames = len(t["mouth_open"])
        width, height = (int(t["width"]), int(t["height"])) if "width" in t else (config.size, config.size)
    print(f"wrote {args.out} ({frames} frames, {width}x{height}) and {truth} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
