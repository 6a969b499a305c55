"""Train a person's renderer on a processed dataset: the landmark-conditioned head NeRF first, then the
torso field, composited over the static background. Checkpoints go to the run folder; rerunning the same
command resumes. Validation frames are written to RUN/val/ as PNG (truth | render | error x4)."""

from __future__ import annotations

import argparse
import time

from ..cliopts import add_config_options, config_from_args, device_defaults_help
from ..device import DEVICES, resolve_device
from .train import RenderTrainConfig, train_render


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="processed person dataset (from `geneface process`)")
    p.add_argument("--out", required=True, help="run folder to write (or resume)")
    add_config_options(p, RenderTrainConfig)
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to train")
    p.epilog = device_defaults_help({"render_size": "--size", "render_steps": "--steps", "rays_per_frame": "--rays"})


def run(args: argparse.Namespace) -> int:
    config = config_from_args(RenderTrainConfig, args)
    device = resolve_device(args.device)
    start = time.perf_counter()
    last = train_render(args.data, args.out, config, device=device)
    print(f"renderer written to {args.out} in {time.perf_counter() - start:.0f} s; validation PSNR "
          f"{last.get('psnr', float('nan')):.2f} dB (head {last.get('psnr_head', float('nan')):.2f} dB)")
    return 0
