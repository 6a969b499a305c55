"""Prepare a folder of many speakers' clips for motion pretraining. Every video under ROOT (.mp4, .mkv, .avi,
.webm, .mov; an audio file with the same name beside a video is used as its speech) is decoded, its face
tracked and its head pose removed exactly as `geneface process` does, and only what `geneface train motion`
needs is kept: 68-point landmark offsets, pitch and audio features, packed into a few files with a JSON-lines
manifest of every clip (status and reason, frames, where its arrays lie). The speaker is the first folder
level below ROOT (see --speaker-depth). Clips without a usable face or speech are skipped and listed, never
stopping the run; rerunning the same command resumes. Split the work over machines with --shard I/N (under
torchrun each rank takes its own shard), over cores with --workers."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..corpusdata import Corpus
from ..motion.cliutil import field_docs
from .prepare import PrepareConfig, parse_shard, prepare_corpus


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    docs = {k: v.rstrip(".") for k, v in field_docs(PrepareConfig).items()}
    d = PrepareConfig()
    p.add_argument("root", type=Path, metavar="ROOT", help="folder of clips, one subfolder per speaker")
    p.add_argument("--out", type=Path, required=True, help="corpus folder to write (or resume)")
    p.add_argument("--workers", type=int, default=_cpus(), help="worker processes on this machine")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="prepare only shard I of N (clips split by a hash of their path); default: the torchrun "
                        "RANK/WORLD_SIZE, else all clips")
    p.add_argument("--features", default="mel",
                   help="audio feature kinds to compute, comma-separated (mel, whisper, hubert)")
    p.add_argument("--feature-model", type=Path, default=None, help=docs["feature_model"])
    for name in ("speaker_depth", "track_size", "max_missing", "min_seconds", "max_seconds", "min_loudness_range"):
        default = getattr(d, name)
        p.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default, help=docs[name])
    p.add_argument("--retry-failed", action="store_true",
                   help="prepare again the clips an earlier run recorded as failed (skipped ones stay skipped)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    config = PrepareConfig(features=tuple(k.strip() for k in args.features.split(",") if k.strip()),
                           feature_model=args.feature_model, speaker_depth=args.speaker_depth,
                           track_size=args.track_size, max_missing=args.max_missing, min_seconds=args.min_seconds,
                           max_seconds=args.max_seconds, min_loudness_range=args.min_loudness_range)
    shard = parse_shard(args.shard)
    s = prepare_corpus(args.root, args.out, config, workers=args.workers, shard=shard,
                       retry_failed=args.retry_failed, progress=not args.quiet)
    p = s["prepared"]
    n = sum(p.values())
    rate = f", {60 * n / s['seconds']:.1f} clips/min, {s['frames'] / s['seconds']:.1f} frames/s" if n else ""
    print(f"shard {shard[0]}/{shard[1]}: {s['shard_clips']} of {s['clips']} clips; {s['done_before']} done before; "
          f"prepared {n}: {p['ok']} ok, {p['skipped']} skipped, {p['failed']} failed in {s['seconds']:.1f} s{rate}")
    corpus = Corpus(args.out)
    total = corpus.summary()
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(total["reasons"].items()))
    print(f"corpus {args.out}: {total['ok']} usable clips ({total['frames']} frames, {total['speakers']} speakers), "
          f"{total['skipped']} skipped, {total['failed']} failed" + (f" ({reasons})" if reasons else ""))
    corpus.close()
    return 0
