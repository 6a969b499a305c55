"""Benchmark 512 px output on the CPU: the 128 px renderer with bicubic x4, the same renderer with the person's
super-resolution stage, and a renderer trained directly at 512 px for the same wall time.

    python benchmarks/hires.py [--seconds 60] [--size 512] [--render-size 128] [--render-steps N]
                               [--sr-steps N] [--threads 2] [--fps-seconds 10] [--work bench_out/hires]
                               [--out DIR] [--fresh] [--quick]

1. A synthetic person (`geneface.synth`, the bundled face and speech) at --size x --size, --seconds long,
   processed at --size (`geneface process`): the dataset keeps the output-size crops; its validation split is
   the end of the clip, never trained on.
2. Three ways to a --size frame, all trained here on 2 CPU cores (--threads):
   (a) ``bicubic``: the renderer trained at --render-size (`train_render`, the CPU default steps unless
       --render-steps), its frames enlarged with bicubic interpolation;
   (b) ``sr``: the same renderer followed by the super-resolution stage (`geneface.render.sr.train_sr`,
       its default steps unless --sr-steps), trained on the person's own --size frames;
   (c) ``direct``: a renderer trained at --size for the wall time of (a)'s renderer plus (b)'s SR training
       (its step count is planned from a calibration run of 600 steps at --size, `plan_steps`; a run more than
       3% off the budget is made again with its steps scaled by its own step time, up to 3 runs; the JSON's
       ``direct.tries`` and ``direct_share_of_budget`` say how close they came).
3. On the validation frames, against the dataset's --size frames: PSNR, SSIM and LPIPS (where its weights are
   installed) of the whole frame and of the mouth region (the box around the true lip landmarks, widened by half
   its size), and the mouth LMD (MediaPipe on the rendered frames against the dataset's mesh, % of the
   inter-ocular distance). Speed: frames/s at --size for (b) and (c), batches of 1 and 4, each measured in its
   own process after a warm-up batch, with that process's peak resident memory.

Targets (issue 13): for (b), mouth LPIPS at most 0.6x that of (a), whole-frame PSNR no lower than (c)'s, at
least 8 frames/s at 512 px on 2 CPU cores, SR training at most 10 minutes on 2 cores.

The trainings are cached in WORK, keyed on every argument and the package source (their wall times are those
of the run that built them; ``cache`` in the JSON says when). Prints a table and writes hires.json and
hires_mouths.png (truth | a | b | c around the mouth of validation frames).
"""

from __future__ import annotations

import multiprocessing
import resource
import shutil
import time
from dataclasses import replace
from pathlib import Path

import common
import cv2
import numpy as np
import torch

from geneface.constants import MOUTH_68
from geneface.dataset import PersonDataset
from geneface.evaluate import metrics
from geneface.face import LANDMARKS_68
from geneface.fileio import read_json
from geneface.lpips import load_lpips
from geneface.process.pipeline import ProcessConfig, process
from geneface.render import PersonRenderer, RenderTrainConfig
from geneface.render.sr import SRTrainConfig, load_sr, render_frames, train_sr
from geneface.render.train import train_render
from geneface.synth import SynthConfig, synthesize

TARGET_LPIPS_RATIO = 0.6
TARGET_FPS = 8.0
TARGET_SR_MINUTES = 10.0
BUDGET_TOLERANCE = 0.03
"""(c) is trained again, its steps corrected, while its run's wall time is further than this share from the
budget (at most `MAX_TRIES` runs)."""
MAX_TRIES = 3
ARMS = ("bicubic", "sr", "direct")


def make_person(folder: str, size: int, seconds: float) -> None:
    clip = Path(folder) / "person.mp4"
    synthesize(clip, config=SynthConfig(size=size, seconds=seconds, progress=False))
    process(clip, Path(folder) / "dataset", ProcessConfig(size=size))


def in_child(target, *args) -> None:
    """Run ``target(*args)`` in a spawned process (its memory and threads its own); exits on failure."""
    child = multiprocessing.get_context("spawn").Process(target=target, args=args)
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"{target.__name__} failed (exit code {child.exitcode})")


def timed_render_training(data: str, run: str, size: int, steps: int | None, threads: int, out: str,
                          val_every: int | None = None) -> None:
    torch.set_num_threads(threads)
    config = replace(RenderTrainConfig(), size=size, steps=steps)
    if val_every is not None:
        config = replace(config, val_every=val_every)
    start = time.perf_counter()
    train_render(data, run, config, device="cpu", progress=True)
    Path(out).write_text(f"{time.perf_counter() - start:.3f}")


def timed_sr_training(data: str, render: str, run: str, steps: int | None, threads: int, out: str) -> None:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    config = SRTrainConfig() if steps is None else replace(SRTrainConfig(), steps=steps)
    train_sr(data, render, run, config, device="cpu", progress=True)
    Path(out).write_text(f"{time.perf_counter() - start:.3f}")


def plan_steps(history: list[dict], wall: float, budget: float, config: RenderTrainConfig) -> dict:
    """Steps of a renderer training that takes ``budget`` seconds, from a calibration run's validation
    ``history`` (train and wall seconds at frequent validations) and its whole ``wall`` time. A head step gets
    cheaper as the occupancy grid empties (the first steps cost several times a later one), so the run is
    modelled, not scaled: a warm-up excess plus the head phase's later steps at their own rate, the torso
    phase's at its rate, a validation's cost every ``config.val_every`` steps, and the fixed costs (loading the
    frames, pruning the grid, saving)."""
    head = [r for r in history if r["phase"] == "head"]
    torso = [r for r in history if r["phase"] == "torso"]
    if not head or not torso:
        raise SystemExit("the calibration run's history lacks a head or a torso phase")
    head_end, end = head[-1], torso[-1]
    mid = head[len(head) // 2] if len(head) > 2 else {"step": 0, "train_seconds": 0.0}
    per_head = (head_end["train_seconds"] - mid["train_seconds"]) / (head_end["step"] - mid["step"])
    per_torso = (end["train_seconds"] - head_end["train_seconds"]) / (end["step"] - head_end["step"])
    warmup = max(0.0, head_end["train_seconds"] - head_end["step"] * per_head)
    gaps = [(b["wall_seconds"] - b["train_seconds"]) - (a["wall_seconds"] - a["train_seconds"])
            for part in (head, torso) for a, b in zip(part, part[1:])]
    per_validation = float(np.median(gaps)) if gaps else 0.0
    fixed = wall - end["train_seconds"] - per_validation * len(history)
    per_step = (1 - config.torso_fraction) * per_head + config.torso_fraction * per_torso
    # wall(N) = fixed + warmup + N * per_step + (N / val_every + 2) * per_validation
    steps = int((budget - fixed - warmup - 2 * per_validation) / (per_step + per_validation / config.val_every))
    return {"steps": max(steps, end["step"]), "calibration_steps": end["step"],
            "calibration_seconds": round(wall, 1), "seconds_per_head_step": round(per_head, 4),
            "seconds_per_torso_step": round(per_torso, 4), "warmup_seconds": round(warmup, 1),
            "seconds_per_validation": round(per_validation, 2), "fixed_seconds": round(fixed, 1)}


class Arm:
    """Renders validation frames of one arm at the output size: [B, S, S, 3] uint8."""

    def __init__(self, name: str, render_run: Path, sr_run: Path | None, size: int) -> None:
        self.name, self.size = name, size
        self.renderer = PersonRenderer.load(render_run, "cpu")
        self.sr = load_sr(sr_run, "cpu") if sr_run is not None else None

    @torch.no_grad()
    def __call__(self, c2w: torch.Tensor, windows: torch.Tensor) -> np.ndarray:
        rgb, _ = render_frames(self.renderer, self.sr, c2w, windows)
        frames = (rgb.numpy() * 255).round().astype(np.uint8)
        if frames.shape[1] != self.size:
            frames = np.stack([cv2.resize(f, (self.size, self.size), interpolation=cv2.INTER_CUBIC) for f in frames])
        return frames


def speed(name: str, render_run: str, sr_run: str | None, size: int, data: str, batch: int, seconds: float,
          threads: int, out: str) -> None:
    """Frames/s of `Arm` ``name`` on batches of ``batch`` validation poses (after one warm-up batch), and this
    process's peak resident memory, written to ``out`` as JSON."""
    import json

    torch.set_num_threads(threads)
    arm = Arm(name, Path(render_run), Path(sr_run) if sr_run else None, size)
    ds = PersonDataset(data)
    val = ds.split("val")
    c2w = torch.from_numpy(ds.pose["c2w"][val]).float()
    windows = PersonRenderer.windows(torch.from_numpy(ds.motion["offsets"]).float(), torch.from_numpy(val))
    i = 0

    def one() -> None:
        nonlocal i
        idx = torch.arange(i, i + batch) % len(c2w)
        arm(c2w[idx], windows[idx])
        i += batch

    one()
    frames, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or frames < 2 * batch:
        one()
        frames += batch
    fps = frames / (time.perf_counter() - start)
    Path(out).write_text(json.dumps({"fps": fps, "peak_rss_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """This process's peak resident memory: /proc's VmHWM where there is one (``ru_maxrss`` of a spawned child
    also counts the parent it was forked from before its exec), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mouth_boxes(mesh: np.ndarray, size: int) -> np.ndarray:
    """[N, 4] (x0, y0, x1, y1) around the lip landmarks of meshes [N, 478, 3], widened by half, square."""
    lips = mesh[:, LANDMARKS_68[MOUTH_68], :2]
    centre = (lips.min(1) + lips.max(1)) / 2
    half = (lips.max(1) - lips.min(1)).max(1) * 0.75
    lo = np.clip(np.round(centre - half[:, None]), 0, size - 1).astype(int)
    hi = np.clip(np.round(centre + half[:, None]), 1, size).astype(int)
    return np.concatenate([lo, hi], 1)


def region_scores(images: dict[str, np.ndarray], truth: np.ndarray, boxes: np.ndarray, lpips) -> dict:
    """PSNR, SSIM, LPIPS of each arm's images [N, S, S, 3] against truth, whole frame and mouth crops."""
    side = 64  # mouth crops are resized to this for the batch metrics
    crop = lambda a: np.stack([cv2.resize(f[y0:y1, x0:x1], (side, side), interpolation=cv2.INTER_AREA)  # noqa: E731
                               for f, (x0, y0, x1, y1) in zip(a, boxes)])
    true_mouth = crop(truth)
    out = {}
    for name, a in images.items():
        m = crop(a)
        row = {"psnr_db": float(metrics.psnr(a, truth).mean()), "ssim": float(metrics.ssim(a, truth).mean()),
               "mouth_psnr_db": float(metrics.psnr(m, true_mouth).mean()),
               "mouth_ssim": float(metrics.ssim(m, true_mouth).mean())}
        if lpips is not None:
            row["lpips"] = float(metrics.lpips_distance(lpips, a, truth, "cpu").mean())
            row["mouth_lpips"] = float(metrics.lpips_distance(lpips, m, true_mouth, "cpu").mean())
        out[name] = row
    return out


def mouth_sheet(images: dict[str, np.ndarray], truth: np.ndarray, boxes: np.ndarray, path: Path, rows: int = 4) -> None:
    """PNG: one row per validation frame, columns truth | bicubic | sr | direct, crops around the mouth."""
    pick = np.linspace(0, len(truth) - 1, rows).round().astype(int)
    side = 192
    lines = []
    for i in pick:
        x0, y0, x1, y1 = boxes[i]
        tiles = [cv2.resize(a[i][y0:y1, x0:x1], (side, side), interpolation=cv2.INTER_NEAREST)
                 for a in (truth, *images.values())]
        lines.append(np.hstack(tiles))
    sheet = np.vstack(lines)
    header = np.full((24, sheet.shape[1], 3), 255, np.uint8)
    for k, label in enumerate(("truth", *images)):
        cv2.putText(header, label, (k * side + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), np.vstack([header, sheet])[..., ::-1])


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the synthetic clip")
    ap.add_argument("--size", type=int, default=512, help="source clip, dataset and output size")
    ap.add_argument("--render-size", type=int, default=128, help="size of the renderer of (a) and (b)")
    ap.add_argument("--render-steps", type=int, default=None, help="steps of (a)'s renderer (default: the CPU's)")
    ap.add_argument("--sr-steps", type=int, default=None, help="super-resolution steps (default: its config's)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--fps-seconds", type=float, default=10.0, help="seconds of rendering per speed measure")
    common.add_common_args(ap, "hires")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.size, args.render_size, args.fps_seconds = 4.0, 128, 32, 1.0
        args.render_steps, args.sr_steps = 30, 20
    torch.set_num_threads(args.threads)
    machine = common.machine_info()
    cache = common.Cache(args)

    # 1. the person
    print(f"== synthetic person ({args.seconds:g} s, {args.size} px)", flush=True)

    def build_person(folder: Path) -> dict:
        start = time.perf_counter()
        in_child(make_person, str(folder), args.size, args.seconds)
        return {"seconds": round(time.perf_counter() - start, 1)}

    person, _ = cache.step("person", build_person)
    data = person / "dataset"

    # 2. (a) the low-resolution renderer, (b) its SR stage, (c) a renderer at the output size for their time
    def build_low(folder: Path) -> dict:
        in_child(timed_render_training, str(data), str(folder / "run"), args.render_size, args.render_steps,
                 args.threads, str(folder / "seconds.txt"))
        return {"train_seconds": float((folder / "seconds.txt").read_text())}

    print(f"== (a) renderer at {args.render_size} px", flush=True)
    low, low_info = cache.step("render_low", build_low)

    def build_sr(folder: Path) -> dict:
        in_child(timed_sr_training, str(data), str(low / "run"), str(folder / "run"), args.sr_steps, args.threads,
                 str(folder / "seconds.txt"))
        return {"train_seconds": float((folder / "seconds.txt").read_text())}

    print(f"== (b) super-resolution {args.render_size} -> {args.size}", flush=True)
    sr, sr_info = cache.step("sr", build_sr)
    budget = low_info["train_seconds"] + sr_info["train_seconds"]

    def build_direct(folder: Path) -> dict:
        calibration, every = (600, 60) if not args.quick else (20, 5)
        defaults = RenderTrainConfig()
        in_child(timed_render_training, str(data), str(folder / "calibrate"), args.size, calibration, args.threads,
                 str(folder / "calibrate.txt"), every)
        plan = plan_steps(read_json(folder / "calibrate" / "history.json"),
                          float((folder / "calibrate.txt").read_text()), budget, defaults)
        steps, tries = plan["steps"], []
        while True:
            shutil.rmtree(folder / "run", ignore_errors=True)
            in_child(timed_render_training, str(data), str(folder / "run"), args.size, steps, args.threads,
                     str(folder / "seconds.txt"))
            seconds = float((folder / "seconds.txt").read_text())
            tries.append({"steps": steps, "train_seconds": seconds, "share_of_budget": round(seconds / budget, 3)})
            if abs(seconds / budget - 1) <= BUDGET_TOLERANCE or len(tries) == MAX_TRIES:
                break
            # again, the steps scaled by how far this run's own step time was from the time the budget leaves them
            # (its other costs, loading, pruning, validations, taken as they were, plus the extra validations)
            step_seconds = read_json(folder / "run" / "history.json")[-1]["train_seconds"]
            other = seconds - step_seconds
            validations = plan["seconds_per_validation"] * steps / defaults.val_every
            # budget = other + scale * step_seconds + (scale - 1) * validations
            steps = max(1, round(steps * (budget - other + validations) / (step_seconds + validations)))
        return {"train_seconds": seconds, "budget_seconds": budget, "share_of_budget": round(seconds / budget, 3),
                **plan, "steps": steps, "tries": tries}

    print(f"== (c) renderer at {args.size} px for {budget / 60:.1f} min", flush=True)
    direct, direct_info = cache.step("render_direct", build_direct)

    # 3. quality on the validation frames
    print("== quality on the validation frames", flush=True)
    ds = PersonDataset(data)
    val = ds.split("val")
    c2w = torch.from_numpy(ds.pose["c2w"][val]).float()
    windows = PersonRenderer.windows(torch.from_numpy(ds.motion["offsets"]).float(), torch.from_numpy(val))
    truth = np.stack([ds.frame(int(i)) for i in val])
    arms = {"bicubic": Arm("bicubic", low / "run", None, args.size), "sr": Arm("sr", low / "run", sr / "run", args.size),
            "direct": Arm("direct", direct / "run", None, args.size)}
    images = {name: np.concatenate([arm(c2w[i:i + 4], windows[i:i + 4]) for i in range(0, len(val), 4)])
              for name, arm in arms.items()}
    boxes = mouth_boxes(ds.landmarks["mesh"][val], args.size)
    lpips, lpips_missing = metrics.load_optional(load_lpips, "cpu")
    scores = region_scores(images, truth, boxes, lpips)
    true_mesh = ds.landmarks["mesh"][val]
    for name, a in images.items():
        lmd = metrics.image_lmd(metrics.track_faces(a, args.size), true_mesh)
        scores[name]["mouth_lmd_iod"] = None if lmd is None else lmd["lmd_mouth_iod"]
        scores[name]["face_found"] = None if lmd is None else lmd["face_found"]
    results = common.results_dir(args)
    mouth_sheet(images, truth, boxes, results / "hires_mouths.png")

    # 4. speed and memory at the output size, each in its own process
    print("== speed", flush=True)
    speeds = {}
    for name, render_run, sr_run in (("sr", low / "run", sr / "run"), ("direct", direct / "run", None)):
        for batch in (1, 4):
            out = Path(args.work) / f"speed_{name}_{batch}.json"
            in_child(speed, name, str(render_run), str(sr_run) if sr_run else None, args.size, str(data), batch,
                     args.fps_seconds, args.threads, str(out))
            speeds[f"{name}_batch{batch}"] = read_json(out)

    # 5. report
    train_minutes = {"bicubic": low_info["train_seconds"] / 60, "sr": budget / 60,
                     "direct": direct_info["train_seconds"] / 60}
    summary = {"sr_train_minutes": round(sr_info["train_seconds"] / 60, 2),
               "render_low_train_minutes": round(low_info["train_seconds"] / 60, 2),
               "direct_train_minutes": round(direct_info["train_seconds"] / 60, 2),
               "direct_steps": direct_info["steps"],
               "direct_share_of_budget": direct_info["share_of_budget"]}
    for name in ARMS:
        for key, value in scores[name].items():
            summary[f"{name}_{key}"] = None if value is None else round(value, 4)
    for key, value in speeds.items():
        summary[f"fps_{key}"] = round(value["fps"], 2)
        summary[f"peak_rss_mib_{key}"] = round(value["peak_rss_mib"], 1)
    ratio = (scores["sr"]["mouth_lpips"] / scores["bicubic"]["mouth_lpips"]) if lpips is not None else None
    summary["sr_mouth_lpips_over_bicubic"] = None if ratio is None else round(ratio, 3)
    best_fps = max(speeds["sr_batch1"]["fps"], speeds["sr_batch4"]["fps"])
    summary["targets_met"] = {
        "mouth_lpips_ratio": None if ratio is None else ratio <= TARGET_LPIPS_RATIO,
        "psnr_not_below_direct": scores["sr"]["psnr_db"] >= scores["direct"]["psnr_db"],
        "fps": best_fps >= TARGET_FPS,
        "sr_train_minutes": sr_info["train_seconds"] / 60 <= TARGET_SR_MINUTES,
    }
    details = {"targets": {"mouth_lpips_ratio": TARGET_LPIPS_RATIO, "fps": TARGET_FPS,
                           "sr_train_minutes": TARGET_SR_MINUTES},
               "lpips_missing": lpips_missing,
               "dataset": {"size": ds.size, "frames": ds.num_frames, "train_frames": len(ds.split("train")),
                           "val_frames": len(val)},
               "direct": direct_info, "sr_history": read_json(sr / "run" / "history.json"),
               "sr_config": read_json(sr / "run" / "config.json")}
    rows = [(name, train_minutes[name], *(scores[name].get(k) for k in
                                          ("psnr_db", "ssim", "lpips", "mouth_psnr_db", "mouth_ssim", "mouth_lpips",
                                           "mouth_lmd_iod")))
            for name in ARMS]
    common.print_table(["arm", "train min", "PSNR", "SSIM", "LPIPS", "mouth PSNR", "mouth SSIM", "mouth LPIPS",
                        "mouth LMD %IOD"], rows, title=f"{args.size} px output, {len(val)} validation frames")
    common.print_table(["arm, batch", "frames/s", "peak RSS MiB"],
                       [(k, v["fps"], v["peak_rss_mib"]) for k, v in speeds.items()], title="speed at the output size")
    common.print_summary(summary)
    common.write_result("hires", args, machine, summary, details, cache)
    print(f"wrote {results / 'hires_mouths.png'}")


if __name__ == "__main__":
    main()
