"""Benchmark `geneface process` on a synthetic clip: speed per step and accuracy against ground truth.

    python benchmarks/process.py [--seconds 60] [--size 512] [--work bench_out/process] [--out DIR] [--quick]

The synthetic clip (made by `geneface.synth` with exact ground truth) is cached in WORK, keyed on every
argument and the package source; `process` itself always runs from scratch and is timed. Measures: seconds
and frames/s of each step and end to end, head-pose RMS error against the generator's truth (degrees, after
removing each track's mean), landmark error (% of the inter-ocular distance) of the 478-point mesh and of its
68 iBUG points. Target (DESIGN.md): a 3-minute 512x512 clip in under 10 minutes on 2 CPU cores, i.e. at least
7.5 frames/s end to end.

Prints a table and writes process.json (see benchmarks/common.py for the layout; the README's figures are
the fields of "summary").
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import common
import numpy as np

from geneface import face
from geneface.constants import FPS
from geneface.dataset import PersonDataset
from geneface.fileio import read_npz
from geneface.process.pipeline import ProcessConfig, process
from geneface.synth import SynthConfig, synthesize

TARGET_FPS = 7.5
THREE_MINUTES_FRAMES = 3 * 60 * FPS


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the synthetic clip")
    ap.add_argument("--size", type=int, default=512, help="clip and dataset frame size")
    ap.add_argument("--seed", type=int, default=1, help="seed of the synthetic head motion")
    common.add_common_args(ap, "process")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.size = 4.0, 256
    machine = common.machine_info()
    cache = common.Cache(args)

    def make_clip(folder: Path) -> dict:
        start = time.perf_counter()
        synthesize(folder / "clip.mp4", config=SynthConfig(size=args.size, seconds=args.seconds, seed=args.seed))
        return {"synth_seconds": round(time.perf_counter() - start, 2)}

    print(f"== synthetic clip ({args.seconds:g} s, {args.size}x{args.size})", flush=True)
    clip_dir, _ = cache.step("clip", make_clip)
    clip = clip_dir / "clip.mp4"
    truth = read_npz(clip.with_suffix(".truth.npz"))

    print("== process (timed, from scratch)", flush=True)
    out = Path(args.work) / "dataset"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = process(clip, out, ProcessConfig(size=args.size))
    wall = time.perf_counter() - start

    ds = PersonDataset(out)
    n = min(ds.num_frames, len(truth["euler"]))
    est = ds.pose["euler"][:n]
    gt = truth["euler"][:n]
    err = (est - est.mean(0)) - (gt - gt.mean(0))
    pose_rms = np.sqrt((err ** 2).mean(0))
    x0, y0, side = ds.meta["crop"]
    gt_mesh = (truth["mesh"][:n, :, :2] - [x0, y0]) * (ds.size / side)
    iod = face.interocular(gt_mesh)
    lm_err = np.linalg.norm(ds.landmarks["mesh"][:n, :, :2] - gt_mesh, axis=-1).mean(-1) / iod * 100
    lm68_err = np.linalg.norm(ds.landmarks["mesh"][:n, face.LANDMARKS_68, :2] - gt_mesh[:, face.LANDMARKS_68],
                              axis=-1).mean(-1) / iod * 100

    frames = summary["frames"]
    fps = frames / wall
    steps = summary["step_seconds"]
    headline = {
        "frames": frames,
        "end_to_end_seconds": round(wall, 2),
        "end_to_end_fps": round(fps, 2),
        "estimated_minutes_3min_clip": round(THREE_MINUTES_FRAMES / fps / 60, 2),
        "meets_target_fps": fps >= TARGET_FPS,
        "pose_rms_error_yaw_deg": round(float(pose_rms[0]), 3),
        "pose_rms_error_pitch_deg": round(float(pose_rms[1]), 3),
        "pose_rms_error_roll_deg": round(float(pose_rms[2]), 3),
        "landmark_error_mesh478_pct_iod": round(float(lm_err.mean()), 3),
        "landmark_error_ibug68_pct_iod": round(float(lm68_err.mean()), 3),
        "face_found_rate": summary["face_found_rate"],
        "pose_jitter_deg": summary["pose_jitter_deg"],
    }
    details = {
        "targets": {"end_to_end_fps": TARGET_FPS},
        "steps": {k: {"seconds": round(v, 3), "fps": round(frames / max(v, 1e-9), 1)} for k, v in steps.items()},
    }

    common.print_table(["step", "seconds", "frames/s"],
                       [(k, v, frames / max(v, 1e-9)) for k, v in steps.items()]
                       + [("end to end", wall, fps)],
                       title=f"process: {args.seconds:g} s synthetic clip, {args.size}x{args.size}, {frames} frames, "
                             f"{machine['cpu_count']} CPUs (target >= {TARGET_FPS} frames/s end to end)")
    common.print_summary(headline)
    common.write_result("process", args, machine, headline, details, cache)


if __name__ == "__main__":
    main()
