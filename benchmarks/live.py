"""Benchmark the live path of `geneface serve` end to end: a real server process, WebSocket clients streaming
speech in real time, frames coming back.

    python benchmarks/live.py [--seconds 30] [--clients 1 4] [--live-workers 2] [--quality 80] [--out DIR] [--quick]

1. **server**: ``python -m geneface.cli serve --port 0 --device cpu`` in a child process, as a user starts it
   (the demo person at 128 px, the app's defaults otherwise); one short warm-up session loads the person model.
2. **clients**: for each count in --clients (1, then 4), that many `websockets` clients at once, each streaming
   the bundled speech (repeated to --seconds) in 20 ms chunks paced by the clock (chunk k is sent at
   t0 + k x 20 ms), then ``stop``; start message ``{"idle": false, "audio": true}`` (the server's defaults
   otherwise, ``drop_late`` included: a session that falls more than 1 s behind real time drops audio).
3. **per client**: sustained frames/s (frames received from 2 s after the first chunk to the last chunk sent,
   over that time); latency of each frame from the chunk holding the end of its audio being sent (the frame
   header's ``audio_end``) to the frame received, p50 / p95 / max; dropped frames (the server's ``end``
   message; audio it skipped to stay within 1 s of real time); frames rendered smaller (``reduced`` in that
   message: the server's answer to sessions sharing its render processes and falling behind); audio/video sync: each frame carries the 640
   samples it was made from, which must be the client's samples ending at its ``audio_end`` (offset 0 ms), and
   frames + dropped must account for all the audio sent.
4. **server processes** (the server and its render processes): CPU use (``/proc/PID/stat``; 100 % = one core)
   and resident memory (``VmRSS``, summed) every 0.5 s, per phase.

Prints tables and writes live.json (see benchmarks/common.py; the README's figures are its "summary").
Targets (DESIGN.md): 1 client >= 25 frames/s sustained and p95 latency <= 400 ms at 128 px on 2 CPU cores;
4 clients degrade gracefully (fewer frames/s, smaller renders or dropped audio, audio and video in sync, nothing
fails).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import common
import numpy as np
import websockets

from geneface import media
from geneface.infer.cli_demo import bundled_speech
from geneface.serve.live import FLAG_AUDIO, FLAG_IDLE, FRAME_SAMPLES, HEADER

RATE = 16000
CHUNK = 320  # 20 ms
TARGET_FPS = 25.0
TARGET_P95_MS = 400.0
SYNC_TAIL = 160
"""Samples at the end of a frame's audio compared with the client's (10 ms)."""
SAMPLE_EVERY_S = 0.5


def speech(seconds: float) -> np.ndarray:
    """The bundled speech repeated to ``seconds`` (16 kHz mono float32)."""
    clip = media.read_audio(bundled_speech()).astype(np.float32)
    reps = int(np.ceil(seconds * RATE / len(clip)))
    return np.tile(clip, reps)[: int(seconds * RATE)]


# --- the server process ------------------------------------------------------------------------------------

class Server:
    """`geneface serve` in a child process, and a thread sampling its CPU time and memory."""

    def __init__(self, work: Path, max_live: int, live_workers: int) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "geneface.cli", "serve", "--port", "0", "--work", str(work), "--device", "cpu",
             "--max-live", str(max_live), "--live-workers", str(live_workers)],
            stderr=subprocess.PIPE, text=True, env=env)
        self.url = None
        deadline = time.monotonic() + 120
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"geneface serve: (http://\S+)", line)
            if m:
                self.url = m.group(1).rstrip("/").replace("http://", "ws://") + "/api/live"
                break
        if self.url is None:
            self.stop()
            raise RuntimeError("the server did not start:\n" + "".join(lines))
        threading.Thread(target=self._drain, daemon=True).start()
        self.phase = "idle"
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _drain(self) -> None:
        for _ in self.proc.stderr:
            pass

    def _pids(self) -> list[int]:
        """The server and its descendants (the render processes)."""
        pids, at = [self.proc.pid], 0
        while at < len(pids):
            try:
                for task in Path(f"/proc/{pids[at]}/task").iterdir():
                    pids += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                pass  # it just ended
            at += 1
        return pids

    def _cpu_seconds(self, pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def _rss_mib(self, pid: int) -> float:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _usage(self) -> tuple[float, float, dict[int, float]]:
        """(time, RSS MiB of all the processes, CPU seconds of each)."""
        cpu, rss = {}, 0.0
        for pid in self._pids():
            try:
                cpu[pid] = self._cpu_seconds(pid)
                rss += self._rss_mib(pid)
            except (OSError, IndexError, ValueError):
                pass  # it just ended
        return time.monotonic(), rss, cpu

    def _sample(self) -> None:
        t0, _, last = self._usage()
        last_t = t0
        while not self._stop.wait(SAMPLE_EVERY_S):
            try:
                now, rss, cpus = self._usage()
            except (OSError, IndexError, ValueError):
                return
            cpu = sum(c - last.get(pid, 0.0) for pid, c in cpus.items())  # a process that ended drops out
            self.samples.append({"t": now - t0, "phase": self.phase, "cpu_pct": 100 * cpu / (now - last_t),
                                 "rss_mib": rss})
            last_t, last = now, cpus

    def phase_stats(self, phase: str) -> dict:
        rows = [s for s in self.samples if s["phase"] == phase]
        if not rows:
            return {"cpu_pct_mean": None, "cpu_pct_max": None, "rss_mib_start": None, "rss_mib_end": None,
                    "rss_mib_max": None}
        cpu = [r["cpu_pct"] for r in rows]
        rss = [r["rss_mib"] for r in rows]
        return {"cpu_pct_mean": float(np.mean(cpu)), "cpu_pct_max": float(np.max(cpu)), "rss_mib_start": rss[0],
                "rss_mib_end": rss[-1], "rss_mib_max": float(np.max(rss))}

    def stop(self) -> None:
        if hasattr(self, "_stop"):
            self._stop.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# --- one client ----------------------------------------------------------------------------------------------

async def client(url: str, audio: np.ndarray, quality: int, warmup_s: float) -> dict:
    """Stream ``audio`` in real time; what came back (see the module docstring)."""
    async with websockets.connect(url, max_size=None, open_timeout=60, ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "start", "person": "demo", "idle": False, "audio": True,
                                  "quality": quality}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 120))
        if ready.get("type") != "ready":
            raise RuntimeError(f"the server refused the session: {ready}")
        counts: list[int] = []  # samples sent after each chunk
        times: list[float] = []  # when
        frames: list[tuple] = []  # (index, flags, audio_end, received, audio [640])
        done: dict = {}
        t0 = time.monotonic()

        async def send() -> None:
            for k, at in enumerate(range(0, len(audio), CHUNK)):
                await asyncio.sleep(max(0.0, t0 + k * CHUNK / RATE - time.monotonic()))
                await ws.send(audio[at: at + CHUNK].astype("<f4").tobytes())
                counts.append(min(at + CHUNK, len(audio)))
                times.append(time.monotonic())
            done["sent_end"] = time.monotonic()
            await ws.send(json.dumps({"type": "stop"}))

        sender = asyncio.create_task(send())
        stats = None
        end = None
        async for message in ws:
            now = time.monotonic()
            if isinstance(message, bytes):
                index, flags, audio_end = HEADER.unpack_from(message)
                samples = np.frombuffer(message[HEADER.size: HEADER.size + FRAME_SAMPLES * 4], "<f4").copy() \
                    if flags & FLAG_AUDIO else None
                frames.append((index, flags, audio_end, now, samples))
                continue
            text = json.loads(message)
            if text["type"] == "stats":
                stats = text
            elif text["type"] == "end":
                end = text
                break
            elif text["type"] == "error":
                raise RuntimeError(f"the server ended the session: {text['message']}")
        await sender
    return measure(audio, ready, counts, times, frames, t0, done["sent_end"], stats, end, warmup_s)


def measure(audio: np.ndarray, ready: dict, counts: list[int], times: list[float], frames: list[tuple], t0: float,
            sent_end: float, stats: dict | None, end: dict | None, warmup_s: float) -> dict:
    indices = [f[0] for f in frames]
    in_order = indices == sorted(indices) and len(set(indices)) == len(indices)
    steady = [f for f in frames if t0 + warmup_s <= f[3] <= sent_end]
    span = sent_end - (t0 + warmup_s)
    latencies = []
    for _, flags, audio_end, received, _ in frames:
        if flags & FLAG_IDLE or audio_end == 0:
            continue
        k = bisect.bisect_left(counts, audio_end)
        if k < len(counts):
            latencies.append((received - times[k]) * 1000)
    # sync: the frame's audio is the client's, ending at audio_end (the flushed last frame is padded: skipped)
    offsets = []
    last = max(indices) if indices else -1
    for index, _, audio_end, _, samples in frames:
        if samples is None or index == last or audio_end < FRAME_SAMPLES:
            continue
        tail = samples[-SYNC_TAIL:]
        if np.allclose(tail, np.clip(audio[audio_end - SYNC_TAIL: audio_end], -1, 1), atol=1e-6):
            offsets.append(0)
            continue
        lo, hi = max(SYNC_TAIL, audio_end - 2 * FRAME_SAMPLES), min(len(audio), audio_end + 2 * FRAME_SAMPLES)
        windows = np.lib.stride_tricks.sliding_window_view(audio[lo - SYNC_TAIL: hi], SYNC_TAIL)
        best = int(np.argmin(np.abs(windows - tail).sum(1)))
        offsets.append(lo + best - audio_end)
    dropped = int(end["dropped"]) if end else None
    reduced = int(end["reduced"]) if end else None
    expected = -(-len(audio) // FRAME_SAMPLES)
    lat = np.asarray(latencies) if latencies else np.asarray([np.nan])
    return {
        "frames": len(frames), "in_order": in_order, "expected_frames": expected, "dropped": dropped,
        "reduced_pct": 100 * reduced / max(1, len(frames)) if reduced is not None else None,
        "frames_plus_dropped_minus_expected": (len(frames) + dropped - expected) if dropped is not None else None,
        "sustained_fps": len(steady) / span if span > 0 else None,
        "first_frame_s": (frames[0][3] - t0) if frames else None,
        "latency_p50_ms": float(np.percentile(lat, 50)), "latency_p95_ms": float(np.percentile(lat, 95)),
        "latency_max_ms": float(np.max(lat)), "lookahead_ms": ready["delay_frames"] * 1000 / ready["fps"],
        "sync_frames_checked": len(offsets),
        "sync_frames_exact_pct": 100 * offsets.count(0) / len(offsets) if offsets else None,
        "sync_offset_max_ms": max(abs(o) for o in offsets) * 1000 / RATE if offsets else None,
        "server_compute_ms_per_frame": stats.get("compute_ms_per_frame") if stats else None,
        "audio_seconds": len(audio) / RATE,
    }


async def run_clients(url: str, count: int, audio: np.ndarray, quality: int, warmup_s: float) -> list[dict]:
    return list(await asyncio.gather(*[client(url, audio, quality, warmup_s) for _ in range(count)]))


# --- main ------------------------------------------------------------------------------------------------------

def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--seconds", type=float, default=30.0, help="speech each client streams (s)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4], help="clients at once, one run per count")
    ap.add_argument("--live-workers", type=int, default=2, help="the server's --live-workers")
    ap.add_argument("--quality", type=int, default=80, help="JPEG quality of the frames")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds after the first chunk not counted in fps")
    common.add_common_args(ap, "live")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.warmup = 4.0, 1.0
    machine = common.machine_info()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    audio = speech(args.seconds)

    server = Server(work / "serve", max_live=max(args.clients), live_workers=args.live_workers)
    runs = []
    try:
        print(f"server at {server.url}; warming up ...", flush=True)
        server.phase = "warmup"
        asyncio.run(run_clients(server.url, 1, speech(1.0), args.quality, 0.0))
        for count in args.clients:
            print(f"{count} client(s), {args.seconds:g} s of speech each in real time ...", flush=True)
            server.phase = f"clients{count}"
            clients = asyncio.run(run_clients(server.url, count, audio, args.quality, args.warmup))
            server.phase = "idle"
            time.sleep(1.0)
            runs.append({"clients": count, "per_client": clients, "server": server.phase_stats(f"clients{count}")})
    finally:
        server.stop()

    rows = []
    for run in runs:
        for i, c in enumerate(run["per_client"]):
            rows.append((f"{run['clients']} client(s) #{i + 1}", c["sustained_fps"], c["latency_p50_ms"],
                         c["latency_p95_ms"], c["latency_max_ms"], c["dropped"], c["frames"], c["reduced_pct"],
                         c["sync_frames_exact_pct"], c["in_order"]))
    common.print_table(["run", "frames/s", "p50 ms", "p95 ms", "max ms", "dropped", "frames", "reduced %",
                        "sync exact %", "in order"], rows, title=f"live: the demo person at 128 px, {args.seconds:g} s of speech "
                                                  f"per client in 20 ms chunks, real time")
    common.print_table(["run", "server CPU % (mean)", "CPU % (max)", "RSS start MiB", "RSS end MiB", "RSS max MiB"],
                       [(f"{r['clients']} client(s)", r["server"]["cpu_pct_mean"], r["server"]["cpu_pct_max"],
                         r["server"]["rss_mib_start"], r["server"]["rss_mib_end"], r["server"]["rss_mib_max"])
                        for r in runs], title="server and render processes (100 % = one core)")

    summary: dict = {}
    for run in runs:
        n, per = run["clients"], run["per_client"]
        key = f"{n}client" + ("s" if n > 1 else "")
        summary[f"{key}_fps_mean"] = float(np.mean([c["sustained_fps"] for c in per]))
        summary[f"{key}_fps_min"] = float(np.min([c["sustained_fps"] for c in per]))
        summary[f"{key}_latency_p50_ms"] = float(np.median([c["latency_p50_ms"] for c in per]))
        summary[f"{key}_latency_p95_ms"] = float(np.max([c["latency_p95_ms"] for c in per]))
        summary[f"{key}_dropped_pct"] = float(100 * np.sum([c["dropped"] for c in per]) /
                                              np.sum([c["expected_frames"] for c in per]))
        summary[f"{key}_reduced_pct"] = float(np.mean([c["reduced_pct"] for c in per]))
        summary[f"{key}_sync_exact_pct"] = float(np.min([c["sync_frames_exact_pct"] or 0 for c in per]))
        summary[f"{key}_all_in_order"] = all(c["in_order"] for c in per)
        summary[f"{key}_server_cpu_pct"] = run["server"]["cpu_pct_mean"]
        # CPU per frame sent (all processes): what 2 free cores would allow is 2000 / this frames/s in all
        summary[f"{key}_cpu_ms_per_frame"] = float(10 * run["server"]["cpu_pct_mean"] /
                                                   np.sum([c["sustained_fps"] for c in per]))
        summary[f"{key}_server_rss_max_mib"] = run["server"]["rss_mib_max"]
    if runs and runs[0]["clients"] == 1:
        one = runs[0]["per_client"][0]
        summary["target_1client_met"] = bool(one["sustained_fps"] >= TARGET_FPS and
                                             one["latency_p95_ms"] <= TARGET_P95_MS)
    summary["target_fps"] = TARGET_FPS
    summary["target_p95_ms"] = TARGET_P95_MS
    common.print_summary(summary)
    common.write_result("live", args, machine, summary, {"runs": runs, "server_samples": server.samples})


if __name__ == "__main__":
    main()
