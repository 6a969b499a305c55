"""Stabilise predicted landmarks: clamp to the person's range, smooth in time, project onto the person's
landmark manifold, scale the mouth, and add blinks."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from ..constants import EYES_68, MOUTH_68
from .person import LandmarkStats

BLINK_PROFILE = np.array([0.35, 0.85, 1.0, 0.75, 0.3])
"""Eyelid closure over the frames of one blink."""


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
    out = offsets.astype(np.float64).copy()
    out[:, MOUTH_68] *= mouth_scale
    if manifold:
        flat = out.reshape(len(out), -1) - stats.pca_mean
        out = (flat @ stats.pca_basis.T @ stats.pca_basis + stats.pca_mean).reshape(out.shape)
    span = stats.high - stats.low
    low, high = stats.low - margin * span, stats.high + margin * span
    if mouth_scale > 1:
        low[MOUTH_68], high[MOUTH_68] = low[MOUTH_68] * mouth_scale, high[MOUTH_68] * mouth_scale
    out = np.clip(out, low, high)
    if smoothing > 0 and len(out) > 2:
        out = gaussian_filter1d(out, smoothing, axis=0, mode="nearest")
    out[:, EYES_68] = 0.0
    if blink == "auto":
        out += blink_track(len(out), fps, seed)[:, None, None] * stats.blink_offsets()[None]
    elif blink != "off":
        raise ValueError(f"blink must be 'auto' or 'off', got {blink!r}")
    return out.astype(np.float32)


def blink_track(num_frames: int, fps: float, seed: int) -> np.ndarray:
    """Eyelid closure [T] in [0, 1]: a blink every 2-6 s at random (seeded) times."""
    rng = np.random.default_rng(seed)
    track = np.zeros(num_frames)
    t = rng.uniform(1.0, 3.0) * fps
    while t + len(BLINK_PROFILE) < num_frames:
        i = int(t)
        track[i:i + len(BLINK_PROFILE)] = BLINK_PROFILE
        t += rng.uniform(2.0, 6.0) * fps
    return track


def pose_track(c2w: np.ndarray, num_frames: int, mode: str = "loop") -> np.ndarray:
    """Cameras [T, 4, 4] for ``num_frames`` from a track c2w [N, 4, 4]: ``loop`` plays it forward then
    backward as often as needed; ``still`` holds its first pose."""
    if mode == "still":
        return np.repeat(c2w[:1], num_frames, axis=0)
    if mode != "loop":
        raise ValueError(f"pose mode must be 'loop' or 'still', got {mode!r}")
    n = len(c2w)
    if n == 1:
        return np.repeat(c2w, num_frames, axis=0)
    period = 2 * n - 2
    k = np.arange(num_frames) % period
    return c2w[np.where(k < n, k, period - k)]
