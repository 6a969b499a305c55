"""Benchmark the renderer: training on the synthetic benchmark person at 128x128 on the CPU (validation PSNR
against time) and rendering speed at 128x128 and 512x512 (CPU, and CUDA where present).

    python benchmarks/render.py [--steps 2500] [--threads 2] [--work bench_out/render]

Prints a table and writes benchmarks/results/render.json and render_psnr.png. Targets (DESIGN.md): a
validation PSNR of 30 dB or more within 15 minutes of training on 2 CPU cores; at least 5 frames/s at
128x128 on 2 CPU cores; at least 25 frames/s at 512x512 on one GPU.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared machine, spinning threads waiting for a
# descheduled peer make every parallel op wait a time slice (measured 15x slower training). Set before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from geneface.process.pipeline import ProcessConfig, process  # noqa: E402
from geneface.render import PersonRenderer, RenderTrainConfig, RenderTrainer  # noqa: E402
from geneface.render.data import RenderData  # noqa: E402
from geneface.render.volume import psnr  # noqa: E402
from geneface.synth import SynthConfig, synthesize  # noqa: E402

TARGET_PSNR = 30.0
TARGET_TRAIN_SECONDS = 15 * 60
TARGET_CPU_FPS_128 = 5.0
TARGET_GPU_FPS_512 = 25.0


def prepare(clip: Path, data: Path, size: int, seconds: float) -> None:
    if not clip.exists():
        synthesize(clip, config=SynthConfig(size=size, seconds=seconds, progress=False))
    process(clip, data, ProcessConfig(size=size))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fps(renderer: PersonRenderer, c2w: torch.Tensor, windows: torch.Tensor, size: int, batch: int,
        seconds: float = 10.0) -> float:
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the CPU default)")
    ap.add_argument("--size", type=int, default=128, help="clip, dataset and training frame size")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of the synthetic clip")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--val-every", type=int, default=250, help="steps between validations")
    ap.add_argument("--work", type=Path, default=Path("bench_out/render"), help="scratch folder")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    conditions = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                  "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_average_start": os.getloadavg(),
                  "platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                  "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}

    # 1. the synthetic benchmark person (in a child process, so that the peak memory below is the renderer's)
    clip = args.work / f"person_{args.size}_{int(args.seconds)}s.mp4"
    data = args.work / f"dataset_{args.size}"
    if not (data / "meta.json").exists():
        child = multiprocessing.get_context("spawn").Process(target=prepare, args=(clip, data, args.size, args.seconds))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"making the synthetic person failed (exit code {child.exitcode})")

    # 2. training on the CPU
    run = args.work / "run"
    shutil.rmtree(run, ignore_errors=True)
    config = replace(RenderTrainConfig(), size=args.size, steps=args.steps, val_every=args.val_every)
    start = time.perf_counter()
    trainer = RenderTrainer(data, run, config, device="cpu", progress=True)
    trainer.run()
    train_wall = time.perf_counter() - start
    train_rss = peak_rss_mib()
    history = json.loads((run / "history.json").read_text())
    reached = next((h for h in history if h["psnr"] >= TARGET_PSNR), None)

    # 3. rendering speed
    d = RenderData(data, args.size)
    c2w, windows = d.c2w[d.val_idx], d.windows(d.val_idx)
    gt = d.frames[d.val_idx].float() / 255
    background_psnr = psnr(((gt - d.background.float()[None] / 255) ** 2).mean())
    speed = {}
    cpu = PersonRenderer.load(run, device="cpu")
    speed["cpu_128_batch4"] = fps(cpu, c2w, windows, 128, 4)
    speed["cpu_128_batch1"] = fps(cpu, c2w, windows, 128, 1)
    speed["cpu_512_batch1"] = fps(cpu, c2w, windows, 512, 1, seconds=5.0)
    gpu_mem = None
    if torch.cuda.is_available():
        gpu = PersonRenderer.load(run, device="cuda")
        torch.cuda.reset_peak_memory_stats()
        speed["cuda_512_batch4"] = fps(gpu, c2w.cuda(), windows.cuda(), 512, 4)
        speed["cuda_512_batch1"] = fps(gpu, c2w.cuda(), windows.cuda(), 512, 1)
        gpu_mem = torch.cuda.max_memory_allocated() / 2**20
    conditions["load_average_end"] = os.getloadavg()

    result = {
        "conditions": conditions,
        "dataset": {"size": args.size, "seconds": args.seconds, "frames": d.num_frames,
                    "train_frames": len(d.train_idx), "val_frames": len(d.val_idx)},
        "train": {"steps": trainer.config.steps, "torso_fraction": trainer.config.torso_fraction,
                  "rays_per_step": trainer.config.frames_per_step * trainer.config.rays_per_frame,
                  "wall_seconds": round(train_wall, 1), "train_seconds": history[-1]["train_seconds"],
                  "final_val_psnr": history[-1]["psnr"], "final_val_psnr_head": history[-1]["psnr_head"],
                  "background_only_val_psnr": round(background_psnr, 2),
                  "first_val_at_or_above_target": reached,
                  "history": history},
        "render_fps": {k: round(v, 2) for k, v in speed.items()},
        "peak_memory_mib": {"process_rss_after_training": round(train_rss, 1),
                            "process_rss_after_rendering": round(peak_rss_mib(), 1),
                            "cuda_allocated_rendering": None if gpu_mem is None else round(gpu_mem, 1)},
        "targets": {"psnr_db": TARGET_PSNR, "train_seconds": TARGET_TRAIN_SECONDS, "cpu_fps_128": TARGET_CPU_FPS_128,
                    "gpu_fps_512": TARGET_GPU_FPS_512},
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "render.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(history, args.results / "render_psnr.png")

    print()
    print(f"{'measure':44s} {'value':>12s} {'target':>10s}")
    print(f"{'final validation PSNR (dB)':44s} {history[-1]['psnr']:12.2f} {TARGET_PSNR:10.1f}")
    print(f"{'background alone, validation PSNR (dB)':44s} {background_psnr:12.2f}")
    if reached:
        print(f"{'time to >= 30 dB, training steps only (s)':44s} {reached['train_seconds']:12.1f} "
              f"{TARGET_TRAIN_SECONDS:10d}")
        print(f"{'time to >= 30 dB, wall with validation (s)':44s} {reached['wall_seconds']:12.1f} "
              f"{TARGET_TRAIN_SECONDS:10d}")
    else:
        print(f"{'time to >= 30 dB (s)':44s} {'not reached':>12s} {TARGET_TRAIN_SECONDS:10d}")
    print(f"{'training wall time, all steps (s)':44s} {train_wall:12.1f}")
    for k, v in speed.items():
        target = {"cpu_128": TARGET_CPU_FPS_128, "cuda_512": TARGET_GPU_FPS_512}.get(k.rsplit("_", 1)[0], float("nan"))
        print(f"{'render fps ' + k:44s} {v:12.2f} {target:10.1f}")
    print(f"{'peak RSS after training (MiB)':44s} {train_rss:12.1f}")
    print(f"{'peak RSS after rendering (MiB)':44s} {peak_rss_mib():12.1f}")
    print(f"conditions: {conditions}")
    print(f"wrote {args.results / 'render.json'} and {args.results / 'render_psnr.png'}")


def plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    head = [h for h in history if h["phase"] == "head"]
    ax.plot(np.array([h["wall_seconds"] for h in head]) / 60, [h["psnr_head"] for h in head], "o--",
            label="head over the true torso (head phase)")
    torso = [h for h in history if h["phase"] == "torso"]
    ax.plot(np.array([h["wall_seconds"] for h in torso]) / 60, [h["psnr"] for h in torso], "o-",
            label="full frame (after the torso phase starts)")
    ax.axhline(TARGET_PSNR, color="grey", lw=0.8, ls=":")
    ax.axvline(TARGET_TRAIN_SECONDS / 60, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("wall-clock minutes (training and validation)")
    ax.set_ylabel("validation PSNR (dB)")
    ax.set_title("renderer training, synthetic person 128x128, CPU")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
