"""`mel` features: 80-bin log-mel spectrum, f0 with voicing, and log energy (83-d, 50 Hz, no weights).

Columns of the ``[2T, 83]`` array (no per-utterance normalisation; models normalise):

==========  ==========================================================  ===================================
column      meaning                                                     range
==========  ==========================================================  ===================================
0 .. 79     log10 mel power of a 25 ms Hann window, HTK mel scale,      about [-10, 0]; -10 is silence,
            40 .. 7600 Hz; power of a sine of amplitude A at a filter   a full-scale sine peaks near -0.6
            centre is A**2 / 4
80          f0 as ``log(f0 / 40 Hz) / log(20)`` where voiced, else 0    0, or [0.13, 0.85] for 60 .. 500 Hz
81          voicing probability, ``1 - `` YIN aperiodicity (0 in        [0, 1]; voiced exactly where
            silence)                                                    column 80 > 0 (probability > 0.8)
82          log10 mean power of the 25 ms window                        [-10, 0]; -10 is silence, a
                                                                        full-scale sine gives -0.3
==========  ==========================================================  ===================================

Row ``j`` is centred at ``j / 50`` s (windows zero-padded before the start). f0 comes from YIN
(de Cheveigné and Kawahara, 2002) on 40 ms windows: difference function, cumulative-mean normalisation,
the first dip below the threshold, parabolic refinement; computed with FFTs for all frames at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..constants import AUDIO_RATE, HOP
from .base import FeatureExtractor

F0_COLUMN = 80
"""Column of the normalised log f0 (0 when unvoiced)."""
VOICING_COLUMN = 81
"""Column of the voicing probability."""
ENERGY_COLUMN = 82
"""Column of the log10 frame power."""
F0_REF_HZ = 40.0
"""f0 normalisation: ``log(f0 / F0_REF_HZ) / log(F0_SPAN)``."""
F0_SPAN = 20.0
LOG_FLOOR = 1e-10
"""Power floor before log10 (so silence is -10)."""


@dataclass(frozen=True)
class MelConfig:
    """Settings of the `mel` extractor (the defaults define the feature; change them only for experiments)."""

    n_mels: int = 80
    """Mel bands."""
    win_ms: float = 25.0
    """Spectrum and energy window (ms), Hann, centred on each 20 ms step."""
    n_fft: int = 512
    """FFT size (the window is zero-padded to it)."""
    fmin: float = 40.0
    """Lowest mel band edge (Hz)."""
    fmax: float = 7600.0
    """Highest mel band edge (Hz)."""
    f0_min: float = 60.0
    """Lowest f0 searched (Hz)."""
    f0_max: float = 500.0
    """Highest f0 searched (Hz)."""
    f0_win_ms: float = 40.0
    """YIN analysis window (ms), centred on each 20 ms step."""
    yin_threshold: float = 0.2
    """A frame is voiced when its YIN aperiodicity (cumulative-mean-normalised difference) is below this."""
    silence_db: float = -60.0
    """Frames quieter than this (RMS, dBFS, over the YIN window) are unvoiced whatever their periodicity."""


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``2595 * log10(1 + f / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of ``hz_to_mel``."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_band_edges(config: MelConfig = MelConfig()) -> np.ndarray:
    """Band edges in Hz ``[n_mels + 2]``, evenly spaced in mel; band i spans edges i .. i+2, peak at i+1."""
    return mel_to_hz(np.linspace(hz_to_mel(config.fmin), hz_to_mel(config.fmax), config.n_mels + 2))


def mel_centres(config: MelConfig = MelConfig()) -> np.ndarray:
    """Centre frequency of each mel band in Hz ``[n_mels]``."""
    return mel_band_edges(config)[1:-1]


def mel_filterbank(config: MelConfig = MelConfig()) -> np.ndarray:
    """Triangular filters ``[n_mels, n_fft // 2 + 1]`` (peak 1) over the FFT bins."""
    edges = mel_band_edges(config)
    freqs = np.fft.rfftfreq(config.n_fft, 1.0 / AUDIO_RATE)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lo) / (mid - lo)
    falling = (hi - freqs[None]) / (hi - mid)
    bank = np.maximum(0.0, np.minimum(rising, falling))
    if (bank.sum(1) == 0).any():
        raise ValueError("some mel bands contain no FFT bin; raise n_fft or fmin, or lower n_mels")
    return bank.astype(np.float32)


def _centred_frames(audio: np.ndarray, rows: int, length: int) -> np.ndarray:
    """Windows ``[rows, length]`` of ``audio``, window j centred on sample ``j * HOP`` (zeros outside)."""
    half = length // 2
    padded = np.pad(audio, (half, max(0, (rows - 1) * HOP + length - half - audio.size)))
    return np.lib.stride_tricks.sliding_window_view(padded, length)[::HOP][:rows]


def yin(frames: np.ndarray, config: MelConfig = MelConfig()) -> tuple[np.ndarray, np.ndarray]:
    """YIN pitch of each frame ``[R, L]``: (f0 Hz ``[R]``, aperiodicity ``[R]``, in [0, 1+]).

    Difference function over lags ``tau`` with an integration window ``W = L - tau_max - 1``:
    ``d(tau) = sum_{n<W} (x[n] - x[n + tau])**2``, normalised as ``d'(tau) = d(tau) * tau / sum_{k<=tau} d(k)``.
    The chosen lag is the minimum of the first run of ``d'`` below ``yin_threshold`` within
    ``[sr / f0_max, sr / f0_min]`` (the global minimum there when no run exists), refined by a parabola.
    The aperiodicity is ``d'`` at that lag.
    """
    frames = frames.astype(np.float64)
    num, length = frames.shape
    tau_min = int(np.ceil(AUDIO_RATE / config.f0_max))
    tau_max = int(np.floor(AUDIO_RATE / config.f0_min))
    width = length - tau_max - 1  # room for lags up to tau_max + 1
    if width < tau_max // 2:
        raise ValueError("f0 window too short for f0_min")
    lags = np.arange(tau_max + 2)  # one past tau_max for the parabola
    # Cross term sum_n x[n] x[n + tau] for n < W, all lags at once with one FFT product.
    nfft = 1 << int(np.ceil(np.log2(length + width)))
    head = np.fft.rfft(frames[:, :width], nfft)
    full = np.fft.rfft(frames, nfft)
    cross = np.fft.irfft(np.conj(head) * full, nfft)[:, lags]
    sq = np.concatenate([np.zeros((num, 1)), np.cumsum(frames ** 2, axis=1)], axis=1)
    energy0 = sq[:, width:width + 1]  # sum of x[n]**2, n < W
    energy_tau = sq[:, lags + width] - sq[:, lags]  # sum of x[n]**2, tau <= n < tau + W
    diff = np.maximum(energy0 + energy_tau - 2.0 * cross, 0.0)
    diff[:, 0] = 0.0
    running = np.cumsum(diff[:, 1:], axis=1)
    cmnd = np.ones_like(diff)
    with np.errstate(divide="ignore", invalid="ignore"):
        cmnd[:, 1:] = np.where(running > 0, diff[:, 1:] * lags[1:] / running, 1.0)

    search = cmnd[:, tau_min:tau_max + 1]
    idx = np.arange(search.shape[1])[None]
    below = search < config.yin_threshold
    has_dip = below.any(axis=1)
    first = np.argmax(below, axis=1)[:, None]
    after_end = (idx > first) & ~below  # first lag after the dip where d' rises above the threshold again
    end = np.where(after_end.any(axis=1), np.argmax(after_end, axis=1), search.shape[1])[:, None]
    in_dip = (idx >= first) & (idx < end)
    best = np.where(has_dip, np.argmin(np.where(in_dip, search, np.inf), axis=1), np.argmin(search, axis=1))
    tau = best + tau_min
    rows = np.arange(num)
    left, centre, right = cmnd[rows, tau - 1], cmnd[rows, tau], cmnd[rows, tau + 1]
    curvature = left - 2.0 * centre + right
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(curvature > 0, 0.5 * (left - right) / curvature, 0.0)
    shift = np.clip(shift, -1.0, 1.0)
    return AUDIO_RATE / (tau + shift), centre


class MelExtractor(FeatureExtractor):
    """Log-mel + f0 + voicing + energy (see the module docstring for columns and ranges)."""

    kind = "mel"

    def __init__(self, config: MelConfig = MelConfig()) -> None:
        self.config = config
        self.dim = config.n_mels + 3
        self.win_length = int(round(config.win_ms * AUDIO_RATE / 1000))
        self.f0_length = int(round(config.f0_win_ms * AUDIO_RATE / 1000))
        self.window = np.hanning(self.win_length + 2)[1:-1].astype(np.float32)  # no zero end points
        self.bank = mel_filterbank(config)  # [n_mels, n_fft/2+1]
        self.context = max(self.win_length, self.f0_length) // 2

    def _compute(self, audio: np.ndarray, rows: int) -> np.ndarray:
        frames = _centred_frames(audio, rows, self.win_length)  # [R, 400] view
        f0_frames = _centred_frames(audio, rows, self.f0_length)  # [R, 640] view
        block = 4096  # rows per block, so that long audio needs bounded memory
        return np.concatenate([self._block(frames[i:i + block], f0_frames[i:i + block])
                               for i in range(0, rows, block)], axis=0)

    def _block(self, frames: np.ndarray, f0_frames: np.ndarray) -> np.ndarray:
        """Features ``[B, dim]`` of spectrum windows ``[B, 400]`` and f0 windows ``[B, 640]``."""
        cfg = self.config
        spectrum = np.fft.rfft(frames * self.window, cfg.n_fft)  # [B, n_fft/2+1]
        power = (np.abs(spectrum) / self.window.sum()) ** 2
        log_mel = np.log10(np.maximum(power @ self.bank.T, LOG_FLOOR))  # [B, n_mels]
        log_energy = np.log10(np.maximum((frames.astype(np.float64) ** 2).mean(1), LOG_FLOOR))  # [B]

        f0, aperiodicity = yin(f0_frames, cfg)
        rms_db = 10.0 * np.log10(np.maximum((f0_frames.astype(np.float64) ** 2).mean(1), LOG_FLOOR))
        loud = rms_db > cfg.silence_db
        voicing = np.where(loud, np.clip(1.0 - aperiodicity, 0.0, 1.0), 0.0)
        voiced = loud & (aperiodicity < cfg.yin_threshold)
        f0_norm = np.where(voiced, np.log(np.maximum(f0, 1.0) / F0_REF_HZ) / np.log(F0_SPAN), 0.0)
        return np.concatenate([log_mel, f0_norm[:, None], voicing[:, None], log_energy[:, None]],
                              axis=1).astype(np.float32)


def f0_hz(features: np.ndarray) -> np.ndarray:
    """f0 in Hz ``[R]`` from `mel` features ``[R, 83]`` (0 where unvoiced)."""
    norm = np.asarray(features)[..., F0_COLUMN]
    return np.where(norm > 0, F0_REF_HZ * F0_SPAN ** norm, 0.0)


def voiced(features: np.ndarray) -> np.ndarray:
    """Voiced flag ``[R]`` (bool) from `mel` features ``[R, 83]``."""
    return np.asarray(features)[..., F0_COLUMN] > 0
