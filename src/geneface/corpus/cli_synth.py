"""Make a synthetic many-speaker corpus to try corpus preparation and pretraining without real data: the
project's talking-head generator animates the bundled face photo, varied per speaker (mirrored, recoloured,
rescaled, slightly rotated and sheared, its own jaw range and head motion), saying different English sentences
with a different espeak-ng voice per speaker (accent, variant, speed, pitch). Writes OUT/speakerK/clipJ.mp4
with the generator's ground truth beside each clip (clipJ.truth.npz) and OUT/speakers.json. Finished clips are
kept, so rerunning the same command resumes. Use --first-speaker to make voices a corpus does not have."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..cliopts import add_config_options, config_from_args
from ..synth.corpus import CorpusConfig, make_corpus


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, metavar="OUT", help="folder to write the clips into")
    add_config_options(p, CorpusConfig, exclude=("sentences",))


def run(args: argparse.Namespace) -> int:
    config = config_from_args(CorpusConfig, args)
    start = time.perf_counter()
    rows = make_corpus(args.out, config)
    voices = sorted({r["voice"] for r in rows})
    print(f"{len(rows)} clips of {config.speakers} speakers in {args.out} ({time.perf_counter() - start:.0f} s); "
          f"voices: {', '.join(voices)}")
    print(f"prepare them for pretraining with: geneface corpus prepare {args.out} --out PREPARED")
    return 0
