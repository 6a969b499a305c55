"""Live sessions: speech streams in over a WebSocket, frames stream out (`geneface.infer.stream`).

The protocol (``/api/live``; README "geneface serve" documents it for clients):

1. the client sends a text message ``{"type": "start", "person": "demo", "controls": {...}, "idle": true,
   "audio": false, "quality": 80, "drop_late": true}``; the server answers ``{"type": "ready", ...}`` with the
   frame rate, size, sample rate and the stream's fixed look-ahead (or ``{"type": "error", "message": ...}`` and
   closes);
2. the client sends binary messages of 16 kHz mono float32 little-endian PCM, of any length;
3. the server sends one binary message per frame: a 16-byte header `HEADER` (frame index, flags, and
   ``audio_end``: how many of the client's samples had arrived up to the end of this frame's 40 ms, which
   lets a client pair each frame with its audio and measure latency), then with ``"audio": true`` the frame's
   640 float32 samples, then the JPEG image;
4. text messages ``{"type": "flush"}`` (end of an utterance: the frames still held back for look-ahead come
   out), ``{"type": "interrupt"}`` (drop the audio not yet turned into frames) and ``{"type": "stop"}`` (flush,
   then ``{"type": "end", ...}`` and the server closes); once a second the server sends ``{"type": "stats",
   ...}``.

With ``"idle": true`` (the default) the server's clock keeps frames coming, mouth closed, while no audio
arrives: after `IDLE_AFTER_S` without audio it feeds the stream silence in real time (those frames carry the
`FLAG_IDLE` flag). With ``"drop_late": true`` (the default) a session that falls more than `MAX_BACKLOG_S`
behind real time (audio played from when it began to arrive) drops its oldest waiting audio (counted in
``dropped``, in frames of 40 ms), so that latency stays bounded on a machine too slow for real time; audio sent
faster than real time (a burst of synthesised speech) is not dropped while the frames keep up with real time.
With ``"drop_late": false`` every sample becomes a frame, however late (at most `MAX_QUEUED_S` may wait).
While other sessions share the render processes, a session that falls `REDUCE_AFTER_S` behind renders its frames
smaller (`REDUCED`, then shown at its size: blurrier, as many) until it has kept up for `RESTORE_AFTER_S`; a
session alone always gets the model's full render (``reduced`` counts the frames rendered smaller).

Where the work happens: a session's stream steps (features, motion) run on a thread of the server, its frames
render in the processes of a `RenderPool` shared by all sessions (``--live-workers``), at most one more per
session than there are processes (enough to keep them busy, few enough that frames do not wait long in line);
the next push's motion runs while this one's frames render, and frames go out in order as they are done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..constants import AUDIO_RATE, FPS
from ..errors import GeneFaceError, InputError
from ..infer.stream import SpeechStream, StreamConfig, StreamFrame
from .renderers import RenderFailed, RenderPool
from .store import Models, NotFound, Work, new_id

log = logging.getLogger(__name__)

FRAME_SAMPLES = AUDIO_RATE // FPS
"""Audio samples per frame (640 = 40 ms)."""
HEADER = struct.Struct("<IIQ")
"""Header of a frame message: frame index (uint32), flags (uint32), audio_end (uint64), little-endian."""
FLAG_IDLE = 1
"""The frame was made from silence the server added (no audio of the client's in it)."""
FLAG_AUDIO = 2
"""The frame's 640 float32 samples follow the header."""
CONTROLS = ("temperature", "seed", "pose", "blink", "mouth_scale", "smoothing", "lookahead", "size")
"""The `StreamConfig` fields a start message may set (``size``: smaller frames are faster; ``lookahead``: fewer
frames of look-ahead are sooner)."""
START_TIMEOUT_S = 30.0
"""A client that sends no start message in this time is closed."""
IDLE_AFTER_S = 0.5
"""Without audio for this long, the idle clock starts feeding silence."""
MAX_BACKLOG_S = 1.0
"""How far behind real time a session may fall before its oldest waiting audio is dropped (``drop_late``): the
latency a machine too slow for real time (or serving too many sessions) comes to."""
MAX_QUEUED_S = 120.0
"""Most audio waiting to be turned into frames (``drop_late`` false); more is a protocol error."""
PUSH_SAMPLES = 2 * FRAME_SAMPLES
"""Audio handed to the stream at once (at most): frames go out as soon as they are made, not a backlog's worth
at a time."""
REDUCED = (0.75, 0.5)
"""Render sizes (of the session's size) a session sharing the render processes steps down to when behind."""
REDUCE_AFTER_S = 0.3
"""Audio waiting (behind real time) that makes a session sharing the render processes render smaller."""
RESTORE_AFTER_S = 5.0
"""Time a session renders smaller, keeping up, before it tries the next size up."""
MAX_CHUNK_BYTES = 1 << 20
"""Largest binary message (16 s of audio)."""
MAX_TEXT_BYTES = 4096
"""Largest text message."""
STATS_EVERY_S = 1.0
CLOSE_PROTOCOL = 1008
"""WebSocket close code for a client that broke the protocol (policy violation)."""
CLOSE_ERROR = 1011
"""WebSocket close code for a failure of the server's."""
CLOSE_BUSY = 1013
"""WebSocket close code when every live slot is taken (try again later)."""


@dataclass
class Start:
    """A start message, checked."""

    person: str
    config: StreamConfig
    idle: bool = True
    audio: bool = False
    quality: int = 80
    drop_late: bool = True


def parse_start(text: str) -> Start:
    """The start message (see the module docstring), or a one-line `InputError`."""
    message = _json(text)
    if message.get("type") != "start":
        raise InputError('the first message must be {"type": "start", "person": ...}')
    unknown = sorted(set(message) - {"type", "person", "controls", "idle", "audio", "quality", "drop_late"})
    if unknown:
        raise InputError(f"unknown field {unknown[0]!r} in the start message")
    person = message.get("person", "demo")
    if not isinstance(person, str):
        raise InputError("person must be a person's name")
    controls = message.get("controls", {})
    if not isinstance(controls, dict):
        raise InputError("controls must be an object such as {\"temperature\": 0.5}")
    unknown = sorted(set(controls) - set(CONTROLS))
    if unknown:
        raise InputError(f"unknown control {unknown[0]!r}; the live controls are {', '.join(CONTROLS)}")
    if controls.get("pose", "loop") not in ("loop", "still"):
        raise InputError("pose must be loop or still")
    for key in ("idle", "audio", "drop_late"):
        if not isinstance(message.get(key, False), bool):
            raise InputError(f"{key} must be true or false")
    quality = message.get("quality", 80)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 10 <= quality <= 100:
        raise InputError("quality (JPEG) must be a whole number from 10 to 100")
    return Start(person=person, config=StreamConfig(**controls), idle=message.get("idle", True),
                 audio=message.get("audio", False), quality=quality, drop_late=message.get("drop_late", True))


def _json(text: str) -> dict:
    try:
        message = json.loads(text)
    except ValueError:
        raise InputError("a text message must be JSON such as {\"type\": \"flush\"}") from None
    if not isinstance(message, dict):
        raise InputError("a text message must be a JSON object such as {\"type\": \"flush\"}")
    return message


class Timeline:
    """Which of the client's samples each frame covers.

    Everything fed to the stream is recorded in order as segments: the client's audio (with the client's
    sample count at its end) or silence the server added (flush padding, the idle clock). Each frame takes the
    next `FRAME_SAMPLES` of it; its ``audio_end`` is the client count reached inside those samples (or, for a
    frame of added silence alone, the count so far: an idle frame)."""

    def __init__(self) -> None:
        self._segments: deque[list] = deque()  # [samples, client count at the end or None]
        self._client = 0

    def fed(self, samples: int, client_end: int | None) -> None:
        """``samples`` were fed to the stream: the client's (its count reaching ``client_end``) or added silence."""
        if samples > 0:
            self._segments.append([samples, client_end])

    def frame(self) -> tuple[int, bool]:
        """The next frame's (audio_end, idle)."""
        need, idle = FRAME_SAMPLES, True
        while need > 0 and self._segments:
            segment = self._segments[0]
            take = min(need, segment[0])
            segment[0] -= take
            need -= take
            if segment[1] is not None:
                idle = False
                # the client's count at the last sample taken: its end count minus what is left of the segment
                self._client = max(self._client, segment[1] - segment[0])
            if segment[0] == 0:
                self._segments.popleft()
        return self._client, idle

    def clear(self, client_now: int) -> None:
        """The stream dropped what it held (interrupt, or the end of an utterance's padding)."""
        self._segments.clear()
        self._client = max(self._client, client_now)

    @property
    def held(self) -> int:
        return sum(s[0] for s in self._segments)


class Live:
    """The live sessions of the app: a bounded number of them, each stepping its stream on a thread of its own,
    all rendering on one pool of ``workers`` processes."""

    def __init__(self, work: Work, models: Models, max_sessions: int, workers: int) -> None:
        self.work = work
        self.models = models
        self.max_sessions = max_sessions
        self.executor = ThreadPoolExecutor(max_workers=max_sessions, thread_name_prefix="geneface-live")
        self.renderers = RenderPool(workers, models.device)
        self._lock = threading.Lock()
        self.sessions: dict[str, "Session"] = {}

    @property
    def active(self) -> int:
        return len(self.sessions)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.renderers.close()

    async def serve(self, ws: WebSocket) -> None:
        """One WebSocket connection, start to end (see the module docstring)."""
        await ws.accept()
        session_id = None
        try:
            try:
                text = await asyncio.wait_for(ws.receive_text(), START_TIMEOUT_S)
                start = parse_start(text)
            except asyncio.TimeoutError:
                raise InputError(f"no start message in {START_TIMEOUT_S:g} s") from None
            except KeyError:  # a binary message first
                raise InputError('the first message must be {"type": "start", ...} (text), not audio') from None
            with self._lock:  # never held across an await: the event loop's thread would block on it
                if len(self.sessions) < self.max_sessions:
                    session_id = new_id()
                    self.sessions[session_id] = None  # type: ignore[assignment]  # the slot, taken
            if session_id is None:
                await _refuse(ws, f"{self.max_sessions} live sessions are running, the most this server takes "
                                  f"(--max-live); try again later", CLOSE_BUSY)
                return
            path = self.work.person_path(start.person)
            loop = asyncio.get_running_loop()
            model = await loop.run_in_executor(self.executor, self.models.get, path)
            stream = await loop.run_in_executor(self.executor, SpeechStream, model, start.config, False)
            await self.renderers.load(path)
            session = Session(session_id, ws, self, path, stream, start)
            self.sessions[session_id] = session
            log.info(f"live session {session_id}: {start.person} ({ws.client.host if ws.client else '?'})")
            await session.run()
        except WebSocketDisconnect:
            pass
        except RenderFailed as e:
            log.error(f"live session {session_id}: {e}")
            await _refuse(ws, str(e), CLOSE_ERROR)
        except (GeneFaceError, NotFound) as e:
            await _refuse(ws, str(e), CLOSE_PROTOCOL)
        except Exception:
            log.exception("live session failed")
            await _refuse(ws, "internal error in the live session; the server's log has the details", CLOSE_ERROR)
        finally:
            if session_id is not None:
                with self._lock:
                    session = self.sessions.pop(session_id, None)
                if session is not None:
                    log.info(f"live session {session_id} ended: {session.summary()}")


async def _refuse(ws: WebSocket, message: str, code: int) -> None:
    if ws.application_state != WebSocketState.CONNECTED or ws.client_state != WebSocketState.CONNECTED:
        return
    try:
        await ws.send_text(json.dumps({"type": "error", "message": message}))
        await ws.close(code)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass


class Session:
    """One client's stream: its queue of audio and controls, the idle clock, and the frames it is sent."""

    def __init__(self, session_id: str, ws: WebSocket, live: Live, path: Path, stream: SpeechStream,
                 start: Start) -> None:
        self.id = session_id
        self.ws = ws
        self.live = live
        self.executor = live.executor
        self.renderers = live.renderers
        self.path = path
        self.stream = stream
        self.start = start
        self.fps = float(stream.fps)
        self.size = int(stream.size)
        self.timeline = Timeline()
        # frames rendering, in order: (index, audio_end, idle, audio [640], JPEG future), one slot each
        self.outbox: asyncio.Queue[tuple[int, int, bool, np.ndarray, asyncio.Future]] = asyncio.Queue()
        self.slots = asyncio.Semaphore(self.renderers.processes + 1)
        self.scale = 0  # render at the full size (0) or REDUCED[scale - 1]
        self.scaled_at = 0.0  # when scale last changed
        self.behind_at = 0.0  # when the session was last behind
        self.items: deque[tuple[str, object]] = deque()  # ("audio", (samples, client end)) or ("flush", None) ...
        self.wake = asyncio.Event()
        self.received = 0  # client samples received
        self.queued = 0  # client samples queued, not yet fed
        self.done = 0  # client samples fed to the stream or dropped
        self.clock: tuple[float, int] | None = None  # (time, done) when the stream last fell behind the client
        self.last_audio = time.monotonic()
        self.idle_since: float | None = None
        self.idle_fed = 0
        self.sent = 0
        self.idle_frames = 0
        self.reduced = 0  # frames rendered smaller
        self.dropped_samples = 0  # client audio dropped (backlog)
        self.compute_s = 0.0
        self.stopping = False
        self.next_stats = 0.0

    def summary(self) -> dict:
        return {"frames": self.sent, "idle_frames": self.idle_frames, "reduced": self.reduced,
                "dropped": int(round(self.dropped_samples / FRAME_SAMPLES)),
                "audio_seconds": round(self.received / AUDIO_RATE, 3)}

    async def run(self) -> None:
        await self.ws.send_text(json.dumps({
            "type": "ready", "session": self.id, "person": self.start.person, "fps": self.fps, "size": self.size,
            "sample_rate": AUDIO_RATE, "frame_samples": FRAME_SAMPLES, "delay_frames": self.stream.delay_frames,
            "idle": self.start.idle, "audio": self.start.audio, "format": "jpeg", "header": "<IIQ",
            "drop_late": self.start.drop_late, "max_backlog_s": MAX_BACKLOG_S}))
        tasks = {asyncio.create_task(self._read()), asyncio.create_task(self._pump()),
                 asyncio.create_task(self._deliver())}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raise what ended it
        finally:
            for task in tasks:
                task.cancel()
            while not self.outbox.empty():  # frames no one will send
                jpeg = self.outbox.get_nowait()[-1]
                if not jpeg.cancel() and not jpeg.cancelled():
                    jpeg.exception()  # done (a failure that ended the session, or no matter now)
            # not gather: a task cancelled here would make this task's own cancellation look like another
            await asyncio.wait(tasks)

    # --- the client's messages ----------------------------------------------------------------------
    async def _read(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                self._audio(data)
            elif text is not None:
                if len(text) > MAX_TEXT_BYTES:
                    raise InputError(f"a text message may have at most {MAX_TEXT_BYTES} characters")
                kind = _json(text).get("type")
                if kind not in ("flush", "interrupt", "stop"):
                    raise InputError(f"unknown message type {str(kind)[:40]!r}; expected flush, interrupt or stop")
                self.items.append((kind, None))
            self.wake.set()

    def _audio(self, data: bytes) -> None:
        if len(data) % 4:
            raise InputError(f"audio messages are float32 samples (4 bytes each); got {len(data)} bytes")
        if len(data) > MAX_CHUNK_BYTES:
            raise InputError(f"an audio message may have at most {MAX_CHUNK_BYTES} bytes")
        samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.isfinite(samples).all():
            raise InputError("the audio holds NaN or infinite samples")
        if not len(samples):
            return
        if self.queued + len(samples) > MAX_QUEUED_S * AUDIO_RATE:
            raise InputError(f"more than {MAX_QUEUED_S:g} s of audio is waiting to be turned into frames; send it "
                             f"no faster than the frames come (or start with drop_late true)")
        now = time.monotonic()
        if self.clock is None:
            self.clock = (now, self.done)
        self.received += len(samples)
        self.queued += len(samples)
        self.items.append(("audio", (np.clip(samples, -1.0, 1.0), self.received)))
        self.last_audio = now
        self.idle_since = None
        self._drop_late()

    def _drop_late(self) -> None:
        """With ``drop_late``: drop the oldest waiting audio beyond `MAX_BACKLOG_S` behind real time, which runs
        from when the stream last fell behind the client (``clock``)."""
        if not self.start.drop_late or self.clock is None:
            return
        since, done = self.clock
        due = done + int((time.monotonic() - since) * AUDIO_RATE)  # the client's count, had it played in real time
        late = due - self.done - int(MAX_BACKLOG_S * AUDIO_RATE)  # beyond the latency allowed
        while late > 0:
            first = next((i for i, item in enumerate(self.items) if item[0] == "audio"), None)
            if first is None:
                return
            samples, end = self.items[first][1]  # type: ignore[misc]
            cut = min(len(samples), late)
            self.dropped_samples += cut
            self.queued -= cut
            self.done = end - (len(samples) - cut)
            late -= cut
            if cut == len(samples):
                del self.items[first]
            else:
                self.items[first] = ("audio", (samples[cut:], end))

    # --- the frames ---------------------------------------------------------------------------------
    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        self.next_stats = time.monotonic() + STATS_EVERY_S
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), 1.0 / FPS)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            while self.items:
                self._drop_late()  # time passed while the last frames were made
                if not self.items:
                    break
                kind, payload = self.items.popleft()
                if kind == "audio":
                    chunks = [payload]
                    total = len(payload[0])  # type: ignore[index]
                    while total < PUSH_SAMPLES and self.items and self.items[0][0] == "audio":
                        chunks.append(self.items.popleft()[1])
                        total += len(chunks[-1][0])  # type: ignore[index]
                    if total > PUSH_SAMPLES:  # the rest of the last chunk goes back to the front of the queue
                        samples, end = chunks[-1]  # type: ignore[misc]
                        over = total - PUSH_SAMPLES
                        chunks[-1] = (samples[:len(samples) - over], end - over)
                        self.items.appendleft(("audio", (samples[len(samples) - over:], end)))
                    self.done = chunks[-1][1]  # type: ignore[index]
                    if any(k == "interrupt" for k, _ in self.items):
                        self.queued -= sum(len(c[0]) for c in chunks)  # type: ignore[index]
                        continue  # dropped by the interrupt that follows
                    audio = np.concatenate([c[0] for c in chunks])  # type: ignore[index]
                    self.queued -= len(audio)
                    self.timeline.fed(len(audio), chunks[-1][1])  # type: ignore[index]
                    await self._render(await loop.run_in_executor(self.executor, self._step, "push", audio))
                    if self.queued == 0:
                        self.clock = None  # caught up with the client
                elif kind == "flush" or kind == "stop":
                    frames = await loop.run_in_executor(self.executor, self._step, "flush", None)
                    self.timeline.fed(max(0, len(frames) * FRAME_SAMPLES - self.timeline.held), None)
                    await self._render(frames)
                    self.timeline.clear(self.received)
                    if kind == "stop":
                        await self.outbox.join()
                        await self.ws.send_text(json.dumps({"type": "end", **self.summary()}))
                        await self.ws.close(1000)
                        return
                elif kind == "interrupt":
                    await loop.run_in_executor(self.executor, self._step, "interrupt", None)
                    self.timeline.clear(self.received)
                    self.clock = None if self.queued == 0 else self.clock
                    self.idle_since = None
                    self.last_audio = time.monotonic()
                await self._stats()
            await self._idle(loop)
            await self._stats()

    async def _stats(self) -> None:
        """Send the ``stats`` message when it is due (once a second)."""
        now = time.monotonic()
        if now < self.next_stats:
            return
        self.next_stats = now + STATS_EVERY_S
        await self.ws.send_text(json.dumps({
            "type": "stats", **self.summary(), "backlog_ms": round(self.queued / AUDIO_RATE * 1000),
            "render_size": self.render_size,
            "compute_ms_per_frame": round(self.compute_s / max(1, self.sent) * 1000, 1)}))

    async def _idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Feed silence in real time while no audio comes (``idle``)."""
        if not self.start.idle or self.items:
            return
        now = time.monotonic()
        if now - self.last_audio < IDLE_AFTER_S:
            return
        if self.idle_since is None:
            self.idle_since, self.idle_fed = now, 0
        due = int((now - self.idle_since) * AUDIO_RATE) // FRAME_SAMPLES * FRAME_SAMPLES - self.idle_fed
        if due <= 0:
            return
        due = min(due, FRAME_SAMPLES * 5)  # a slow machine catches up a little at a time
        self.idle_fed += due
        self.timeline.fed(due, None)
        await self._render(await loop.run_in_executor(self.executor, self._step, "push", np.zeros(due, np.float32)))

    def _step(self, op: str, audio: np.ndarray | None) -> list[StreamFrame]:
        """In a worker thread: the stream's step; its new frames, not yet rendered."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            if op == "push":
                frames = self.stream.push(audio)
            elif op == "flush":
                frames = self.stream.flush()
            else:
                self.stream.interrupt()
                frames = []
        self.compute_s += time.perf_counter() - t0
        return frames

    async def _render(self, frames: list[StreamFrame]) -> None:
        """Start rendering ``frames`` (in order), each once a slot is free; `_deliver` sends them."""
        for frame in frames:
            await self.slots.acquire()
            audio_end, idle = self.timeline.frame()
            self._rescale()
            size = self.render_size
            jpeg = asyncio.ensure_future(self.renderers.render(
                self.path, frame.window[None], frame.c2w[None], size, self.size, self.start.quality))
            self.outbox.put_nowait((frame.index, audio_end, idle, frame.audio, jpeg))
            self.reduced += size != self.size

    @property
    def render_size(self) -> int:
        """The size frames render at now."""
        return self.size if not self.scale else max(8, round(self.size * REDUCED[self.scale - 1] / 8) * 8)

    def _rescale(self) -> None:
        """Render smaller while other sessions share the render processes and this one is behind; a size up
        once it has kept up for `RESTORE_AFTER_S` (see the module docstring)."""
        now = time.monotonic()
        if self.live.active <= 1:
            self.scale = 0
        elif self.queued > REDUCE_AFTER_S * AUDIO_RATE:
            self.behind_at = now
            if self.scale < len(REDUCED) and now - self.scaled_at > 1.0:  # a second to show its effect
                self.scale, self.scaled_at = self.scale + 1, now
        elif self.scale and now - max(self.scaled_at, self.behind_at) > RESTORE_AFTER_S:
            self.scale, self.scaled_at = self.scale - 1, now

    async def _deliver(self) -> None:
        """Send the frames as they are rendered, in order."""
        while True:
            index, audio_end, idle, audio, jpeg = await self.outbox.get()
            images, seconds = await jpeg
            flags = (FLAG_IDLE if idle else 0) | (FLAG_AUDIO if self.start.audio else 0)
            parts = [HEADER.pack(index, flags, audio_end)]
            if self.start.audio:
                parts.append(np.ascontiguousarray(audio, dtype="<f4").tobytes())
            parts.append(images[0])
            await self.ws.send_bytes(b"".join(parts))
            self.compute_s += seconds
            self.sent += 1
            self.idle_frames += idle
            self.slots.release()
            self.outbox.task_done()
