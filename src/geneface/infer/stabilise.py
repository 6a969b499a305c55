"""Stabilise predicted landmarks: clamp to the person's range, smooth in time, project onto the person's
landmark manifold, scale the mouth, and add blinks; and the head-pose tracks.

The steps are separate functions so that the offline path (`stabilise` on a whole clip) and the stream
(`geneface.infer.stream`, on a sliding window) run the same code: `shape` and `set_eyes` work frame by frame,
`smooth` looks `smoothing_radius` frames either way, and `BlinkSchedule` and `pose_at` give any frame's
value from its index alone.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from scipy.ndimage import gaussian_filter1d

from ..constants import EYES_68, MOUTH_68
from .person import LandmarkStats

BLINK_PROFILE = np.array([0.35, 0.85, 1.0, 0.75, 0.3])
"""Eyelid closure over the frames of one blink."""
SMOOTHING_TRUNCATE = 4.0
"""The Gaussian kernel of `smooth` reaches this many sigmas (scipy's default)."""


def stabilise(offsets: np.ndarray, stats: LandmarkStats, *, smoothing: float = 1.0, margin: float = 0.15,
              manifold: bool = True, mouth_scale: float = 1.0, blink: str = "auto", fps: float = 25.0,
              seed: int = 0) -> np.ndarray:
    """offsets [T, 68, 3] -> stabilised offsets [T, 68, 3].

    1. mouth scale: mouth offsets times ``mouth_scale`` (more or less articulation);
    2. projection onto the person's principal landmark subspace (``manifold``);
    3. per-point clamp to the training range widened by ``margin`` of its span;
    4. Gaussian smoothing in time, sigma ``smoothing`` frames (0 = off);
    5. eyes: held open at the mean, with blinks every 2-6 s (``blink="auto"``) or none (``"off"``).
    """
    if blink not in ("auto", "off"):
        raise ValueError(f"blink must be 'auto' or 'off', got {blink!r}")
    out = smooth(shape(offsets, stats, margin=margin, manifold=manifold, mouth_scale=mouth_scale), smoothing)
    closure = BlinkSchedule(fps, seed).closure(0, len(out), end=len(out)) if blink == "auto" else None
    return set_eyes(out, stats, closure)


def shape(offsets: np.ndarray, stats: LandmarkStats, *, margin: float = 0.15, manifold: bool = True,
          mouth_scale: float = 1.0) -> np.ndarray:
    """Steps 1-3 of `stabilise`, frame by frame: offsets [T, 68, 3] -> float64 [T, 68, 3]."""
    out = offsets.astype(np.float64).copy()
    out[:, MOUTH_68] *= mouth_scale
    if manifold:
        flat = out.reshape(len(out), -1) - stats.pca_mean
        out = (flat @ stats.pca_basis.T @ stats.pca_basis + stats.pca_mean).reshape(out.shape)
    span = stats.high - stats.low
    low, high = stats.low - margin * span, stats.high + margin * span
    if mouth_scale > 1:
        low[MOUTH_68], high[MOUTH_68] = low[MOUTH_68] * mouth_scale, high[MOUTH_68] * mouth_scale
    return np.clip(out, low, high)


def smoothing_radius(smoothing: float) -> int:
    """Frames either side that `smooth` with sigma ``smoothing`` reads (0 when off)."""
    return int(SMOOTHING_TRUNCATE * smoothing + 0.5) if smoothing > 0 else 0


def smooth(x: np.ndarray, smoothing: float) -> np.ndarray:
    """Step 4 of `stabilise`: Gaussian smoothing along time of x [T, ...], sigma ``smoothing`` frames, the ends
    extended with their edge values (nothing for 0 or fewer than 3 frames)."""
    if smoothing > 0 and len(x) > 2:
        return gaussian_filter1d(x, smoothing, axis=0, mode="nearest", truncate=SMOOTHING_TRUNCATE)
    return x


def set_eyes(x: np.ndarray, stats: LandmarkStats, closure: np.ndarray | None) -> np.ndarray:
    """Step 5 of `stabilise`: eyes of x [T, 68, 3] at the mean, closed by ``closure`` [T] in [0, 1] (None: open
    throughout) -> float32 [T, 68, 3]."""
    out = x.copy()
    out[:, EYES_68] = 0.0
    if closure is not None:
        out += closure[:, None, None] * stats.blink_offsets()[None]
    return out.astype(np.float32)


class BlinkSchedule:
    """Blinks at seeded random times, the first 1-3 s in, then every 2-6 s, for a track of any length.

    `closure` gives any range of frames; the schedule is drawn lazily and forgets blinks before the range
    asked for, so a stream can ask for ever later frames in constant memory (ranges must not move back).
    """

    def __init__(self, fps: float, seed: int) -> None:
        self.fps = float(fps)
        self._rng = np.random.default_rng(seed)
        self._next = self._rng.uniform(1.0, 3.0) * self.fps  # start (frames, fractional) of the next blink drawn
        self._starts: deque[float] = deque()  # drawn blinks not yet over

    def closure(self, start: int, stop: int, end: int | None = None) -> np.ndarray:
        """Eyelid closure [stop - start] in [0, 1] of frames ``start .. stop``. ``end``: the track's last frame
        + 1, when it ends; a blink that would not finish before it is left out."""
        n = len(BLINK_PROFILE)
        while self._next < stop:
            self._starts.append(self._next)
            self._next += self._rng.uniform(2.0, 6.0) * self.fps
        while self._starts and int(self._starts[0]) + n <= start:
            self._starts.popleft()
        track = np.zeros(max(0, stop - start))
        for t in self._starts:
            if end is not None and t + n >= end:
                break
            i = int(t)
            lo, hi = max(i, start), min(i + n, stop)
            if lo < hi:
                track[lo - start:hi - start] = BLINK_PROFILE[lo - i:hi - i]
        return track


def blink_track(num_frames: int, fps: float, seed: int) -> np.ndarray:
    """Eyelid closure [T] in [0, 1]: a blink every 2-6 s at random (seeded) times, each one whole."""
    return BlinkSchedule(fps, seed).closure(0, num_frames, end=num_frames)


def pose_track(c2w: np.ndarray, num_frames: int, mode: str = "loop") -> np.ndarray:
    """Cameras [T, 4, 4] for ``num_frames`` from a track c2w [N, 4, 4]: ``loop`` plays it forward then
    backward as often as needed; ``still`` holds its first pose."""
    return pose_at(c2w, np.arange(num_frames), mode)


def pose_at(c2w: np.ndarray, frames: np.ndarray, mode: str = "loop") -> np.ndarray:
    """Cameras [B, 4, 4] of `pose_track` at frame indices ``frames`` [B] (any size, any order)."""
    frames = np.asarray(frames, dtype=np.int64)
    if mode == "still":
        return np.repeat(c2w[:1], len(frames), axis=0)
    if mode != "loop":
        raise ValueError(f"pose mode must be 'loop' or 'still', got {mode!r}")
    n = len(c2w)
    if n == 1:
        return np.repeat(c2w, len(frames), axis=0)
    period = 2 * n - 2
    k = frames % period
    return c2w[np.where(k < n, k, period - k)]
