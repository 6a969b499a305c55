"""The interface every audio feature extractor implements, and the length/alignment rules they share.

Timing contract (all kinds): features run at ``FEATURE_RATE`` = 50 Hz, two rows per 25 fps video frame.
Row ``j`` describes the audio around time ``j / 50`` s (its analysis window is centred there), so video
frame ``i`` (covering ``[i / 25, (i + 1) / 25)`` s) owns rows ``2i`` and ``2i + 1``. An extractor returns
exactly ``2 * num_frames`` rows: the audio is zero-padded (silence) or cut at the end to fit, so rows past
the end of the audio describe silence.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from ..constants import AUDIO_RATE, FPS, HOP
from ..errors import InputError



def frames_for_audio(num_samples: int) -> int:
    """Video frames that ``num_samples`` of 16 kHz audio span: ``ceil(N / 16000 * 25)``, exact in integers."""
    return -(-num_samples * FPS // AUDIO_RATE)


class FeatureExtractor(ABC):
    """Audio ``[N]`` (16 kHz mono float32) -> features ``[2 * num_frames, dim]`` float32 at 50 Hz.

    Subclasses set ``kind`` and ``dim`` and implement ``_compute``; ``__call__`` validates the input and
    fixes the length, so every kind follows the same timing contract (see the module docstring).
    """

    kind: str
    """Feature kind name, one of ``FEATURE_KINDS``."""
    dim: int
    """Feature dimension D."""
    context: int | None = None
    """Samples either side of a row's centre that its features depend on (the analysis window's half); None
    when a row depends on the whole clip. A kind with a context of at most ``HOP`` can stream (`frame_rows`)."""

    def __call__(self, audio: np.ndarray, num_frames: int | None = None) -> np.ndarray:
        """Features ``[2 * num_frames, dim]`` float32; ``num_frames`` defaults to ``ceil(N / 16000 * 25)``.

        Raises ``InputError`` for empty, non-1-D or non-finite audio and for a non-positive ``num_frames``.
        Silence is accepted (callers decide whether to warn).
        """
        audio = np.asarray(audio)
        if audio.ndim != 1:
            raise InputError(f"audio must be mono, a 1-D array of 16 kHz samples; got shape {audio.shape}")
        if audio.size == 0:
            raise InputError("the audio is empty (0 samples); give speech audio")
        audio = audio.astype(np.float32, copy=False)
        if not np.isfinite(audio).all():
            raise InputError("the audio contains NaN or infinite samples")
        if num_frames is None:
            num_frames = frames_for_audio(audio.size)
        if int(num_frames) != num_frames or num_frames < 1:
            raise InputError(f"num_frames must be a positive integer, got {num_frames!r}")
        rows = 2 * int(num_frames)
        # Zero-pad so that every requested row has audio (or silence) under it; extra audio is kept, so the
        # last rows still see the real signal their centred windows reach into.
        need = rows * HOP
        if audio.size < need:
            audio = np.pad(audio, (0, need - audio.size))
        feats = self._compute(audio, rows)
        if feats.shape != (rows, self.dim):  # a bug in the subclass, not a user error
            raise RuntimeError(f"{type(self).__name__} returned {feats.shape}, expected {(rows, self.dim)}")
        return np.ascontiguousarray(feats, dtype=np.float32)

    def frame_rows(self, audio: np.ndarray) -> np.ndarray:
        """Features ``[2F, D]`` of F whole video frames inside a stream, equal to the whole clip's rows there.

        ``audio`` ``[HOP + 2 * HOP * F]``: the ``HOP`` samples before the first frame (zeros before the clip's
        start), then the frames' samples. Raises ``InputError`` for a kind that cannot stream (see `context`).
        """
        if self.context is None or self.context > HOP:
            raise InputError(f"{self.kind!r} features need the whole utterance at once and cannot stream; "
                             f"streaming needs a person trained with mel features")
        frames = (audio.size - HOP) // (2 * HOP)
        if audio.ndim != 1 or frames < 1 or audio.size != HOP + 2 * HOP * frames:
            raise ValueError(f"frame_rows needs {HOP} + {2 * HOP} * F samples, got {audio.shape}")
        # row 0 of this computation is centred HOP before the first frame and lacks audio before it: dropped
        return np.ascontiguousarray(self._compute(audio.astype(np.float32, copy=False), 2 * frames + 1)[1:],
                                    dtype=np.float32)

    @abstractmethod
    def _compute(self, audio: np.ndarray, rows: int) -> np.ndarray:
        """Features ``[rows, dim]`` for ``audio`` ``[N]`` with ``N >= rows * 320`` (row j centred at j/50 s)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, dim={self.dim})"


def windowed(rows: int, window: int, hop: int, encode: Callable[[int, int], np.ndarray],
             desc: str = "features") -> np.ndarray:
    """Run a limited-context encoder over a long sequence in overlapping windows, without seams.

    ``encode(start, length)`` returns features for rows ``start .. start + length`` (at least ``length``
    rows; ``length = min(window, rows - start)``). Windows start every ``hop`` rows; each one keeps
    only its central part, ``(window - hop) / 2`` rows in from either edge (the first window keeps its start
    and the last its end), so every kept row has at least that much context on both sides where the audio
    has it. Returns ``[rows, D]``.

    Equivalent to ``encode(0, rows)[:rows]`` when ``rows <= window``.
    """
    if not 0 < hop <= window:
        raise ValueError(f"need 0 < hop <= window, got hop={hop}, window={window}")
    if rows <= window:
        return encode(0, rows)[:rows]
    margin = (window - hop) // 2
    count = 1 + math.ceil((rows - window) / hop)
    parts = []
    for k in tqdm(range(count), desc=desc, unit="window", leave=False, disable=count < 4):
        start = k * hop
        feats = encode(start, min(window, rows - start))
        lo = 0 if k == 0 else margin
        hi = margin + hop if k < count - 1 else rows - start
        parts.append(feats[lo:hi])
    out = np.concatenate(parts, axis=0)
    assert out.shape[0] == rows, (out.shape, rows)
    return out
