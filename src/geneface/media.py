"""Media I/O on PyAV: video frames at a fixed rate, 16 kHz mono audio, H.264 + AAC mp4 output."""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import av
import numpy as np

from .constants import AUDIO_RATE, FPS
from .errors import InputError
from .fileio import atomic_path

T = TypeVar("T")


@dataclass(frozen=True)
class VideoInfo:
    """What a media file holds."""

    width: int
    height: int
    fps: float
    """Average frame rate of the video stream (variable-rate streams report their mean)."""
    duration: float
    """Seconds of video."""
    has_audio: bool


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file: {path}")
    if path.is_dir():
        raise InputError(f"expected a media file, got a folder: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"file is empty: {path}")
    try:
        return av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise InputError(f"not a readable media file: {path} ({e.__class__.__name__})") from None


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describe a video file; raises ``InputError`` when it has no video stream."""
    with _open(path) as container:
        if not container.streams.video:
            raise InputError(f"no video stream in {path}")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = (stream.frames or 0) / fps
        return VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=fps,
            duration=duration,
            has_audio=bool(container.streams.audio),
        )


def nearest_frames(source_times: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index ``[N]`` of the source frame nearest each of ``times`` ``[N]`` seconds (the later one at a tie), for
    source frames shown at the sorted ``source_times`` ``[M]``: how `read_video` resamples a clip."""
    source_times = np.asarray(source_times, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    later = np.clip(np.searchsorted(source_times, times, side="left"), 1, max(len(source_times) - 1, 1))
    earlier = later - 1
    midpoint = (source_times[earlier] + source_times[np.minimum(later, len(source_times) - 1)]) / 2
    return np.where(times < midpoint - 1e-6, earlier, np.minimum(later, len(source_times) - 1))


def read_video(path: str | os.PathLike, fps: float = FPS) -> Iterator[np.ndarray]:
    """Yield RGB frames ``[H, W, 3] uint8`` resampled to ``fps`` (nearest source frame in time).

    Variable-rate and other-rate sources come out at exactly ``fps``: output frame ``k`` shows the source frame
    nearest the time ``k / fps`` from the first frame (`nearest_frames`), for as long as the source lasts (its
    last frame held for its own duration).
    """
    container = _open(path)
    with container:
        if not container.streams.video:
            raise InputError(f"no video stream in {path}")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start = None
        next_k = 0
        previous = None  # (time, rgb, duration or None) of the last decoded source frame
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else (previous[0] + 1 / fps if previous else 0.0)
                if start is None:
                    start = t
                t -= start
                rgb = frame.to_ndarray(format="rgb24")
                # Output times nearer the previous frame than this one show the previous frame.
                while previous is not None and next_k / fps < (previous[0] + t) / 2 - 1e-6:
                    yield previous[1]
                    next_k += 1
                duration = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else None
                previous = (t, rgb, duration)
        except av.FFmpegError as e:
            if previous is None:
                raise InputError(f"corrupt video stream in {path}: {e}") from None
            raise InputError(f"corrupt video stream in {path} after {next_k} frames: {e}") from None
        if previous is None:
            raise InputError(f"no decodable video frames in {path}")
        # The last source frame is shown for its own duration (one average interval when the file omits it).
        end = previous[0] + (previous[2] or 1.0 / float(stream.average_rate or fps))
        while next_k / fps < end - 1e-6:
            yield previous[1]
            next_k += 1


def read_ahead(items: Iterable[T], depth: int = 16) -> Iterator[T]:
    """``items`` in order, each computed in a background thread while the caller works on earlier ones (at most
    ``depth`` ahead): decoding and image I/O, which release the GIL, overlap a single-threaded model. An error in
    the thread is raised here; stopping early stops the thread and closes ``items``."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    break
            else:
                put((end, None))
        except BaseException as e:  # handed to the caller
            put((end, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="geneface-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()


def read_audio(path: str | os.PathLike, rate: int = AUDIO_RATE) -> np.ndarray:
    """Decode the first audio stream as mono float32 ``[N]`` at ``rate`` Hz, values in [-1, 1], placed by its
    timestamps.

    In a file with video, sample 0 is at the presentation time of the first video frame (the frame 0 of
    `read_video`): audio that starts before it is cut, audio that starts after it is preceded by silence. The
    demuxer and decoder already apply edit lists and the codec's priming samples where the container declares
    them (an AAC mp4's edit list, Matroska's codec delay); a file that does not (priming at pts 0, no edit list)
    decodes with the priming in it, which `geneface process` measures as an offset. Gaps in the audio's
    timestamps become silence. In an audio-only file sample 0 is the first decoded sample.
    """
    container = _open(path)
    with container:
        if not container.streams.audio:
            raise InputError(f"no audio track in {path}")
        moving = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        start = _first_video_time(path, moving[0].index) if moving else None  # cover art is no video
        stream = container.streams.audio[0]
        timeline = _Timeline(rate, _expected_samples(container, stream, rate), start)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    timeline.add(out)
            for out in resampler.resample(None):
                timeline.add(out)
        except av.FFmpegError as e:
            raise InputError(f"corrupt audio stream in {path}: {e}") from None
    if timeline.decoded == 0:
        raise InputError(f"audio track in {path} holds no samples")
    return timeline.samples()


def _first_video_time(path: str | os.PathLike, index: int) -> float | None:
    """Presentation time in seconds of the first decoded frame of video stream ``index`` of ``path`` (its own
    pass over the file); None when there is none or it has no timestamp."""
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(container.streams[index]):
                return frame.time
    except av.FFmpegError:  # read_video reports a broken video stream; the audio can still be read
        pass
    return None


def _expected_samples(container: av.container.InputContainer, stream: av.AudioStream, rate: int) -> int:
    """Samples at ``rate`` the audio stream should give (from the declared duration; one second when unknown)."""
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / av.time_base
    else:
        seconds = 1.0
    return int(seconds * rate) + rate // 10


class _Timeline:
    """Mono samples laid out by their frames' timestamps into one growing float32 buffer (clipped at the end).

    A frame that starts within `SLACK` seconds of where the previous one ended follows it directly (timestamps
    rounded to their time base jitter by a sample or so); one that starts later leaves silence, one that starts
    earlier overwrites. ``start``: the time of sample 0 (None: the first frame's time).
    """

    SLACK = 0.001

    def __init__(self, rate: int, capacity: int, start: float | None) -> None:
        self.rate, self.start = rate, start
        self.buffer = np.zeros(max(capacity, 1), np.float32)
        self.length = 0
        """Samples written so far (the end of the furthest frame at or after sample 0)."""
        self.cursor: int | None = None
        """Where the previous frame ended (may be negative: before sample 0)."""
        self.decoded = 0

    def add(self, frame: av.AudioFrame) -> None:
        samples = frame.to_ndarray().reshape(-1)
        self.decoded += len(samples)
        t = frame.time
        if self.start is None:
            self.start = 0.0 if t is None else t
        pos = self.cursor
        if t is not None:
            stamped = int(round((t - self.start) * self.rate))
            if pos is None or abs(stamped - pos) > self.SLACK * self.rate:
                pos = stamped
        pos = pos or 0
        self.cursor = pos + len(samples)
        if self.cursor <= 0:
            return
        if pos < 0:
            samples, pos = samples[-pos:], 0
        end = pos + len(samples)
        if end > len(self.buffer):
            grown = np.zeros(max(end, 2 * len(self.buffer)), np.float32)
            grown[: self.length] = self.buffer[: self.length]
            self.buffer = grown
        self.buffer[pos:end] = samples
        self.length = max(self.length, end)

    def samples(self) -> np.ndarray:
        """The audio ``[length]`` clipped to [-1, 1] (in place; a copy only when the buffer is much longer)."""
        out = self.buffer[: self.length]
        if len(self.buffer) > 1.1 * self.length + self.rate:
            out = out.copy()
        return np.clip(out, -1.0, 1.0, out=out)


def _audio_frames(audio: np.ndarray, rate: int, frame_size: int) -> Iterator[av.AudioFrame]:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    for i, start in enumerate(range(0, len(pcm), frame_size)):
        chunk = pcm[start : start + frame_size]
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        yield frame


def write_audio(path: str | os.PathLike, audio: np.ndarray, rate: int = AUDIO_RATE) -> None:
    """Write mono float audio ``[N]`` as 16-bit PCM; the container follows the extension (.wav, .flac)."""
    path = Path(path)
    codec = {".wav": "pcm_s16le", ".flac": "flac"}.get(path.suffix.lower())
    if codec is None:
        raise InputError(f"unsupported audio extension {path.suffix!r}: use .wav or .flac")
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format=path.suffix.lstrip(".").lower()) as container:
            stream = container.add_stream(codec, rate=rate, layout="mono")
            for frame in _audio_frames(audio, rate, 4096):
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)


class VideoWriter:
    """Stream RGB frames into an H.264 mp4 (yuv420p), with optional AAC audio muxed in sync.

    Use as a context manager; the file appears under its final name only when the block succeeds::

        with VideoWriter("out.mp4", fps=25, audio=wav) as w:
            for frame in frames:
                w.write(frame)
    """

    def __init__(self, path: str | os.PathLike, fps: float = FPS, audio: np.ndarray | None = None,
                 audio_rate: int = AUDIO_RATE, crf: int = 18) -> None:
        self.path = Path(path)
        if not self.path.parent.exists():
            raise InputError(f"output folder does not exist: {self.path.parent}")
        self.fps = Fraction(fps).limit_denominator(1001)
        self.audio = audio
        self.audio_rate = audio_rate
        self.crf = crf
        self._atomic = None
        self._container = None
        self._stream = None
        self.frames_written = 0

    def __enter__(self) -> "VideoWriter":
        self._atomic = atomic_path(self.path, suffix=".mp4")
        tmp = self._atomic.__enter__()
        self._container = av.open(str(tmp), "w", format="mp4")
        return self

    def write(self, rgb: np.ndarray) -> None:
        """Append one frame ``[H, W, 3] uint8`` (H and W even)."""
        h, w = rgb.shape[:2]
        if self._stream is None:
            if h % 2 or w % 2:
                raise InputError(f"H.264 needs even frame sizes, got {w}x{h}")
            self._stream = self._container.add_stream("libx264", rate=self.fps)
            self._stream.width, self._stream.height = w, h
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(self.crf), "preset": "veryfast"}
            if self.audio is not None:
                self._audio_stream = self._container.add_stream("aac", rate=self.audio_rate, layout="mono")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24")
        frame.pts = self.frames_written
        frame.time_base = 1 / self.fps
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames_written += 1

    def _finish(self) -> None:
        if self._stream is None:
            raise InputError("no frames to write")
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        if self.audio is not None:
            stream = self._audio_stream
            for frame in _audio_frames(self.audio, self.audio_rate, stream.codec_context.frame_size or 1024):
                for packet in stream.encode(frame):
                    self._container.mux(packet)
            for packet in stream.encode(None):
                self._container.mux(packet)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish()
        finally:
            self._container.close()
            self._atomic.__exit__(exc_type, exc, tb)


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = FPS,
                audio: np.ndarray | None = None, audio_rate: int = AUDIO_RATE) -> int:
    """Write frames (and audio) to an mp4; returns the number of frames written."""
    with VideoWriter(path, fps=fps, audio=audio, audio_rate=audio_rate) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.frames_written
