"""Benchmark the renderer: training on the synthetic benchmark person at 128x128 on the CPU (validation PSNR
against time) and rendering speed at 128x128 and 512x512 (CPU, and CUDA where present).

    python benchmarks/render.py [--steps N] [--size 128] [--seconds 8] [--threads 2] [--val-every 250]
                                [--work bench_out/render] [--out DIR] [--quick]

The synthetic person (clip and processed dataset) is cached in WORK, keyed on every argument and the package
source; the renderer is always trained from scratch (`geneface.render.train.train_render`, the CPU defaults
unless --steps) and timed. Validation PSNR is that of the FULL frame (head, torso and background rendered)
against the true frame; "time to 30 dB" is the first validation at or above 30 dB of it. The head-phase
metric `psnr_head` (the rendered head pasted over the TRUE torso and background, which is what the head phase
optimises) is kept in the history and drawn as a second, dashed curve of render_psnr.png. Render speed is
frames/s over at least --fps-seconds of rendering after one warm-up batch; memory is the peak resident set of
this process (the dataset is made in a child process) and, on CUDA, the peak allocated memory.
Targets (DESIGN.md): a validation PSNR of 30 dB or more within 15 minutes of training on 2 CPU cores; at least
5 frames/s at 128x128 on 2 CPU cores; at least 25 frames/s at 512x512 on one GPU.

Prints a table and writes render.json and render_psnr.png (see benchmarks/common.py for the layout; the
README's figures are the fields of "summary").
"""

from __future__ import annotations

import multiprocessing
import resource
import shutil
import time
from dataclasses import replace
from pathlib import Path

import common
import numpy as np
import torch

from geneface.fileio import read_json
from geneface.process.pipeline import ProcessConfig, process
from geneface.render import PersonRenderer, RenderTrainConfig
from geneface.render.data import RenderData
from geneface.render.train import train_render
from geneface.render.volume import psnr
from geneface.synth import SynthConfig, synthesize

TARGET_PSNR = 30.0
TARGET_TRAIN_SECONDS = 15 * 60
TARGET_CPU_FPS_128 = 5.0
TARGET_GPU_FPS_512 = 25.0


def prepare(folder: str, size: int, seconds: float) -> None:
    clip = Path(folder) / "person.mp4"
    synthesize(clip, config=SynthConfig(size=size, seconds=seconds, progress=False))
    process(clip, Path(folder) / "dataset", ProcessConfig(size=size))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fps(renderer: PersonRenderer, c2w: torch.Tensor, windows: torch.Tensor, size: int, batch: int,
        seconds: float) -> float:
    """Frames per second rendering batches of ``batch`` frames at ``size`` (after one warm-up batch)."""
    dev = renderer.device
    frames = 0
    i = 0

    def one() -> None:
        nonlocal i
        idx = torch.arange(i, i + batch) % len(c2w)
        renderer.render(c2w[idx], windows[idx], size=size).rgb.cpu()
        i += batch

    one()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or frames < 2 * batch:
        one()
        frames += batch
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return frames / (time.perf_counter() - start)


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the CPU default)")
    ap.add_argument("--size", type=int, default=128, help="clip, dataset and training frame size")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of the synthetic clip")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--val-every", type=int, default=250, help="steps between validations")
    ap.add_argument("--fps-seconds", type=float, default=10.0, help="seconds of rendering per speed measure")
    common.add_common_args(ap, "render")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.seconds, args.val_every, args.fps_seconds = 40, 2.0, 10, 1.0
    torch.set_num_threads(args.threads)
    machine = common.machine_info()
    cache = common.Cache(args)

    # 1. the synthetic benchmark person (in a child process, so that the peak memory below is the renderer's)
    def make_person(folder: Path) -> dict:
        start = time.perf_counter()
        child = multiprocessing.get_context("spawn").Process(target=prepare,
                                                             args=(str(folder), args.size, args.seconds))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"making the synthetic person failed (exit code {child.exitcode})")
        return {"seconds": round(time.perf_counter() - start, 1)}

    print(f"== synthetic person ({args.seconds:g} s, {args.size} px)", flush=True)
    person, _ = cache.step("person", make_person)
    data = person / "dataset"

    # 2. training on the CPU, from scratch
    print("== training (timed, from scratch)", flush=True)
    run = Path(args.work) / "run"
    shutil.rmtree(run, ignore_errors=True)
    config = replace(RenderTrainConfig(), size=args.size, steps=args.steps, val_every=args.val_every)
    start = time.perf_counter()
    train_render(data, run, config, device="cpu", progress=True)
    train_wall = time.perf_counter() - start
    train_rss = peak_rss_mib()
    history = read_json(run / "history.json")
    train_cfg = read_json(run / "config.json").get("train", {})
    reached = next((h for h in history if h["psnr"] >= TARGET_PSNR), None)
    head_end = max((h["wall_seconds"] for h in history if h.get("phase") == "head"), default=None)

    # 3. rendering speed
    print("== render speed", flush=True)
    d = RenderData(data, args.size)
    c2w, windows = d.c2w[d.val_idx], d.windows(d.val_idx)
    gt = d.frames[d.val_idx].float() / 255
    background_psnr = psnr(((gt - d.background.float()[None] / 255) ** 2).mean())
    speed = {}
    cpu = PersonRenderer.load(run, device="cpu")
    speed["cpu_128_batch1"] = fps(cpu, c2w, windows, 128, 1, args.fps_seconds)
    speed["cpu_128_batch4"] = fps(cpu, c2w, windows, 128, 4, args.fps_seconds)
    speed["cpu_512_batch1"] = fps(cpu, c2w, windows, 512, 1, args.fps_seconds / 2)
    gpu_mem = None
    if torch.cuda.is_available():
        gpu = PersonRenderer.load(run, device="cuda")
        torch.cuda.reset_peak_memory_stats()
        speed["cuda_512_batch1"] = fps(gpu, c2w.cuda(), windows.cuda(), 512, 1, args.fps_seconds)
        speed["cuda_512_batch4"] = fps(gpu, c2w.cuda(), windows.cuda(), 512, 4, args.fps_seconds)
        gpu_mem = torch.cuda.max_memory_allocated() / 2**20
    render_rss = peak_rss_mib()

    last = history[-1]
    summary = {
        "train_steps": train_cfg.get("steps", args.steps),
        "train_wall_seconds": round(train_wall, 1),
        "train_wall_minutes": round(train_wall / 60, 2),
        "final_val_psnr_db": last["psnr"],
        "time_to_30db_train_seconds": reached["train_seconds"] if reached else None,
        "time_to_30db_wall_seconds": reached["wall_seconds"] if reached else None,
        "background_only_val_psnr_db": round(background_psnr, 2),
        **{f"fps_{k}": round(v, 2) for k, v in speed.items()},
        "peak_rss_training_mib": round(train_rss, 1),
        "peak_rss_rendering_mib": round(render_rss, 1),
        "cuda_peak_allocated_rendering_mib": None if gpu_mem is None else round(gpu_mem, 1),
    }
    details = {
        "targets": {"psnr_db": TARGET_PSNR, "train_seconds": TARGET_TRAIN_SECONDS, "cpu_fps_128": TARGET_CPU_FPS_128,
                    "gpu_fps_512": TARGET_GPU_FPS_512},
        "dataset": {"size": args.size, "seconds": args.seconds, "frames": d.num_frames,
                    "train_frames": len(d.train_idx), "val_frames": len(d.val_idx)},
        "train": {"config": train_cfg, "final_val_psnr_head_db": last.get("psnr_head"),
                  "head_phase_end_wall_seconds": head_end, "first_val_at_or_above_target": reached,
                  "history_fields": {"psnr": "full frame against the true frame (dB)",
                                     "psnr_head": "rendered head over the TRUE torso and background (dB)"},
                  "history": history},
    }
    results = common.results_dir(args)
    plot(history, results / "render_psnr.png", args.size)

    common.print_table(["measure", "value", "target"], [
        ("final validation PSNR, full frame (dB)", last["psnr"], TARGET_PSNR),
        ("background alone, validation PSNR (dB)", background_psnr, None),
        ("time to >= 30 dB, training steps only (s)", reached["train_seconds"] if reached else "not reached",
         TARGET_TRAIN_SECONDS),
        ("time to >= 30 dB, wall with validation (s)", reached["wall_seconds"] if reached else "not reached",
         TARGET_TRAIN_SECONDS),
        ("training wall time, all steps (s)", train_wall, None),
        *((f"render frames/s {k}", v, {"cpu_128": TARGET_CPU_FPS_128, "cuda_512": TARGET_GPU_FPS_512}.get(
            k.rsplit("_", 1)[0])) for k, v in speed.items()),
        ("peak RSS after training (MiB)", train_rss, None),
        ("peak RSS after rendering (MiB)", render_rss, None),
    ], title=f"renderer: {summary['train_steps']} steps at {args.size} px on the CPU ({args.threads} threads)")
    common.print_summary(summary)
    common.write_result("render", args, machine, summary, details, cache)
    print(f"wrote {results / 'render_psnr.png'}")


def plot(history: list[dict], path: Path, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    minutes = np.array([h["wall_seconds"] for h in history]) / 60
    ax.plot(minutes, [h["psnr"] for h in history], "o-", color="C0", label="full frame (the validation PSNR)")
    head = [(m, h["psnr_head"]) for m, h in zip(minutes, history) if h.get("phase") == "head" and "psnr_head" in h]
    if head:
        ax.plot(*zip(*head), "s--", color="C1", alpha=0.7, ms=4,
                label="head only, pasted over the true torso and background")
        ax.axvline(head[-1][0], color="grey", lw=0.8, ls="--")
        ax.annotate("head phase | torso phase", (head[-1][0], 0.6), xycoords=("data", "axes fraction"),
                    ha="center", fontsize=8, color="grey")
    ax.axhline(TARGET_PSNR, color="grey", lw=0.8, ls=":")
    ax.axvline(TARGET_TRAIN_SECONDS / 60, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("wall-clock minutes (training and validation)")
    ax.set_ylabel("validation PSNR (dB)")
    ax.set_title(f"renderer training, synthetic person {size}x{size}, CPU")
    ax.legend(loc="center right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    # write atomically, like the JSON
    from geneface.fileio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()
