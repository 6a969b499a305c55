"""Streaming inference: 16 kHz audio in chunks of any size, frames out at 25 fps after a fixed look-ahead.

    stream = SpeechStream(PersonModel.load(path), StreamConfig(temperature=0.5))
    for chunk in chunks:                      # float32 [N] at 16 kHz mono, any N (10 ms .. seconds)
        for frame in stream.push(chunk):      # StreamFrame: index, rgb [S, S, 3], audio [640], landmarks [68, 3]
            show(frame)
    rest = stream.flush()                     # end of an utterance: the frames held for the look-ahead
    stream.interrupt()                        # or: drop the audio not yet turned into frames

A server renders elsewhere: ``SpeechStream(model, config, render=False)`` gives frames without ``rgb``, to be
rendered from their ``window`` and ``c2w`` by `PersonModel.render` (in other processes, while the stream goes on).

**What a frame is.** Frame ``i`` (the 640 samples from ``640 i``) is what offline inference
(`PersonModel.landmarks`, then `PersonModel.frames`) gives for frame ``i`` of the audio cut ``D =
StreamConfig.lookahead`` frames after it, at sample ``640 (i + 1 + D)``; `flush` cuts at the end of the audio
(padded with silence to a whole frame), as offline inference does. So a frame does not depend on how the audio
was chunked, and the stream differs from offline inference on the whole utterance only by what the audio more
than ``D`` frames after a frame would have changed in it (its last ``D`` frames see the same end as offline).
How each stage gets there incrementally:

- **features**: a `mel` row depends on 40 ms of audio around its centre (`FeatureExtractor.context`), so each
  frame's two rows are computed once, when its audio is complete, and equal the whole clip's rows bit for bit.
  Kinds whose rows depend on the whole utterance (``whisper``, ``hubert``) cannot stream: `InputError`.
- **motion**: the generator is convolutional. Frame ``i`` runs it on the features of frames ``s .. i + 1 + D``
  with ``s`` at least `MotionModel.context_frames` (12 for the demo person) before the frames it needs, on the
  latent grid (a multiple of the stride from the stream's start); the prior noise of each latent step comes
  from the seed and the step's place (`step_noise`), as offline.
- **stabilisation**: `shape` per frame, `smooth` over that window (its edge value repeated past the cut, as
  offline past the end), eyes and blinks from a `BlinkSchedule` that runs over the stream's whole life.
- **rendering**: the condition window of frames ``i - 2 .. i + 2`` from the same cut track; the head pose of
  frame ``i`` from the person's loop (`pose_at`) or still; the frames of a push rendered in shares of at
  most `RENDER_BATCH` by `StreamConfig.threads` threads (unless ``render=False``).

With the default ``D = 5`` (200 ms) and ``smoothing = 1`` the streamed landmarks of the demo person differ from
offline ones by 0.005 % of the inter-ocular distance on average (0.04 % in the worst frame; the mouth moves
0.4 % a frame): the generator's decoder and condition reach 6 frames ahead, the smoothing 4 and the render
window 2, so ``D = 12`` would be exact but 280 ms later, and ``D = 6`` is within 0.001 %
(`benchmarks/stream.py` measures each; `tests/test_stream.py` holds the default under 0.02 %).

**What differs from offline inference**: offline inference refuses silent audio (the stream takes it: a
closed, still mouth), and counts ``round(N / 640)`` frames where the stream pads the last partial frame
(``ceil``). Frame indices, the blink schedule, the pose loop and the latent grid run on over utterances;
`interrupt` rewinds the audio to the last frame sent, so the next audio follows it directly.

Memory is bounded: the stream keeps the features of the window behind the next frame, the audio not yet sent
and the blinks not yet over. One stream serves one thread at a time; streams share a `PersonModel` and
change nothing in it.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..cliopts import MAX_SIZE, check_config, opt, same_as
from ..constants import AUDIO_RATE, FPS, HOP
from ..errors import InputError
from ..features import get_extractor
from ..render.fields import WINDOW
from .pipeline import InferConfig, PersonModel
from .stabilise import BlinkSchedule, pose_at, set_eyes, shape, smooth, smoothing_radius

FRAME_SAMPLES = AUDIO_RATE // FPS
"""Audio samples per frame (640 = 40 ms)."""
RENDER_BATCH = 4
"""Most frames rendered at once by one thread (a push that completes more renders them in several batches)."""
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _render_pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of ``threads`` render threads, shared by every stream that asks for that many."""
    with _POOLS_LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="geneface-render")
        return _POOLS[threads]


def _shares(n: int, threads: int) -> list[tuple[int, int]]:
    """Contiguous ranges ``[lo, hi)`` covering ``0 .. n``: at least one per thread (when there are enough
    frames), none longer than `RENDER_BATCH`, as equal as can be."""
    parts = min(n, max(threads, -(-n // RENDER_BATCH)))
    cuts = [round(k * n / parts) for k in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(cuts, cuts[1:])]
HALF_WINDOW = WINDOW // 2
"""Frames either side of a frame in the renderer's condition window (2)."""


@dataclass
class StreamConfig:
    """Options of a live stream: those of `InferConfig` that apply, and the look-ahead."""

    temperature: float = same_as(InferConfig, "temperature")
    """Sampling temperature of the motion generator (0 = its mean, higher = livelier)."""
    seed: int = same_as(InferConfig, "seed")
    """Random seed of the motion sample and the blinks."""
    pose: str = opt("loop", choices=("loop", "still"))
    """Head pose: loop (the training poses forward and back, on over utterances) or still."""
    blink: str = same_as(InferConfig, "blink")
    """auto: blinks every 2-6 s; off: eyes held open."""
    mouth_scale: float = same_as(InferConfig, "mouth_scale")
    """Scale of the predicted mouth motion (above 1 exaggerates articulation)."""
    smoothing: float = same_as(InferConfig, "smoothing")
    """Temporal smoothing of the landmarks (Gaussian sigma in frames, 0 = off)."""
    lookahead: int = opt(5, min=0, max=50)
    """Frames of audio after a frame that it waits for (40 ms each): more is closer to offline inference,
    less is sooner."""
    size: int | None = opt(None, min=8, max=MAX_SIZE)
    """Side of the frames in pixels (default: its renderer's, which keeps up in real time on a CPU; a larger one,
    up to the person model's, goes through its super-resolution network; smaller is faster)."""
    threads: int = opt(2, min=1, max=64)
    """Threads that render the frames of one push, a share each. Called from a worker thread (as a server
    does), torch's own threads hardly use a second core, so the stream splits its frames instead."""

    def __post_init__(self) -> None:
        check_config(self)


@dataclass
class StreamFrame:
    """One frame of a stream."""

    index: int
    """Frame number since the stream began (0, 1, 2, ... over all utterances)."""
    rgb: np.ndarray | None
    """[S, S, 3] uint8 image (None from a stream made with ``render=False``)."""
    audio: np.ndarray
    """[640] float32: the frame's 40 ms of audio (zeros where `SpeechStream.flush` padded it)."""
    landmarks: np.ndarray
    """[68, 3] float32 stabilised landmark offsets (as `PersonModel.landmarks` gives)."""
    window: np.ndarray
    """[5, 68, 3] float32 the landmarks of frames ``index - 2 .. index + 2`` it is rendered from."""
    c2w: np.ndarray
    """[4, 4] float32 its camera: ``rgb`` is ``PersonModel.render(window[None], c2w[None], size)[0]``."""


class SpeechStream:
    """Audio chunks in, frames out, ``delay_frames`` behind the audio (see the module docstring)."""

    def __init__(self, model: PersonModel, config: StreamConfig = StreamConfig(), render: bool = True) -> None:
        if model.person.feature_kind != "mel":
            raise InputError(f"this person model uses {model.person.feature_kind!r} audio features, which need the "
                             f"whole utterance at once; live streaming needs a person trained with mel features")
        if model.fps != FPS:
            raise InputError(f"live streaming needs a person model at {FPS} fps, this one is at {model.fps:g}")
        self.model = model
        self.config = config
        self.render = render
        """Whether frames come rendered (else ``rgb`` is None, for the caller to render elsewhere)."""
        self.delay_frames = int(config.lookahead)
        """Frames a frame waits for after its own audio (its look-ahead)."""
        self._extractor = get_extractor("mel")
        self._radius = smoothing_radius(config.smoothing)
        # frames of features a frame's motion window starts before it: the render window, smoothing, context
        self._behind = HALF_WINDOW + self._radius + model.motion.context_frames
        self._blinks = BlinkSchedule(model.fps, config.seed) if config.blink == "auto" else None
        # the timeline: samples fed (less those interrupted), frames with features, frames sent
        self._samples = 0
        self._complete = 0
        self._sent = 0
        self._audio = np.zeros(HOP, np.float32)  # samples from _audio_start (the silence before the start first)
        self._audio_start = -HOP
        self._features = np.zeros((0, self._extractor.dim), np.float32)  # [2 * frames, D] from frame _feature_start
        self._feature_start = 0

    @property
    def fps(self) -> float:
        return self.model.fps

    @property
    def size(self) -> int:
        """Side of the frames in pixels."""
        return int(self.config.size or self.model.renderer.size)

    @property
    def held(self) -> int:
        """Samples fed but not yet in a frame that was sent."""
        return self._samples - self._sent * FRAME_SAMPLES

    # --- the three calls --------------------------------------------------------------------------
    def push(self, audio: np.ndarray) -> list[StreamFrame]:
        """Feed 16 kHz mono samples ``audio`` [N] (float, any N >= 0); returns the frames now ``delay_frames``
        behind the audio, oldest first."""
        audio = check_chunk(audio)
        self._feed(audio)
        return self._emit(self._complete - self.delay_frames)

    def flush(self) -> list[StreamFrame]:
        """End of an utterance: pad its last partial frame with silence and return every frame still held.
        The stream goes on (indices, blinks and the pose loop continue)."""
        partial = self._samples % FRAME_SAMPLES
        if partial:
            self._feed(np.zeros(FRAME_SAMPLES - partial, np.float32))
        return self._emit(self._complete)

    def interrupt(self) -> None:
        """Drop the audio not yet in a sent frame (a voice agent cut in): the next audio follows the last
        frame sent."""
        self._samples = self._sent * FRAME_SAMPLES
        self._complete = self._sent
        self._audio = self._audio[:self._samples - self._audio_start]
        self._features = self._features[:2 * (self._sent - self._feature_start)]

    # --- the steps --------------------------------------------------------------------------------
    def _feed(self, audio: np.ndarray) -> None:
        """Append samples and compute the features of the frames they complete."""
        self._audio = np.concatenate([self._audio, audio])
        self._samples += len(audio)
        complete = self._samples // FRAME_SAMPLES
        if complete > self._complete:
            lo = self._complete * FRAME_SAMPLES - HOP - self._audio_start
            rows = self._extractor.frame_rows(self._audio[lo:complete * FRAME_SAMPLES - self._audio_start])
            self._features = np.concatenate([self._features, rows])
            self._complete = complete

    def _emit(self, stop: int) -> list[StreamFrame]:
        """Frames ``_sent .. stop``, each cut ``delay_frames`` after it (or at the audio's end)."""
        indices = list(range(self._sent, stop))
        if not indices:
            return []
        windows = np.stack([self._window(i, min(i + 1 + self.delay_frames, self._complete)) for i in indices])
        c2w = pose_at(self.model.person.c2w, np.asarray(indices), self.config.pose).astype(np.float32)
        rgb = self._render(windows, c2w) if self.render else [None] * len(indices)
        frames = []
        for j, i in enumerate(indices):
            start = i * FRAME_SAMPLES - self._audio_start
            frames.append(StreamFrame(index=i, rgb=rgb[j], audio=self._audio[start:start + FRAME_SAMPLES].copy(),
                                      landmarks=windows[j, HALF_WINDOW], window=windows[j], c2w=c2w[j]))
        self._sent = stop
        self._trim()
        return frames

    def _render(self, windows: np.ndarray, c2w: np.ndarray) -> np.ndarray:
        """Frames [B, S, S, 3] uint8 of windows [B, 5, 68, 3] and cameras [B, 4, 4], in shares on threads."""
        def render(share: tuple[int, int]) -> np.ndarray:  # [hi - lo, S, S, 3]
            with torch.inference_mode():  # grad mode is per thread
                return self.model.render(windows[share[0]:share[1]], c2w[share[0]:share[1]], self.config.size)

        shares = _shares(len(windows), self.config.threads)
        parts = (map(render, shares) if len(shares) == 1
                 else _render_pool(self.config.threads).map(render, shares))
        return np.concatenate(list(parts))

    def _window(self, i: int, cut: int) -> np.ndarray:
        """Stabilised landmarks [5, 68, 3] of frames ``i - 2 .. i + 2`` (clamped to ``0 .. cut - 1``) from
        offline inference on the audio up to frame ``cut``."""
        c = self.config
        stride = self.model.motion.stride
        start = max(0, (i - self._behind) // stride * stride)
        rows = self._features[2 * (start - self._feature_start):2 * (cut - self._feature_start)]
        raw = self.model.motion.predict(rows, temperature=c.temperature, seed=c.seed, first_frame=start)
        track = smooth(shape(raw, self.model.person.stats, mouth_scale=c.mouth_scale), c.smoothing)
        frames = np.clip(np.arange(i - HALF_WINDOW, i + HALF_WINDOW + 1), 0, cut - 1)  # [5]
        closure = None
        if self._blinks is not None:
            closure = self._blinks.closure(frames[0], frames[-1] + 1, end=cut)[frames - frames[0]]
        return set_eyes(track[frames - start], self.model.person.stats, closure)

    def _trim(self) -> None:
        """Forget the audio and features no later frame needs."""
        stride = self.model.motion.stride
        first = max(0, (self._sent - self._behind) // stride * stride)  # the next frame's window start
        if first > self._feature_start:
            self._features = self._features[2 * (first - self._feature_start):]
            self._feature_start = first
        keep = self._sent * FRAME_SAMPLES - HOP  # the next frame's audio, and the HOP before it for its features
        if keep > self._audio_start:
            self._audio = self._audio[keep - self._audio_start:]
            self._audio_start = keep


def check_chunk(audio: np.ndarray) -> np.ndarray:
    """A chunk of audio as float32 [N], or an `InputError` saying what is wrong with it."""
    if not isinstance(audio, np.ndarray):
        raise InputError(f"audio must be a numpy array of float samples, got {type(audio).__name__}")
    if audio.ndim != 1:
        raise InputError(f"audio must be mono, a 1-D array of 16 kHz samples; got shape {list(audio.shape)}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise InputError(f"audio must be float samples in [-1, 1] (float32), got {audio.dtype}"
                         + ("; divide 16-bit PCM by 32768" if np.issubdtype(audio.dtype, np.integer) else ""))
    audio = audio.astype(np.float32, copy=False)
    if not np.isfinite(audio).all():
        raise InputError("the audio holds NaN or infinite samples")
    return audio
