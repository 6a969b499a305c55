"""Speech -> features -> motion -> stabilised landmarks -> rendered frames -> H.264 + AAC mp4."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .. import media
from ..constants import CONTOURS_68
from ..errors import InputError
from ..fileio import read_npz
from .person import Person, project_landmarks
from .stabilise import pose_track, stabilise

MIN_AUDIO_SECONDS = 0.2


@dataclass
class InferConfig:
    """Options of `geneface infer`."""

    temperature: float = 0.5
    """Sampling temperature of the motion generator (0 = its mean, higher = livelier)."""
    seed: int = 0
    """Random seed of the motion sample and the blinks."""
    pose: str = "loop"
    """Head pose track: loop (training poses forward and back), still, or a .npz file with c2w [N,4,4]."""
    blink: str = "auto"
    """auto: blinks every 2-6 s; off: eyes held open."""
    mouth_scale: float = 1.0
    """Scale of the predicted mouth motion."""
    smoothing: float = 1.0
    """Temporal smoothing of the landmarks (Gaussian sigma in frames, 0 = off)."""
    side_by_side: bool = False
    """Draw the predicted landmarks in a panel beside each frame."""
    batch: int = 4
    """Frames rendered at once."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    feature_model: str | None = None
    """Local model folder of the audio features (hubert); default: the one the person was trained with."""


def load_pose(mode: str, person: Person, num_frames: int) -> np.ndarray:
    """Cameras [T, 4, 4] for the ``--pose`` option."""
    if mode in ("loop", "still"):
        return pose_track(person.c2w, num_frames, mode)
    path = Path(mode)
    if not path.exists():
        raise InputError(f"--pose must be loop, still or a .npz file; no such file: {path}")
    try:
        c2w = read_npz(path)["c2w"]
    except (KeyError, ValueError, OSError):
        raise InputError(f"pose file {path} must be an .npz with an array 'c2w' of shape [N, 4, 4]") from None
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or len(c2w) == 0:
        raise InputError(f"pose file {path}: 'c2w' has shape {list(c2w.shape)}, expected [N, 4, 4]")
    return pose_track(c2w.astype(np.float32), num_frames, "loop")


def predict_landmarks(person: Person, audio: np.ndarray, config: InferConfig) -> np.ndarray:
    """Stabilised offsets [T, 68, 3] for 16 kHz audio [N]."""
    from ..motion import MotionModel

    num_frames = int(round(len(audio) / media.AUDIO_RATE * person.fps))
    model = MotionModel.load(person.motion_dir)
    if model.feature_kind != person.feature_kind:
        raise InputError(f"the motion model uses {model.feature_kind!r} features but the person model says "
                         f"{person.feature_kind!r}")
    offsets = model.predict_audio(audio, num_frames=num_frames, temperature=config.temperature, seed=config.seed,
                                  model_path=config.feature_model or person.feature_model)
    return stabilise(offsets, person.stats, smoothing=config.smoothing, mouth_scale=config.mouth_scale,
                     blink=config.blink, fps=person.fps, seed=config.seed)


def infer(person_dir: str | os.PathLike, audio_path: str | os.PathLike, out: str | os.PathLike,
          config: InferConfig = InferConfig()) -> Path:
    """Render ``person_dir`` saying ``audio_path`` into the mp4 ``out``; returns its path."""
    # 1. check the inputs
    out = Path(out)
    if not out.parent.exists():
        raise InputError(f"output folder does not exist: {out.parent}")
    person = Person(person_dir)
    audio = media.read_audio(audio_path)
    if len(audio) < MIN_AUDIO_SECONDS * media.AUDIO_RATE:
        raise InputError(f"{audio_path} is too short ({len(audio) / media.AUDIO_RATE:.2f} s); give at least "
                         f"{MIN_AUDIO_SECONDS} s of speech")
    if np.sqrt(np.mean(audio ** 2)) < 1e-4:
        raise InputError(f"{audio_path} is silent; give speech audio")
    num_frames = int(round(len(audio) / media.AUDIO_RATE * person.fps))
    c2w = load_pose(config.pose, person, num_frames)

    # 2. audio -> landmarks
    offsets = predict_landmarks(person, audio, config)

    # 3. landmarks -> frames -> video
    from ..render import PersonRenderer

    renderer = PersonRenderer.load(person.render_dir, device=config.device)
    points = project_landmarks(offsets, c2w, person.intrinsics, person.stats) if config.side_by_side else None
    import torch

    windows = PersonRenderer.windows(torch.from_numpy(offsets).float())  # [T, 5, 68, 3]
    with media.VideoWriter(out, fps=person.fps, audio=audio) as writer:
        for start in tqdm(range(0, num_frames, config.batch), desc="render", unit="batch"):
            idx = np.arange(start, min(start + config.batch, num_frames))
            rgb = renderer.render(torch.from_numpy(c2w[idx]).float(), windows[idx]).rgb
            frames = (rgb.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
            for j, frame in zip(idx, frames):
                if points is not None:
                    frame = np.hstack([frame, draw_landmarks(points[j], frame.shape[0])])
                writer.write(frame)
    return out


def draw_landmarks(points: np.ndarray, size: int) -> np.ndarray:
    """A [size, size, 3] panel with the 68 points [68, 2] and their contours."""
    panel = np.full((size, size, 3), 24, np.uint8)
    for idx, closed in CONTOURS_68:
        pts = np.round(points[idx]).astype(np.int32)
        cv2.polylines(panel, [pts], closed, (90, 200, 255), 1, cv2.LINE_AA)
    for x, y in np.round(points).astype(int):
        cv2.circle(panel, (x, y), 1, (255, 255, 255), -1, cv2.LINE_AA)
    return panel
