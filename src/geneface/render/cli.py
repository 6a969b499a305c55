"""Train a person's renderer on a processed dataset: the landmark-conditioned head NeRF first, then the
torso field, composited over the static background. Checkpoints go to the run folder; rerunning the same
command resumes. Validation frames are written to RUN/val/ as PNG (truth | render | error x4)."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from ..device import DEVICES, resolve_device


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .train import RenderTrainConfig

    d = RenderTrainConfig()
    p.add_argument("--data", required=True, help="processed person dataset (from `geneface process`)")
    p.add_argument("--out", required=True, help="run folder to write (or resume)")
    p.add_argument("--size", type=int, default=None,
                   help="training frame side in pixels (default: 128 on the CPU, 256 on MPS, 512 on CUDA, at most "
                        "the dataset's)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps of both phases (default: 3000 on the CPU, 8000 on MPS, 20000 on CUDA)")
    p.add_argument("--torso-fraction", type=float, default=d.torso_fraction, help="share of the steps for the torso")
    p.add_argument("--rays", type=int, default=None,
                   help=f"rays per frame and step ({d.frames_per_step} frames a step; default 512 on the CPU, 2048 "
                        f"on CUDA)")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate of the feature planes")
    p.add_argument("--val-every", type=int, default=d.val_every, help="steps between validations")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to train")


def run(args: argparse.Namespace) -> int:
    from .train import RenderTrainConfig, train_render

    device = resolve_device(args.device)
    config = replace(RenderTrainConfig(), size=args.size, steps=args.steps, torso_fraction=args.torso_fraction,
                     rays_per_frame=args.rays, lr=args.lr, val_every=args.val_every, seed=args.seed)
    start = time.perf_counter()
    last = train_render(args.data, args.out, config, device=device)
    print(f"renderer written to {args.out} in {time.perf_counter() - start:.0f} s; validation PSNR "
          f"{last.get('psnr', float('nan')):.2f} dB (head {last.get('psnr_head', float('nan')):.2f} dB)")
    return 0
