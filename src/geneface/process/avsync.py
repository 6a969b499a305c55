"""Audio/video offset: how far a clip's audio leads its lips, and the shift that removes it.

The offset is measured by cross-correlating the mouth opening (inner-lip gap over inter-ocular distance, one
value per 25 fps frame, taken at the middle of the frame's interval, which is the audio a frame's two feature
rows cover) with the speech loudness (RMS dB of 25 ms windows every 10 ms, compressed to the 40 dB under the
speech level), both resampled to 100 Hz and passed through a derivative-of-Gaussian filter (sigma 20 ms) so that
openings and onsets dominate. The normalised correlation is computed at every 10 ms lag within
±`MAX_LAG_MS` and its peak refined by a parabola through its neighbours.

The confidence is the peak's height in standard deviations of the correlation two unrelated signals with the
same autocorrelations would show (Bartlett's variance ``(1 + 2 sum_k rho_a(k) rho_b(k)) / n``): it grows with
the clip's length and the match's quality; peaks under `MIN_CONFIDENCE` are not trusted.

Sign: ``offset_ms > 0`` means the audio leads the video (a sound comes before the mouth motion that makes it);
`shift_audio` by the same amount delays the audio and aligns them.

>>> est = estimate_offset(face.mouth_opening(mesh), audio)     # mesh [T, 478, 3] at 25 fps, audio 16 kHz
>>> sync = align(est, "auto")                                    # sync.applied_ms, sync.message
>>> aligned = shift_audio(audio, sync.applied_ms)
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from ..constants import AUDIO_RATE, FPS
from ..errors import InputError
from ..features.activity import HOP, SILENT_DB, loudness_db

ENVELOPE_RATE = AUDIO_RATE // HOP
"""Rate of the compared signals: 100 Hz (the loudness windows' step)."""
MAX_LAG_MS = 300
"""Largest offset searched, either way."""
MAX_SETTING_MS = 1000
"""Largest offset ``--av-offset`` accepts, either way."""
SMOOTHING_MS = 20
"""Sigma of the derivative-of-Gaussian filter applied to both signals."""
DYNAMIC_DB = 40.0
"""Loudness range kept under the speech level (its 95th percentile); quieter is floored."""
MIN_SECONDS = 2.0
"""Shortest clip whose offset is measured."""
MIN_MOUTH_STD = 0.005
"""Smallest standard deviation of the mouth opening (over inter-ocular distance) that counts as speaking."""
MIN_CONFIDENCE = 3.5
"""Smallest confidence (peak height in null standard deviations) at which ``auto`` applies an estimate."""
IN_SYNC_MS = 20
"""Estimates within this many ms of 0 count as in sync: ``auto`` applies no shift (half a frame, one feature
row)."""


@dataclass(frozen=True)
class OffsetEstimate:
    """What `estimate_offset` measured."""

    offset_ms: float | None
    """Milliseconds by which the audio leads the video (negative: lags); None when nothing could be measured."""
    confidence: float
    """Height of the correlation peak in standard deviations of unrelated signals' correlation (0: none)."""
    problem: str = ""
    """Why the estimate is not to be trusted ("the audio is silent", ...); empty when it is."""

    @property
    def reliable(self) -> bool:
        return not self.problem


@dataclass(frozen=True)
class AvOffset:
    """The offset measured on a clip and the one applied (`align`): meta.json's ``"av_offset"``."""

    estimated_ms: float | None
    """The measured offset (audio leads the video by this much; negative: lags), None when not measurable."""
    applied_ms: float
    """The shift applied to the audio (`shift_audio`)."""
    confidence: float
    """`OffsetEstimate.confidence`."""
    setting: str
    """``auto`` or the milliseconds given (`parse_setting`)."""
    message: str
    """One line for the log: ``audio leads the video by 120 ms ...``."""
    warn: bool = False
    """The message is a warning (``auto`` could not measure the offset)."""

    def as_dict(self) -> dict:
        """The keys meta.json stores: estimated_ms, applied_ms, confidence, setting."""
        return {"estimated_ms": self.estimated_ms, "applied_ms": self.applied_ms, "confidence": self.confidence,
                "setting": self.setting}


def parse_setting(value: str | float) -> str:
    """The canonical form of an ``--av-offset`` value: ``"auto"`` or milliseconds as ``"%g"`` (``"-64"``);
    raises `InputError` for anything else or beyond ±`MAX_SETTING_MS`."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        ms = float(value) if isinstance(value, (str, numbers.Real)) and not isinstance(value, bool) else math.nan
    except ValueError:
        ms = math.nan
    if not math.isfinite(ms) or abs(ms) > MAX_SETTING_MS:
        raise InputError(f"--av-offset must be auto or milliseconds in [-{MAX_SETTING_MS}, {MAX_SETTING_MS}] "
                         f"(positive: the audio leads the video), got {value!r}")
    return f"{ms + 0.0:g}"  # + 0.0: "-0" -> "0"


def estimate_offset(mouth: np.ndarray, audio: np.ndarray) -> OffsetEstimate:
    """Offset of 16 kHz ``audio`` ``[N]`` against the mouth opening ``[T]`` of its 25 fps video (frame ``k``
    at ``(k + 0.5) / 25`` s, audio sample 0 at 0 s); see the module docstring."""
    mouth = np.asarray(mouth, np.float64)
    if len(mouth) < MIN_SECONDS * FPS:
        return OffsetEstimate(None, 0.0, f"the clip is shorter than {MIN_SECONDS:g} s")
    db = loudness_db(np.asarray(audio, np.float32)[: int(round(len(mouth) / FPS * AUDIO_RATE))])
    if len(db) == 0 or db.max() < SILENT_DB:
        return OffsetEstimate(None, 0.0, "the audio is silent")
    if mouth.std() < MIN_MOUTH_STD:
        return OffsetEstimate(None, 0.0, "the mouth hardly moves")
    level = np.percentile(db, 95)
    sound = np.clip(db, level - DYNAMIC_DB, level)
    lips = np.interp(np.arange(len(db)) / ENVELOPE_RATE, (np.arange(len(mouth)) + 0.5) / FPS, mouth)
    sigma = SMOOTHING_MS * ENVELOPE_RATE / 1000
    a = gaussian_filter1d(sound, sigma, order=1)
    b = gaussian_filter1d(lips, sigma, order=1)
    max_lag = MAX_LAG_MS * ENVELOPE_RATE // 1000
    r = _lagged_correlation(a, b, max_lag)
    k = int(np.argmax(r))
    peak, step = r[k], 0.0
    if 0 < k < len(r) - 1:  # parabola through the peak and its neighbours
        curve = r[k - 1] - 2 * r[k] + r[k + 1]
        if curve < 0:
            step = 0.5 * (r[k - 1] - r[k + 1]) / curve
            peak = r[k] - 0.25 * (r[k - 1] - r[k + 1]) * step
    offset = (k - max_lag + step) * 1000 / ENVELOPE_RATE
    confidence = max(0.0, float(peak / np.sqrt(_null_variance(a, b))))
    if confidence < MIN_CONFIDENCE:
        problem = f"low confidence {confidence:.1f} (under {MIN_CONFIDENCE:g})"
    elif k in (0, len(r) - 1):
        problem = f"the best match is at the edge of the ±{MAX_LAG_MS} ms search"
    else:
        problem = ""
    return OffsetEstimate(round(float(offset), 1), round(confidence, 2), problem)


def _lagged_correlation(a: np.ndarray, b: np.ndarray, max_lag: int) -> np.ndarray:
    """Pearson correlation ``[2 max_lag + 1]`` of ``a[i - lag]`` with ``b[i]`` over their overlap, for lag
    ``-max_lag .. max_lag`` (a peak at a positive lag: ``b`` follows ``a``)."""
    n = min(len(a), len(b))
    out = np.zeros(2 * max_lag + 1)
    for j, lag in enumerate(range(-max_lag, max_lag + 1)):
        x, y = (a[: n - lag], b[lag:n]) if lag >= 0 else (a[-lag:n], b[: n + lag])
        if len(x) < 2:
            continue
        x, y = x - x.mean(), y - y.mean()
        out[j] = (x * y).sum() / (np.sqrt((x * x).sum() * (y * y).sum()) + 1e-12)
    return out


def _null_variance(a: np.ndarray, b: np.ndarray) -> float:
    """Variance of the correlation of independent signals with the autocorrelations of ``a`` and ``b``
    (Bartlett): ``(1 + 2 sum_k rho_a(k) rho_b(k)) / n``, ``k`` up to 2 s."""
    n = min(len(a), len(b))
    rho = []
    for x in (a[:n], b[:n]):
        x = x - x.mean()
        spectrum = np.fft.rfft(x, 2 * n)
        c = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
        rho.append(c / max(c[0], 1e-12))
    k = min(n, 2 * ENVELOPE_RATE)
    return max(1.0 + 2.0 * float(np.dot(rho[0][1:k], rho[1][1:k])), 1.0) / n


def describe(estimate: OffsetEstimate) -> str:
    """``audio leads the video by 120 ms`` / ``audio lags the video by 64 ms`` / ``audio and video in sync
    (6 ms)`` (a reliable estimate), or why the offset could not be measured."""
    if not estimate.reliable:
        return f"the audio/video offset could not be measured ({estimate.problem})"
    ms = estimate.offset_ms
    if abs(ms) < IN_SYNC_MS:
        return f"audio and video in sync ({ms:.0f} ms)"
    return f"audio {'leads' if ms > 0 else 'lags'} the video by {abs(ms):.0f} ms"


def align(estimate: OffsetEstimate, setting: str = "auto") -> AvOffset:
    """The shift to apply under ``setting`` (`parse_setting`): ``auto`` applies a reliable estimate (none
    when in sync within `IN_SYNC_MS`), a number applies that many ms (0: none)."""
    setting = parse_setting(setting)
    what = describe(estimate)
    if estimate.reliable:
        what += f" (confidence {estimate.confidence:.1f})"
    warn = False
    if setting == "auto":
        if not estimate.reliable:
            applied, action, warn = 0.0, "the audio is used as it is; set --av-offset MS to shift it", True
        elif abs(estimate.offset_ms) < IN_SYNC_MS:
            applied, action = 0.0, "no shift"
        else:
            applied = float(round(estimate.offset_ms))
            action = _shifting(applied)
    else:
        applied = float(setting)
        action = f"{_shifting(applied) if applied else 'no shift'} (--av-offset {setting})"
    return AvOffset(estimated_ms=estimate.offset_ms, applied_ms=applied, confidence=estimate.confidence,
                    setting=setting, message=f"{what}; {action}", warn=warn)


def _shifting(ms: float) -> str:
    return f"{'delaying' if ms > 0 else 'advancing'} the audio by {abs(ms):g} ms"


def shift_audio(audio: np.ndarray, ms: float, rate: int = AUDIO_RATE) -> np.ndarray:
    """``audio`` ``[N]`` delayed by ``ms`` (silence put in front) or, for a negative ``ms``, advanced (its start
    cut); the same length. ``shift_audio(x, 0)`` is ``x`` itself."""
    n = int(round(ms * rate / 1000))
    if n == 0:
        return audio
    if n > 0:
        return np.concatenate([np.zeros(min(n, len(audio)), audio.dtype), audio[: max(0, len(audio) - n)]])
    return np.concatenate([audio[-n:], np.zeros(min(-n, len(audio)), audio.dtype)])
