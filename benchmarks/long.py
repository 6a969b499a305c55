"""Benchmark long inputs: the peak memory of `geneface infer` on 1 and 10 minutes of speech (128 px, the bundled
demo person), and of `geneface process` on synthetic videos of growing length (256 px).

    python benchmarks/long.py [--infer-minutes 1 10] [--process-minutes 1 5 30] [--work bench_out/long]
                              [--out DIR] [--fresh] [--quick]

Each measurement runs in a fresh child process that reports its own peak resident set (``ru_maxrss``), so one
does not inherit another's memory. Frames are streamed to the encoder and the features are computed in
blocks, so infer's peak should hardly grow with the length; process keeps per-frame arrays (the face mesh, the
poses), so its peak grows linearly, by about the bytes those arrays take. The synthetic videos are cached in
WORK (keyed on every argument and the package source); the measured runs always run from scratch.
Prints a table and writes long.json (see benchmarks/common.py; the README's figures are its "summary").
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common

import numpy as np

CHILD = r"""
import json, resource, sys, time
kind, args = sys.argv[1], json.loads(sys.argv[2])
start = time.perf_counter()
if kind == "infer":
    from geneface import InferConfig, PersonModel
    from geneface.infer.cli_demo import bundled_person
    PersonModel.load(bundled_person(), "cpu").speak(args["audio"], args["out"], InferConfig(device="cpu", batch=4),
                                                    progress=False)
else:
    from geneface.process import ProcessConfig, process
    process(args["video"], args["out"], ProcessConfig(size=args["size"]))
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(kind: str, **args) -> dict:
    """Run one measurement in a fresh interpreter; its last stdout line is its result."""
    done = subprocess.run([sys.executable, "-c", CHILD, kind, json.dumps({k: str(v) if isinstance(v, Path) else v
                                                                          for k, v in args.items()})],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_speech(path: Path, minutes: float) -> None:
    from geneface.media import write_audio
    from geneface.synth import default_speech

    speech = default_speech()
    n = int(minutes * 60 * 16000)
    write_audio(path, np.resize(speech, n))


def make_video(folder: Path, minutes: float, size: int) -> None:
    from geneface.synth import SynthConfig, synthesize

    synthesize(folder / "clip.mp4", config=SynthConfig(size=size, seconds=minutes * 60, progress=True))


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--infer-minutes", type=float, nargs="+", default=[1.0, 10.0], help="speech lengths for infer")
    ap.add_argument("--process-minutes", type=float, nargs="+", default=[1.0, 5.0, 30.0],
                    help="video lengths for process")
    ap.add_argument("--size", type=int, default=256, help="side of the synthetic videos and datasets (px)")
    common.add_common_args(ap, "long")
    args = ap.parse_args()
    if args.quick:
        args.infer_minutes, args.process_minutes, args.size = [0.1, 0.3], [0.1, 0.2], 128
    machine = common.machine_info()
    cache = common.Cache(args)
    scratch = Path(args.work) / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)

    infer_rows = []
    for minutes in sorted(args.infer_minutes):
        speech = scratch / f"speech-{minutes:g}.flac"
        make_speech(speech, minutes)
        r = child("infer", audio=speech, out=scratch / f"infer-{minutes:g}.mp4")
        infer_rows.append({"minutes": minutes, "frames": int(round(minutes * 60 * 25)), **r,
                           "frames_per_second": minutes * 60 * 25 / r["seconds"]})
        print(f"infer {minutes:g} min: {r['peak_rss_mib']:.0f} MiB peak, {r['seconds']:.0f} s", flush=True)

    process_rows = []
    for minutes in sorted(args.process_minutes):
        folder, _ = cache.step(f"video-{minutes:g}min", lambda f, m=minutes: make_video(f, m, args.size))
        start = time.perf_counter()
        r = child("process", video=folder / "clip.mp4", out=scratch / f"data-{minutes:g}", size=args.size)
        process_rows.append({"minutes": minutes, "frames": int(round(minutes * 60 * 25)), **r,
                             "frames_per_second": minutes * 60 * 25 / r["seconds"],
                             "wall_seconds": time.perf_counter() - start})
        shutil.rmtree(scratch / f"data-{minutes:g}", ignore_errors=True)
        print(f"process {minutes:g} min: {r['peak_rss_mib']:.0f} MiB peak, {r['seconds']:.0f} s", flush=True)

    common.print_table(["infer (128 px)", "frames", "seconds", "frames/s", "peak MiB"],
                       [(f"{r['minutes']:g} min", r["frames"], r["seconds"], r["frames_per_second"], r["peak_rss_mib"])
                        for r in infer_rows])
    common.print_table([f"process ({args.size} px)", "frames", "seconds", "frames/s", "peak MiB"],
                       [(f"{r['minutes']:g} min", r["frames"], r["seconds"], r["frames_per_second"], r["peak_rss_mib"])
                        for r in process_rows])
    summary = {}
    for r in infer_rows:
        summary[f"infer_{r['minutes']:g}min_peak_rss_mib"] = r["peak_rss_mib"]
        summary[f"infer_{r['minutes']:g}min_fps"] = r["frames_per_second"]
    if len(infer_rows) > 1:
        summary["infer_peak_growth_mib"] = infer_rows[-1]["peak_rss_mib"] - infer_rows[0]["peak_rss_mib"]
    for r in process_rows:
        summary[f"process_{r['minutes']:g}min_peak_rss_mib"] = r["peak_rss_mib"]
        summary[f"process_{r['minutes']:g}min_fps"] = r["frames_per_second"]
    if len(process_rows) > 1:
        a, b = process_rows[0], process_rows[-1]
        summary["process_peak_mib_per_minute"] = (b["peak_rss_mib"] - a["peak_rss_mib"]) / (b["minutes"] - a["minutes"])
    common.print_summary(summary)
    common.write_result("long", args, machine, summary, {"infer": infer_rows, "process": process_rows}, cache)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
