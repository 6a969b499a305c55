"""Adapt a pretrained audio2motion run (for instance one pretrained on a corpus prepared with `geneface corpus
prepare`) to one person: a residual postnet learns, adversarially against the person's real landmarks and with
the SyncNet keeping the lips in sync, to make the generator's motion look like the person's. Writes a complete
motion run to --out."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cliopts import add_config_options, config_from_args
from ..device import DEVICES
from ..engine import close_distributed
from .cli_train import print_metrics
from .train import PostnetTrainConfig, train_postnet


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--person", type=Path, required=True, help="the person's processed dataset folder")
    p.add_argument("--init", type=Path, required=True, help="the pretrained motion run to adapt")
    p.add_argument("--out", type=Path, required=True, help="run folder to write (or resume)")
    p.add_argument("--audio", type=Path, nargs="+", default=None,
                   help="processed clips or prepared corpora of other speakers whose audio also drives the "
                        "adversarial and SyncNet terms (default: the person's own audio only)")
    add_config_options(p, PostnetTrainConfig)
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to train")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard scalars to RUN/tensorboard (needs the tensorboard package)")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(PostnetTrainConfig, args)
    ok = False
    try:
        metrics = train_postnet(args.person, args.init, args.out, audio=args.audio, config=config,
                                device=args.device, tensorboard=args.tensorboard)
        ok = True
    finally:
        close_distributed(ok)
    print_metrics(metrics)
    return 0
