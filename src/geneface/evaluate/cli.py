"""Measure a person model on its validation clip (PERSON/data): PSNR, SSIM, LPIPS and FID (where their
weight packages are installed), landmark distance (LMD) of the mouth and face, the landmark-SyncNet lip-sync
score and the speed, both for frames rendered with the true landmarks (the renderer alone) and with
landmarks predicted from the clip's audio (the whole pipeline); on extra --audio files, the sync measures
and the speed. Writes report.json, report.md and PNG plots to --out (default PERSON/eval)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cliopts import add_config_options, config_from_args
from .report import EvalConfig, evaluate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--person", type=Path, required=True,
                   help="person model folder with its data/ (from `geneface train all`)")
    p.add_argument("--audio", type=Path, nargs="+", action="extend", default=[],
                   help="speech the model never saw, for the sync measures (any common audio format; repeatable)")
    p.add_argument("--out", type=Path, default=None, help="report folder; PERSON/eval when not given")
    add_config_options(p, EvalConfig, exclude=("progress",))


def run(args: argparse.Namespace) -> int:
    config = config_from_args(EvalConfig, args)
    out = args.out if args.out is not None else args.person / "eval"
    report = evaluate(args.person, args.audio, out, config)
    v = report["validation"]
    r, a = v["reconstruction"], v["audio_driven"]
    print(f"PSNR {r.get('psnr', float('nan')):.2f} dB (true landmarks), {a.get('psnr', float('nan')):.2f} dB "
          f"(from audio); {len(report['skipped'])} metrics skipped")
    print(f"wrote {out / 'report.json'}, {out / 'report.md'} and plots")
    return 0
