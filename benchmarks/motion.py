"""Benchmark the motion models: audio2motion speed, training speed, and lip sync on speech never heard.

    python benchmarks/motion.py [--preset small] [--syncnet-steps 1000] [--steps 2000] [--threads 2]
                                [--train-seconds 90] [--kinds mel,whisper] [--work bench_out/motion] [--quick]

1. Inference speed on the CPU in multiples of real time (target: at least 100x), for the model alone and
   with the `mel` features, for the `geneface` (original sizes) and `small` presets.
2. Training steps per second of the SyncNet and the generator (batch 16, 64-frame windows), best of 8.
3. Quality: a synthetic talking head (the project's generator) speaking espeak-ng sentences with two voices
   is processed and trained on; a second clip with another voice and other sentences is processed too, and
   the model's landmarks for its audio are compared with its ground truth: mouth landmark distance to the
   processed landmarks (inter-ocular distances), correlation of the inner-lip opening with the generator's
   true `mouth_open`, and the SyncNet confidence of prediction and of the real landmarks. For each feature
   kind that is installed (`mel` always; `whisper` with `pip install 'geneface[whisper]'`).

Prints a table and writes benchmarks/results/motion.json.
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
import torch

from geneface.dataset import PersonDataset
from geneface.errors import GeneFaceError
from geneface.fileio import read_npz
from geneface.motion import Audio2Motion, MotionModel, SyncNet, mouth_opening
from geneface.motion.data import pitch_from_mel
from geneface.motion.presets import preset
from geneface.synth.corpus import SENTENCES
from geneface.motion.train import MotionTrainConfig, train_motion

TRAIN_TEXTS = list(SENTENCES[:12])
TRAIN_VOICES = [("en-us", 150), ("en-gb", 165), ("en-us+m3", 140)]
TEST_TEXTS = list(SENTENCES[12:15])
TEST_VOICE = ("en-gb-x-rp+f3", 135)  # a voice and sentences the model never heard
TARGET_REALTIME = 100.0


def speech(texts: list[str], voices: list[tuple[str, int]], seconds: float | None, seed: int) -> np.ndarray:
    from geneface.synth import speak

    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    total, i = 0, 0
    while True:
        voice, speed = voices[i % len(voices)]
        parts += [speak(texts[i % len(texts)], voice=voice, speed=speed),
                  np.zeros(int(16000 * rng.uniform(0.2, 0.6)), np.float32)]
        total += len(parts[-2]) + len(parts[-1])
        i += 1
        if (seconds is None and i == len(texts)) or (seconds is not None and total >= seconds * 16000):
            break
    audio = np.concatenate(parts)
    return audio[: int(seconds * 16000)] if seconds is not None else audio


def make_dataset(work: Path, name: str, audio: np.ndarray, kinds: list[str], seed: int, size: int
                 ) -> tuple[Path, Path]:
    """Synthesise and process a clip (cached in ``work``); returns (dataset folder, truth file)."""
    from geneface.process.pipeline import ProcessConfig, process
    from geneface.synth import SynthConfig, synthesize

    clip = work / f"{name}.mp4"
    truth = work / f"{name}.truth.npz"
    if not truth.exists():
        start = time.perf_counter()
        synthesize(clip, audio=audio, config=SynthConfig(size=size, seed=seed, progress=False))
        print(f"synthesised {clip.name} ({len(audio) / 16000:.0f} s) in {time.perf_counter() - start:.0f} s")
    out = work / f"{name}_data"
    have = PersonDataset(out).meta.get("features", []) if (out / "meta.json").exists() else []
    if not set(kinds) <= set(have):
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        process(clip, out, ProcessConfig(size=size, features=tuple(kinds)))
        print(f"processed {clip.name} in {time.perf_counter() - start:.0f} s")
    return out, truth


def best_time(fn, repeats: int) -> float:
    """The fastest of ``repeats`` runs (the least disturbed by other processes on a shared machine)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(min(times))


def inference_speed(seconds: float = 60.0) -> dict:
    from geneface.features import extract_features

    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    t = int(seconds * 25)
    feature_time = best_time(lambda: extract_features("mel", audio, num_frames=t), 3)
    feats = extract_features("mel", audio, num_frames=t)
    rows = {}
    for name in ("geneface", "small"):
        s, g, _ = preset(name, 83)
        model = MotionModel("mel", SyncNet(s), Audio2Motion(g))
        model.predict(feats[:200])  # warm-up
        model_time = best_time(lambda: model.predict(feats, seed=0), 5)
        rows[name] = {"params_M": round(sum(p.numel() for p in model.generator.parameters()) / 1e6, 2),
                      "model_x_realtime": seconds / model_time,
                      "with_mel_x_realtime": seconds / (model_time + feature_time)}
    return {"audio_seconds": seconds, "mel_x_realtime": seconds / feature_time, "presets": rows}


def training_speed(steps: int = 8) -> dict:
    gen_rng = torch.Generator().manual_seed(0)
    b, w = 16, 64
    feats, pitch = torch.randn(b, 2 * w, 83), torch.full((b, 2 * w), 150.0)
    offsets, mask = torch.randn(b, w, 68, 3) * 0.05, torch.ones(b, w)
    rows = {}
    for name in ("geneface", "small"):
        s, g, _ = preset(name, 83)
        syncnet, gen = SyncNet(s), Audio2Motion(g)
        s_opt, g_opt = torch.optim.Adam(syncnet.parameters()), torch.optim.Adam(gen.parameters())

        def syncnet_step():
            audio, mouth, label = syncnet.sample_pairs(feats, offsets, mask, 512, gen_rng)
            s_opt.zero_grad()
            syncnet.loss(audio, mouth, label)["total"].backward()
            s_opt.step()

        def generator_step(sync: bool):
            g_opt.zero_grad()
            losses = gen.loss(feats, pitch, offsets, mask, syncnet=syncnet if sync else None, generator=gen_rng)
            losses["total"].backward()
            g_opt.step()

        syncnet_step(), generator_step(True)  # warm-up
        rows[name] = {"syncnet_steps_per_s": 1 / best_time(syncnet_step, steps),
                      "generator_steps_per_s": 1 / best_time(lambda: generator_step(False), steps),
                      "generator_with_sync_steps_per_s": 1 / best_time(lambda: generator_step(True), steps)}
    return rows


def quality(kind: str, train_dir: Path, test_dir: Path, truth_file: Path, work: Path, args) -> dict:
    run = work / f"run_{kind}_{args.size}px_{args.preset}_{args.syncnet_steps}_{args.steps}"
    timing = run / "train_seconds.json"
    if not (run / "config.json").exists() or not timing.exists():
        shutil.rmtree(run, ignore_errors=True)
        start = time.perf_counter()
        train_motion([train_dir], run, kind=kind, preset_name=args.preset, device="cpu",
                     config=MotionTrainConfig(syncnet_steps=args.syncnet_steps, steps=args.steps, save_every=10 ** 9))
        timing.write_text(json.dumps(time.perf_counter() - start))
    train_seconds = json.loads(timing.read_text())
    model = MotionModel.load(run)
    test = PersonDataset(test_dir)
    feats = test.features(kind)
    pitch = pitch_from_mel(test.features("mel"))
    real = test.motion["offsets"]
    truth = read_npz(truth_file)["mouth_open"]
    n = min(len(real), len(truth))
    row = {"train_seconds": train_seconds, "val_metrics": model.info.get("metrics", {}),
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="model sizes trained for the quality rows")
    ap.add_argument("--syncnet-steps", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=2000, help="generator steps")
    ap.add_argument("--train-seconds", type=float, default=90.0, help="length of the training clip")
    ap.add_argument("--size", type=int, default=256, help="frame size of the synthetic clips and datasets")
    ap.add_argument("--kinds", default="mel,whisper", help="feature kinds to compare (uninstalled ones are skipped)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--work", type=Path, default=Path("bench_out/motion"), help="scratch folder")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "motion.json")
    ap.add_argument("--quick", action="store_true", help="a smoke run: short clips, few steps")
    args = ap.parse_args()
    if args.quick:
        args.train_seconds, args.syncnet_steps, args.steps = 20.0, 30, 30
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)

    # which kinds can run here
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

    results: dict = {"conditions": {
        "machine": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "load_average_at_start": os.getloadavg(), "preset": args.preset,
        "syncnet_steps": args.syncnet_steps, "generator_steps": args.steps, "train_seconds": args.train_seconds,
        "size": args.size,
        "skipped_kinds": skipped}}
    print("== inference speed")
    results["inference"] = inference_speed()
    print("== training speed")
    results["training"] = training_speed()

    print("== data")
    train_dir, _ = make_dataset(args.work, f"train_{int(args.train_seconds)}s_{args.size}px",
                                speech(TRAIN_TEXTS, TRAIN_VOICES, args.train_seconds, seed=0), data_kinds, seed=1,
                                size=args.size)
    test_dir, truth = make_dataset(args.work, f"test_unheard_{args.size}px",
                                   speech(TEST_TEXTS, [TEST_VOICE], None, seed=1), data_kinds, seed=2, size=args.size)
    results["quality"] = {}
    for kind in kinds:
        print(f"== quality: {kind}")
        results["quality"][kind] = quality(kind, train_dir, test_dir, truth, args.work, args)
    results["conditions"]["load_average_at_end"] = os.getloadavg()

    # table
    inf = results["inference"]
    print(f"\nCPU, {torch.get_num_threads()} threads; load average at start "
          f"{results['conditions']['load_average_at_start'][0]:.1f}")
    print(f"{'preset':<10}{'params':>9}{'motion xRT':>12}{'+mel xRT':>10}{'sync st/s':>11}{'gen st/s':>10}"
          f"{'gen+sync st/s':>15}")
    for name, row in inf["presets"].items():
        tr = results["training"][name]
        print(f"{name:<10}{row['params_M']:>8.2f}M{row['model_x_realtime']:>12.0f}{row['with_mel_x_realtime']:>10.0f}"
              f"{tr['syncnet_steps_per_s']:>11.2f}{tr['generator_steps_per_s']:>10.2f}"
              f"{tr['generator_with_sync_steps_per_s']:>15.2f}")
    print(f"(target: audio2motion at least {TARGET_REALTIME:.0f}x real time; mel features alone "
          f"{inf['mel_x_realtime']:.0f}x)")
    print(f"\nunheard voice and sentences ({args.preset} preset, {args.syncnet_steps} SyncNet + {args.steps} "
          f"generator steps, {args.train_seconds:.0f} s of training video at {args.size} px):")
    print(f"{'kind':<9}{'temp':>5}{'mouth LMD':>11}{'r(truth)':>10}{'r(proc.)':>10}{'sync pred':>11}"
          f"{'sync real':>11}{'offset':>8}{'train s':>9}")
    for kind, row in results["quality"].items():
        for temperature in ("t0", "t1"):
            q = row[temperature]
            print(f"{kind:<9}{temperature[1:]:>5}{q['mouth_lmd']:>11.4f}{q['mouth_corr_truth']:>10.3f}"
                  f"{q['mouth_corr_processed']:>10.3f}{q['sync_confidence']:>11.3f}{row['real_sync_confidence']:>11.3f}"
                  f"{q['sync_offset']:>8d}{row['train_seconds']:>9.0f}")
    ceiling = next(iter(results["quality"].values()), {}).get("processed_vs_truth_corr")
    if ceiling is not None:
        print(f"(the test clip's processed landmarks themselves reach r(truth) = {ceiling:.3f})")
    for kind in skipped:
        print(f"{kind:<9} skipped: not installed")
    if not args.quick:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
