"""Train the landmark SyncNet, then the audio2motion generator, on one person, on processed clips (every
folder with a meta.json under the given paths) or on a corpus made by `geneface corpus prepare` (streamed,
speakers balanced, --val-speakers of them held out for the measures). `--init RUN` fine-tunes a pretrained run.
Rerunning the same command resumes an interrupted run. For several processes or GPUs, start it with
torchrun, e.g. `torchrun --nproc_per_node 2 -m geneface.cli train motion --data ... --out ...`; on several
nodes add `--nnodes N --rdzv-backend c10d --rdzv-endpoint HEAD:29500 --max-restarts 3` on each (--out on
shared storage, TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment): a run that lost a node
restarts from the last checkpoint."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..cliopts import add_config_options, config_from_args
from ..device import DEVICES
from ..engine import close_distributed
from .presets import PRESETS
from .train import MotionTrainConfig, train_motion


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="processed dataset folders, folders holding processed clips below them, or prepared "
                        "corpora (`geneface corpus prepare`)")
    p.add_argument("--out", type=Path, required=True, help="run folder to write (or resume)")
    p.add_argument("--init", type=Path, default=None, help="a trained motion run to start from (fine-tuning)")
    p.add_argument("--features", default=None,
                   help="audio feature kind to train on: mel, whisper or hubert (default: the --init run's, else "
                        "mel, or a kind every corpus has)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="geneface",
                   help="model sizes of a new run: geneface (the original's), small (faster on a CPU), tiny (tests)")
    add_config_options(p, MotionTrainConfig)
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to train")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard scalars to RUN/tensorboard (needs the tensorboard package)")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(MotionTrainConfig, args)
    ok = False
    try:
        metrics = train_motion(args.data, args.out, init=args.init, kind=args.features, preset_name=args.preset,
                               config=config, device=args.device, tensorboard=args.tensorboard)
        ok = True
    finally:
        close_distributed(ok)
    print_metrics(metrics)
    return 0


def print_metrics(metrics: dict) -> None:
    """The run's measures on one line (rank 0 only, under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print("metrics: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in metrics.items()))
