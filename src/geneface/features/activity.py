"""Speech activity from loudness: RMS level of 25 ms windows every 10 ms, silence and a soft voice-activity
curve. No weights and no model: used to drive the synthetic mouth (`geneface.synth.speech`), to warn about
silent audio (`geneface process`) and to skip clips without speech (`geneface corpus prepare`).

>>> db = loudness_db(audio)            # audio: 16 kHz mono float32 [N] -> [ceil(N / 160)] dBFS
>>> active = speech_activity(db) > 0.5
"""

from __future__ import annotations

import numpy as np

from ..constants import AUDIO_RATE

HOP = AUDIO_RATE // 100
"""Samples between analysis windows: 160 = 10 ms (100 windows a second)."""
WINDOW = AUDIO_RATE // 40
"""Samples in an analysis window: 400 = 25 ms."""
SILENT_PEAK = 10 ** (-60 / 20)
"""Audio whose loudest 25 ms window stays below -60 dBFS RMS counts as silent."""
SILENT_DB = 20 * np.log10(SILENT_PEAK)
"""`SILENT_PEAK` in dBFS (-60)."""


def analysis_windows(audio: np.ndarray) -> np.ndarray:
    """Windows ``[N, WINDOW]`` of ``audio`` ``[L]`` centred every `HOP` samples, N = ceil(L / HOP) (at least 1);
    zero-padded at both ends. Window ``i`` is centred on sample ``i * HOP``."""
    n = max(1, int(np.ceil(len(audio) / HOP)))
    padded = np.pad(audio.astype(np.float32), (WINDOW // 2, WINDOW // 2 + n * HOP))
    idx = np.arange(n)[:, None] * HOP + np.arange(WINDOW)[None, :]
    return padded[idx]


def loudness_db(audio: np.ndarray) -> np.ndarray:
    """RMS level in dBFS of 25 ms windows every 10 ms ``[N]``: ``20 log10(rms(window) + 1e-9)``."""
    rms = np.sqrt((analysis_windows(audio) ** 2).mean(1))
    return 20 * np.log10(rms + 1e-9)


def is_silent(audio: np.ndarray) -> bool:
    """True when no 25 ms window of ``audio`` is louder than -60 dBFS (and for empty audio)."""
    return len(audio) == 0 or float(loudness_db(audio).max()) < SILENT_DB


def speech_activity(db: np.ndarray) -> np.ndarray:
    """Soft voice activity ``[N]`` in [0, 1] from the loudness ``db`` ``[N]`` (`loudness_db`): 0 below -35 dB
    from the clip's speech level (its 95th percentile), 1 above -8 dB, smoothstep in between; all zero for
    silent audio."""
    if db.max() < SILENT_DB:
        return np.zeros_like(db)
    ref = np.percentile(db, 95)
    x = np.clip((db - (ref - 35.0)) / 27.0, 0.0, 1.0)
    return x * x * (3 - 2 * x)
