"""Train a person's super-resolution network: it brings the frames of a trained renderer (--render, from
`geneface train render`) up to 2x or 4x their side. The dataset (--data) must be processed at that output size
(`geneface process --size`); the renderer draws its training frames once, and the network learns from patches
of them against the dataset's frames. Checkpoints go to the run folder; rerunning the same command resumes.
Validation frames are written to OUT/val/ as PNG (bicubic | super-resolved | truth)."""

from __future__ import annotations

import argparse
import time

from ..cliopts import add_config_options, config_from_args
from ..device import DEVICES, resolve_device
from .sr import SRConfig, SRTrainConfig, train_sr


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="processed person dataset at the output size (from `geneface "
                                                 "process`)")
    p.add_argument("--render", required=True, help="finished renderer run (from `geneface train render`)")
    p.add_argument("--out", required=True, help="run folder to write (or resume)")
    add_config_options(p, SRTrainConfig)
    add_config_options(p, SRConfig)
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to train")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(SRTrainConfig, args, model=config_from_args(SRConfig, args))
    device = resolve_device(args.device)
    start = time.perf_counter()
    last = train_sr(args.data, args.render, args.out, config, device=device)
    print(f"super-resolution network written to {args.out} in {time.perf_counter() - start:.0f} s; validation "
          f"PSNR {last.get('psnr', float('nan')):.2f} dB (bicubic {last.get('psnr_bicubic', float('nan')):.2f} dB), "
          f"mouth {last.get('psnr_mouth', float('nan')):.2f} dB (bicubic "
          f"{last.get('psnr_mouth_bicubic', float('nan')):.2f} dB)")
    return 0
