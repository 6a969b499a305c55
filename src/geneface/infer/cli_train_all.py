"""Make a person model from one video: process it, train the audio2motion model (or adapt a pretrained
prior with the postnet) and the head NeRF + torso, with sensible defaults for the device. Each stage
resumes when the command is run again."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..dataset import PersonDataset
from .person import Person


def _finished(run: Path) -> bool:
    """A motion or render run that has completed: its config is there and its training state is gone."""
    from ..motion.runio import STATE_DIR as MOTION_STATE
    from ..render.train import STATE_DIR as RENDER_STATE

    return (run / "config.json").exists() and not any((run / d).exists() for d in (MOTION_STATE, RENDER_STATE))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", type=Path, help="video of the person talking")
    p.add_argument("--out", type=Path, required=True, help="person model folder to create (or resume)")
    p.add_argument("--size", type=int, default=None, help="frame size (default: 512 on a GPU, 128 on the CPU)")
    p.add_argument("--features", default="mel", help="audio feature kind: mel, whisper or hubert")
    p.add_argument("--feature-model", type=Path, default=None,
                   help="local model folder for --features hubert (a transformers HubertModel; recorded in the "
                        "person model for infer)")
    p.add_argument("--audio", type=Path, default=None, help="speech to use instead of the video's audio track")
    p.add_argument("--prior", type=Path, default=None,
                   help="a pretrained audio2motion run to adapt with the postnet instead of training from scratch")
    p.add_argument("--motion-steps", type=int, default=None, help="audio2motion training steps (default per device)")
    p.add_argument("--render-steps", type=int, default=None, help="renderer training steps (default per device)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="compute device")


def run(args: argparse.Namespace) -> int:
    from ..cli import main
    from ..device import resolve_device

    device = resolve_device(args.device)
    size = args.size or (512 if device.type == "cuda" else 128)
    out: Path = args.out
    data = out / "data"
    steps = [["process", str(args.video), "--out", str(data), "--size", str(size), "--features", args.features]
             + (["--audio", str(args.audio)] if args.audio else [])
             + (["--feature-model", str(args.feature_model)] if args.feature_model else [])]
    if args.prior is None:
        preset = "geneface" if device.type == "cuda" else "small"
        steps.append(["train", "motion", "--data", str(data), "--out", str(out / "motion"), "--device", args.device,
                      "--preset", preset]
                     + (["--steps", str(args.motion_steps), "--syncnet-steps", str(args.motion_steps)]
                        if args.motion_steps else []))
    else:
        steps.append(["train", "postnet", "--person", str(data), "--init", str(args.prior),
                      "--out", str(out / "motion"), "--device", args.device]
                     + (["--steps", str(args.motion_steps)] if args.motion_steps else []))
    steps.append(["train", "render", "--data", str(data), "--out", str(out / "render"), "--size", str(size),
                  "--device", args.device] + (["--steps", str(args.render_steps)] if args.render_steps else []))
    for argv in steps:
        run_dir = Path(argv[argv.index("--out") + 1])
        if argv[0] == "train" and _finished(run_dir):
            print(f"== {run_dir} is already trained; skipping `geneface {' '.join(argv[:2])}`")
            continue
        print(f"== geneface {' '.join(argv)}")
        code = main(argv)
        if code:
            raise SystemExit(code)
    Person.write(out, PersonDataset(data), feature_kind=args.features, feature_model=args.feature_model)
    Person(out)  # check it loads
    print(f"person model written to {out}; render speech with: geneface infer --person {out} --audio SPEECH --out OUT.mp4")
    return 0


