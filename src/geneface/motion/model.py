"""A trained motion model: SyncNet + audio2motion generator (+ postnet), loadable from its run folder.

```
RUN/
  config.json            written last: a folder without it is unfinished
  syncnet.safetensors
  generator.safetensors
  postnet.safetensors    only in a postnet run
  metrics.json           measures on the validation split
  train_log.jsonl        losses every few steps
  train_state/           weights + optimizer states + state.json, replaced atomically at each save
```
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from ..constants import AUDIO_RATE
from ..device import resolve_device
from ..errors import InputError
from ..engine import RunFolder, RunKind
from ..features import extract_features, frames_for_audio
from ..fileio import write_json
from .data import pitch_from_audio, pitch_from_mel
from .generator import Audio2Motion, step_noise
from .postnet import Postnet
from .syncnet import SyncNet, SyncScore

RUN_KIND = RunKind("geneface-motion", 1, "motion model", "geneface train motion")



def check_audio(audio: np.ndarray, what: str = "audio") -> np.ndarray:
    """Mono float audio ``[N]`` that is long enough and not silent, else an :class:`InputError`."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if audio.size < AUDIO_RATE // 5:
        raise InputError(f"{what} is too short: shorter than 0.2 s ({audio.size / AUDIO_RATE:.2f} s); give at least "
                         f"0.2 s of speech")
    if not np.isfinite(audio).all():
        raise InputError(f"{what} holds NaN or infinite samples")
    if float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) < 1e-4:
        raise InputError(f"{what} is silent; give speech audio to drive the face")
    return audio


class MotionModel:
    """Audio features -> landmark offsets ``[T, 68, 3]``, with the person's postnet when the run has one."""

    def __init__(self, feature_kind: str, syncnet: SyncNet, generator: Audio2Motion, postnet: Postnet | None = None,
                 info: dict | None = None) -> None:
        self.feature_kind = feature_kind
        self.syncnet = syncnet.eval()
        self.generator = generator.eval()
        self.postnet = postnet.eval() if postnet is not None else None
        self.info = info or {}
        """The rest of the run's config (training settings, metrics)."""

    # --- loading and saving ----------------------------------------------------------------------
    @classmethod
    def load(cls, run: str | os.PathLike, device: str | torch.device = "cpu") -> "MotionModel":
        """Load a run folder written by ``geneface train motion`` or ``geneface train postnet``."""
        folder = RunFolder(run, RUN_KIND)
        config = folder.read_config()
        where = str(folder.root / "config.json")
        if "feature_kind" not in config:
            raise InputError(f"{where} is incomplete (no feature_kind)")
        syncnet = SyncNet.from_config_record(config.get("syncnet"), where).load(folder.root / "syncnet.safetensors")
        generator = Audio2Motion.from_config_record(config.get("generator"), where).load(
            folder.root / "generator.safetensors")
        postnet = None
        if config.get("postnet"):
            postnet = Postnet.from_config_record(config["postnet"], where).load(folder.root / "postnet.safetensors")
        info = {k: v for k, v in config.items() if k not in ("syncnet", "generator", "postnet")}
        return cls(str(config["feature_kind"]), syncnet, generator, postnet, info).to(device)

    def save(self, run: str | os.PathLike, **info) -> None:
        """Write the weights, ``metrics.json`` when ``info`` has metrics, then ``config.json`` (last, so a folder
        with it is complete)."""
        folder = RunFolder(run, RUN_KIND)
        folder.root.mkdir(parents=True, exist_ok=True)
        (folder.root / "config.json").unlink(missing_ok=True)  # until the new one is written, the folder is unfinished
        self.syncnet.save(folder.root / "syncnet.safetensors")
        self.generator.save(folder.root / "generator.safetensors")
        if self.postnet is not None:
            self.postnet.save(folder.root / "postnet.safetensors")
        else:
            (folder.root / "postnet.safetensors").unlink(missing_ok=True)
        if "metrics" in info:
            write_json(folder.root / "metrics.json", info["metrics"])
        folder.write_config({
            "feature_kind": self.feature_kind, "syncnet": self.syncnet.config_record(),
            "generator": self.generator.config_record(),
            "postnet": self.postnet.config_record() if self.postnet is not None else None,
            **{k: v for k, v in self.info.items() if k not in ("format", "version", "feature_kind")},
            **info, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def to(self, device: str | torch.device) -> "MotionModel":
        device = resolve_device(device) if isinstance(device, str) else device
        for m in (self.syncnet, self.generator, self.postnet):
            if m is not None:
                m.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.generator.feature_mean.device

    @property
    def feature_dim(self) -> int:
        return self.generator.config.feature_dim

    @property
    def context_frames(self) -> int:
        """Frames of audio either side of a frame that reach its offsets, but for the generator's prior flow's
        weak long reach (`Audio2Motion.context_frames`, plus the postnet's convolutions)."""
        frames = self.generator.context_frames
        if self.postnet is not None:
            c = self.postnet.config
            frames += (len(c.channels) * (1 + c.residual_layers) + 1) * (c.kernel // 2)
        return frames

    @property
    def stride(self) -> int:
        """Video frames per latent step: a window of frames must start at a multiple of it (see `predict`)."""
        return self.generator.config.stride

    # --- inference -------------------------------------------------------------------------------
    def check_features(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2:
            raise InputError(f"audio features must be [2T, D], got shape {features.shape}")
        if features.shape[1] != self.feature_dim:
            raise InputError(f"audio features have {features.shape[1]} channels but this model was trained on "
                             f"{self.feature_kind!r} features with {self.feature_dim}; compute "
                             f"{self.feature_kind!r} features")
        if features.shape[0] < 2:
            raise InputError("no audio features (the audio is empty)")
        if not np.isfinite(features).all():
            raise InputError("audio features hold NaN or infinite values")
        return features

    def _pitch(self, features: np.ndarray, pitch: np.ndarray | None) -> np.ndarray:
        if pitch is not None:
            pitch = np.asarray(pitch, dtype=np.float32).reshape(-1)
            if pitch.shape[0] < features.shape[0]:
                raise InputError(f"pitch has {pitch.shape[0]} steps, the features {features.shape[0]}")
            return pitch[: features.shape[0]]
        if self.feature_kind == "mel":
            return pitch_from_mel(features)
        if self.generator.config.pitch_bins:
            raise InputError(f"a model on {self.feature_kind!r} features needs the pitch: pass pitch= "
                             f"(f0 in Hz at 50 Hz) or use predict_audio")
        return np.zeros(features.shape[0], np.float32)

    @torch.no_grad()
    def predict(self, features: np.ndarray, pitch: np.ndarray | None = None, temperature: float = 1.0,
                seed: int = 0, postnet: bool = True, first_frame: int = 0) -> np.ndarray:
        """Landmark offsets ``[T, 68, 3]`` for audio features ``[2T, D]`` (same seed, same result).

        ``pitch`` [2T] is f0 in Hz (0 unvoiced); it is read from ``mel`` features when not given.
        ``temperature`` scales the prior noise (0: the most likely motion, larger: livelier).
        ``first_frame``: where the features start in a longer sequence (a multiple of `stride`), for a window
        of it (the stream): each latent step draws its noise from the seed and its place (`step_noise`).
        """
        features = self.check_features(features)
        if first_frame < 0 or first_frame % self.stride:
            raise ValueError(f"first_frame must be a non-negative multiple of {self.stride}, got {first_frame}")
        t = features.shape[0] // 2
        features = features[: 2 * t]
        p = self._pitch(features, pitch)
        dev = self.device
        f = torch.from_numpy(features)[None].to(dev)
        pt = torch.from_numpy(np.ascontiguousarray(p))[None].to(dev)
        steps = -(-t // self.stride)
        noise = step_noise(seed, first_frame // self.stride, steps, self.generator.config.latent)[None]
        out = self.generator.sample(f, pt, temperature=float(temperature), noise=noise)
        if postnet and self.postnet is not None:
            out = self.postnet(out)
        return out[0].float().cpu().numpy()

    def features_for_audio(self, audio: np.ndarray, num_frames: int | None = None,
                           model_path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
        """This model's kind of features ``[2T, D]`` and the pitch ``[2T]`` of 16 kHz mono audio."""
        audio = check_audio(audio)
        if num_frames is None:
            num_frames = frames_for_audio(audio.size)
        features = extract_features(self.feature_kind, audio, num_frames=num_frames, model_path=model_path,
                                    device=self.device.type)  # the neural kinds run beside the model
        pitch = pitch_from_mel(features) if self.feature_kind == "mel" else pitch_from_audio(audio, num_frames)
        return features, pitch

    def predict_audio(self, audio: np.ndarray, temperature: float = 1.0, seed: int = 0, postnet: bool = True,
                      num_frames: int | None = None, model_path: str | os.PathLike | None = None) -> np.ndarray:
        """Landmark offsets ``[T, 68, 3]`` for 16 kHz mono audio (T defaults to its length at 25 fps, rounded up)."""
        features, pitch = self.features_for_audio(audio, num_frames, model_path)
        return self.predict(features, pitch, temperature=temperature, seed=seed, postnet=postnet)

    def score(self, features: np.ndarray, offsets: np.ndarray) -> SyncScore:
        """Lip-sync score of offsets ``[T, 68, 3]`` against audio features ``[2T, D]``."""
        return self.syncnet.score(self.check_features(features), offsets)
