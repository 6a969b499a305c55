"""Benchmark corpus preparation and a corpus-pretrained audio-to-motion prior on voices it never heard.

    python benchmarks/corpus.py [--speakers 12] [--clips 5] [--seconds 4] [--size 256] [--workers 2]
                                [--person-seconds 60] [--preset small] [--syncnet-steps 400] [--steps 800]
                                [--postnet-steps 300] [--threads 1] [--work bench_out/corpus] [--out DIR]
                                [--fresh] [--quick]

1. Preparation speed: a synthetic many-speaker corpus (`geneface.synth.corpus.make_corpus`: every speaker its
   own espeak-ng voice, face variation and manner; cached) is prepared from scratch with 1 and with --workers
   worker processes (one thread each), each in a fresh process and always timed anew: clips per minute, video
   frames per second, peak memory of the main process and of the largest worker.
2. Streaming: windows per second drawn by the speaker-balanced loader, bytes read per window, memory growth.
3. Quality: a target person (a voice and face not in the corpus) has a --person-seconds video, processed at
   --process-size as `geneface train all` does on a CPU. Three motion models are compared: one trained on the
   target person only, a prior pretrained on the corpus, and that prior adapted to the person with the
   postnet (all cached). They are measured on clips of a third, unseen voice (and on the target's own voice
   saying new sentences): correlation (r) of the predicted inner-lip opening with the generator's true mouth
   opening, and mouth landmark distance to the tracked landmarks. Sentences of the test clips appear in no
   training data.

Cached steps (clips, the person, the test clips, the three models) are keyed on every argument and the
package source (see benchmarks/common.py); training times of reused models are marked "reused".
Prints tables and writes corpus.json (the README's figures are the fields of "summary").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common
import numpy as np

from geneface.constants import AUDIO_RATE

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

MODELS = ("single_person", "corpus_prior", "corpus_prior_postnet")
TESTS = ("unseen_voice", "target_voice_new_sentences")


def rss_mb() -> float:
    """Resident memory of this process now (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --- 1. and 2.: preparation and streaming ----------------------------------------------------------------

def prepare_speed(clips: Path, out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", PREPARE_SCRIPT, str(clips), str(out), str(workers)],
                            capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    s = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))[7:])
    n = sum(s["prepared"].values())
    return {"workers": workers, "clips": n, "ok": s["prepared"].get("ok", 0), "frames": s["frames"],
            "seconds": round(s["wall"], 2), "clips_per_minute": round(60 * n / s["wall"], 1),
            "frames_per_second": round(s["frames"] / s["wall"], 1),
            "peak_rss_main_mb": round(s["maxrss_main_mb"], 1),
            "peak_rss_worker_mb": round(s["maxrss_worker_mb"], 1) if workers > 1 else None}


def loader_speed(prepared: Path, windows: int = 2000, window: int = 64) -> dict:
    from geneface.motion.corpus import open_training_data

    data = open_training_data([prepared], "mel", val_fraction=0.1)
    rng = np.random.default_rng(0)
    data.source.sample(rng, window)
    before_bytes, before_rss = data.corpora[0].bytes_read, rss_mb()
    start = time.perf_counter()
    for _ in range(windows):
        data.source.sample(rng, window)
    seconds = time.perf_counter() - start
    pack_bytes = sum(p.stat().st_size for p in (prepared / "packs").iterdir())
    return {"windows": windows, "window_frames": window, "windows_per_second": round(windows / seconds, 1),
            "bytes_per_window": (data.corpora[0].bytes_read - before_bytes) // windows,
            "pack_bytes": pack_bytes, "rss_growth_mb": round(rss_mb() - before_rss, 2)}


# --- 3.: quality -----------------------------------------------------------------------------------------

def person_video(folder: Path, index: int, seconds: float, size: int, process_size: int) -> dict:
    """A ``seconds`` long video of synthetic speaker ``index`` saying corpus sentences, processed."""
    from geneface.process.pipeline import ProcessConfig, process
    from geneface.synth import SynthConfig, prepare, speak
    from geneface.synth.corpus import SENTENCES, speaker_style, styled_photo

    style = speaker_style(index)
    rng = np.random.default_rng(index)
    parts, total = [], 0
    for i in rng.permutation(len(SENTENCES)):
        parts += [speak(SENTENCES[i], voice=style.voice, speed=style.speed, pitch=style.pitch),
                  np.zeros(int(AUDIO_RATE * rng.uniform(0.2, 0.5)), np.float32)]
        total += len(parts[-2]) + len(parts[-1])
        if total >= seconds * AUDIO_RATE:
            break
    amp = tuple(a * style.head_scale for a in SynthConfig.head_amplitude)
    config = SynthConfig(size=size, seconds=seconds, seed=index, face_fraction=style.face_fraction,
                         jaw_max_deg=style.jaw_max_deg, head_amplitude=amp, progress=False)
    prepare(styled_photo(style), np.concatenate(parts), config).write(folder / "person.mp4")
    process(folder / "person.mp4", folder / "data", ProcessConfig(size=process_size))
    return {"voice": style.voice}


def make_test_clips(folder: Path, first_speaker: int, clips: int, seconds: float, size: int) -> dict:
    """Clips of one synthetic speaker saying only ``TEST_SENTENCES``, prepared."""
    from geneface.corpus import prepare_corpus
    from geneface.synth.corpus import make_corpus

    make_corpus(folder / "clips", speakers=1, clips_per_speaker=clips, seconds=seconds, size=size, seed=0,
                first_speaker=first_speaker, sentences=TEST_SENTENCES)  # seed 0: the speakers' own faces
    prepare_corpus(folder / "clips", folder / "prepared", workers=1, progress=False)
    return {}


def load_test_clips(folder: Path) -> list:
    """The prepared test clips with their true mouth opening."""
    from geneface.corpus import Corpus
    from geneface.motion.corpus import PackClip

    corpus = Corpus(folder / "prepared")
    out = []
    for record in corpus.clips():
        truth = np.load(folder / "clips" / record["path"].replace(".mp4", ".truth.npz"))["mouth_open"]
        out.append((PackClip(corpus, record, "mel").load(), truth))
    return out


def measure(model, clips: list, temperature: float) -> dict:
    from geneface.motion import mouth_opening
    from geneface.motion.measures import motion_metrics

    corr = []
    for clip, truth in clips:
        pred = model.predict(clip.features, clip.pitch, temperature=temperature, seed=0)
        n = min(len(pred), len(truth))
        corr.append(float(np.corrcoef(mouth_opening(pred[:n]), truth[:n])[0, 1]))
    m = motion_metrics(model, [c for c, _ in clips], temperature=temperature)
    return {"mouth_corr_truth": float(np.nanmean(corr)), "mouth_corr_tracked": m["mouth_corr"],
            "mouth_lmd": m["mouth_lmd"]}


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--speakers", type=int, default=12, help="speakers in the training corpus")
    ap.add_argument("--clips", type=int, default=5, help="clips per speaker")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of a corpus clip")
    ap.add_argument("--size", type=int, default=256, help="frame side of the synthetic clips")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the parallel preparation")
    ap.add_argument("--person-seconds", type=float, default=60.0, help="length of the target person's video")
    ap.add_argument("--process-size", type=int, default=128, help="frame size the target person is processed at")
    ap.add_argument("--unseen-clips", type=int, default=6, help="test clips of the unseen voice")
    ap.add_argument("--target-clips", type=int, default=4, help="test clips of the target's voice, new sentences")
    ap.add_argument("--preset", default="small", help="motion model sizes")
    ap.add_argument("--syncnet-steps", type=int, default=400)
    ap.add_argument("--steps", type=int, default=800, help="generator steps (prior and single-person model alike)")
    ap.add_argument("--postnet-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for training (one is fastest on a shared 2-core machine)")
    common.add_common_args(ap, "corpus")
    args = ap.parse_args()
    if args.quick:
        args.speakers, args.clips, args.seconds, args.size, args.person_seconds = 3, 2, 2.0, 128, 12.0
        args.unseen_clips, args.target_clips = 2, 2
        args.syncnet_steps, args.steps, args.postnet_steps = 20, 20, 10

    import torch

    from geneface.motion import MotionModel, mouth_opening
    from geneface.motion.train import MotionTrainConfig, PostnetTrainConfig, train_motion, train_postnet
    from geneface.synth.corpus import speaker_style

    torch.set_num_threads(args.threads)
    machine = common.machine_info()
    cache = common.Cache(args)
    work = Path(args.work)

    clips, synth = common.synth_corpus(cache, args, workers=args.workers)

    print("== 1. preparation speed (timed, from scratch)", flush=True)
    prepare = []
    for w in sorted({1, args.workers}):
        print(f"-- {w} worker(s)", flush=True)
        prepare.append(prepare_speed(clips, work / f"prepared_w{w}", w))
    prepared = work / f"prepared_w{args.workers}"
    print("== 2. streaming", flush=True)
    loader = loader_speed(prepared)

    print("== 3. quality", flush=True)
    target, unseen = args.speakers, args.speakers + 1  # voices the corpus never had
    person, _ = cache.step("person", lambda f: person_video(f, target, args.person_seconds, args.size,
                                                            args.process_size))
    test_dirs = {"unseen_voice": cache.step("test_unseen", lambda f: make_test_clips(
                     f, unseen, args.unseen_clips, args.seconds, args.size))[0],
                 "target_voice_new_sentences": cache.step("test_target", lambda f: make_test_clips(
                     f, target, args.target_clips, args.seconds, args.size))[0]}
    tests = {name: load_test_clips(folder) for name, folder in test_dirs.items()}
    train_cfg = MotionTrainConfig(syncnet_steps=args.syncnet_steps, steps=args.steps, val_speakers=0.1)

    runs: dict[str, Path] = {}
    train_seconds: dict[str, dict] = {}

    def trainer(name: str):
        def build(folder: Path) -> dict:
            print(f"-- training {name}", flush=True)
            start = time.perf_counter()
            if name == "single_person":
                train_motion([person / "data"], folder / "run", preset_name=args.preset, device="cpu",
                             config=train_cfg)
            elif name == "corpus_prior":
                train_motion([prepared], folder / "run", preset_name=args.preset, device="cpu", config=train_cfg)
            else:
                train_postnet(person / "data", runs["corpus_prior"], folder / "run", device="cpu",
                              config=PostnetTrainConfig(steps=args.postnet_steps))
            return {"seconds": round(time.perf_counter() - start, 1)}
        return build

    for name in MODELS:
        folder, values = cache.step(f"model_{name}", trainer(name))
        runs[name] = folder / "run"
        train_seconds[name] = {"seconds": values["seconds"], "reused": cache.reused(f"model_{name}")}

    quality = {}
    for name, run in runs.items():
        model = MotionModel.load(run)
        quality[name] = {"val_metrics": model.info.get("metrics", {}),
                         **{test: {f"t{t:g}": measure(model, clips_, t) for t in (0.0, 1.0)}
                            for test, clips_ in tests.items()}}
    tracked = []
    for clip, truth in tests["unseen_voice"]:
        n = min(clip.num_frames, len(truth))
        tracked.append(float(np.corrcoef(mouth_opening(clip.offsets[:n]), truth[:n])[0, 1]))
    tracked_corr = float(np.mean(tracked))

    summary: dict = {}
    for row in prepare:
        w = row["workers"]
        summary[f"prepare_{w}_workers_clips_per_minute"] = row["clips_per_minute"]
        summary[f"prepare_{w}_workers_frames_per_second"] = row["frames_per_second"]
        summary[f"prepare_{w}_workers_peak_rss_main_mb"] = row["peak_rss_main_mb"]
        if row["peak_rss_worker_mb"] is not None:
            summary[f"prepare_{w}_workers_peak_rss_worker_mb"] = row["peak_rss_worker_mb"]
    summary["loader_windows_per_second"] = loader["windows_per_second"]
    summary["loader_bytes_per_window"] = loader["bytes_per_window"]
    for test in TESTS:
        for name in MODELS:
            summary[f"{test}_{name}_mouth_corr_truth_t0"] = quality[name][test]["t0"]["mouth_corr_truth"]
    summary["unseen_voice_tracked_vs_truth_corr"] = tracked_corr

    common.print_table(
        ["workers", "clips", "seconds", "clips/min", "frames/s", "main MB", "worker MB"],
        [(r["workers"], r["clips"], r["seconds"], r["clips_per_minute"], r["frames_per_second"],
          r["peak_rss_main_mb"], r["peak_rss_worker_mb"]) for r in prepare],
        title=f"corpus preparation: {args.speakers} speakers x {args.clips} clips x {args.seconds:g} s at "
              f"{args.size} px (synthesised in {synth['seconds']:.0f} s"
              f"{', reused' if cache.reused('corpus_clips') else ''}); {machine['cpu_count']} CPUs", digits=1)
    print(f"loader: {loader['windows_per_second']:.0f} windows/s of 64 frames, {loader['bytes_per_window']} bytes read "
          f"per window (packs {loader['pack_bytes'] / 1e6:.1f} MB), memory growth {loader['rss_growth_mb']:.1f} MB")
    common.print_table(
        ["model", "test", "r t=0", "r t=1", "LMD t=0", "train s"],
        [(name, test, quality[name][test]["t0"]["mouth_corr_truth"], quality[name][test]["t1"]["mouth_corr_truth"],
          quality[name][test]["t0"]["mouth_lmd"],
          f"{train_seconds[name]['seconds']:.0f}" + (" (cached)" if train_seconds[name]["reused"] else ""))
         for name in MODELS for test in TESTS],
        title=f"mouth-opening correlation with the generator's truth (r) and mouth landmark distance (LMD, IOD); "
              f"{args.preset} preset, {args.syncnet_steps}+{args.steps} steps, postnet {args.postnet_steps}",
        digits=3)
    print(f"(the tracked landmarks of the unseen-voice clips themselves reach r = {tracked_corr:.3f})")
    common.print_summary(summary)
    common.write_result("corpus", args, machine, summary, {
        "synth": {"seconds": synth["seconds"], "reused": cache.reused("corpus_clips")},
        "prepare": prepare, "loader": loader, "train_seconds": train_seconds, "quality": quality,
        "tracked_vs_truth_corr": tracked_corr,
        "voices": {"target": speaker_style(target).voice, "unseen": speaker_style(unseen).voice,
                   "corpus": sorted({speaker_style(k).voice for k in range(args.speakers)})}}, cache)


if __name__ == "__main__":
    main()
