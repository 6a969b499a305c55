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

from ..synth.corpus import make_corpus


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, metavar="OUT", help="folder to write the clips into")
    p.add_argument("--speakers", type=int, default=8, help="number of speakers (voices and faces)")
    p.add_argument("--clips", type=int, default=4, help="clips per speaker")
    p.add_argument("--seconds", type=float, default=4.0, help="length of a clip")
    p.add_argument("--size", type=int, default=256, help="side of the square frames in pixels (even)")
    p.add_argument("--first-speaker", type=int, default=0,
                   help="index of the first speaker; speakers with other indices have other voices and faces")
    p.add_argument("--seed", type=int, default=0, help="seed of the face variations, sentences and motion")
    p.add_argument("--workers", type=int, default=1, help="processes rendering clips")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    rows = make_corpus(args.out, speakers=args.speakers, clips_per_speaker=args.clips, seconds=args.seconds,
                       size=args.size, seed=args.seed, first_speaker=args.first_speaker, workers=args.workers)
    voices = sorted({r["voice"] for r in rows})
    print(f"{len(rows)} clips of {args.speakers} speakers in {args.out} ({time.perf_counter() - start:.0f} s); "
          f"voices: {', '.join(voices)}")
    print(f"prepare them for pretraining with: geneface corpus prepare {args.out} --out PREPARED")
    return 0
