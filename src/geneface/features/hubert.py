"""`hubert` features: the last hidden layer of a user-supplied HuBERT model (50 Hz), through `transformers`.

No registry package ships HuBERT weights, so the user gives a local folder saved by ``save_pretrained``
(``config.json`` with ``model_type: hubert`` and the weights); it is loaded with ``local_files_only=True`` and
never downloaded. The audio is zero-padded by half the convolutional receptive field (200 samples for
HuBERT) in front, so that state j is centred at j / 50 s like the other kinds. Where the folder has a
``preprocessor_config.json`` with ``do_normalize: true`` (the large models) the clip is normalised to zero
mean and unit variance first, as the model was trained. Long audio runs in 20 s windows every 12 s,
keeping the central 12 s of each (attention cost grows with the square of the length).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..device import resolve_device
from ..errors import InputError, MissingModelError
from ..constants import AUDIO_RATE, HOP
from .base import FeatureExtractor, windowed

INSTALL_HINT = "pip install 'geneface[hubert]'"
WINDOW_ROWS = 1000
"""States per window (20 s)."""
HOP_ROWS = 600
"""Window hop (12 s): each window keeps its central 12 s, with 4 s of context either side."""


class HubertExtractor(FeatureExtractor):
    """HuBERT last-layer states ``[2T, hidden_size]`` at 50 Hz; row j centred at j / 50 s."""

    kind = "hubert"

    def __init__(self, model_path: str | os.PathLike | None, device: str = "cpu") -> None:
        """
        Args:
            model_path: a local HuBERT folder (``save_pretrained`` output); required.
            device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        """
        if model_path is None:
            raise MissingModelError("hubert features need a local HuBERT model folder (no package ships one): "
                                    "give its path (process --feature-model DIR), or use --features whisper")
        path = Path(model_path)
        if not path.is_dir():
            raise MissingModelError(f"HuBERT model folder {path} does not exist")
        config_file = path / "config.json"
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except (OSError, ValueError):
            raise MissingModelError(f"{path} is not a HuBERT model folder: no readable config.json") from None
        if model_type != "hubert":
            raise MissingModelError(f"{path} holds a {model_type!r} model, not a HuBERT one (config.json "
                                    "model_type must be 'hubert')")
        try:
            import torch
            from transformers import HubertModel
        except ImportError:
            raise MissingModelError(f"hubert features need transformers: `{INSTALL_HINT}`") from None
        if not any(path.glob("*.safetensors")):
            raise MissingModelError(f"{path} has no .safetensors weights; geneface loads HuBERT weights from "
                                    "safetensors only (a pytorch_model.bin is a pickle, which can run code): save the "
                                    "model with save_pretrained(..., safe_serialization=True)")
        self.device = resolve_device(device)
        try:
            model = HubertModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
        except (OSError, ValueError) as e:
            raise MissingModelError(f"cannot load the HuBERT model in {path}: {e}") from None
        self.model = model.to(self.device).eval()
        self._torch = torch
        config = model.config
        stride = int(np.prod(config.conv_stride))
        if stride != HOP:
            raise MissingModelError(f"{path}: the model's frame rate is {AUDIO_RATE / stride:g} Hz, not 50 Hz "
                                    f"(convolution strides {tuple(config.conv_stride)})")
        # Receptive field of the convolutional front end, in samples (400 for HuBERT).
        field, jump = 1, 1
        for kernel, s in zip(config.conv_kernel, config.conv_stride):
            field += (kernel - 1) * jump
            jump *= s
        self.field = field
        self.dim = int(config.hidden_size)
        self.normalise = False
        pre = path / "preprocessor_config.json"
        if pre.is_file():
            try:
                self.normalise = bool(json.loads(pre.read_text()).get("do_normalize", False))
            except ValueError:
                raise InputError(f"{pre} is not valid JSON") from None
        self.model_path = path

    def _compute(self, audio: np.ndarray, rows: int) -> np.ndarray:
        torch = self._torch
        if self.normalise:
            audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        front = self.field // 2
        padded = np.pad(audio, (front, WINDOW_ROWS * HOP + self.field)).astype(np.float32)

        def encode(start: int, length: int) -> np.ndarray:
            # Rows start .. start+length need samples [start*HOP, (start+length-1)*HOP + field) of `padded`.
            chunk = padded[start * HOP:(start + length - 1) * HOP + self.field]
            with torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(chunk))[None].to(self.device)
                states = self.model(x).last_hidden_state[0]  # [length, hidden]
            return states.float().cpu().numpy()

        return windowed(rows, WINDOW_ROWS, HOP_ROWS, encode, desc="hubert features")
