"""The GPU check: the whole pipeline on one device in one call, then the speed of every model's training step and
of rendering, the peak GPU memory, and how far a render on the device is from a CPU render of the same model.

    python benchmarks/gpu.py [--device auto|cpu|cuda|mps] [--size PX] [--motion-steps 200] [--render-steps 300]
                             [--postnet-steps 100] [--interrupt-steps 200] [--fps-size 512] [--fps-batches 1 4 16]
                             [--budget-seconds 420] [--threads N] [--progress]
                             [--work bench_out/gpu] [--out DIR] [--quick]

Made for a session that rents one GPU for a few minutes: `python benchmarks/gpu.py --device cuda` is sized to take
under 8 minutes on one NVIDIA GPU with the defaults (short step counts, the device's frame size: 512 px on CUDA; not
yet timed on a GPU, hence --budget-seconds). It runs
end to end on a CPU too (`--device cpu --quick`: 64 px, tiny models, a few steps), so it is known to work before a
GPU ever runs it. Stages, in order (each one's wall time, pass/fail, error message and peak GPU memory recorded):

  synth           an 8 s synthetic talking head (`geneface.synth.synthesize`)
  train_all       `geneface.train_person` (process, audio2motion, renderer) with short step counts on the device
  interrupt       `geneface train render` as a child process on the person's dataset: SIGINT (Ctrl-C) once it has
                  logged its first steps; its run folder must keep a checkpoint (train_state/, step >= 10), and the
                  same command run again must resume from that step (its log goes on after it, never restarts)
  postnet         `train_postnet`: adapts train_all's motion model to the person
  infer           `PersonModel.speak` of the synthetic clip's own speech (an mp4)
  evaluate        `geneface.evaluate.evaluate` on the validation frames and the bundled speech
  step_times      the median time of one training step (after warm-up steps; synchronised on CUDA) of the SyncNet,
                  the audio2motion generator (with its SyncNet loss), the postnet with its discriminator, and the
                  renderer's head and torso steps, each with the settings `train all` used
  render_fps      rendering frames/s at --fps-size for each of --fps-batches, and the peak GPU memory of each
  device_vs_cpu   PSNR of a render on the device against a CPU render of the same model and inputs (on a CPU run
                  both are CPU renders: identical, an infinite PSNR, written as null with "identical": true)

A stage whose inputs a failed stage should have made is skipped; a stage that would start after --budget-seconds
is skipped too, so that a session about to lose its machine still gets its file. The result is written after every
stage (a run that dies half-way leaves a JSON saying where), and the script exits with status 1 unless every stage
passed. Nothing is cached: --work is emptied first. Also recorded: the GPU's name, the CUDA and cuDNN versions, the
TF32 and cudnn.benchmark settings, and which autocast dtype the renderer trained and rendered with.

Writes gpu.json for a CUDA run, gpu_cpu.json (gpu_mps.json) otherwise, so that CPU figures are never taken for GPU
ones (layout: benchmarks/common.py; the README's figures are fields of "summary"). With --quick the file goes to
WORK/quick-results unless --out says otherwise.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import common
import numpy as np
import torch

import geneface
from geneface import EvalConfig, InferConfig, PersonModel, TrainConfig, train_person
from geneface import media
from geneface.dataset import PersonDataset
from geneface.device import defaults_for, resolve_device
from geneface.evaluate import evaluate
from geneface.fileio import read_json
from geneface.infer.cli_demo import bundled_speech
from geneface.motion.data import ClipSet, WindowSampler, load_clips
from geneface.motion.model import MotionModel
from geneface.motion.postnet import Discriminator, Postnet
from geneface.motion.presets import preset
from geneface.motion.train import (MotionTrainConfig, PostnetTrainConfig, generator_step, postnet_step,
                                    syncnet_step, train_postnet)
from geneface.render import PersonRenderer, RenderTrainConfig
from geneface.render.train import RenderTrainer
from geneface.render.volume import psnr
from geneface.synth import SynthConfig, synthesize

TARGET_GPU_FPS_512 = 25.0
"""DESIGN.md: at least 25 frames/s at 512x512 on one modern GPU."""
LOG_EVERY = 10
"""The renderer's trainer logs (train_log.jsonl) every this many steps (`RenderTrainer`)."""


class StageError(Exception):
    """A stage's check failed: its message, and the measurements made before it failed."""

    def __init__(self, message: str, details: dict) -> None:
        super().__init__(message)
        self.details = details


# --- the device ------------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings on CUDA and MPS are otherwise of the launches only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float | None:
    """`torch.cuda.max_memory_allocated` since the last reset, in MiB; None off CUDA."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def accelerator_info(device: torch.device) -> dict:
    """The GPU, its software and the precision settings in force (read at the start and again at the end: the
    package could change them while it runs)."""
    info: dict = {"device": str(device), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                  "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
                  "float32_matmul_precision": torch.get_float32_matmul_precision(),
                  "cudnn_benchmark": torch.backends.cudnn.benchmark,
                  "cudnn_deterministic": torch.backends.cudnn.deterministic}
    for name, obj in (("fp32_precision_matmul", torch.backends.cuda.matmul),
                      ("fp32_precision_cudnn", torch.backends.cudnn)):
        if hasattr(obj, "fp32_precision"):  # torch >= 2.9 has this finer setting beside allow_tf32
            info[name] = getattr(obj, "fp32_precision")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), capability=f"{props.major}.{props.minor}",
                    total_memory_mib=round(props.total_memory / 2**20), multiprocessors=props.multi_processor_count,
                    bf16_supported=torch.cuda.is_bf16_supported(), device_count=torch.cuda.device_count())
    return info


def dtype_name(dtype) -> str | None:
    return None if dtype is None else str(dtype).replace("torch.", "")


def precision_of(renderer: PersonRenderer) -> dict:
    """What a loaded renderer's fields autocast to (`geneface.device.amp_dtype` of its training precision)."""
    return {"amp_dtype": dtype_name(renderer.model.amp_dtype)}


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> dict:
    """Seconds of one call of ``step``: the median over ``steps`` calls after ``warmup`` calls, each
    synchronised with the device."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(max(1, steps)):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times), "max_ms": 1000 * max(times),
            "steps": len(times), "warmup": warmup}


# --- the run ---------------------------------------------------------------------------------------------

class Bench:
    """One run: its arguments, device and scratch folder, the stage records, and the result file (rewritten
    after every stage)."""

    def __init__(self, args, device: torch.device) -> None:
        self.args = args
        self.device = device
        self.size = args.size or defaults_for(device).render_size
        self.work = Path(args.work)
        self.person = self.work / "person"
        self.clip = self.work / "clip" / "person.mp4"
        self.machine = common.machine_info()
        self.accelerator = accelerator_info(device)
        self.stages: list[dict] = []
        self.start = time.perf_counter()
        self.name = "gpu" if device.type == "cuda" else f"gpu_{device.type}"

    def status(self, name: str) -> str | None:
        return next((s["status"] for s in self.stages if s["name"] == name), None)

    def details(self, name: str) -> dict:
        return next((s["details"] for s in self.stages if s["name"] == name), {})

    def run_stage(self, name: str, fn: Callable[["Bench"], dict], needs: tuple[str, ...] = ()) -> None:
        """Run stage ``name`` (``fn(self)`` returns its measurements), record it and rewrite the result."""
        record = {"name": name, "status": "skipped", "seconds": None, "error": None, "cuda_peak_mib": None,
                  "details": {}}
        missing = [n for n in needs if self.status(n) != "passed"]
        elapsed = time.perf_counter() - self.start
        if missing:
            record["error"] = f"not run: needs {', '.join(missing)}, which did not pass"
        elif elapsed > self.args.budget_seconds:
            record["error"] = f"not run: {elapsed:.0f} s had passed, over --budget-seconds {self.args.budget_seconds:g}"
        else:
            print(f"== {name}", flush=True)
            reset_peak_memory(self.device)
            start = time.perf_counter()
            try:
                record["details"] = fn(self) or {}
                record["status"] = "passed"
            except Exception as e:  # one failed stage must not lose the others' figures
                record["status"] = "failed"
                record["error"] = f"{type(e).__name__}: {e}"
                record["details"] = getattr(e, "details", {})
                record["traceback"] = traceback.format_exc()[-4000:]
                print(f"   {name} FAILED: {record['error']}", flush=True)
            record["seconds"] = time.perf_counter() - start
            record["cuda_peak_mib"] = peak_memory_mib(self.device)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        if record["status"] == "skipped":
            print(f"== {name}: skipped ({record['error']})", flush=True)
        else:
            print(f"   {name}: {record['status']} in {record['seconds']:.1f} s", flush=True)
        self.stages.append(record)
        self.write()

    def summary(self) -> dict:
        """The headline figures, flat (one field each; null where a stage did not give them)."""
        d = self.details
        steps = d("step_times")
        fps = d("render_fps").get("batches", {})
        train, ev, cmp = d("train_all"), d("evaluate").get("validation", {}), d("device_vs_cpu")
        peaks = [s["cuda_peak_mib"] for s in self.stages if s["cuda_peak_mib"] is not None]
        out = {
            "device": str(self.device), "device_name": self.accelerator.get("name"),
            "stages_passed": sum(s["status"] == "passed" for s in self.stages),
            "stages_failed": sum(s["status"] == "failed" for s in self.stages),
            "stages_skipped": sum(s["status"] == "skipped" for s in self.stages),
            "total_seconds": round(time.perf_counter() - self.start, 1),
            "size_px": self.size,
            "synth_seconds": self._seconds("synth"),
            "train_all_seconds": self._seconds("train_all"),
            "train_all_process_seconds": train.get("process_seconds"),
            "train_all_motion_seconds": train.get("motion_seconds"),
            "train_all_render_seconds": train.get("render_seconds"),
            "train_all_val_psnr_db": train.get("render_val_psnr_db"),
            "interrupt_checkpoint_step": d("interrupt").get("checkpoint_step"),
            "interrupt_resumed": d("interrupt").get("resumed"),
            "postnet_seconds": self._seconds("postnet"),
            "infer_fps_end_to_end": d("infer").get("fps_end_to_end"),
            "eval_psnr_reconstruction_db": ev.get("psnr_reconstruction"),
            "eval_psnr_audio_driven_db": ev.get("psnr_audio_driven"),
            "eval_render_fps": ev.get("render_fps"),
            **{f"step_ms_{k}": v.get("median_ms") for k, v in steps.get("models", {}).items()},
            **{f"render_fps_{d('render_fps').get('size')}px_batch{b}": v.get("fps") for b, v in fps.items()},
            **{f"render_peak_mib_batch{b}": v.get("cuda_peak_mib") for b, v in fps.items()},
            "cuda_peak_mib_any_stage": max(peaks) if peaks else None,
            "device_vs_cpu_psnr_db": cmp.get("psnr_db"),
            "device_vs_cpu_identical": cmp.get("identical"),
            "device_vs_cpu_max_abs_diff": cmp.get("max_abs_diff"),
            "render_amp_dtype_training": steps.get("render_precision", {}).get("amp_dtype"),
            "render_amp_dtype_rendering": d("render_fps").get("precision", {}).get("amp_dtype"),
        }
        return out

    def _seconds(self, name: str) -> float | None:
        s = next((s for s in self.stages if s["name"] == name), None)
        return None if s is None or s["seconds"] is None else round(s["seconds"], 2)

    def write(self) -> None:
        common.write_result(self.name, self.args, self.machine, self.summary(), {
            "accelerator_start": self.accelerator, "accelerator_end": accelerator_info(self.device),
            "targets": {"gpu_fps_512": TARGET_GPU_FPS_512}, "stages": self.stages})

    def child_env(self) -> dict:
        """The environment of a child `geneface` process: this package's source first on its path."""
        src = str(Path(geneface.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join([src] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        return env


# --- stages: the pipeline ----------------------------------------------------------------------------------

def stage_synth(b: Bench) -> dict:
    """An 8 s synthetic talking head (default face and speech) at --clip-size."""
    a = b.args
    b.clip.parent.mkdir(parents=True, exist_ok=True)
    synthesize(b.clip, config=SynthConfig(size=a.clip_size or max(256, b.size), seconds=a.seconds, progress=a.progress))
    return {"clip": b.clip, "size": a.clip_size or max(256, b.size), "seconds": a.seconds}


def stage_train_all(b: Bench) -> dict:
    """`train_person` on the device with short step counts; each part's time from its files' modification times
    (as benchmarks/demo.py)."""
    a = b.args
    config = TrainConfig(size=b.size, motion_preset=a.motion_preset, motion_steps=a.motion_steps,
                         render_steps=a.render_steps, device=b.device.type,
                         render=RenderTrainConfig(rays_per_frame=a.rays))
    start = time.time()
    model = train_person(b.clip, b.person, config, progress=a.progress)
    end = time.time()
    del model
    p = b.person
    marks = [start, (p / "data" / "meta.json").stat().st_mtime, (p / "motion" / "config.json").stat().st_mtime,
             (p / "render" / "config.json").stat().st_mtime]
    motion, render = read_json(p / "motion" / "config.json"), read_json(p / "render" / "config.json")
    history = read_json(p / "render" / "history.json")
    return {"process_seconds": marks[1] - marks[0], "motion_seconds": marks[2] - marks[1],
            "render_seconds": marks[3] - marks[2], "rest_seconds": end - marks[3],
            "motion_preset": motion.get("preset"), "motion_metrics": motion.get("metrics"),
            "render_train": render.get("train"), "render_val_psnr_db": history[-1]["psnr"] if history else None,
            "render_train_seconds": history[-1]["train_seconds"] if history else None,
            "frames": PersonDataset(p / "data").num_frames}


def stage_interrupt(b: Bench) -> dict:
    """`geneface train render` in a child process: SIGINT after its first logged steps, then the same command
    again, which must resume from the checkpoint the interrupt left."""
    a = b.args
    run = b.work / "interrupted"
    argv = [sys.executable, "-m", "geneface.cli", "train", "render", "--data", str(b.person / "data"),
            "--out", str(run), "--size", str(b.size), "--steps", str(a.interrupt_steps), "--save-every", "0",
            "--device", b.device.type] + (["--rays", str(a.rays)] if a.rays else [])
    log_file = run / "train_log.jsonl"
    details: dict = {"argv": argv[1:], "steps": a.interrupt_steps}

    def fail(message: str) -> StageError:
        return StageError(message, details)

    # 1. start, wait for the first logged steps, Ctrl-C
    with open(b.work / "interrupt_first.log", "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=b.child_env())
        try:
            while not (log_file.exists() and log_file.read_text().strip()):
                if proc.poll() is not None:
                    raise fail(f"the run ended (exit code {proc.returncode}) before logging a step: "
                               f"{_tail(b.work / 'interrupt_first.log')}")
                if time.perf_counter() - start > a.interrupt_timeout:
                    raise fail(f"no step logged within {a.interrupt_timeout:g} s")
                time.sleep(0.02)
            details["seconds_to_first_log"] = time.perf_counter() - start
            proc.send_signal(signal.SIGINT)
            details["first_exit_code"] = proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    first_log = _tail(b.work / "interrupt_first.log")
    if details["first_exit_code"] != 130 or "interrupted; rerun the same command to resume" not in first_log:
        raise fail(f"Ctrl-C: exit code {details['first_exit_code']} (expected 130): {first_log}")
    state_file = run / "train_state" / "state.json"
    if not state_file.exists() or (run / "config.json").exists():
        raise fail(f"after Ctrl-C {run} holds no checkpoint (train_state/state.json), or is already finished")
    state = read_json(state_file)
    saved = int(state["step"])
    logged_before = _logged_steps(log_file)
    details.update(checkpoint_step=saved, checkpoint_phase=state.get("phase"), logged_before=logged_before)
    if saved < LOG_EVERY:
        raise fail(f"the checkpoint is at step {saved}, before the {LOG_EVERY} steps already logged")

    # 2. the same command again: it must go on from the checkpoint
    with open(b.work / "interrupt_second.log", "w") as out:
        start = time.perf_counter()
        details["second_exit_code"] = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=b.child_env(),
                                                     timeout=max(60.0, a.budget_seconds)).returncode
        details["second_seconds"] = time.perf_counter() - start
    if details["second_exit_code"] != 0:
        raise fail(f"the rerun failed (exit code {details['second_exit_code']}): "
                   f"{_tail(b.work / 'interrupt_second.log')}")
    after = _logged_steps(log_file)[len(logged_before):]
    details["logged_after"] = after
    details["finished"] = (run / "config.json").exists() and not (run / "train_state").exists()
    details["resumed"] = bool(after) and min(after) > saved and max(after) == a.interrupt_steps
    if not details["finished"]:
        raise fail(f"the rerun exited 0 but {run} is not a finished run")
    if not details["resumed"]:
        raise fail(f"the rerun did not resume from step {saved}: it logged steps {after}")
    return details


def _logged_steps(log_file: Path) -> list[int]:
    return [int(json.loads(line)["step"]) for line in log_file.read_text().splitlines() if line.strip()]


def _tail(path: Path, chars: int = 1500) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no output)"


def stage_postnet(b: Bench) -> dict:
    """`train_postnet`: train_all's motion model as the prior, adapted to the person."""
    a = b.args
    metrics = train_postnet(b.person / "data", b.person / "motion", b.work / "postnet",
                            config=PostnetTrainConfig(steps=a.postnet_steps), device=b.device.type,
                            progress=a.progress)
    return {"steps": a.postnet_steps, "metrics": metrics}


def stage_infer(b: Bench) -> dict:
    """The person speaks the synthetic clip's own speech: `PersonModel.speak` into an mp4 (motion, rendering
    and encoding; loading the model timed apart)."""
    a = b.args
    start = time.perf_counter()
    model = PersonModel.load(b.person, b.device)
    load_seconds = time.perf_counter() - start
    frames = model.num_frames(media.read_audio(b.clip))
    out = b.work / "infer.mp4"
    start = time.perf_counter()
    model.speak(b.clip, out, InferConfig(device=b.device.type, batch=a.infer_batch), progress=a.progress)
    seconds = time.perf_counter() - start
    if not out.exists() or out.stat().st_size == 0:
        raise StageError(f"speak wrote no video at {out}", {"frames": frames})
    return {"frames": frames, "batch": a.infer_batch, "load_seconds": load_seconds, "speak_seconds": seconds,
            "fps_end_to_end": frames / seconds, "video_bytes": out.stat().st_size,
            "precision": precision_of(model.renderer)}


def stage_evaluate(b: Bench) -> dict:
    """`evaluate` on the validation frames (true and predicted landmarks) and on the bundled speech."""
    report = evaluate(b.person, [bundled_speech()], b.work / "eval",
                      EvalConfig(device=b.device.type, progress=b.args.progress))
    v = report["validation"]
    rec, aud = v.get("reconstruction", {}), v.get("audio_driven", {})
    return {"validation": {"frames": v.get("frames", {}).get("count"),
                           "psnr_reconstruction": rec.get("psnr"), "psnr_audio_driven": aud.get("psnr"),
                           "ssim_reconstruction": rec.get("ssim"), "lpips_reconstruction": rec.get("lpips"),
                           "lmd_mouth_iod_audio_driven": aud.get("lmd_mouth_iod"),
                           "render_fps": v.get("speed", {}).get("render_fps"),
                           "motion_realtime_factor": v.get("speed", {}).get("motion_realtime_factor")},
            "audio": report.get("audio"), "skipped": report.get("skipped"), "notes": report.get("notes")}


# --- stages: speed -----------------------------------------------------------------------------------------

def stage_step_times(b: Bench) -> dict:
    """One training step of each model, timed as the trainers run it (`geneface.motion.train`,
    `geneface.render.train`), from train_all's trained models, on the person's data."""
    motion, motion_settings = time_motion_steps(b)
    render, render_settings, precision = time_render_steps(b)
    return {"models": {**motion, **render}, "motion": motion_settings, "render": render_settings,
            "render_precision": precision}


def time_motion_steps(b: Bench) -> tuple[dict, dict]:
    """The SyncNet, generator (with its SyncNet loss) and postnet + discriminator steps that `train_motion` and
    `train_postnet` run (`geneface.motion.train.syncnet_step`, ...), with their default batch and window:
    ({model: times}, settings)."""
    a, dev = b.args, b.device
    cfg, pcfg = MotionTrainConfig(), PostnetTrainConfig()
    motion = MotionModel.load(b.person / "motion", dev)
    sampler = WindowSampler(ClipSet(load_clips([b.person / "data"], motion.feature_kind, ("train",))),
                            cfg.window, cfg.batch_size, seed=0)
    batches = sampler.batches(dev)
    rng = torch.Generator(device=dev).manual_seed(0)  # as the trainers: random draws on the device
    syncnet, generator = motion.syncnet.train().requires_grad_(True), motion.generator
    s_params = list(syncnet.parameters())
    s_opt = torch.optim.Adam(s_params, lr=cfg.syncnet_lr)
    times: dict[str, dict] = {}
    times["syncnet"] = time_steps(lambda: syncnet_step(syncnet, syncnet.loss, next(batches), rng, s_opt, s_params,
                                                       cfg), dev, a.warmup_steps, a.timing_steps)
    syncnet.eval().requires_grad_(False)
    generator.train().requires_grad_(True)
    g_params = list(generator.parameters())
    g_opt = torch.optim.Adam(g_params, lr=cfg.lr)
    times["generator"] = time_steps(lambda: generator_step(generator.loss, next(batches), syncnet, rng, g_opt,
                                                           g_params, cfg), dev, a.warmup_steps, a.timing_steps)
    generator.eval().requires_grad_(False)
    p_cfg = preset(motion.info.get("preset") or "geneface", motion.feature_dim)[2]
    postnet, disc = Postnet(p_cfg).to(dev), Discriminator(p_cfg).to(dev)
    postnet.motion_scale.copy_(generator.motion_scale)
    disc.motion_scale.copy_(generator.motion_scale)
    refiner = (postnet, postnet.loss, torch.optim.RMSprop(postnet.parameters(), lr=pcfg.lr))
    critic = (disc, disc.loss, torch.optim.RMSprop(disc.parameters(), lr=pcfg.disc_lr))
    times["postnet"] = time_steps(lambda: postnet_step(refiner, critic, generator, syncnet, next(batches), None, rng,
                                                       pcfg), dev, a.warmup_steps, a.timing_steps)
    return times, {"preset": motion.info.get("preset"), "batch_size": cfg.batch_size, "window": cfg.window,
                   "syncnet_pairs": cfg.syncnet_pairs}


def time_render_steps(b: Bench) -> tuple[dict, dict, dict]:
    """The renderer's head and torso steps (`RenderTrainer.train_step`) on train_all's trained model (its
    occupancy grid already carved and pruned), with the trainer's data, settings and precision:
    ({model: times}, settings, precision)."""
    a, dev = b.args, b.device
    trainer = RenderTrainer(b.person / "data", b.work / "timing_run",
                            RenderTrainConfig(size=b.size, rays_per_frame=a.rays), dev, progress=False)
    c = trainer.config
    trainer.model = PersonRenderer.load(b.person / "render", dev).model.train().requires_grad_(True)
    trainer.model.amp_dtype = trainer.amp_dtype
    scaler = trainer.grad_scaler()
    gen = torch.Generator(device=dev).manual_seed(0)
    times: dict[str, dict] = {}
    for phase in ("head", "torso"):
        opt = trainer.optimizer(phase)
        times[f"render_{phase}"] = time_steps(lambda p=phase, o=opt: trainer.train_step(p, o, scaler, gen), dev,
                                              a.warmup_steps, a.timing_steps)
    settings = {"size": c.size, "frames_per_step": c.frames_per_step, "rays_per_frame": c.rays_per_frame,
                "torso_rays_factor": c.torso_rays_factor, "perceptual_loss": trainer.perceptual is not None}
    return times, settings, {"precision": c.precision, "amp_dtype": dtype_name(trainer.amp_dtype)}


def _poses_and_windows(b: Bench) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Every frame's camera [T, 4, 4] and landmark window [T, 5, 68, 3] of the person's dataset, and its
    validation frames."""
    ds = PersonDataset(b.person / "data")
    c2w = torch.from_numpy(np.asarray(ds.pose["c2w"], np.float32))
    windows = PersonRenderer.windows(torch.from_numpy(np.asarray(ds.motion["offsets"], np.float32)))
    return c2w, windows, ds.split("val")


def stage_render_fps(b: Bench) -> dict:
    """Frames/s of `PersonRenderer.render` at --fps-size for each batch size (after a warm-up batch, at least
    --fps-seconds and 3 batches, synchronised), and the peak GPU memory of each."""
    a, dev = b.args, b.device
    renderer = PersonRenderer.load(b.person / "render", dev)
    c2w, windows, _ = _poses_and_windows(b)
    c2w, windows = c2w.to(dev), windows.to(dev)
    batches: dict[str, dict] = {}
    for batch in a.fps_batches:
        cursor = 0

        def one() -> None:
            nonlocal cursor
            idx = torch.arange(cursor, cursor + batch, device=dev) % len(c2w)
            renderer.render(c2w[idx], windows[idx], size=a.fps_size)
            cursor += batch

        one()
        synchronize(dev)
        reset_peak_memory(dev)
        times = []
        start = time.perf_counter()
        while time.perf_counter() - start < a.fps_seconds or len(times) < 3:
            t0 = time.perf_counter()
            one()
            synchronize(dev)
            times.append(time.perf_counter() - t0)
        batches[str(batch)] = {"fps": batch * len(times) / sum(times), "batches": len(times),
                               "median_batch_ms": 1000 * statistics.median(times),
                               "cuda_peak_mib": peak_memory_mib(dev)}
    return {"size": a.fps_size, "trained_size": renderer.size, "batches": batches,
            "precision": precision_of(renderer)}


def stage_device_vs_cpu(b: Bench) -> dict:
    """PSNR of the device's render against a CPU render: the same model file, the same validation cameras and
    landmark windows, at the trained size. On a CPU run both renders are the CPU's (identical: infinite PSNR)."""
    a = b.args
    c2w, windows, val = _poses_and_windows(b)
    idx = torch.from_numpy(val[: a.psnr_frames] if len(val) else np.arange(a.psnr_frames))
    on_device = PersonRenderer.load(b.person / "render", b.device)
    on_cpu = PersonRenderer.load(b.person / "render", "cpu")
    x = on_device.render(c2w[idx], windows[idx]).rgb.float().cpu()
    y = on_cpu.render(c2w[idx], windows[idx]).rgb.float()
    mse = float(((x - y) ** 2).mean())
    value = psnr(mse)
    to8 = lambda t: (t.clamp(0, 1) * 255).round().to(torch.uint8)  # noqa: E731
    return {"frames": len(idx), "size": on_cpu.size, "mse": mse,
            "psnr_db": value if math.isfinite(value) else None, "psnr_infinite": math.isinf(value),
            "identical": bool(torch.equal(x, y)), "max_abs_diff": float((x - y).abs().max()),
            "pixels_differing_8bit": float((to8(x) != to8(y)).any(-1).float().mean()),
            "precision_device": precision_of(on_device), "compared": f"{b.device.type} vs cpu"}


# --- main --------------------------------------------------------------------------------------------------

STAGES: list[tuple[str, Callable[[Bench], dict], tuple[str, ...]]] = [
    ("synth", stage_synth, ()),
    ("train_all", stage_train_all, ("synth",)),
    ("interrupt", stage_interrupt, ("train_all",)),
    ("postnet", stage_postnet, ("train_all",)),
    ("infer", stage_infer, ("train_all",)),
    ("evaluate", stage_evaluate, ("train_all",)),
    ("step_times", stage_step_times, ("train_all",)),
    ("render_fps", stage_render_fps, ("train_all",)),
    ("device_vs_cpu", stage_device_vs_cpu, ("train_all",)),
]


def main() -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="where to run")
    ap.add_argument("--size", type=int, default=None, help="dataset and renderer frame size (default: the device's)")
    ap.add_argument("--clip-size", type=int, default=None, help="synthetic clip size (default: max(256, --size))")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of the synthetic clip")
    ap.add_argument("--motion-preset", default=None, help="audio2motion sizes (default: the device's)")
    ap.add_argument("--motion-steps", type=int, default=200, help="SyncNet and generator steps of train_all")
    ap.add_argument("--render-steps", type=int, default=300, help="renderer steps of train_all")
    ap.add_argument("--rays", type=int, default=None, help="renderer rays per frame (default: the device's)")
    ap.add_argument("--postnet-steps", type=int, default=100, help="postnet steps")
    ap.add_argument("--interrupt-steps", type=int, default=200,
                    help="steps of the interrupted render run (it is stopped after 10-20 of them)")
    ap.add_argument("--interrupt-timeout", type=float, default=300.0, help="seconds to wait for its first steps")
    ap.add_argument("--infer-batch", type=int, default=16, help="frames rendered at once by infer")
    ap.add_argument("--timing-steps", type=int, default=5, help="timed training steps per model (the median)")
    ap.add_argument("--warmup-steps", type=int, default=2, help="untimed steps before them")
    ap.add_argument("--fps-size", type=int, default=512, help="rendering size of the frames/s measures")
    ap.add_argument("--fps-batches", type=int, nargs="+", default=[1, 4, 16], help="batch sizes of those")
    ap.add_argument("--fps-seconds", type=float, default=3.0, help="seconds of rendering per batch size")
    ap.add_argument("--psnr-frames", type=int, default=2, help="frames rendered on both the device and the CPU")
    ap.add_argument("--budget-seconds", type=float, default=420.0,
                    help="a stage that would start after this many seconds is skipped (and recorded so)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--progress", action="store_true", help="show the progress bars of the stages")
    common.add_common_args(ap, "gpu")
    args = ap.parse_args()
    if args.quick:
        args.size, args.clip_size, args.motion_preset = 64, 256, "tiny"
        args.motion_steps, args.render_steps, args.postnet_steps, args.interrupt_steps = 20, 30, 10, 40
        args.timing_steps, args.warmup_steps = 3, 1
        args.fps_size, args.fps_batches, args.fps_seconds, args.psnr_frames = 64, [1, 2, 4], 1.0, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    bench = Bench(args, device)
    print(f"device: {device} ({bench.accelerator.get('name', 'no GPU')}), size {bench.size} px, "
          f"result {bench.name}.json", flush=True)
    for name, fn, needs in STAGES:
        bench.run_stage(name, fn, needs)

    common.print_table(["stage", "status", "seconds", "CUDA peak MiB", "error"],
                       [(s["name"], s["status"], s["seconds"], s["cuda_peak_mib"], (s["error"] or "")[:70])
                        for s in bench.stages], title=f"stages on {device}", digits=1)
    summary = bench.summary()
    cmp = bench.details("device_vs_cpu")
    if cmp.get("psnr_infinite"):  # JSON has no infinity: the file says null and "identical"
        summary = {**summary, "device_vs_cpu_psnr_db": "inf (identical renders)"}
    common.print_summary(summary)
    return 0 if all(s["status"] == "passed" for s in bench.stages) else 1


if __name__ == "__main__":
    sys.exit(main())
