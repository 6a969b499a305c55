"""Benchmark the motion models: audio2motion speed, REAL training speed, and lip sync on speech never heard.

    python benchmarks/motion.py [--preset small] [--syncnet-steps 1000] [--steps 2000] [--train-seconds 90]
                                [--size 256] [--kinds mel,whisper] [--threads 2]
                                [--speed-presets small] [--speed-syncnet-steps 200] [--speed-steps 400]
                                [--work bench_out/motion] [--out DIR] [--fresh] [--quick]

Data: a synthetic talking head (the project's generator) speaking espeak-ng sentences with three voices
(``--train-seconds``, processed at ``--size``), and a test clip of another voice saying other sentences. Both
are cached in WORK, keyed on every argument and the package source.

1. Inference speed on the CPU in multiples of real time (target: at least 100x) of the `geneface` (original
   sizes) and `small` presets, the model alone and with the `mel` features: the MEAN of --inference-repeats
   calls on --inference-seconds of speech, after one warm-up call.
2. Training speed: `train_motion` itself runs on the processed training clip on disk (batch 16, 64-frame
   windows, the defaults), --speed-syncnet-steps SyncNet and --speed-steps generator steps, always from scratch.
   Steps/s are the mean over each stage from the times its train_log.jsonl lines appear (so the setup, data
   loading, the SyncNet check between the stages and the final measures are excluded, as is the first log
   interval); the generator is reported without the SyncNet loss (its first quarter) and with it (the rest;
   the loss is forced on with sync_min_auc=0 so that it is timed). From these and the remaining (non-step)
   wall time, the time of a default `train motion` run (4000 SyncNet + 8000 generator steps) and of the demo's
   (`--motion-steps 1500`: 1500 + 1500) is estimated, assuming the SyncNet loss is on.
3. Quality, for each installed feature kind of --kinds (`mel` always; `whisper` with
   `pip install 'geneface[whisper]'`): a model (--preset, --syncnet-steps, --steps; cached) predicts the test
   clip's landmarks from its audio: mouth landmark distance to the processed landmarks (inter-ocular
   distances), correlation (r) of the predicted inner-lip opening with the generator's true `mouth_open`,
   and the SyncNet confidence of prediction and of the real landmarks; at temperature 0 and 1.

Prints tables and writes motion.json (see benchmarks/common.py for the layout; the README's figures are the
fields of "summary").
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import fields
from pathlib import Path

import common
import numpy as np
import torch

from geneface.constants import AUDIO_RATE
from geneface.dataset import PersonDataset
from geneface.errors import GeneFaceError
from geneface.fileio import read_npz
from geneface.motion import Audio2Motion, MotionModel, SyncNet, mouth_opening
from geneface.motion.data import pitch_from_mel
from geneface.motion.presets import preset
from geneface.motion.train import MotionTrainConfig, train_motion
from geneface.synth.corpus import SENTENCES

TRAIN_TEXTS = list(SENTENCES[:12])
TRAIN_VOICES = [("en-us", 150), ("en-gb", 165), ("en-us+m3", 140)]
TEST_TEXTS = list(SENTENCES[12:15])
TEST_VOICE = ("en-gb-x-rp+f3", 135)  # a voice and sentences the model never heard
TARGET_REALTIME = 100.0
DEMO_STEPS = (1500, 1500)
"""SyncNet and generator steps of the demo's `train all --motion-steps 1500`."""


def motion_config(**values) -> MotionTrainConfig:
    """A MotionTrainConfig of ``values``, leaving out (and naming) any setting this version does not have."""
    known = {f.name for f in fields(MotionTrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        print(f"note: MotionTrainConfig has no {', '.join(unknown)}; left at the defaults", flush=True)
    return MotionTrainConfig(**{k: v for k, v in values.items() if k in known})


# --- data ------------------------------------------------------------------------------------------------

def speech(texts: list[str], voices: list[tuple[str, int]], seconds: float | None, seed: int) -> np.ndarray:
    from geneface.synth import speak

    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    total, i = 0, 0
    while True:
        voice, speed = voices[i % len(voices)]
        parts += [speak(texts[i % len(texts)], voice=voice, speed=speed),
                  np.zeros(int(AUDIO_RATE * rng.uniform(0.2, 0.6)), np.float32)]
        total += len(parts[-2]) + len(parts[-1])
        i += 1
        if (seconds is None and i == len(texts)) or (seconds is not None and total >= seconds * AUDIO_RATE):
            break
    audio = np.concatenate(parts)
    return audio[: int(seconds * AUDIO_RATE)] if seconds is not None else audio


def make_dataset(folder: Path, audio: np.ndarray, kinds: list[str], seed: int, size: int) -> dict:
    """Synthesise and process a clip into ``folder`` (clip.mp4, clip.truth.npz, data/)."""
    from geneface.process.pipeline import ProcessConfig, process
    from geneface.synth import SynthConfig, synthesize

    start = time.perf_counter()
    synthesize(folder / "clip.mp4", audio=audio, config=SynthConfig(size=size, seed=seed, progress=False))
    synth = time.perf_counter() - start
    start = time.perf_counter()
    process(folder / "clip.mp4", folder / "data", ProcessConfig(size=size, features=tuple(kinds)))
    print(f"synthesised {len(audio) / AUDIO_RATE:.0f} s in {synth:.0f} s, processed in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return {"audio_seconds": round(len(audio) / AUDIO_RATE, 2), "synth_seconds": round(synth, 1),
            "process_seconds": round(time.perf_counter() - start, 1)}


# --- 1. inference speed ----------------------------------------------------------------------------------

def inference_speed(seconds: float, repeats: int) -> dict:
    from geneface.features import extract_features
    from geneface.synth.speech import default_speech, fit_length

    audio = fit_length(default_speech(), seconds)
    t = int(seconds * 25)
    extract_features("mel", audio[: AUDIO_RATE], num_frames=25)  # warm-up
    mel = common.time_calls(lambda: extract_features("mel", audio, num_frames=t), repeats)
    feats = extract_features("mel", audio, num_frames=t)
    pitch = pitch_from_mel(feats)
    rows = {}
    for name in ("geneface", "small"):
        s, g, _ = preset(name, feats.shape[1])
        model = MotionModel("mel", SyncNet(s), Audio2Motion(g))
        model.predict(feats[:200], pitch[:200])  # warm-up
        calls = common.time_calls(lambda: model.predict(feats, pitch, seed=0), repeats)
        rows[name] = {"params_M": round(sum(p.numel() for p in model.generator.parameters()) / 1e6, 2),
                      "model_calls": calls,
                      "model_x_realtime": seconds / calls["mean_s"],
                      "with_mel_x_realtime": seconds / (calls["mean_s"] + mel["mean_s"])}
    return {"audio_seconds": seconds, "mel_calls": mel, "mel_x_realtime": seconds / mel["mean_s"], "presets": rows}


# --- 2. training speed -----------------------------------------------------------------------------------

class LogWatcher(threading.Thread):
    """Stamps each line appended to a JSON-lines file with the time it was seen (polled every ``interval`` s)."""

    def __init__(self, path: Path, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.path, self.interval = path, interval
        self.lines: list[tuple[float, dict]] = []
        self._halt = threading.Event()
        self._offset, self._partial = 0, ""

    def run(self) -> None:
        while not self._halt.is_set():
            self._poll()
            self._halt.wait(self.interval)
        self._poll()

    def stop(self) -> list[tuple[float, dict]]:
        self._halt.set()
        self.join()
        return self.lines

    def _poll(self) -> None:
        try:
            with open(self.path) as f:
                f.seek(self._offset)
                chunk = f.read()
                self._offset = f.tell()
        except FileNotFoundError:
            return
        now = time.perf_counter()
        *complete, self._partial = (self._partial + chunk).split("\n")
        for line in complete:
            try:
                self.lines.append((now, json.loads(line)))
            except ValueError:
                pass


def stage_points(lines: list[tuple[float, dict]]) -> dict[str, list[tuple[float, int]]]:
    """(time, step) of each log line, per stage (a line without a stage name starts a new stage when its step
    number goes down)."""
    out: dict[str, list[tuple[float, int]]] = {}
    prev, index = None, 0
    for t, rec in lines:
        if "step" not in rec:
            continue
        step = int(rec["step"])
        name = rec.get("stage") or rec.get("phase")
        if name is None:
            index += prev is not None and step <= prev
            name = f"stage{index}"
        out.setdefault(name, []).append((t, step))
        prev = step
    return out


def steps_per_second(points: list[tuple[float, int]], lo: int | None = None, hi: int | None = None) -> dict:
    """Mean steps/s between the first and the last log line with lo <= step <= hi."""
    pts = [(t, s) for t, s in points if (lo is None or s >= lo) and (hi is None or s <= hi)]
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        return {"steps": 0, "seconds": 0.0, "steps_per_s": None}
    (t0, s0), (t1, s1) = pts[0], pts[-1]
    return {"from_step": s0, "to_step": s1, "steps": s1 - s0, "seconds": t1 - t0, "steps_per_s": (s1 - s0) / (t1 - t0)}


def estimate_seconds(rates: dict, syncnet_steps: int, steps: int, sync_start: float,
                     other_seconds: float) -> float | None:
    """Seconds of a run of ``syncnet_steps`` + ``steps`` at the measured mean rates, plus ``other_seconds``."""
    s, g0, g1 = rates["syncnet"], rates["generator_without_sync"], rates["generator_with_sync"]
    if not (s and g0 and g1):
        return None
    sync_from = int(sync_start * steps)
    return syncnet_steps / s + sync_from / g0 + (steps - sync_from) / g1 + other_seconds


def training_speed(name: str, data: Path, work: Path, syncnet_steps: int, steps: int) -> dict:
    run = work / f"speed_{name}"
    shutil.rmtree(run, ignore_errors=True)
    cfg = motion_config(syncnet_steps=syncnet_steps, steps=steps, sync_min_auc=0.0, log_every=5)
    watcher = LogWatcher(run / "train_log.jsonl")
    watcher.start()
    start = time.perf_counter()
    try:
        metrics = train_motion([data], run, kind="mel", preset_name=name, config=cfg, device="cpu")
    finally:
        lines = watcher.stop()
    wall = time.perf_counter() - start
    points = stage_points(lines)
    sync_start = getattr(cfg, "sync_start", 0.25)
    sync_from = int(sync_start * steps)
    gen = points.get("generator", [])
    stages = {"syncnet": steps_per_second(points.get("syncnet", [])),
              "generator": steps_per_second(gen),
              "generator_without_sync": steps_per_second(gen, hi=sync_from),
              "generator_with_sync": steps_per_second(gen, lo=sync_from)}
    rates = {k: v["steps_per_s"] for k, v in stages.items()}
    # wall time outside the steps (setup, data, the SyncNet check, the final measures, saving), extrapolating
    # each stage's mean rate to all of its steps
    in_steps = estimate_seconds(rates, syncnet_steps, steps, sync_start, 0.0)
    other = max(0.0, wall - in_steps) if in_steps is not None else None
    d = MotionTrainConfig()
    default = estimate_seconds(rates, d.syncnet_steps, d.steps, sync_start, other or 0.0)
    demo = estimate_seconds(rates, *DEMO_STEPS, sync_start, other or 0.0)
    return {"syncnet_steps": syncnet_steps, "generator_steps": steps, "sync_from_step": sync_from,
            "sync_loss_used": metrics.get("sync_loss_used"), "wall_seconds": wall, "other_seconds": other,
            "log_lines": len(lines), "stages": stages, "steps_per_s": rates,
            "estimated_minutes_default_run": None if default is None else default / 60,
            "default_run_steps": [d.syncnet_steps, d.steps],
            "estimated_minutes_demo_run": None if demo is None else demo / 60, "demo_run_steps": list(DEMO_STEPS)}


# --- 3. quality ------------------------------------------------------------------------------------------

def quality(kind: str, run: Path, test_dir: Path, truth_file: Path) -> dict:
    model = MotionModel.load(run)
    test = PersonDataset(test_dir)
    feats = test.features(kind)
    pitch = pitch_from_mel(test.features("mel"))
    real = test.motion["offsets"]
    truth = read_npz(truth_file)["mouth_open"]
    n = min(len(real), len(truth))
    row = {"val_metrics": model.info.get("metrics", {}),
           "real_sync_confidence": model.score(feats, real).mean_confidence}
    for temperature in (0.0, 1.0):
        pred = model.predict(feats, pitch, temperature=temperature, seed=0)
        score = model.score(feats, pred)
        row[f"t{temperature:g}"] = {
            "mouth_lmd": float(np.linalg.norm(pred[:n, 48:68] - real[:n, 48:68], axis=-1).mean()),
            "mouth_corr_truth": float(np.corrcoef(mouth_opening(pred[:n]), truth[:n])[0, 1]),
            "mouth_corr_processed": float(np.corrcoef(mouth_opening(pred[:n]), mouth_opening(real[:n]))[0, 1]),
            "sync_confidence": score.mean_confidence,
            "sync_offset": score.offset,
        }
    row["processed_vs_truth_corr"] = float(np.corrcoef(mouth_opening(real[:n]), truth[:n])[0, 1])
    return row


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--preset", default="small", help="model sizes trained for the quality rows")
    ap.add_argument("--syncnet-steps", type=int, default=1000, help="SyncNet steps of the quality models")
    ap.add_argument("--steps", type=int, default=2000, help="generator steps of the quality models")
    ap.add_argument("--train-seconds", type=float, default=90.0, help="length of the training clip")
    ap.add_argument("--size", type=int, default=256, help="frame size of the synthetic clips and datasets")
    ap.add_argument("--kinds", default="mel,whisper", help="feature kinds to compare (uninstalled ones are skipped)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--speed-presets", default="small",
                    help="presets whose training speed is measured (comma-separated: small,geneface)")
    ap.add_argument("--speed-syncnet-steps", type=int, default=200, help="SyncNet steps of each speed run")
    ap.add_argument("--speed-steps", type=int, default=400, help="generator steps of each speed run")
    ap.add_argument("--inference-seconds", type=float, default=60.0, help="speech length of the inference speed")
    ap.add_argument("--inference-repeats", type=int, default=5, help="timed inference calls (their mean is reported)")
    common.add_common_args(ap, "motion")
    args = ap.parse_args()
    if args.quick:
        args.train_seconds, args.size, args.syncnet_steps, args.steps = 20.0, 128, 30, 40
        args.speed_syncnet_steps, args.speed_steps, args.inference_seconds, args.inference_repeats = 20, 40, 10.0, 2
    torch.set_num_threads(args.threads)
    machine = common.machine_info()
    cache = common.Cache(args)
    work = Path(args.work)

    from geneface.features import get_extractor

    kinds, skipped = [], {}
    for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
        try:
            get_extractor(kind)
            kinds.append(kind)
        except GeneFaceError as e:
            skipped[kind] = str(e)
            print(f"skipping {kind}: {e}")
    data_kinds = sorted(set(kinds) | {"mel"})

    print(f"== 1. inference speed ({args.inference_seconds:g} s of speech, mean of {args.inference_repeats})",
          flush=True)
    inference = inference_speed(args.inference_seconds, args.inference_repeats)

    print("== data", flush=True)
    train, train_info = cache.step("train_clip", lambda f: make_dataset(
        f, speech(TRAIN_TEXTS, TRAIN_VOICES, args.train_seconds, seed=0), data_kinds, seed=1, size=args.size))
    test, test_info = cache.step("test_clip", lambda f: make_dataset(
        f, speech(TEST_TEXTS, [TEST_VOICE], None, seed=1), data_kinds, seed=2, size=args.size))

    training = {}
    for name in [p.strip() for p in args.speed_presets.split(",") if p.strip()]:
        print(f"== 2. training speed: {name} preset, {args.speed_syncnet_steps} SyncNet + {args.speed_steps} "
              f"generator steps from {train / 'data'} (always from scratch)", flush=True)
        training[name] = training_speed(name, train / "data", work, args.speed_syncnet_steps, args.speed_steps)

    results_quality = {}
    for kind in kinds:
        print(f"== 3. quality: {kind} ({args.preset} preset, {args.syncnet_steps} + {args.steps} steps)", flush=True)

        def train_run(folder: Path, kind: str = kind) -> dict:
            start = time.perf_counter()
            train_motion([train / "data"], folder / "run", kind=kind, preset_name=args.preset, device="cpu",
                         config=motion_config(syncnet_steps=args.syncnet_steps, steps=args.steps))
            return {"train_seconds": round(time.perf_counter() - start, 1)}

        run, info = cache.step(f"quality_{kind}", train_run)
        row = quality(kind, run / "run", test / "data", test / "clip.truth.npz")
        row["train_seconds"] = {"seconds": info["train_seconds"], "reused": cache.reused(f"quality_{kind}")}
        results_quality[kind] = row

    # summary: one field per README figure
    summary: dict = {"mel_features_x_realtime": round(inference["mel_x_realtime"], 1)}
    for name, row in inference["presets"].items():
        summary[f"{name}_model_x_realtime"] = round(row["model_x_realtime"], 1)
        summary[f"{name}_with_mel_x_realtime"] = round(row["with_mel_x_realtime"], 1)
    for name, row in training.items():
        r = row["steps_per_s"]
        summary[f"{name}_train_syncnet_steps_per_s"] = r["syncnet"]
        summary[f"{name}_train_generator_steps_per_s"] = r["generator"]
        summary[f"{name}_train_generator_with_sync_steps_per_s"] = r["generator_with_sync"]
        summary[f"{name}_train_estimated_minutes_default"] = row["estimated_minutes_default_run"]
        summary[f"{name}_train_estimated_minutes_demo"] = row["estimated_minutes_demo_run"]
    for kind, row in results_quality.items():
        summary[f"{kind}_unheard_mouth_corr_truth_t0"] = row["t0"]["mouth_corr_truth"]
        summary[f"{kind}_unheard_mouth_corr_truth_t1"] = row["t1"]["mouth_corr_truth"]
        summary[f"{kind}_unheard_mouth_lmd_t0"] = row["t0"]["mouth_lmd"]
    if results_quality:
        summary["unheard_processed_vs_truth_corr"] = next(iter(results_quality.values()))["processed_vs_truth_corr"]

    common.print_table(
        ["preset", "params M", "model x RT", "+mel x RT"],
        [(n, r["params_M"], r["model_x_realtime"], r["with_mel_x_realtime"]) for n, r in inference["presets"].items()],
        title=f"inference on the CPU, {args.threads} threads (target >= {TARGET_REALTIME:.0f}x real time; mel "
              f"features alone {inference['mel_x_realtime']:.0f}x), mean of {args.inference_repeats} calls", digits=1)
    common.print_table(
        ["preset", "SyncNet st/s", "gen st/s", "gen no-sync", "gen sync", "other s", "default run min", "demo run min"],
        [(n, r["steps_per_s"]["syncnet"], r["steps_per_s"]["generator"], r["steps_per_s"]["generator_without_sync"],
          r["steps_per_s"]["generator_with_sync"], r["other_seconds"], r["estimated_minutes_default_run"],
          r["estimated_minutes_demo_run"]) for n, r in training.items()],
        title=f"real training from disk ({args.speed_syncnet_steps} + {args.speed_steps} steps, batch 16, 64-frame "
              f"windows), mean steps/s; estimates for {MotionTrainConfig().syncnet_steps} + "
              f"{MotionTrainConfig().steps} (default) and {DEMO_STEPS[0]} + {DEMO_STEPS[1]} (demo) steps")
    common.print_table(
        ["kind", "temp", "mouth LMD", "r(truth)", "r(proc.)", "sync pred", "sync real", "offset", "train s"],
        [(k, t[1:], r[t]["mouth_lmd"], r[t]["mouth_corr_truth"], r[t]["mouth_corr_processed"],
          r[t]["sync_confidence"], r["real_sync_confidence"], r[t]["sync_offset"],
          f"{r['train_seconds']['seconds']:.0f}" + (" (cached)" if r["train_seconds"]["reused"] else ""))
         for k, r in results_quality.items() for t in ("t0", "t1")],
        title=f"unheard voice and sentences ({args.preset} preset, {args.syncnet_steps} SyncNet + {args.steps} "
              f"generator steps, {args.train_seconds:g} s of training video at {args.size} px)", digits=3)
    if results_quality:
        print(f"(the test clip's processed landmarks themselves reach r(truth) = "
              f"{summary['unheard_processed_vs_truth_corr']:.3f})")
    for kind, why in skipped.items():
        print(f"{kind}: skipped ({why})")
    common.print_summary(summary)
    common.write_result("motion", args, machine, summary, {
        "targets": {"x_realtime": TARGET_REALTIME}, "skipped_kinds": skipped,
        "data": {"train": train_info, "test": test_info},
        "inference": inference, "training": training, "quality": results_quality}, cache)


if __name__ == "__main__":
    main()
