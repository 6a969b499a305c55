"""Prepare a folder of many speakers' clips for motion pretraining. Every video under ROOT (.mp4, .mkv, .avi,
.webm, .mov; an audio file with the same name beside a video is used as its speech) is decoded, its face
tracked and its head pose removed exactly as `geneface process` does, and only what `geneface train motion`
needs is kept: 68-point landmark offsets, pitch and audio features, packed into a few files with a JSON-lines
manifest of every clip (status and reason, frames, where its arrays lie). The speaker is the first folder
level below ROOT (see --speaker-depth). Clips without a usable face or speech are skipped and listed, never
stopping the run; rerunning the same command resumes. Split the work over cores with --workers, over machines
with --shard I/N (under torchrun each rank takes its own shard, in a Slurm job array each task), or run it on a
Ray cluster with --engine ray (a local one unless --address names one)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from ..cliopts import MAX_WORKERS, add_config_options, check_config, config_from_args, opt
from ..corpusdata import Corpus
from ..errors import InputError
from .prepare import PrepareConfig, parse_shard, prepare_corpus
from .ray_engine import prepare_corpus_on_ray

ENGINES = ("local", "ray")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass
class RunOptions:
    """How one `geneface corpus prepare` run works (not recorded in corpus.json: a rerun may change them)."""

    workers: int = opt(default_factory=_cpus, min=1, max=MAX_WORKERS)
    """Worker processes on this machine (by default one per CPU core); with --engine ray and no --address, the
    CPUs of the Ray cluster started here."""
    shard: str | None = opt(None, metavar="I/N")
    """Prepare only shard I of N (clips split by a hash of their path); default: the torchrun RANK/WORLD_SIZE,
    else the task of a Slurm job array (SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT), else all clips."""
    retry_failed: bool = False
    """Prepare again the clips an earlier run recorded as failed (skipped ones stay skipped)."""
    engine: str = opt("local", choices=ENGINES)
    """Where the clips are prepared: local (--workers processes on this machine) or ray (Ray tasks on a cluster;
    needs geneface[ray])."""
    address: str | None = opt(None, metavar="auto|HOST:PORT")
    """With --engine ray: the Ray cluster to run on (auto: the one `ray start` made on this machine); default:
    start one on this machine for this run."""
    ray_tasks: int | None = opt(None, min=1, max=1_000_000)
    """With --engine ray: shards the clips are split into, each one task writing its own manifest and pack
    (default: the cluster's CPUs)."""

    def __post_init__(self) -> None:
        check_config(self)
        if self.engine != "ray" and (self.address is not None or self.ray_tasks is not None):
            raise InputError(f"{'--address' if self.address is not None else '--ray-tasks'} needs --engine ray")
        if self.engine == "ray" and self.shard is not None:
            raise InputError("--shard splits the clips over separate runs; with --engine ray the cluster's tasks "
                             "split them: leave --shard out")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path, metavar="ROOT", help="folder of clips, one subfolder per speaker")
    p.add_argument("--out", type=Path, required=True, help="corpus folder to write (or resume)")
    add_config_options(p, PrepareConfig)
    add_config_options(p, RunOptions)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(PrepareConfig, args)
    options = config_from_args(RunOptions, args)
    if options.engine == "ray":
        s = prepare_corpus_on_ray(args.root, args.out, config, address=options.address, tasks=options.ray_tasks,
                                  num_cpus=options.workers, retry_failed=options.retry_failed,
                                  progress=not args.quiet)
        where = f"ray ({s['tasks']} tasks): {s['clips']} clips"
    else:
        shard = parse_shard(options.shard)
        s = prepare_corpus(args.root, args.out, config, workers=options.workers, shard=shard,
                           retry_failed=options.retry_failed, progress=not args.quiet)
        where = f"shard {shard[0]}/{shard[1]}: {s['shard_clips']} of {s['clips']} clips"
    p = s["prepared"]
    n = sum(p.values())
    seconds = max(s["seconds"], 0.01)  # rounded to 0.01 s: a few unreadable clips can take "0.0"
    rate = f", {60 * n / seconds:.1f} clips/min, {s['frames'] / seconds:.1f} frames/s" if n else ""
    print(f"{where}; {s['done_before']} done before; prepared {n}: {p['ok']} ok, {p['skipped']} skipped, "
          f"{p['failed']} failed in {s['seconds']:.1f} s{rate}")
    corpus = Corpus(args.out)
    total = corpus.summary()
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(total["reasons"].items()))
    print(f"corpus {args.out}: {total['ok']} usable clips ({total['frames']} frames, {total['speakers']} speakers), "
          f"{total['skipped']} skipped, {total['failed']} failed" + (f" ({reasons})" if reasons else ""))
    corpus.close()
    return 0
