"""Seeded head motion and blinks, per video frame."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d


def smooth_noise(rng: np.random.Generator, times: np.ndarray, hz: float, channels: int,
                 components: int = 4) -> np.ndarray:
    """Smooth random curves ``[T, channels]`` bounded by 1 in absolute value.

    Each is a sum of ``components`` sinusoids with frequencies spread from 0.4 to 2.2 times ``hz``
    (each jittered by up to 15%), weights falling as 1 / sqrt(frequency) and summing to 1, and
    random phases.
    """
    base = hz * np.geomspace(0.4, 2.2, components)[:, None]
    freqs = base * rng.uniform(0.85, 1.15, size=(components, channels))
    weights = 1.0 / np.sqrt(freqs)
    weights /= weights.sum(0, keepdims=True)
    phases = rng.uniform(0, 2 * np.pi, size=(components, channels))
    waves = np.sin(2 * np.pi * freqs[None] * times[:, None, None] + phases[None])  # [T, K, C]
    return (waves * weights[None]).sum(1)


def head_motion(num_frames: int, fps: float, amplitude: tuple[float, float, float], hz: float,
                shift: float, seed: int, emphasis: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Euler angles ``[T, 3]`` (yaw, pitch, roll, degrees) and head shifts ``[T, 3]`` (head units).

    Each angle stays within its ``amplitude``; ``emphasis`` ``[T]`` in [0, 1] (speech loudness) adds
    a slight nod, within the same bound.
    """
    rng = np.random.default_rng(seed)
    times = np.arange(num_frames) / fps
    x = smooth_noise(rng, times, hz, 3)
    if emphasis is not None and len(emphasis):
        # Nods are slow: follow the loudness smoothed over ~0.25 s.
        e = gaussian_filter1d(np.clip(np.asarray(emphasis, dtype=np.float64), 0, 1), 0.25 * fps, mode="nearest")
        x[:, 1] = 0.75 * x[:, 1] + 0.25 * (2 * e - 1)  # a nod (chin down) on louder speech
    euler = x * np.asarray(amplitude, dtype=np.float64)[None]
    shifts = smooth_noise(rng, times, 0.6 * hz, 3) * shift
    return euler, shifts


def blinks(num_frames: int, fps: float, interval: tuple[float, float] | None, duration: float,
           seed: int) -> np.ndarray:
    """Eyelid closure ``[T]`` in [0, 1]: blinks at random intervals (uniform in ``interval`` seconds),
    each closing over ~40% of ``duration`` and reopening over the rest. ``interval=None``: no blinks."""
    out = np.zeros(num_frames)
    if interval is None:
        return out
    rng = np.random.default_rng(seed + 7919)
    total = max(3, int(round(duration * fps)))
    closing = max(1, int(round(0.4 * total)))
    ramp_in = np.linspace(0, 1, closing + 1)[1:]
    ramp_out = np.linspace(1, 0, total - closing + 1)[1:]
    profile = np.r_[ramp_in, ramp_out]
    profile = profile * profile * (3 - 2 * profile)  # smoothstep: eased lid motion
    t = rng.uniform(0.3 * interval[0], interval[1])
    while True:
        start = int(round(t * fps))
        if start >= num_frames:
            break
        seg = profile[: num_frames - start]
        out[start : start + len(seg)] = np.maximum(out[start : start + len(seg)], seg)
        t += rng.uniform(*interval)
    return out
