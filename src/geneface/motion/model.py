"""A trained motion model: SyncNet + audio2motion generator (+ postnet), loadable from its run folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from ..constants import AUDIO_RATE
from ..device import resolve_device
from ..errors import InputError
from ..fileio import write_json
from .data import pitch_from_audio, pitch_from_mel
from .generator import Audio2Motion, GeneratorConfig
from .postnet import Postnet, PostnetConfig
from .runio import (RUN_FORMAT, RUN_VERSION, config_from_dict, config_to_dict, load_weights, read_run_config,
                    save_weights)
from .syncnet import SyncNet, SyncNetConfig, SyncScore



def check_audio(audio: np.ndarray, what: str = "audio") -> np.ndarray:
    """Mono float audio ``[N]`` that is long enough and not silent, else an :class:`InputError`."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if audio.size < AUDIO_RATE // 5:
        raise InputError(f"{what} is empty or shorter than 0.2 s ({audio.size} samples)")
    if not np.isfinite(audio).all():
        raise InputError(f"{what} holds NaN or infinite samples")
    if float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) < 1e-4:
        raise InputError(f"{what} is silent; give speech to drive the face")
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
        run = Path(run)
        config = read_run_config(run)
        try:
            s_cfg = config_from_dict(SyncNetConfig, config["syncnet"], str(run))
            g_cfg = config_from_dict(GeneratorConfig, config["generator"], str(run))
            p_cfg = config_from_dict(PostnetConfig, config["postnet"], str(run)) if config.get("postnet") else None
            kind = str(config["feature_kind"])
        except (KeyError, TypeError) as e:
            raise InputError(f"{run}/config.json is incomplete ({e})") from None
        syncnet, generator = SyncNet(s_cfg), Audio2Motion(g_cfg)
        load_weights(run / "syncnet.safetensors", syncnet)
        load_weights(run / "generator.safetensors", generator)
        postnet = None
        if p_cfg is not None:
            postnet = Postnet(p_cfg)
            load_weights(run / "postnet.safetensors", postnet)
        info = {k: v for k, v in config.items() if k not in ("syncnet", "generator", "postnet")}
        model = cls(kind, syncnet, generator, postnet, info)
        return model.to(device)

    def save(self, run: str | os.PathLike, **info) -> None:
        """Write the weights, then ``config.json`` (last, so a folder with it is complete)."""
        run = Path(run)
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").unlink(missing_ok=True)  # until the new one is written, the folder is unfinished
        save_weights(run / "syncnet.safetensors", self.syncnet)
        save_weights(run / "generator.safetensors", self.generator)
        if self.postnet is not None:
            save_weights(run / "postnet.safetensors", self.postnet)
        elif (run / "postnet.safetensors").exists():
            (run / "postnet.safetensors").unlink()
        config = {"format": RUN_FORMAT, "version": RUN_VERSION, "feature_kind": self.feature_kind,
                  "syncnet": config_to_dict(self.syncnet.config),
                  "generator": config_to_dict(self.generator.config),
                  "postnet": config_to_dict(self.postnet.config) if self.postnet is not None else None,
                  **{k: v for k, v in self.info.items() if k not in ("format", "version", "feature_kind")},
                  **info, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(run / "config.json", config)

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
                seed: int = 0, postnet: bool = True) -> np.ndarray:
        """Landmark offsets ``[T, 68, 3]`` for audio features ``[2T, D]`` (same seed, same result).

        ``pitch`` [2T] is f0 in Hz (0 unvoiced); it is read from ``mel`` features when not given.
        ``temperature`` scales the prior noise (0: the most likely motion, larger: livelier).
        """
        features = self.check_features(features)
        t = features.shape[0] // 2
        features = features[: 2 * t]
        p = self._pitch(features, pitch)
        dev = self.device
        f = torch.from_numpy(features)[None].to(dev)
        pt = torch.from_numpy(np.ascontiguousarray(p))[None].to(dev)
        gen = torch.Generator().manual_seed(int(seed))
        out = self.generator.sample(f, pt, temperature=float(temperature), generator=gen)
        if postnet and self.postnet is not None:
            out = self.postnet(out)
        return out[0].float().cpu().numpy()

    def features_for_audio(self, audio: np.ndarray, num_frames: int | None = None,
                           model_path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
        """This model's kind of features ``[2T, D]`` and the pitch ``[2T]`` of 16 kHz mono audio."""
        from ..features import extract_features, frames_for_audio

        audio = check_audio(audio)
        if num_frames is None:
            num_frames = frames_for_audio(audio.size)
        features = extract_features(self.feature_kind, audio, num_frames=num_frames, model_path=model_path)
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
