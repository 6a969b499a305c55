"""Benchmark corpus preparation and a corpus-pretrained audio-to-motion prior on voices it never heard.

    python benchmarks/corpus.py [--speakers 12] [--clips 5] [--seconds 4] [--workers 2] [--preset small]
                                [--syncnet-steps 400] [--steps 800] [--postnet-steps 300] [--threads 1]
                                [--work bench_out/corpus] [--quick]

1. Preparation speed: a synthetic many-speaker corpus (`geneface.synth.corpus.make_corpus`: every speaker its
   own espeak-ng voice, face variation and manner) is prepared from scratch with 1 and with N worker processes
   (one thread each), each run in a fresh process: clips per minute, video frames per second, peak memory of
   the main process and of the largest worker.
2. Streaming: windows per second drawn by the speaker-balanced loader, bytes read per window, memory growth.
3. Quality: a target person (a voice and face not in the corpus) has a 60 s video, processed as
   `geneface train all` would. Three motion models are compared: one trained on the target person only, a
   prior pretrained on the corpus, and that prior adapted to the person with the postnet. They are measured on
   clips of a third, unseen voice (and on the target's own voice saying new sentences): correlation of the
   predicted inner-lip opening with the generator's true mouth opening, and mouth landmark distance to the
   tracked landmarks. Sentences of the test clips appear in no training data.

Prints a table and writes benchmarks/results/corpus.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TEST_SENTENCES = (
    "Heavy snow closed the mountain pass for three long days.",
    "The young violinist practised her scales before breakfast.",
    "A flock of geese flew south over the frozen marsh.",
    "Lemon juice and honey soothe a sore throat in winter.",
    "The carpenter measured twice and cut the oak board once.",
    "Our team finally solved the puzzle just after midnight.",
    "Purple lanterns floated gently down the dark canal.",
    "Never leave a campfire burning when you go to sleep.",
)
"""Sentences said only by the test clips."""

PREPARE_SCRIPT = """
import json, resource, sys, time
from geneface.corpus import prepare_corpus
root, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
s = prepare_corpus(root, out, workers=workers, progress=False)
s["wall"] = time.perf_counter() - start
s["maxrss_main_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
s["maxrss_worker_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print("RESULT " + json.dumps(s))
"""


def rss_mb() -> float:
    """Resident memory of this process now (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def prepare_speed(clips: Path, out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", PREPARE_SCRIPT, str(clips), str(out), str(workers)],
                            capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    s = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))[7:])
    n = sum(s["prepared"].values())
    return {"workers": workers, "clips": n, "ok": s["prepared"]["ok"], "frames": s["frames"],
            "seconds": round(s["wall"], 2), "clips_per_minute": round(60 * n / s["wall"], 1),
            "frames_per_second": round(s["frames"] / s["wall"], 1),
            "peak_rss_main_mb": round(s["maxrss_main_mb"], 1),
            "peak_rss_worker_mb": round(s["maxrss_worker_mb"], 1) if workers > 1 else None}


def loader_speed(prepared: Path, windows: int = 2000, window: int = 64) -> dict:
    from geneface.corpus.source import open_training_data

    data = open_training_data([prepared], "mel", val_fraction=0.1)
    rng = np.random.default_rng(0)
    data.source.sample(rng, window)
    before_bytes, before_rss = data.corpora[0].bytes_read, rss_mb()
    start = time.perf_counter()
    for _ in range(windows):
        data.source.sample(rng, window)
    seconds = time.perf_counter() - start
    pack_bytes = sum(p.stat().st_size for p in (prepared / "packs").iterdir())
    return {"windows_per_second": round(windows / seconds, 1),
            "bytes_per_window": (data.corpora[0].bytes_read - before_bytes) // windows,
            "pack_bytes": pack_bytes, "rss_growth_mb": round(rss_mb() - before_rss, 2)}


def person_video(work: Path, index: int, seconds: float, size: int) -> tuple[Path, Path]:
    """A ``seconds`` long video of synthetic speaker ``index`` saying corpus sentences, processed (cached)."""
    from geneface.process.pipeline import ProcessConfig, process
    from geneface.synth import SynthConfig, prepare, speak
    from geneface.synth.corpus import SENTENCES, speaker_style, styled_photo

    clip, data = work / "person.mp4", work / "person_data"
    if not (data / "meta.json").exists():
        style = speaker_style(index)
        rng = np.random.default_rng(index)
        parts, total = [], 0
        for i in rng.permutation(len(SENTENCES)):
            parts += [speak(SENTENCES[i], voice=style.voice, speed=style.speed, pitch=style.pitch),
                      np.zeros(int(16000 * rng.uniform(0.2, 0.5)), np.float32)]
            total += len(parts[-2]) + len(parts[-1])
            if total >= seconds * 16000:
                break
        amp = tuple(a * style.head_scale for a in SynthConfig.head_amplitude)
        config = SynthConfig(size=size, seconds=seconds, seed=index, face_fraction=style.face_fraction,
                             jaw_max_deg=style.jaw_max_deg, head_amplitude=amp, progress=False)
        prepare(styled_photo(style), np.concatenate(parts), config).write(clip)
        shutil.rmtree(data, ignore_errors=True)
        process(clip, data, ProcessConfig(size=128))
    return data, clip


def test_clips(work: Path, name: str, first_speaker: int, clips: int, seconds: float, size: int) -> list:
    """Clips of one synthetic speaker saying only ``TEST_SENTENCES``, prepared; with their true mouth opening."""
    from geneface.corpus import Corpus, prepare_corpus
    from geneface.corpus.source import PackClip
    from geneface.synth.corpus import make_corpus

    root, prepared = work / f"{name}_clips", work / f"{name}_prepared"
    make_corpus(root, speakers=1, clips_per_speaker=clips, seconds=seconds, size=size, seed=0,
                first_speaker=first_speaker, sentences=TEST_SENTENCES)  # seed 0: the speakers' own faces
    prepare_corpus(root, prepared, workers=1, progress=False)
    corpus = Corpus(prepared)
    out = []
    for record in corpus.clips():
        truth = np.load(root / record["path"].replace(".mp4", ".truth.npz"))["mouth_open"]
        out.append((PackClip(corpus, record, "mel").load(), truth))
    return out


def measure(model, clips: list, temperature: float) -> dict:
    from geneface.motion import mouth_opening
    from geneface.motion.train import motion_metrics

    corr = []
    for clip, truth in clips:
        pred = model.predict(clip.features, clip.pitch, temperature=temperature, seed=0)
        n = min(len(pred), len(truth))
        corr.append(float(np.corrcoef(mouth_opening(pred[:n]), truth[:n])[0, 1]))
    m = motion_metrics(model, [c for c, _ in clips], temperature=temperature)
    return {"mouth_corr_truth": float(np.nanmean(corr)), "mouth_corr_tracked": m["mouth_corr"],
            "mouth_lmd": m["mouth_lmd"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speakers", type=int, default=12, help="speakers in the training corpus")
    ap.add_argument("--clips", type=int, default=5, help="clips per speaker")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of a corpus clip")
    ap.add_argument("--size", type=int, default=256, help="frame side of the synthetic clips")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the parallel preparation")
    ap.add_argument("--person-seconds", type=float, default=60.0, help="length of the target person's video")
    ap.add_argument("--preset", default="small", help="motion model sizes")
    ap.add_argument("--syncnet-steps", type=int, default=400)
    ap.add_argument("--steps", type=int, default=800, help="generator steps (prior and single-person model alike)")
    ap.add_argument("--postnet-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for training (one is fastest on a shared 2-core machine)")
    ap.add_argument("--work", type=Path, default=Path("bench_out/corpus"), help="scratch folder")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "corpus.json")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few clips, few steps, no JSON")
    args = ap.parse_args()
    if args.quick:
        args.speakers, args.clips, args.seconds, args.person_seconds = 3, 2, 2.0, 12.0
        args.syncnet_steps, args.steps, args.postnet_steps = 20, 20, 10

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle torch threads must not spin on a shared machine
    import torch

    from geneface.motion import MotionModel, mouth_opening
    from geneface.motion.train import MotionTrainConfig, PostnetTrainConfig, train_motion, train_postnet
    from geneface.synth.corpus import make_corpus, speaker_style

    torch.set_num_threads(args.threads)
    work = args.work / f"{args.speakers}x{args.clips}x{args.seconds:g}s_{args.size}px"
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"conditions": {
        "machine": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": args.threads, "load_average_at_start": os.getloadavg(), "speakers": args.speakers,
        "clips_per_speaker": args.clips, "clip_seconds": args.seconds, "size": args.size, "preset": args.preset,
        "syncnet_steps": args.syncnet_steps, "generator_steps": args.steps, "postnet_steps": args.postnet_steps,
        "person_seconds": args.person_seconds}}

    print("== synthetic corpus")
    clips = work / "clips"
    timing = work / "synth_seconds.json"  # clips are kept between runs: keep the time it took to make them
    if not timing.exists():
        start = time.perf_counter()
        make_corpus(clips, speakers=args.speakers, clips_per_speaker=args.clips, seconds=args.seconds,
                    size=args.size, seed=0, workers=args.workers)
        timing.write_text(json.dumps(round(time.perf_counter() - start, 1)))
    results["synth_seconds"] = json.loads(timing.read_text())

    print("== preparation speed")
    results["prepare"] = [prepare_speed(clips, work / f"prepared_w{w}", w) for w in sorted({1, args.workers})]
    prepared = work / f"prepared_w{args.workers}"
    print("== streaming")
    results["loader"] = loader_speed(prepared)

    print("== quality")
    target, unseen = args.speakers, args.speakers + 1  # voices the corpus never had
    person, _ = person_video(work, target, args.person_seconds, args.size)
    tests = {"unseen_voice": test_clips(work, "unseen", unseen, 6, args.seconds, args.size),
             "target_voice_new_sentences": test_clips(work, "target", target, 4, args.seconds, args.size)}
    train_cfg = MotionTrainConfig(syncnet_steps=args.syncnet_steps, steps=args.steps, save_every=10 ** 9,
                                  val_speakers=0.1)
    runs = {"single_person": work / "run_single", "corpus_prior": work / "run_prior",
            "corpus_prior_postnet": work / "run_prior_postnet"}
    seconds = {}
    for name, run in runs.items():
        timing = run / "train_seconds.json"
        if not (run / "config.json").exists() or not timing.exists():
            shutil.rmtree(run, ignore_errors=True)
            print(f"-- training {name}")
            start = time.perf_counter()
            if name == "single_person":
                train_motion([person], run, preset_name=args.preset, device="cpu", config=train_cfg)
            elif name == "corpus_prior":
                train_motion([prepared], run, preset_name=args.preset, device="cpu", config=train_cfg)
            else:
                train_postnet(person, runs["corpus_prior"], run, device="cpu",
                              config=PostnetTrainConfig(steps=args.postnet_steps, save_every=10 ** 9))
            timing.write_text(json.dumps(round(time.perf_counter() - start, 1)))
        seconds[name] = json.loads(timing.read_text())
    results["train_seconds"] = seconds
    results["quality"] = {}
    for name, run in runs.items():
        model = MotionModel.load(run)
        results["quality"][name] = {
            "val_metrics": model.info.get("metrics", {}),
            **{test: {f"t{t:g}": measure(model, clips_, t) for t in (0.0, 1.0)} for test, clips_ in tests.items()}}
    tracked = []
    for clip, truth in tests["unseen_voice"]:
        n = min(clip.num_frames, len(truth))
        tracked.append(float(np.corrcoef(mouth_opening(clip.offsets[:n]), truth[:n])[0, 1]))
    results["tracked_vs_truth_corr"] = float(np.mean(tracked))
    results["voices"] = {"target": speaker_style(target).voice, "unseen": speaker_style(unseen).voice,
                         "corpus": sorted({speaker_style(k).voice for k in range(args.speakers)})}
    results["conditions"]["load_average_at_end"] = os.getloadavg()

    # table
    print(f"\n{os.cpu_count()} CPUs, shared; load average {results['conditions']['load_average_at_start'][0]:.1f} "
          f"at start, {results['conditions']['load_average_at_end'][0]:.1f} at end")
    print(f"corpus: {args.speakers} speakers x {args.clips} clips x {args.seconds:g} s at {args.size} px "
          f"(synthesised in {results['synth_seconds']:.0f} s)")
    print(f"{'workers':>8}{'clips':>7}{'seconds':>9}{'clips/min':>11}{'frames/s':>10}{'main MB':>9}{'worker MB':>11}")
    for row in results["prepare"]:
        worker = f"{row['peak_rss_worker_mb']:.0f}" if row["peak_rss_worker_mb"] else "-"
        print(f"{row['workers']:>8}{row['clips']:>7}{row['seconds']:>9.1f}{row['clips_per_minute']:>11.1f}"
              f"{row['frames_per_second']:>10.1f}{row['peak_rss_main_mb']:>9.0f}{worker:>11}")
    ld = results["loader"]
    print(f"loader: {ld['windows_per_second']:.0f} windows/s of 64 frames, {ld['bytes_per_window']} bytes read per "
          f"window (packs {ld['pack_bytes'] / 1e6:.1f} MB), memory growth {ld['rss_growth_mb']:.1f} MB")
    print(f"\nmouth-opening correlation with the generator's truth (r) and mouth landmark distance (LMD, IOD); "
          f"{args.preset} preset, {args.syncnet_steps}+{args.steps} steps, postnet {args.postnet_steps}:")
    print(f"{'model':<22}{'test':<28}{'r t=0':>7}{'r t=1':>7}{'LMD t=0':>9}{'train s':>9}")
    for name, row in results["quality"].items():
        for test in tests:
            q = row[test]
            print(f"{name:<22}{test:<28}{q['t0']['mouth_corr_truth']:>7.3f}{q['t1']['mouth_corr_truth']:>7.3f}"
                  f"{q['t0']['mouth_lmd']:>9.4f}{seconds[name]:>9.0f}")
    print(f"(the tracked landmarks of the unseen-voice clips themselves reach r = "
          f"{results['tracked_vs_truth_corr']:.3f})")
    if not args.quick:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
