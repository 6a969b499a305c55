"""Benchmark `geneface process` on a synthetic clip: speed per step and accuracy against ground truth.

    python benchmarks/process.py [--seconds 60] [--size 512] [--work bench_out/process]

Prints a table and writes benchmarks/results/process.json. Target (DESIGN.md): a 3-minute 512x512 clip in
under 10 minutes on 2 CPU cores, i.e. at least 7.5 frames/s end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from geneface import face
from geneface.dataset import PersonDataset
from geneface.fileio import read_npz
from geneface.process.pipeline import ProcessConfig, process
from geneface.synth import SynthConfig, synthesize

TARGET_FPS = 7.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the synthetic clip")
    ap.add_argument("--size", type=int, default=512, help="clip and dataset frame size")
    ap.add_argument("--work", type=Path, default=Path("bench_out/process"), help="scratch folder")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "process.json")
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    clip = args.work / f"synthetic_{args.size}_{int(args.seconds)}s.mp4"
    truth_path = clip.with_suffix(".truth.npz")
    if not truth_path.exists():
        start = time.perf_counter()
        synthesize(clip, config=SynthConfig(size=args.size, seconds=args.seconds, seed=1))
        print(f"synthesised {clip} in {time.perf_counter() - start:.1f} s")
    truth = read_npz(truth_path)

    out = args.work / "dataset"
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
    result = {
        "clip": {"seconds": args.seconds, "size": args.size, "frames": frames},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "end_to_end_seconds": round(wall, 2),
        "end_to_end_fps": round(frames / wall, 2),
        "target_fps": TARGET_FPS,
        "meets_target": frames / wall >= TARGET_FPS,
        "step_seconds": summary["step_seconds"],
        "step_fps": {k: round(frames / max(v, 1e-9), 1) for k, v in summary["step_seconds"].items()},
        "pose_rms_error_deg": dict(zip(["yaw", "pitch", "roll"], np.round(pose_rms, 3).tolist())),
        "landmark_error_pct_iod": {"mesh478": round(float(lm_err.mean()), 3), "ibug68": round(float(lm68_err.mean()), 3)},
        "face_found_rate": summary["face_found_rate"],
        "pose_jitter_deg": summary["pose_jitter_deg"],
    }
    print(f"\nprocess benchmark: {args.seconds:.0f} s synthetic clip, {args.size}x{args.size}, {frames} frames, "
          f"{os.cpu_count()} CPUs")
    print(f"{'step':<12}{'seconds':>10}{'frames/s':>10}")
    for k, v in summary["step_seconds"].items():
        print(f"{k:<12}{v:>10.2f}{frames / max(v, 1e-9):>10.1f}")
    print(f"{'end to end':<12}{wall:>10.2f}{frames / wall:>10.1f}   (target >= {TARGET_FPS})")
    print(f"pose RMS error (yaw, pitch, roll): {', '.join(f'{v:.2f}' for v in pose_rms)} deg")
    print(f"landmark error: {lm_err.mean():.2f}% IOD (478 points), {lm68_err.mean():.2f}% IOD (68 points)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
