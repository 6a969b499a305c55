"""Synthetic talking head: animate a face photo in sync with speech, with exact ground truth.

``VIDEO.truth.npz`` (plain arrays, ``np.load(..., allow_pickle=False)``), T frames:

| key | shape | content |
|---|---|---|
| `mesh` | [T, 478, 3] float32 | the rendered mesh: x, y frame pixels (the image spans [0, size], MediaPipe's convention), z scaled like x relative to the head centre's depth (larger = farther) |
| `mesh_head` | [T, 478, 3] float32 | the animated mesh in head space (expression, no pose) |
| `neutral` | [478, 3] float32 | the photo's mesh in head space (head units: inter-ocular distance 0.3, origin at its centroid, axes the camera's in the photo) |
| `rotation`, `translation` | [T, 3, 3], [T, 3] float32 | head-to-camera: `x_cam = R @ x_head + t` (OpenCV camera axes) |
| `euler` | [T, 3] float32 | (yaw, pitch, roll) degrees of `rotation`, scipy intrinsic "YXZ"; zero = as in the photo |
| `mouth_open` | [T] float32 | inner-lip gap (points 13-14) over inter-ocular distance on `mesh_head` (`geneface.face.mouth_opening`) |
| `blink` | [T] float32 | eyelid closure in [0, 1] |
| `jaw_open`, `lip_width` | [T] float32 | the audio-driven controls: jaw opening in [0, 1], lip width in [-1 rounded, 1 spread] |
| `intrinsics` | [3, 3] float32 | pinhole camera: focal 1.5 * size, principal point (size / 2, size / 2) |
| `static_mask` | [size, size] bool | pixels equal to `photo` in every rendered frame (before video compression) |
| `photo` | [size, size, 3] uint8 | the cropped photo |
| `fps`, `size`, `iod` | scalars | frame rate, frame side, inter-ocular distance in head units (0.3) |

`project(mesh_head[k])` with `rotation[k]`, `translation[k]` and `intrinsics` gives `mesh[k, :, :2]`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from ..cliopts import MAX_SEED, MAX_SIZE, check_config, opt
from ..errors import InputError
from ..face import FACE_OVAL, LEFT_EYE, NUM_MESH_POINTS, RIGHT_EYE, interocular, mouth_opening
from ..features.activity import is_silent
from ..fileio import write_npz
from ..media import AUDIO_RATE, VideoWriter
from .glasses import GLASSES, Glasses
from .motion import blinks, head_motion
from .photo import crop_face, default_face
from .render import Warper, draw_mouth
from .rig import HEAD_IOD, LOWER_INNER, UPPER_INNER, FaceRig
from .speech import default_speech, fit_length, mouth_track

log = logging.getLogger(__name__)

RING_SCALE_NEAR = (1.45, 1.28, 1.22)
"""Ring that moves rigidly with the head, as multiples of the face outline about its centre (top, sides, bottom)."""
RING_SCALE_FAR = (2.1, 1.9, 1.75)
"""Fixed ring: the image outside it never changes."""


@dataclass(frozen=True)
class SynthConfig:
    """Options of the synthetic talking-head generator."""

    size: int = opt(256, min=64, max=MAX_SIZE, multiple_of=2)
    """Side of the square output frames in pixels."""
    seconds: float | None = opt(None, above=0.0, max=3600.0)
    """Length of the video (default: the audio's length); longer repeats the speech with short pauses,
    shorter cuts it."""
    fps: float = opt(25.0, above=0.0, max=240.0)
    """Frame rate of the video."""
    seed: int = opt(0, min=0, max=MAX_SEED)
    """Seed of the head motion and the blink times."""
    head_amplitude: tuple[float, float, float] = opt((6.0, 4.0, 3.0), min=0.0, max=90.0,
                                                     metavar=("YAW", "PITCH", "ROLL"))
    """Largest |yaw|, |pitch|, |roll| of the head motion in degrees (relative to the photo's pose)."""
    head_hz: float = opt(0.3, above=0.0, max=10.0)
    """Typical frequency of the head motion (it mixes slower and faster components around it)."""
    head_shift: float = opt(0.01, min=0.0, max=0.5)
    """Largest head translation along each axis, head units (inter-ocular distance 0.3)."""
    blink_interval: tuple[float, float] | None = opt((2.0, 6.0), above=0.0, max=3600.0, metavar=("LOW", "HIGH"))
    """Seconds between blinks, drawn uniformly from this range; None: no blinks."""
    blink_seconds: float = opt(0.2, above=0.0, max=2.0)
    """Length of a blink (the eyelids close over ~40% of it and reopen over the rest)."""
    jaw_max_deg: float = opt(13.0, min=0.0, max=45.0)
    """Jaw rotation at the widest opening, degrees."""
    use_phones: bool = opt(True, flag="phones")
    """Drive lip shapes by phones from pocketsphinx when it is installed; else by spectral features."""
    pause_seconds: float = opt(0.6, min=0.0, max=60.0)
    """Silence between repeats when the video is longer than the speech."""
    face_fraction: float = opt(0.42, above=0.0, max=1.0)
    """Width of the face as a fraction of the frame's side."""
    glasses: str = opt("none", choices=GLASSES)
    """Glasses on the face: "thin" or "thick" dark rims with a bridge and temple arms, rigid with the head
    (the truth stays the face's: the mesh is of the eyes behind them)."""
    glasses_tint: float = opt(0.3, min=0.0, max=1.0)
    """Strength of the glasses' lens tint and reflection (0: clear lenses)."""
    crf: int = opt(18, min=0, max=51)
    """H.264 quality (lower is better)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        check_config(self)
        if self.blink_interval is not None and not self.blink_interval[0] <= self.blink_interval[1]:
            raise InputError(f"--blink-interval must be LOW HIGH with LOW <= HIGH, got {self.blink_interval}")


def truth_path(video: str | os.PathLike) -> Path:
    """``VIDEO.truth.npz`` next to ``VIDEO.mp4``."""
    video = Path(video)
    return video.with_name(video.stem + ".truth.npz")


def _ring(points: np.ndarray, centre: np.ndarray, scales: tuple[float, float, float]) -> np.ndarray:
    """Scale a closed outline ``[N, 2]`` about ``centre``, by ``scales`` (top, sides, bottom) by direction."""
    d = points - centre
    u = d[:, 1] / (np.linalg.norm(d, axis=1) + 1e-9)
    top, side, bottom = scales
    s = side + (top - side) * np.maximum(-u, 0) ** 2 + (bottom - side) * np.maximum(u, 0) ** 2
    return centre + d * s[:, None]


def _strip(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Triangles ``[F, 3]`` joining two point chains of equal length (index arrays), dropping those with
    a repeated corner."""
    tris = [(a[i], a[i + 1], b[i]) for i in range(len(a) - 1)] + \
           [(a[i + 1], b[i + 1], b[i]) for i in range(len(a) - 1)]
    return np.array([t for t in tris if len(set(t)) == 3], dtype=np.int64)


class Animator:
    """Renders frames of the photo's face for given expression and pose.

    Args:
        photo: the cropped photo ``[S, S, 3]`` uint8.
        mesh_px: its mesh ``[478, 3]`` (pixels, z scaled like x).
        jaw_max_deg: jaw rotation at full opening.
        glasses: frame style (``"none"``, ``"thin"``, ``"thick"``) of the glasses drawn over the face.
        glasses_tint: strength of their lens tint and reflection in [0, 1].
    """

    def __init__(self, photo: np.ndarray, mesh_px: np.ndarray, jaw_max_deg: float = 13.0, glasses: str = "none",
                 glasses_tint: float = 0.3) -> None:
        self.photo = photo
        self.size = photo.shape[0]
        self.rig = FaceRig(mesh_px, self.size, jaw_max_deg)
        n = len(mesh_px)
        oval = mesh_px[FACE_OVAL]
        centre = oval[:, :2].mean(0)
        near_px = np.c_[_ring(oval[:, :2], centre, RING_SCALE_NEAR), oval[:, 2]]
        far_px = _ring(oval[:, :2], centre, RING_SCALE_FAR)
        self.ring_head = self.rig.lift_head(near_px)
        """[R, 3] the near ring in head space."""
        self.ring_jaw = 0.8 * self.rig.jaw_weight[FACE_OVAL]
        self.far_px = far_px
        r = len(FACE_OVAL)
        near_idx, far_idx = n + np.arange(r), n + r + np.arange(r)
        oval_closed, near_closed, far_closed = (np.r_[i, i[0]] for i in (FACE_OVAL, near_idx, far_idx))
        eyes = [_strip(c[:9], np.r_[c[0], c[9:][::-1], c[8]]) for c in (RIGHT_EYE, LEFT_EYE)]
        holes = np.concatenate([_strip(UPPER_INNER, LOWER_INNER[::-1]), *eyes])  # insides of mouth and eyes
        bands = np.concatenate([_strip(oval_closed, near_closed), _strip(near_closed, far_closed)])
        triangles = np.concatenate([self.rig.triangles, holes, bands])
        behind = np.r_[np.zeros(len(self.rig.triangles), bool), np.ones(len(holes), bool), np.zeros(len(bands), bool)]
        src = np.concatenate([mesh_px[:, :2], near_px[:, :2], far_px]) - 0.5
        moving = np.r_[np.ones(n + r, bool), np.zeros(r, bool)]
        self.warper = Warper(src, triangles, moving, self.size, behind=behind)
        self.far_depth = np.full(r, 1e6)
        self.glasses = None if glasses == "none" else Glasses(self.rig.neutral, glasses, glasses_tint)

    def frame(self, open_: float, width: float, blink: float, rotation: np.ndarray,
              translation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One frame: image ``[S, S, 3]`` uint8, mesh in frame pixels ``[478, 3]``, mesh in head
        space ``[478, 3]``, and the mask ``[S, S]`` of pixels that may differ from the photo."""
        rig = self.rig
        head = rig.expression(open_, width, blink)
        mesh = rig.project(head, rotation, translation)
        ring = rig.project(rig.jaw_transform(self.ring_head, open_, self.ring_jaw), rotation, translation)
        depth_scale = translation[2] / rig.focal  # z pixels -> camera depth
        dst = np.concatenate([mesh[:, :2], ring[:, :2], self.far_px]) - 0.5
        depth = np.concatenate([mesh[:, 2] * depth_scale, ring[:, 2] * depth_scale, self.far_depth])
        image, touched = self.warper.warp(self.photo, dst, depth)
        draw_mouth(image, mesh[UPPER_INNER, :2] - 0.5, mesh[LOWER_INNER, :2] - 0.5,
                   float(interocular(mesh[:, :2])), touched)
        if self.glasses is not None:  # over the face: the rims hide what is behind them
            self.glasses.draw(image, rig, rotation, translation, mesh, touched)
        return image, mesh, head, touched


@dataclass
class Clip:
    """A planned talking-head clip: the animator and every frame's controls (no pixels yet)."""

    animator: Animator
    audio: np.ndarray
    """[N] 16 kHz mono speech, exactly ``num_frames / fps`` seconds."""
    fps: float
    jaw_open: np.ndarray
    """[T] jaw opening in [0, 1]."""
    lip_width: np.ndarray
    """[T] lip width in [-1 rounded, 1 spread]."""
    blink: np.ndarray
    """[T] eyelid closure in [0, 1]."""
    euler: np.ndarray
    """[T, 3] yaw, pitch, roll in degrees (scipy intrinsic "YXZ"), relative to the photo's pose."""
    rotation: np.ndarray
    """[T, 3, 3] head-to-camera rotation."""
    translation: np.ndarray
    """[T, 3] head-to-camera translation (head units)."""

    @property
    def num_frames(self) -> int:
        return len(self.jaw_open)

    def frames(self, progress: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``Animator.frame`` outputs (image, mesh pixels, mesh head space, changed mask) per frame."""
        for k in tqdm(range(self.num_frames), desc="synth", unit="frame", disable=not progress):
            yield self.animator.frame(self.jaw_open[k], self.lip_width[k], self.blink[k], self.rotation[k],
                                      self.translation[k])

    def write(self, out: str | os.PathLike, crf: int = 18, progress: bool = False) -> Path:
        """Render to ``out`` (mp4 with the audio) and write the ground truth; returns its path."""
        out = Path(out)
        anim, rig = self.animator, self.animator.rig
        size = anim.size
        mesh = np.zeros((self.num_frames, NUM_MESH_POINTS, 3), np.float32)
        mesh_head = np.zeros_like(mesh)
        changed = np.zeros((size, size), bool)
        truth = truth_path(out)
        truth.unlink(missing_ok=True)  # a stale truth must not pass for this video's
        out.parent.mkdir(parents=True, exist_ok=True)
        with VideoWriter(out, fps=self.fps, audio=self.audio, crf=crf) as writer:
            for k, (image, mesh_k, head_k, changed_k) in enumerate(self.frames(progress)):
                writer.write(image)
                mesh[k], mesh_head[k] = mesh_k, head_k
                changed |= changed_k
        # The ground truth is written last: its presence marks a finished clip.
        write_npz(truth,
                  mesh=mesh, mesh_head=mesh_head, neutral=rig.neutral.astype(np.float32),
                  rotation=self.rotation.astype(np.float32), translation=self.translation.astype(np.float32),
                  euler=self.euler.astype(np.float32), mouth_open=mouth_opening(mesh_head).astype(np.float32),
                  blink=self.blink.astype(np.float32), jaw_open=self.jaw_open.astype(np.float32),
                  lip_width=self.lip_width.astype(np.float32), intrinsics=rig.intrinsics.astype(np.float32),
                  static_mask=~changed, photo=anim.photo, fps=np.float32(self.fps), size=np.int32(size),
                  iod=np.float32(HEAD_IOD))
        return truth


def prepare(face: np.ndarray | None = None, audio: np.ndarray | None = None,
            config: SynthConfig = SynthConfig()) -> Clip:
    """Plan a clip: crop and rig the face, fit and analyse the audio, draw head motion and blinks.

    ``face``: RGB ``[H, W, 3]`` uint8 (default the astronaut); ``audio``: 16 kHz mono float ``[N]``
    (default the bundled clip). Raises ``InputError`` when the photo holds no face; warns when the
    audio is silent (the face then keeps its mouth closed).
    """
    cfg = config
    face = default_face() if face is None else face
    audio = default_speech() if audio is None else np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise InputError(f"audio must be mono [N] samples at {AUDIO_RATE} Hz, got shape {audio.shape}")
    if len(audio) < AUDIO_RATE / cfg.fps and cfg.seconds is None:
        raise InputError("the audio is shorter than one frame")
    if is_silent(audio):
        log.warning("the audio is silent: the face will not speak")

    # 1. The photo: crop around the face, track its mesh, build the rig.
    photo, mesh_px = crop_face(face, cfg.size, face_fraction=cfg.face_fraction)
    anim = Animator(photo, mesh_px, cfg.jaw_max_deg, cfg.glasses, cfg.glasses_tint)

    # 2. The audio, fitted to a whole number of frames, and its mouth controls.
    seconds = cfg.seconds if cfg.seconds is not None else len(audio) / AUDIO_RATE
    num_frames = max(1, int(round(seconds * cfg.fps)))
    audio = fit_length(audio, num_frames / cfg.fps, cfg.pause_seconds)
    track = mouth_track(audio, use_phones=cfg.use_phones)
    times = (np.arange(num_frames) + 0.5) / cfg.fps  # the middle of each frame's interval
    open_, width = track.at(times)

    # 3. Head motion (a slight nod with the speech) and blinks.
    euler, shifts = head_motion(num_frames, cfg.fps, cfg.head_amplitude, cfg.head_hz, cfg.head_shift,
                                cfg.seed, emphasis=np.clip(open_ / 0.7, 0, 1))
    blink = blinks(num_frames, cfg.fps, cfg.blink_interval, cfg.blink_seconds, cfg.seed)
    rotation = Rotation.from_euler("YXZ", euler, degrees=True).as_matrix()
    translation = anim.rig.origin[None] + shifts
    return Clip(animator=anim, audio=audio, fps=cfg.fps, jaw_open=open_, lip_width=width, blink=blink,
                euler=euler, rotation=rotation, translation=translation)


def synthesize(out: str | os.PathLike, face: np.ndarray | None = None, audio: np.ndarray | None = None,
               config: SynthConfig = SynthConfig()) -> Path:
    """Animate ``face`` (RGB ``[H, W, 3]`` uint8; default the astronaut) speaking ``audio`` (16 kHz mono
    float ``[N]``; default the bundled clip); write ``out`` (mp4, H.264 + AAC) and its ground truth
    ``out`` without ``.mp4`` + ``.truth.npz`` (format: this module's docstring). Returns the truth's path.

    Raises ``InputError`` when the face photo holds no face or an option is invalid; warns when the
    audio is silent (the face then keeps its mouth closed).
    """
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise InputError(f"output must be an .mp4 file, got {out}")
    clip = prepare(face, audio, config)
    return clip.write(out, crf=config.crf, progress=config.progress)
