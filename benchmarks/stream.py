"""Benchmark streaming inference (`geneface.infer.stream`) on the bundled demo person at 128 px: frames/s per
chunk size, latency on a real-time clock, streamed against offline landmarks, and memory over a long stream.

    python benchmarks/stream.py [--seconds 20] [--latency-seconds 20] [--minutes 10] [--threads 1]
                                [--chunks-ms 20 100 1000] [--lookaheads 0 2 4 6 8 12] [--quality 80]
                                [--out DIR] [--quick]

1. **throughput**: the bundled speech (repeated to --seconds) pushed as fast as the stream takes it, in chunks of
   each size, then flushed; every frame JPEG-encoded as the web app does. frames/s (wall clock), and CPU
   milliseconds per frame (``time.process_time``, all threads), which a busy machine inflates less.
2. **latency**: the same audio arriving on a real-time clock (a chunk is available when its last sample would
   have been recorded) and pushed when available and the previous push has returned. A frame's latency runs
   from the arrival of the chunk holding the end of its audio to the frame returned and JPEG-encoded; it
   includes the fixed look-ahead (``delay_frames`` x 40 ms) and any backlog when the machine cannot keep up.
3. **offline match**: the stream at temperature 0 against `PersonModel.landmarks` on the same audio, for each
   look-ahead: mean absolute difference over all frames and points, and the worst frame's, in % of the
   inter-ocular distance (rendered at 8 px: landmarks do not depend on the frame size).
4. **memory**: a fresh child process streams --minutes of speech and silence (the speech, then 2 s of silence
   with a flush) in 20 ms chunks at 128 px, as fast as it can; its resident set every 10 s of audio, the growth
   from the first minute to the end, and its peak (``ru_maxrss``).

Unless --system-malloc, the benchmark first lets malloc keep freed memory (`geneface.device.keep_freed_memory`,
as a server should), which saves rendering about 15 % of its CPU time.

Prints tables and writes stream.json (see benchmarks/common.py; the README's figures are its "summary").
Target (DESIGN.md): 25 frames/s sustained and p95 latency of 400 ms or less at 128 px on 2 CPU cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import common
import cv2
import numpy as np
import torch

from geneface import InferConfig, PersonModel, media
from geneface.device import keep_freed_memory
from geneface.infer.cli_demo import bundled_person, bundled_speech
from geneface.infer.stream import FRAME_SAMPLES, SpeechStream, StreamConfig

RATE = 16000
TARGET_FPS = 25.0
TARGET_P95_MS = 400.0

MEMORY_CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from geneface import PersonModel, media
from geneface.infer.cli_demo import bundled_person, bundled_speech
from geneface.infer.stream import SpeechStream, StreamConfig
minutes, threads, keep = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
torch.set_num_threads(threads)
if keep:
    from geneface.device import keep_freed_memory
    keep_freed_memory()
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
model = PersonModel.load(bundled_person(), "cpu")
utterance = np.concatenate([media.read_audio(bundled_speech()), np.zeros(2 * 16000, np.float32)])
stream = SpeechStream(model, StreamConfig())
samples, total, frames, trace = 0, int(minutes * 60 * 16000), 0, []
start = time.perf_counter()
with torch.inference_mode():
    while samples < total:
        for i in range(0, len(utterance), 320):
            frames += len(stream.push(utterance[i:i + 320]))
            samples += 320
            if samples % (10 * 16000) == 0:
                trace.append([samples / 16000, rss_mib()])
            if samples >= total:
                break
        frames += len(stream.flush())
print(json.dumps({"frames": frames, "seconds": time.perf_counter() - start, "trace": trace,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def speech(seconds: float) -> np.ndarray:
    """The bundled speech repeated to ``seconds``, cut to whole frames."""
    audio = np.resize(media.read_audio(bundled_speech()), int(seconds * RATE))
    return audio[:len(audio) // FRAME_SAMPLES * FRAME_SAMPLES]


def jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return data.tobytes()


def throughput(model: PersonModel, audio: np.ndarray, chunk_ms: int, quality: int) -> dict:
    chunk = chunk_ms * RATE // 1000
    stream = SpeechStream(model, StreamConfig())
    frames = 0
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for start in range(0, len(audio), chunk):
            for f in stream.push(audio[start:start + chunk]):
                jpeg(f.rgb, quality)
                frames += 1
        for f in stream.flush():
            jpeg(f.rgb, quality)
            frames += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"chunk_ms": chunk_ms, "frames": frames, "seconds": wall, "fps": frames / wall,
            "cpu_ms_per_frame": 1000 * cpu / frames, "fps_if_cpu_bound_2_cores": 2 * frames / cpu}


def latency(model: PersonModel, audio: np.ndarray, chunk_ms: int, quality: int) -> dict:
    """Push chunks as they would arrive live; latency of each frame from its audio's chunk arriving."""
    chunk = chunk_ms * RATE // 1000
    stream = SpeechStream(model, StreamConfig())
    arrivals: list[float] = []  # arrival time of each chunk, relative to the start
    ends: list[int] = []  # samples up to the end of each chunk
    latencies, sent = [], 0
    with torch.inference_mode():
        stream.push(np.zeros(0, np.float32))
        t0 = time.perf_counter()
        for start in range(0, len(audio), chunk):
            end = min(start + chunk, len(audio))
            due = end / RATE  # the chunk's last sample is recorded then
            now = time.perf_counter() - t0
            if now < due:
                time.sleep(due - now)
            arrivals.append(due)
            ends.append(end)
            frames = stream.push(audio[start:end])
            for f in frames:
                jpeg(f.rgb, quality)
            done = time.perf_counter() - t0
            for f in frames:
                # the chunk holding the last sample of the frame's audio
                k = int(np.searchsorted(ends, (f.index + 1) * FRAME_SAMPLES))
                latencies.append(1000 * (done - arrivals[k]))
                sent += 1
        behind_s = max(0.0, time.perf_counter() - t0 - len(audio) / RATE)
    lat = np.array(latencies)
    return {"chunk_ms": chunk_ms, "frames": sent, "delay_frames": stream.delay_frames,
            "lookahead_ms": 1000 * stream.delay_frames * FRAME_SAMPLES / RATE,
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "max_ms": float(lat.max()), "behind_at_end_s": behind_s}


def offline_match(model: PersonModel, audio: np.ndarray, lookaheads: list[int]) -> list[dict]:
    offline = model.landmarks(audio, InferConfig(temperature=0.0))
    change = 100 * np.abs(np.diff(offline, axis=0)).mean()
    rows = []
    for d in lookaheads:
        stream = SpeechStream(model, StreamConfig(temperature=0.0, lookahead=d, size=8))
        with torch.inference_mode():
            frames = [f for i in range(0, len(audio), 1600) for f in stream.push(audio[i:i + 1600])]
            frames += stream.flush()
        diff = 100 * np.abs(np.stack([f.landmarks for f in frames]) - offline)  # % of the inter-ocular distance
        rows.append({"lookahead_frames": d, "lookahead_ms": 40 * d, "mean_pct_iod": float(diff.mean()),
                     "worst_frame_pct_iod": float(diff.mean((1, 2)).max()),
                     "mouth_mean_pct_iod": float(diff[:, 48:68].mean()),
                     "offline_frame_change_pct_iod": float(change)})
    return rows


def memory(minutes: float, threads: int, keep: bool) -> dict:
    done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(minutes), str(threads), str(int(keep))],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the memory run failed:\n{done.stderr[-3000:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    trace = np.array(r["trace"]) if r["trace"] else np.zeros((0, 2))
    first = trace[trace[:, 0] >= min(60.0, trace[-1, 0])][0, 1] if len(trace) else None
    return {**r, "minutes": minutes, "fps": r["frames"] / r["seconds"],
            "rss_first_minute_mib": first, "rss_end_mib": trace[-1, 1] if len(trace) else None,
            "rss_growth_mib": (trace[-1, 1] - first) if len(trace) else None}


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--seconds", type=float, default=20.0, help="speech per throughput run (s)")
    ap.add_argument("--latency-seconds", type=float, default=20.0, help="speech per real-time latency run (s)")
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the memory run (min of audio)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1, as geneface serve: at one frame a push, 2 intra-op threads cost more CPU)")
    ap.add_argument("--chunks-ms", type=int, nargs="+", default=[20, 100, 1000], help="chunk sizes (ms)")
    ap.add_argument("--lookaheads", type=int, nargs="+", default=[0, 2, 4, 6, 8, 12],
                    help="look-aheads (frames) for the offline comparison")
    ap.add_argument("--quality", type=int, default=80, help="JPEG quality (the web app's default)")
    ap.add_argument("--system-malloc", action="store_true",
                    help="leave malloc as it is (default: geneface.device.keep_freed_memory)")
    common.add_common_args(ap, "stream")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.latency_seconds, args.minutes, args.lookaheads = 3.0, 3.0, 0.2, [0, 6]
    torch.set_num_threads(args.threads)
    kept = False if args.system_malloc else keep_freed_memory()
    machine = {**common.machine_info(), "malloc_keeps_freed_memory": kept}
    model = PersonModel.load(bundled_person(), "cpu")
    audio = speech(args.seconds)

    print("throughput ...", flush=True)
    with torch.inference_mode():  # warm up
        SpeechStream(model).push(audio[:16000])
    runs = [throughput(model, audio, ms, args.quality) for ms in args.chunks_ms]
    common.print_table(["chunk", "frames", "frames/s", "CPU ms/frame", "frames/s if 2 cores free"],
                       [(f"{r['chunk_ms']} ms", r["frames"], r["fps"], r["cpu_ms_per_frame"],
                         r["fps_if_cpu_bound_2_cores"]) for r in runs], title="throughput (128 px, with JPEG)")

    print("latency (real time) ...", flush=True)
    live = [latency(model, speech(args.latency_seconds), ms, args.quality) for ms in args.chunks_ms]
    common.print_table(["chunk", "look-ahead ms", "p50 ms", "p95 ms", "max ms", "behind at end s"],
                       [(f"{r['chunk_ms']} ms", r["lookahead_ms"], r["p50_ms"], r["p95_ms"], r["max_ms"],
                         r["behind_at_end_s"]) for r in live], title="latency: chunk arrived -> frame out (+JPEG)")

    print("offline match ...", flush=True)
    match = offline_match(model, speech(min(args.seconds, 10.0)), args.lookaheads)
    common.print_table(["look-ahead", "mean % IOD", "worst frame % IOD", "mouth % IOD"],
                       [(f"{r['lookahead_frames']} ({r['lookahead_ms']} ms)", r["mean_pct_iod"],
                         r["worst_frame_pct_iod"], r["mouth_mean_pct_iod"]) for r in match],
                       title=f"streamed vs offline landmarks (temperature 0; the offline track moves "
                             f"{match[0]['offline_frame_change_pct_iod']:.3f} % IOD a frame)", digits=5)

    print(f"memory over {args.minutes:g} min ...", flush=True)
    mem = memory(args.minutes, args.threads, kept)
    common.print_table(["minutes", "frames", "frames/s", "RSS 1st min MiB", "RSS end MiB", "growth MiB", "peak MiB"],
                       [(args.minutes, mem["frames"], mem["fps"], mem["rss_first_minute_mib"], mem["rss_end_mib"],
                         mem["rss_growth_mib"], mem["peak_rss_mib"])], title="memory (20 ms chunks, 128 px)")

    summary: dict = {"delay_frames": live[0]["delay_frames"], "lookahead_ms": live[0]["lookahead_ms"]}
    for r in runs:
        summary[f"fps_128_chunk{r['chunk_ms']}ms"] = r["fps"]
        summary[f"cpu_ms_per_frame_chunk{r['chunk_ms']}ms"] = r["cpu_ms_per_frame"]
    for r in live:
        summary[f"latency_p50_ms_chunk{r['chunk_ms']}ms"] = r["p50_ms"]
        summary[f"latency_p95_ms_chunk{r['chunk_ms']}ms"] = r["p95_ms"]
    default = next((r for r in match if r["lookahead_frames"] == StreamConfig().lookahead), match[-1])
    summary["offline_diff_mean_pct_iod"] = default["mean_pct_iod"]
    summary["offline_diff_worst_frame_pct_iod"] = default["worst_frame_pct_iod"]
    summary["memory_minutes"] = args.minutes
    summary["memory_rss_growth_mib"] = mem["rss_growth_mib"]
    summary["memory_peak_rss_mib"] = mem["peak_rss_mib"]
    summary["target_fps"] = TARGET_FPS
    summary["target_p95_ms"] = TARGET_P95_MS
    common.print_summary(summary)
    common.write_result("stream", args, machine, summary,
                        {"throughput": runs, "latency": live, "offline_match": match, "memory": mem})


if __name__ == "__main__":
    main()
