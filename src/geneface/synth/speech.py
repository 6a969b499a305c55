"""Speech for the generator: the bundled clip, text-to-speech, and audio -> per-frame mouth controls.

The mouth is driven by two signals sampled at 100 Hz and smoothed for coarticulation:

- ``open`` in [0, 1]: how far the jaw drops. A viseme target per phone (pocketsphinx allphone
  recognition with its bundled en-us model) or a spectral estimate, scaled by a loudness gate that is
  zero in silence.
- ``width`` in [-1, 1]: lip rounding (-1, corners in, lips forward: "oo", "w") to spreading (+1: "ee").

Bilabials (p, b, m) close the lips whatever the loudness.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

from ..constants import AUDIO_RATE
from ..errors import InputError, MissingModelError
from ..features.activity import HOP, WINDOW, analysis_windows, loudness_db, speech_activity
from ..media import read_audio

log = logging.getLogger(__name__)

# HOP (10 ms) is both the loudness analysis step of `geneface.features.activity` and pocketsphinx's frame rate.

# ARPAbet phone -> (jaw opening in [0, 1], lip width in [-1 rounded, +1 spread]).
VISEMES: dict[str, tuple[float, float]] = {
    "AA": (1.00, 0.10), "AE": (0.85, 0.45), "AH": (0.70, 0.10), "AO": (0.80, -0.50),
    "AW": (0.85, -0.30), "AY": (0.90, 0.25), "EH": (0.65, 0.40), "ER": (0.45, -0.40),
    "EY": (0.60, 0.50), "IH": (0.45, 0.45), "IY": (0.35, 0.75), "OW": (0.60, -0.70),
    "OY": (0.65, -0.50), "UH": (0.45, -0.60), "UW": (0.30, -0.90),
    "B": (0.0, 0.0), "P": (0.0, 0.0), "M": (0.0, 0.0),
    "F": (0.12, 0.10), "V": (0.12, 0.10), "TH": (0.25, 0.20), "DH": (0.25, 0.20),
    "T": (0.30, 0.20), "D": (0.30, 0.20), "N": (0.30, 0.20), "L": (0.35, 0.10),
    "S": (0.20, 0.40), "Z": (0.20, 0.40), "SH": (0.25, -0.50), "ZH": (0.25, -0.50),
    "CH": (0.25, -0.40), "JH": (0.25, -0.40), "K": (0.35, 0.10), "G": (0.35, 0.10),
    "NG": (0.30, 0.10), "HH": (0.45, 0.00), "R": (0.30, -0.50), "W": (0.15, -0.90),
    "Y": (0.30, 0.45), "SIL": (0.0, 0.0),
}
NEUTRAL_VISEME = (0.3, 0.0)
"""For noise and unknown phone labels (``+NSN+``, ``+SPN+``, ...)."""
BILABIALS = {"B", "P", "M"}


@dataclass
class MouthTrack:
    """Mouth controls at 100 Hz (one value per 10 ms of audio)."""

    open: np.ndarray
    """[N] jaw opening in [0, 1]."""
    width: np.ndarray
    """[N] lip width in [-1, 1] (negative: rounded)."""
    loudness: np.ndarray
    """[N] RMS in dBFS of the 25 ms window around each step."""
    phones: list[tuple[str, float, float]] | None
    """Recognised (phone, start s, end s), or None when spectral features were used."""

    def at(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``open`` and ``width`` at ``times`` (seconds) ``[T]``, linearly interpolated."""
        grid = np.arange(len(self.open)) * (HOP / AUDIO_RATE)
        return np.interp(times, grid, self.open), np.interp(times, grid, self.width)


def default_speech() -> np.ndarray:
    """The bundled English speech clip (espeak-ng, 10.9 s): 16 kHz mono float32 ``[N]``."""
    asset = resources.files("geneface") / "assets" / "speech.flac"
    with resources.as_file(asset) as path:
        return read_audio(path)


def speak(text: str, voice: str = "en-us+f3", speed: int = 150, pitch: int | None = None) -> np.ndarray:
    """Speak ``text`` with espeak-ng: 16 kHz mono float32 ``[N]``.

    ``voice``: an espeak-ng voice, optionally with a variant (``en-gb+m3``; ``espeak-ng --voices``);
    ``speed``: words per minute; ``pitch``: base pitch 0-99 (None: the voice's own, 50).
    Raises ``MissingModelError`` when espeak-ng is not installed, ``InputError`` for empty text.
    """
    if not text.strip():
        raise InputError("--text is empty")
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise MissingModelError("espeak-ng is not installed, so --text cannot be spoken: install it "
                                "(Debian: apt-get install espeak-ng) or give --audio SPEECH instead")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        extra = ["-p", str(int(pitch))] if pitch is not None else []
        result = subprocess.run([exe, "-v", voice, "-s", str(speed), *extra, "-w", str(wav), "--", text],
                                capture_output=True, text=True)
        if result.returncode != 0 or not wav.exists():
            raise InputError(f"espeak-ng failed: {result.stderr.strip() or result.returncode}")
        return read_audio(wav)


def fit_length(audio: np.ndarray, seconds: float, pause: float = 0.6) -> np.ndarray:
    """Cut ``audio`` to ``seconds``, or repeat it with ``pause`` s of silence between copies to fill it."""
    n = int(round(seconds * AUDIO_RATE))
    if len(audio) >= n:
        return audio[:n].copy()
    gap = np.zeros(int(round(pause * AUDIO_RATE)), dtype=np.float32)
    reps = int(np.ceil(n / (len(audio) + len(gap))))
    return np.concatenate([audio, gap] * reps)[:n].astype(np.float32)


def recognize_phones(audio: np.ndarray) -> list[tuple[str, float, float]] | None:
    """Phones ``(label, start s, end s)`` by pocketsphinx allphone decoding, or None when unavailable."""
    try:
        import pocketsphinx
    except ImportError:
        return None
    model = pocketsphinx.get_model_path()
    try:
        decoder = pocketsphinx.Decoder(hmm=os.path.join(model, "en-us", "en-us"),
                                       allphone=os.path.join(model, "en-us", "en-us-phone.lm.bin"),
                                       lw=2.0, pip=0.3, beam=1e-10, pbeam=1e-10, loglevel="FATAL")
    except Exception as e:  # a broken install: fall back to spectral features
        log.warning(f"pocketsphinx could not start ({e}); using spectral features for the mouth")
        return None
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    phones: list[tuple[str, float, float]] = []
    chunk = 30 * AUDIO_RATE  # decode long audio in 30 s pieces (allphone search grows with length)
    for start in range(0, len(pcm), chunk):
        piece = pcm[start : start + chunk]
        decoder.start_utt()
        decoder.process_raw(piece.tobytes(), full_utt=True)
        decoder.end_utt()
        offset = start / AUDIO_RATE
        for seg in decoder.seg():
            phones.append((seg.word, offset + seg.start_frame * 0.01, offset + (seg.end_frame + 1) * 0.01))
    return phones


def _phone_targets(phones: list[tuple[str, float, float]], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-10 ms viseme opening, width and bilabial closure ``[n]`` each."""
    open_, width, closure = np.zeros(n), np.zeros(n), np.zeros(n)
    for label, start, end in phones:
        a, b = int(round(start * 100)), min(n, int(round(end * 100)))
        if b <= a:
            continue
        o, w = VISEMES.get(label, NEUTRAL_VISEME)
        open_[a:b], width[a:b] = o, w
        closure[a:b] = label in BILABIALS
    return open_, width, closure


def _spectral_targets(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Opening and width ``[N]`` from the spectrum when no phone recogniser is available.

    Opening follows the share of energy in the first-formant band (300-1000 Hz) and drops for
    fricatives (energy mostly above 4 kHz); width follows the spectral centroid of 1-3.5 kHz (the
    second formant is high for spread vowels, low for rounded ones), normalised over the clip.
    """
    spec = np.abs(np.fft.rfft(analysis_windows(audio) * np.hanning(WINDOW), axis=1)) ** 2 + 1e-12
    freqs = np.fft.rfftfreq(WINDOW, 1 / AUDIO_RATE)
    band = lambda lo, hi: spec[:, (freqs >= lo) & (freqs < hi)].sum(1)  # noqa: E731
    total = band(80, 8000)
    f1_share = band(300, 1000) / total
    fricative = band(4000, 8000) / total
    open_ = np.clip(0.25 + 1.2 * f1_share, 0, 1) * (1 - 0.7 * np.clip(2 * fricative, 0, 1))
    f2 = freqs[(freqs >= 1000) & (freqs < 3500)]
    centroid = (spec[:, (freqs >= 1000) & (freqs < 3500)] * f2).sum(1) / band(1000, 3500)
    voiced = speech_activity(loudness_db(audio)) > 0.5
    ref = centroid[voiced] if voiced.sum() > 10 else centroid
    width = np.tanh((centroid - np.median(ref)) / (np.std(ref) + 1e-6))
    return open_, width, np.zeros_like(open_)


def mouth_track(audio: np.ndarray, use_phones: bool = True, open_sigma: float = 0.04,
                width_sigma: float = 0.05) -> MouthTrack:
    """Analyse 16 kHz mono speech ``[N]`` into mouth controls at 100 Hz.

    ``open_sigma`` / ``width_sigma``: Gaussian coarticulation smoothing, seconds.
    """
    db = loudness_db(audio)
    n = len(db)
    activity = speech_activity(db)
    phones = recognize_phones(audio) if use_phones and activity.any() else None
    if phones is not None:
        open_t, width_t, closure = _phone_targets(phones, n)
    else:
        open_t, width_t, closure = _spectral_targets(audio)
    # Loudness scales the viseme opening (louder speech opens wider); silence closes the mouth.
    gain = activity ** 0.7
    open_ = gaussian_filter1d(open_t * gain, open_sigma * 100)
    closure = gaussian_filter1d(closure, 0.015 * 100)
    open_ = np.clip(open_ * (1 - 0.9 * np.clip(closure * 1.5, 0, 1)), 0, 1)
    width = np.clip(gaussian_filter1d(width_t * activity, width_sigma * 100), -1, 1)
    return MouthTrack(open=open_, width=width, loudness=db, phones=phones)
