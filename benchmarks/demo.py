"""Benchmark the demo: `geneface demo` with the bundled person, then `demo --retrain` (the code that makes the
shipped model: the synthetic clip, then `train_person` at 512 px, rendering at 128 px) timed stage by stage, and `geneface evaluate`
of the retrained person on its held-out frames and on real human speech it never heard (a LibriVox reading
from Debian's pocketsphinx-testdata, where installed).

    python benchmarks/demo.py [--motion-steps 1500] [--render-steps 3000] [--threads 2]
                              [--work bench_out/demo] [--out DIR] [--fresh] [--quick]

Nothing is cached: every figure comes from this run. Stage times are wall-clock times between the stage's
files appearing (the dataset's meta.json, the motion and render runs' config.json). Prints a table and writes
demo.json (see benchmarks/common.py for the layout; the README's figures are the fields of "summary").
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import common
import torch

from geneface import EvalConfig, InferConfig, PersonModel, TrainConfig
from geneface.evaluate import evaluate
from geneface.infer.cli_demo import DEMO_MOTION_STEPS, DEMO_RENDER_SIZE, DEMO_RENDER_STEPS, DEMO_SIZE, \
    DEMO_SR_STEPS, bundled_person, bundled_speech, retrain

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav")


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--motion-steps", type=int, default=DEMO_MOTION_STEPS, help="audio2motion steps of the retrain")
    ap.add_argument("--render-steps", type=int, default=DEMO_RENDER_STEPS, help="renderer steps of the retrain")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    common.add_common_args(ap, "demo")
    args = ap.parse_args()
    if args.quick:
        args.motion_steps, args.render_steps = 20, 20
    torch.set_num_threads(args.threads)
    machine = common.machine_info()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    # 1. the demo as `make demo` runs it: load the bundled person, speak the bundled speech
    start = time.perf_counter()
    PersonModel.load(bundled_person(), "cpu").speak(bundled_speech(), work / "bundled.mp4",
                                                     InferConfig(device="cpu"), progress=False)
    demo_seconds = time.perf_counter() - start

    # 2. the retrain, stage by stage
    start = time.time()
    person = retrain(work / "retrain", TrainConfig(size=DEMO_SIZE, render_size=DEMO_RENDER_SIZE,
                                                   motion_steps=args.motion_steps, render_steps=args.render_steps,
                                                   sr_steps=DEMO_SR_STEPS if not args.quick else 20, device="cpu"))
    end = time.time()
    marks = {"clip": (work / "retrain" / "person.mp4").stat().st_mtime,
             "process": (person / "data" / "meta.json").stat().st_mtime,
             "motion": (person / "motion" / "config.json").stat().st_mtime,
             "render": (person / "render" / "config.json").stat().st_mtime,
             "sr": (person / "sr" / "config.json").stat().st_mtime}
    stages = {"synth_minutes": (marks["clip"] - start) / 60, "process_minutes": (marks["process"] - marks["clip"]) / 60,
              "motion_minutes": (marks["motion"] - marks["process"]) / 60,
              "render_minutes": (marks["render"] - marks["motion"]) / 60,
              "sr_minutes": (marks["sr"] - marks["render"]) / 60, "retrain_minutes": (end - start) / 60}

    # 3. evaluation of the retrained person
    audio = [LIBRIVOX] if LIBRIVOX.exists() else []
    start = time.perf_counter()
    report = evaluate(person, audio, work / "eval", EvalConfig(device="cpu", progress=False))
    eval_seconds = time.perf_counter() - start
    v = report["validation"]
    rec, aud, bg, mot = v["reconstruction"], v["audio_driven"], v["background"], v["motion"]
    summary = {
        "demo_seconds": demo_seconds,
        **stages,
        "eval_seconds": eval_seconds,
        "eval_frames": v["frames"]["count"],
        "psnr_reconstruction_db": rec.get("psnr"), "psnr_audio_driven_db": aud.get("psnr"),
        "psnr_background_db": bg.get("psnr"),
        "ssim_reconstruction": rec.get("ssim"), "ssim_audio_driven": aud.get("ssim"), "ssim_background": bg.get("ssim"),
        "lpips_reconstruction": rec.get("lpips"), "lpips_audio_driven": aud.get("lpips"),
        "lmd_mouth_px_reconstruction": rec.get("lmd_mouth_px"), "lmd_mouth_iod_reconstruction": rec.get("lmd_mouth_iod"),
        "lmd_mouth_px_audio_driven": aud.get("lmd_mouth_px"), "lmd_mouth_iod_audio_driven": aud.get("lmd_mouth_iod"),
        "mouth_opening_corr": mot.get("mouth_opening_corr"),
        "render_fps": v["speed"].get("render_fps"), "motion_realtime_factor": v["speed"].get("motion_realtime_factor"),
        "librivox_seconds": report["audio"][0]["seconds"] if audio else None,
        "librivox_mouth_loudness_corr": report["audio"][0].get("mouth_loudness_corr") if audio else None,
        "librivox_motion_realtime_factor": report["audio"][0].get("motion_realtime_factor") if audio else None,
    }
    common.print_summary(summary)
    common.write_result("demo", args, machine, summary, {
        "report": {"validation": {k: x for k, x in v.items() if k != "per_frame"},
                   **{k: report[k] for k in ("audio", "skipped", "notes") if k in report}},
        "librivox": str(LIBRIVOX) if audio else "not installed (apt-get install pocketsphinx-testdata)"})


if __name__ == "__main__":
    main()
