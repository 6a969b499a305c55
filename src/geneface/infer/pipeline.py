"""Speech -> features -> motion -> stabilised landmarks -> rendered frames -> H.264 + AAC mp4.

``PersonModel.load(person_dir).speak(audio, out)`` is the one inference path: `geneface infer`, the demo,
evaluation and the web app all call it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .. import media
from ..cliopts import MAX_SEED, check_config, opt
from ..constants import AUDIO_RATE, CONTOURS_68
from ..device import DEVICES, memory_errors, resolve_device
from ..errors import InputError
from ..fileio import read_npz
from ..motion import MotionModel
from ..motion.model import check_audio
from ..render import PersonRenderer
from ..render.sr import SRModel, load_sr, render_frames
from . import composite
from .person import Person, project_landmarks
from .stabilise import pose_track, stabilise


@dataclass
class InferConfig:
    """Options of `geneface infer`."""

    temperature: float = opt(0.5, min=0.0, max=10.0)
    """Sampling temperature of the motion generator (0 = its mean, higher = livelier)."""
    seed: int = opt(0, min=0, max=MAX_SEED)
    """Random seed of the motion sample and the blinks."""
    pose: str = "loop"
    """Head pose track: loop (training poses forward and back), still, or a .npz file with c2w [N,4,4]."""
    blink: str = opt("auto", choices=("auto", "off"))
    """auto: blinks every 2-6 s; off: eyes held open."""
    mouth_scale: float = opt(1.0, min=0.0, max=10.0)
    """Scale of the predicted mouth motion (above 1 exaggerates articulation)."""
    smoothing: float = opt(1.0, min=0.0, max=100.0)
    """Temporal smoothing of the landmarks (Gaussian sigma in frames, 0 = off)."""
    side_by_side: bool = False
    """Draw the predicted landmarks in a panel beside each frame."""
    full_frame: bool = False
    """Paste the face back into the source video's own frames, at their size (an odd side gets one more row or
    column, its edge repeated); needs the video `train all` read, where it was or at --source."""
    source: str | None = opt(None, metavar="PATH")
    """With --full-frame: where the person's source video is now, when it has moved (its checksum must match)."""
    batch: int = opt(4, min=1, max=1024)
    """Frames rendered at once."""
    device: str = opt("auto", choices=DEVICES)
    """Compute device."""
    feature_model: str | None = opt(None, metavar="PATH")
    """Local model folder of the audio features (hubert); default: the one the person was trained with."""

    def __post_init__(self) -> None:
        check_config(self)
        if self.full_frame and self.side_by_side:
            raise InputError("--full-frame and --side-by-side cannot be combined; choose one")
        if self.full_frame and self.pose not in ("loop", "still"):
            raise InputError("--full-frame needs --pose loop or still: a pose file's cameras have no source frames")
        if self.source is not None and not self.full_frame:
            raise InputError("--source is the source video of --full-frame; add --full-frame")


class PersonModel:
    """A trained person, loaded once to speak many times: its folder (`Person`), motion model, renderer and
    super-resolution network (None: frames are the renderer's)."""

    def __init__(self, person: Person, motion: MotionModel, renderer: PersonRenderer,
                 sr: SRModel | None = None) -> None:
        if motion.feature_kind != person.feature_kind:
            raise InputError(f"the motion model uses {motion.feature_kind!r} features but the person model says "
                             f"{person.feature_kind!r}")
        if sr is not None and sr.render_size != renderer.size:
            raise InputError(f"the super-resolution network was trained on {sr.render_size} px renders but the "
                             f"renderer's are {renderer.size} px")
        self.person = person
        self.motion = motion
        self.renderer = renderer
        self.sr = sr

    @classmethod
    def load(cls, root: str | os.PathLike, device: str | torch.device = "auto") -> "PersonModel":
        """Load a person model folder (from `train_person` / `geneface train all`) onto ``device``."""
        person = Person(root)
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        sr = load_sr(person.sr_dir, dev) if person.sr_dir is not None else None
        return cls(person, MotionModel.load(person.motion_dir, dev), PersonRenderer.load(person.render_dir, dev), sr)

    @property
    def fps(self) -> float:
        return self.person.fps

    @property
    def size(self) -> int:
        """Side of the rendered frames in pixels (the renderer's, times the super-resolution factor)."""
        return self.renderer.size * (self.sr.factor if self.sr is not None else 1)

    # --- the steps ------------------------------------------------------------------------------------
    def landmarks(self, audio: np.ndarray, config: InferConfig = InferConfig()) -> np.ndarray:
        """Stabilised landmark offsets [T, 68, 3] for 16 kHz mono audio [N] (T frames at the person's fps)."""
        num_frames = self.num_frames(audio)
        offsets = self.motion.predict_audio(audio, num_frames=num_frames, temperature=config.temperature,
                                            seed=config.seed,
                                            model_path=self.person.feature_model_for(config.feature_model))
        return stabilise(offsets, self.person.stats, smoothing=config.smoothing, mouth_scale=config.mouth_scale,
                         blink=config.blink, fps=self.fps, seed=config.seed)

    def num_frames(self, audio: np.ndarray) -> int:
        return int(round(len(audio) / AUDIO_RATE * self.fps))

    def poses(self, mode: str, num_frames: int) -> np.ndarray:
        """Cameras [T, 4, 4] for the ``pose`` option: loop, still, or an .npz file with c2w [N, 4, 4]."""
        if mode in ("loop", "still"):
            return pose_track(self.person.c2w, num_frames, mode)
        path = Path(mode)
        if not path.exists():
            raise InputError(f"--pose must be loop, still or a .npz file; no such file: {path}")
        try:
            c2w = read_npz(path)["c2w"]
        except (KeyError, ValueError, OSError):
            raise InputError(f"pose file {path} must be an .npz with an array 'c2w' of shape [N, 4, 4]") from None
        if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or len(c2w) == 0:
            raise InputError(f"pose file {path}: 'c2w' has shape {list(c2w.shape)}, expected [N, 4, 4]")
        if not np.isfinite(c2w).all():
            raise InputError(f"pose file {path}: 'c2w' holds NaN or infinite values")
        return pose_track(c2w.astype(np.float32), num_frames, "loop")

    def frames(self, offsets: np.ndarray, c2w: np.ndarray, config: InferConfig = InferConfig(),
               progress: bool = False) -> Iterator[np.ndarray]:
        """Rendered RGB frames [S, S, 3] uint8 (with the landmark panel beside each when
        ``config.side_by_side``), one per row of offsets [T, 68, 3] and cameras c2w [T, 4, 4], ``config.batch``
        at a time: a long clip never holds more than one batch."""
        points = (project_landmarks(offsets, c2w, self.renderer.intrinsics, self.person.stats)  # renderer's size
                  * (self.size / self.renderer.size) if config.side_by_side else None)  # -> the output's
        landmarks = torch.from_numpy(np.ascontiguousarray(offsets, dtype=np.float32))  # [T, 68, 3]
        starts = range(0, len(offsets), config.batch)
        for start in tqdm(starts, desc="render", unit="batch", disable=not progress):
            idx = np.arange(start, min(start + config.batch, len(offsets)))
            windows = PersonRenderer.windows(landmarks, torch.from_numpy(idx))  # [B, 5, 68, 3]
            for j, frame in zip(idx, self.render(windows, c2w[idx])):
                if points is not None:
                    frame = np.hstack([frame, draw_landmarks(points[j], frame.shape[0])])
                yield frame

    def render(self, windows: np.ndarray | torch.Tensor, c2w: np.ndarray | torch.Tensor,
               size: int | None = None) -> np.ndarray:
        """RGB frames [B, S, S, 3] uint8 of landmark windows [B, 5, 68, 3] (`PersonRenderer.windows`) seen from
        cameras c2w [B, 4, 4]; S is ``size`` (default: the person's `size`). With super-resolution and S larger than
        the renderer's size, the renderer draws them at S / factor (rounded) and the network brings them up (then
        resized to exactly S if need be); up to the renderer's size they are rendered directly."""
        return self._render(windows, c2w, size, layers=False)[0]

    def render_layers(self, windows: np.ndarray | torch.Tensor, c2w: np.ndarray | torch.Tensor,
                      size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`render`'s RGB frames [B, S, S, 3] uint8 and the person's coverage [B, S, S] float32 in [0, 1] (head
        and torso; 0 on the background), from one render pass."""
        rgb, alpha = self._render(windows, c2w, size, layers=True)
        return rgb, alpha

    def _render(self, windows: np.ndarray | torch.Tensor, c2w: np.ndarray | torch.Tensor, size: int | None,
                layers: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """`render` (``layers`` False: alpha None) or `render_layers`."""
        b = len(c2w)
        with memory_errors(self.renderer.device, f"while rendering {b} frame{'s' if b != 1 else ''} at once",
                           "use a smaller --batch" if b > 1 else "use a smaller size or --device cpu"):
            c2w, windows = torch.as_tensor(c2w).float(), torch.as_tensor(windows).float()
            rgb, alpha = render_frames(self.renderer, self.sr, c2w, windows, int(size or self.size))
        rgb = (rgb.cpu().numpy() * 255).round().astype(np.uint8)  # render_frames clamps to [0, 1]
        return rgb, alpha.float().cpu().numpy() if layers else None

    # --- all of it ------------------------------------------------------------------------------------
    def speak(self, audio: str | os.PathLike | np.ndarray, out: str | os.PathLike,
              config: InferConfig = InferConfig(), progress: bool = True) -> Path:
        """Render this person saying ``audio`` (a media file, or 16 kHz mono samples [N]) into the mp4 ``out``
        (written atomically, with the audio muxed in); returns its path. With ``config.full_frame`` the video
        is the source video's frames with the face composited in (`geneface.infer.composite`), at their size; an
        odd width or height is padded by one column or row, its edge replicated (H.264 needs even sizes)."""
        # 1. check the inputs
        out = Path(out)
        if not out.parent.exists():
            raise InputError(f"output folder does not exist: {out.parent}")
        what = str(audio) if not isinstance(audio, np.ndarray) else "the audio"
        samples = check_audio(media.read_audio(audio) if not isinstance(audio, np.ndarray) else audio, what)
        num_frames = self.num_frames(samples)
        c2w = self.poses(config.pose, num_frames)
        source = composite.check_source(self.person, config.source) if config.full_frame else None
        # 2. audio -> landmarks -> frames -> video
        offsets = self.landmarks(samples, config)
        frames = composite.full_frames(self, offsets, c2w, config, source, progress=progress) if source else \
            self.frames(offsets, c2w, config, progress=progress)
        with media.VideoWriter(out, fps=self.fps, audio=samples) as writer:
            for frame in frames:
                writer.write(frame)
        return out


def infer(person_dir: str | os.PathLike, audio_path: str | os.PathLike, out: str | os.PathLike,
          config: InferConfig = InferConfig()) -> Path:
    """``PersonModel.load(person_dir, config.device).speak(audio_path, out, config)``: one call for one video."""
    out = Path(out)
    if not out.parent.exists():  # before loading anything
        raise InputError(f"output folder does not exist: {out.parent}")
    return PersonModel.load(person_dir, config.device).speak(audio_path, out, config)


def draw_landmarks(points: np.ndarray, size: int) -> np.ndarray:
    """A [size, size, 3] panel with the 68 points [68, 2] and their contours."""
    panel = np.full((size, size, 3), 24, np.uint8)
    for idx, closed in CONTOURS_68:
        pts = np.round(points[idx]).astype(np.int32)
        cv2.polylines(panel, [pts], closed, (90, 200, 255), 1, cv2.LINE_AA)
    for x, y in np.round(points).astype(int):
        cv2.circle(panel, (x, y), 1, (255, 255, 255), -1, cv2.LINE_AA)
    return panel
