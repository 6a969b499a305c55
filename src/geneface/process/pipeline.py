"""`process`: a video of one person -> a training dataset (docs/dataset-format.md).

The work on a clip is a chain of public stages on arrays, shared by every caller:

1. `detect_face`: find the face in every frame (the largest one, followed in time) and fix a square crop;
2. `track_mesh`: crop and resize every frame and track the 478-point face mesh on it;
3. `solve_motion`: the canonical shape, the per-frame head pose (the NeRF camera), the mesh with the pose
   removed and the 68-point landmark offsets;
4. `clip_audio` and `audio_features`: the clip's 16 kHz audio, shifted to the lips (`geneface.process.avsync`),
   and its 50 Hz features.

`track_clip` runs them in memory on one clip and returns a `ClipTrack` (what `geneface corpus prepare` keeps
of each clip). `process` runs them as steps that write a dataset folder, plus the person masks and the static
background: each step writes its outputs atomically and is recorded in ``progress.json``; a rerun skips
finished steps whose outputs are still there and redoes everything from the first one that is not.
``meta.json`` is written last.

Every video is resampled to 25 fps (`geneface.constants.FPS`): the audio features run at 50 Hz, two rows per
frame, so the frame rate is not an option.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from .. import face, media
from ..cliopts import MAX_SIZE, check_config, opt
from ..constants import AUDIO_RATE, FEATURE_RATE, FPS
from ..dataset import FORMAT, VERSION
from ..device import DEVICES
from ..errors import InputError, NoFaceError
from ..features import FEATURE_KINDS, extract_features
from ..features.activity import is_silent
from ..features.mel import f0_hz
from ..fileio import (LOCK_FILE, atomic_dir, folder_lock, read_json, read_npz, sha256_file, write_image, write_json,
                      write_npz)
from . import avsync
from . import masks as masks_mod
from . import pose as pose_mod

log = logging.getLogger(__name__)

MIN_SOURCE_SIDE = 96
"""Smallest accepted short side of the source video, in pixels."""
DETECT_SIDE = 640
"""Frames are downscaled to this longest side for face detection."""


@dataclass
class ProcessConfig:
    """Options of `geneface process` (the dataset is always at 25 fps: `geneface.constants.FPS`)."""

    size: int = opt(512, min=32, max=MAX_SIZE, multiple_of=2)
    """Side of the square output frames, in pixels."""
    audio: Path | None = None
    """Audio file to use instead of the video's own track."""
    features: tuple[str, ...] = opt(("mel",), choices=FEATURE_KINDS, metavar="KIND")
    """Audio feature kinds to compute (mel, whisper, hubert; space or comma separated)."""
    feature_model: Path | None = None
    """Model folder for the whisper or hubert features (whisper defaults to the installed package)."""
    focal_scale: float = opt(1.5, min=0.1, max=100.0)
    """Focal length of the assumed pinhole camera, as a multiple of ``size``."""
    crop_scale: float = opt(2.6, min=1.0, max=10.0)
    """Side of the square crop over the detected face-box width."""
    max_crop: float = opt(1.0, min=0.1, max=10.0)
    """Largest crop side as a multiple of the source frame's long side. The crop is centred on the face and
    padded where it reaches past the frame's edges; above 1, tight frames keep the face at ``crop_scale`` but
    spend more of the output's pixels on padding."""
    off_centre: float = opt(0.05, min=0.0, max=0.5)
    """Largest shift of the crop off the face's centre, as a fraction of its side, that keeps it inside the
    frame; a crop that still crosses the frame's edge is padded there (0: always centred)."""
    pose_smoothing: float = opt(1.5, min=0.0, max=100.0)
    """Gaussian smoothing of the head pose in time, sigma in frames (0 = off)."""
    max_missing: float = opt(0.5, min=0.0, max=1.0)
    """Largest fraction of frames without a face before processing stops."""
    val_fraction: float = opt(1 / 11, above=0.0, max=0.5)
    """The last part of the clip kept for validation."""
    background_frames: int = opt(150, min=1, max=100_000)
    """Frames sampled evenly over the training split to estimate the static background."""
    track_side: int = opt(256, min=32, max=MAX_SIZE)
    """Smallest frame side at which the face mesh is tracked (smaller outputs are tracked upscaled)."""
    device: str = opt("auto", choices=DEVICES)
    """Compute device of the neural audio features (whisper, hubert); the rest of processing uses the CPU."""
    av_offset: str = opt("auto", metavar="auto|MS")
    """Correction of the audio/video offset: auto measures how far the audio leads the lips and corrects it when
    the measure is confident; a number of milliseconds is corrected as given (positive: the audio leads the
    video, negative: it lags); 0: none."""

    def __post_init__(self) -> None:
        self.features = tuple(self.features)
        self.av_offset = avsync.parse_setting(self.av_offset)
        check_config(self)


class SourceTooSmallError(InputError):
    """The video's short side is under `MIN_SOURCE_SIDE` pixels: too few to track a face."""

    def __init__(self, video: Path, width: int, height: int) -> None:
        self.width, self.height, self.minimum = width, height, MIN_SOURCE_SIDE
        super().__init__(f"{video} is {width}x{height}; at least {MIN_SOURCE_SIDE} px on the short side are "
                         f"needed to track a face")


# --- the stages of one clip -------------------------------------------------------------------------

@dataclass
class FaceCrop:
    """Where the face is in every frame and the square crop that holds it (`detect_face`)."""

    boxes: np.ndarray
    """[T, 4] float32 (x0, y0, x1, y1) source pixels of the followed face; NaN where it was not found."""
    counts: np.ndarray
    """[T] int: faces detected in each frame."""
    crop: np.ndarray
    """[3] int (x0, y0, side): the square crop in source pixels; it may reach past the frame's edges (the
    face stays centred at its scale), and what lies outside is padding (`crop_frame`, `valid_box`)."""
    source_shape: tuple[int, int]
    """(height, width) of the source frames."""
    notes: list[str] = field(default_factory=list)
    """Things worth telling the user ("note: several faces ...")."""

    @property
    def num_frames(self) -> int:
        return len(self.boxes)


def crop_frame(rgb: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """The square ``crop`` = (x0, y0, side) of a frame [H, W, 3], [side, side, 3]; the part outside the frame is
    padded by replicating its edge pixels (the face tracker and the person segmenter take that far better than
    a constant colour, and it hides no edge for a network to learn)."""
    x0, y0, side = (int(v) for v in crop)
    h, w = rgb.shape[:2]
    a, b = max(0, x0), max(0, y0)
    inner = rgb[b:min(h, y0 + side), a:min(w, x0 + side)]
    if inner.size == 0:
        raise InputError(f"the crop {[x0, y0, side]} misses the {w}x{h} frame")
    pads = (b - y0, y0 + side - b - inner.shape[0], a - x0, x0 + side - a - inner.shape[1])  # top, bottom, left, right
    return cv2.copyMakeBorder(inner, *pads, cv2.BORDER_REPLICATE) if any(pads) else inner


def valid_box(crop: np.ndarray, source_shape: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the pixels of the ``size`` x ``size`` resized crop whose whole footprint lies inside
    the source frame of ``source_shape`` (height, width); the rest is padding. Half-open, never empty."""
    cx, cy, side = (float(v) for v in crop)
    h, w = source_shape
    f = size / side  # output pixels per source pixel
    x0, y0 = int(np.ceil(max(0.0, -cx * f) - 1e-6)), int(np.ceil(max(0.0, -cy * f) - 1e-6))
    x1 = int(np.floor(min(float(size), (w - cx) * f) + 1e-6))
    y1 = int(np.floor(min(float(size), (h - cy) * f) + 1e-6))
    x1, y1 = max(x1, min(x0 + 1, size)), max(y1, min(y0 + 1, size))
    return min(x0, size - 1), min(y0, size - 1), x1, y1


def valid_mask(box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """[size, size] bool: True inside ``box`` (x0, y0, x1, y1), the real pixels of a crop (`valid_box`)."""
    x0, y0, x1, y1 = box
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = True
    return mask


@dataclass
class MeshTrack:
    """The face mesh of every cropped frame (`track_mesh`)."""

    mesh: np.ndarray
    """[T, 478, 3] float32 in pixels of the ``size`` x ``size`` crop; frames without a face interpolated."""
    found: np.ndarray
    """[T] bool: the mesh was tracked (not interpolated) in the frame."""
    notes: list[str] = field(default_factory=list)


@dataclass
class HeadMotion:
    """Head pose and pose-free landmarks of a clip (`solve_motion`): the arrays of pose.npz and motion.npz."""

    rotation: np.ndarray
    """[T, 3, 3] float32 head-to-camera rotation, smoothed in time."""
    translation: np.ndarray
    """[T, 3] float32 head origin in camera space (head units), smoothed in time."""
    c2w: np.ndarray
    """[T, 4, 4] float32 camera-to-head transforms (the NeRF camera)."""
    euler: np.ndarray
    """[T, 3] float32 (yaw, pitch, roll) degrees, smoothed."""
    euler_raw: np.ndarray
    """[T, 3] float32 (yaw, pitch, roll) degrees before smoothing."""
    intrinsics: np.ndarray
    """[3, 3] float32 pinhole matrix in pixels of the crop."""
    canonical: np.ndarray
    """[T, 478, 3] float32 the mesh with the head pose removed (head units)."""
    mean_shape: np.ndarray
    """[478, 3] float32 the person's canonical shape."""
    offsets: np.ndarray
    """[T, 68, 3] float32 iBUG-68 landmarks in head space minus their mean, over the inter-ocular distance."""
    mean68: np.ndarray
    """[68, 3] float32 the mean of the 68 landmarks (head units)."""
    iod: np.ndarray
    """float32 scalar: the inter-ocular distance of ``mean68`` (head units)."""

    def pose_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of pose.npz."""
        return {k: getattr(self, k) for k in ("rotation", "translation", "c2w", "euler", "euler_raw", "intrinsics",
                                              "canonical", "mean_shape")}

    def motion_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of motion.npz."""
        return {"offsets": self.offsets, "mean68": self.mean68, "iod": self.iod}


def check_source(video: Path, audio: Path | None = None) -> media.VideoInfo:
    """Probe ``video`` and check that it can be processed: large enough (else `SourceTooSmallError`), with
    speech (its own audio track, or the readable file ``audio``); raises ``InputError`` otherwise."""
    info = media.probe(video)  # raises on missing / unreadable / no video
    if min(info.width, info.height) < MIN_SOURCE_SIDE:
        raise SourceTooSmallError(video, info.width, info.height)
    if audio is None and not info.has_audio:
        raise InputError(f"{video} has no audio track; give the speech with --audio FILE")
    if audio is not None:
        media.read_audio(audio)  # fail now, not after the long steps
    return info


def detect_face(video: Path, config: ProcessConfig, progress: bool = True) -> FaceCrop:
    """Find the face in every frame of ``video`` (the largest one that stays consistent) and fix a square crop
    around it. Raises ``NoFaceError`` when more than ``config.max_missing`` of the frames have no face."""
    boxes: list[np.ndarray] = []
    counts: list[int] = []
    shape = None

    def frames() -> Iterator[tuple[tuple[int, int], float, np.ndarray]]:
        for rgb in media.read_video(video, FPS):
            scale = min(1.0, DETECT_SIDE / max(rgb.shape[:2]))
            small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else rgb
            yield rgb.shape[:2], scale, small

    with face.FaceDetector() as detect:  # decoding runs ahead in a thread: the detector uses one core
        for shape, scale, small in tqdm(media.read_ahead(frames()), desc="detect", unit="frame", leave=False,
                                        disable=not progress):
            b, _ = detect(small)
            boxes.append(b / scale)
            counts.append(len(b))
    if shape is None:
        raise InputError(f"no video frames in {video}")
    h, w = shape
    chosen = _follow_largest(boxes)
    found = ~np.isnan(chosen[:, 0])
    t = len(boxes)
    if found.sum() < (1 - config.max_missing) * t:
        raise NoFaceError(f"no face found in {t - found.sum()} of {t} frames "
                          f"({_ranges(np.flatnonzero(~found))}); is a face clearly visible?")
    good = chosen[found]
    bw = np.median(good[:, 2] - good[:, 0])
    bh = np.median(good[:, 3] - good[:, 1])
    cx = np.median((good[:, 0] + good[:, 2]) / 2)
    cy = np.median((good[:, 1] + good[:, 3]) / 2) + 0.25 * bh
    # the face centred, even where that crosses the frame's edge (`crop_frame` pads), at ``crop_scale`` unless
    # the frame is too tight for it: no larger than ``max_crop`` times its long side (padding costs resolution)
    side = max(int(round(min(config.crop_scale * max(bw, bh), config.max_crop * max(w, h)))), 16)
    slack = config.off_centre * side
    x0 = int(round(_shift_inside(cx - side / 2, side, w, slack)))
    y0 = int(round(_shift_inside(cy - side / 2, side, h, slack)))
    several = int((np.asarray(counts) > 1).sum())
    notes = [f"note: several faces in {several} frames; following the largest consistent one"] if several else []
    box = valid_box(np.array([x0, y0, side]), (h, w), side)
    padded = 1 - (box[2] - box[0]) * (box[3] - box[1]) / side ** 2
    if padded > 0.005:
        notes.append(f"note: the face is near the frame's edge or fills it; {100 * padded:.0f}% of the crop lies "
                     f"outside the frame and is padded (never trained on)")
    return FaceCrop(chosen.astype(np.float32), np.asarray(counts), np.array([x0, y0, side]), (h, w), notes)


def track_mesh(video: Path, crop: np.ndarray, num_frames: int, config: ProcessConfig,
               frames_dir: Path | None = None, progress: bool = True) -> MeshTrack:
    """Crop ``crop`` = (x0, y0, side) out of the first ``num_frames`` frames of ``video`` (padded past the
    frame's edges: `crop_frame`), resize it to ``config.size`` and track the 478-point mesh on it (at ``config.track_side`` px at least); frames without a
    face are interpolated. With ``frames_dir``, each cropped frame is also written there as ``000000.jpg``, ...
    Raises ``NoFaceError`` when more than ``config.max_missing`` of the frames have no mesh."""
    side = int(crop[2])
    t = num_frames
    size = config.size
    track = max(size, config.track_side)
    mesh = np.zeros((t, face.NUM_MESH_POINTS, 3), np.float32)
    found = np.zeros(t, bool)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC

    def views() -> Iterator[np.ndarray]:
        """The first ``t`` frames cropped, written to ``frames_dir`` and sized for the tracker."""
        for i, rgb in enumerate(media.read_video(video, FPS)):
            if i >= t:
                break
            cropped = crop_frame(rgb, crop)  # padded where the crop reaches past the frame
            out = cv2.resize(cropped, (size, size), interpolation=interp)
            if frames_dir is not None and not cv2.imwrite(str(frames_dir / f"{i:06d}.jpg"), out[..., ::-1],
                                                          [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise InputError(f"cannot write frames into {frames_dir.parent}")
            yield out if track == size else cv2.resize(cropped, (track, track), interpolation=interp)

    n = 0
    with face.FaceMesh(video=True) as tracker:  # decoding and writing run ahead in a thread
        for i, view in enumerate(tqdm(media.read_ahead(views()), total=t, desc="track", unit="frame", leave=False,
                                      disable=not progress)):
            faces = tracker(view)
            if faces:
                mesh[i] = faces[0] * (size / track)
                found[i] = True
            n = i + 1
    if n < t:
        raise InputError(f"{video} changed while processing: {n} frames now, {t} before")
    if found.sum() < (1 - config.max_missing) * t:
        raise NoFaceError(f"no face mesh in {t - found.sum()} of {t} frames "
                          f"({_ranges(np.flatnonzero(~found))}); is the face large and clear enough?")
    notes = []
    missing = np.flatnonzero(~found)
    if len(missing):
        idx = np.flatnonzero(found)
        flat = mesh.reshape(t, -1)
        for j in range(flat.shape[1]):
            flat[missing, j] = np.interp(missing, idx, flat[idx, j])
        notes.append(f"note: no face in {len(missing)} frames ({_ranges(missing)}); interpolated")
    return MeshTrack(mesh, found, notes)


def solve_motion(mesh: np.ndarray, config: ProcessConfig) -> HeadMotion:
    """Canonical shape, per-frame camera pose (smoothed), canonical landmarks and the 68-point offsets of the
    mesh ``[T, 478, 3]`` (pixels of the ``config.size`` crop; float32, converted a frame at a time)."""
    K = pose_mod.intrinsics(config.size, config.focal_scale)
    shape = pose_mod.canonical_shape(mesh)
    raw = pose_mod.solve_poses(mesh, shape, K)
    smooth = pose_mod.smooth_poses(raw, config.pose_smoothing)
    canonical = pose_mod.canonicalise(mesh, smooth, K)
    offsets, mean68, iod = pose_mod.motion_offsets(canonical)
    return HeadMotion(rotation=smooth.rotation.astype(np.float32), translation=smooth.translation.astype(np.float32),
                      c2w=smooth.c2w().astype(np.float32), euler=smooth.euler.astype(np.float32),
                      euler_raw=raw.euler.astype(np.float32), intrinsics=K.astype(np.float32),
                      canonical=canonical, mean_shape=shape, offsets=offsets, mean68=mean68,
                      iod=np.array(iod, np.float32))


def clip_audio(source: Path, mesh: np.ndarray, av_offset: str = "auto") -> tuple[np.ndarray, avsync.AvOffset]:
    """The audio of ``source`` as 16 kHz mono float32 aligned to the lips of ``mesh`` ``[T, 478, 3]``: its
    offset is measured and corrected as ``av_offset`` says (`avsync.align`), then it is cut or zero-padded to
    T video frames. Returns the audio and the offset."""
    audio = media.read_audio(source)
    n = int(round(len(mesh) / FPS * AUDIO_RATE))
    sync = avsync.align(avsync.estimate_offset(face.mouth_opening(mesh), audio[:n]), av_offset)
    audio = avsync.shift_audio(audio, sync.applied_ms)
    return np.pad(audio[:n], (0, max(0, n - len(audio)))), sync


def audio_features(audio: np.ndarray, kinds: tuple[str, ...], num_frames: int,
                   model_path: Path | None = None, device: str = "cpu") -> dict[str, np.ndarray]:
    """Features ``[2 * num_frames, D]`` float32 at 50 Hz of each kind in ``kinds``, from 16 kHz ``audio``."""
    return {kind: extract_features(kind, audio, num_frames=num_frames, model_path=model_path,
                                   device=device).astype(np.float32) for kind in kinds}


def split_frame(num_frames: int, val_fraction: float) -> int:
    """The first validation frame: frames ``[0, s)`` train, ``[s, num_frames)`` validate (the last
    ``val_fraction`` of the clip, at least one frame when there are two or more)."""
    n_val = max(1, int(round(num_frames * val_fraction))) if num_frames > 1 else 0
    return num_frames - n_val


@dataclass
class ClipTrack:
    """One clip tracked in memory by `track_clip`: the arrays `process` writes, without the images."""

    crop: np.ndarray
    """[3] int (x0, y0, side): the square face crop in source pixels."""
    mesh: np.ndarray
    """[T, 478, 3] float32 face mesh in pixels of the ``size`` x ``size`` crop (missing frames interpolated)."""
    found: np.ndarray
    """[T] bool: the face was tracked (not interpolated) in the frame."""
    motion: HeadMotion
    """Head pose, canonical mesh and the 68-point offsets."""
    audio: np.ndarray
    """[T / 25 * 16000] float32: the clip's audio as ``audio.wav`` of a dataset holds it (16-bit PCM)."""
    features: dict[str, np.ndarray]
    """Kind -> [2T, D] float32 audio features at 50 Hz."""
    pitch: np.ndarray
    """[2T] float32 f0 in Hz at 50 Hz (0 where unvoiced), from the mel features."""
    notes: list[str]
    """What `process` would have told the user ("note: no face in 3 frames ...; interpolated")."""
    av_offset: dict = field(default_factory=dict)
    """The audio/video offset measured and applied (`avsync.AvOffset.as_dict`)."""

    @property
    def num_frames(self) -> int:
        return len(self.mesh)

    @property
    def offsets(self) -> np.ndarray:
        """[T, 68, 3] float32 landmark offsets with the head pose removed (`HeadMotion.offsets`)."""
        return self.motion.offsets


def track_clip(video: str | Path, config: ProcessConfig = ProcessConfig(), progress: bool = False) -> ClipTrack:
    """Detect, track, solve the head pose and compute the audio features of one clip, in memory.

    The arrays equal those `process` writes for the same video and settings (``config.audio``: speech to use
    instead of the video's own track). Raises `SourceTooSmallError`, ``InputError`` or ``NoFaceError``.
    ``progress``: show per-stage progress bars.
    """
    video = Path(video)
    check_source(video, config.audio)
    found = detect_face(video, config, progress)
    t = found.num_frames
    tracked = track_mesh(video, found.crop, t, config, progress=progress)
    motion = solve_motion(tracked.mesh, config)
    audio, sync = clip_audio(config.audio or video, tracked.mesh, config.av_offset)
    audio = _as_stored(audio)
    features = audio_features(audio, config.features, t, config.feature_model, config.device)
    mel = features["mel"] if "mel" in features else extract_features("mel", audio, num_frames=t)
    return ClipTrack(crop=found.crop, mesh=tracked.mesh, found=tracked.found, motion=motion, audio=audio,
                     features=features, pitch=f0_hz(mel).astype(np.float32),
                     notes=found.notes + tracked.notes, av_offset=sync.as_dict())


def _as_stored(audio: np.ndarray) -> np.ndarray:
    """``audio`` as it reads back from ``audio.wav`` (16-bit PCM), so that features computed from it equal
    those of a processed dataset."""
    with tempfile.TemporaryDirectory(prefix="geneface-audio-") as tmp:
        path = Path(tmp) / "audio.wav"
        media.write_audio(path, audio)
        return media.read_audio(path)


# --- the steps of `process` -------------------------------------------------------------------------

@dataclass
class Context:
    """What a step sees: the input, the options and the output folder."""

    video: Path
    out: Path
    config: ProcessConfig
    info: dict = field(default_factory=dict)
    """Facts the steps report for the summary (face-found rate, pose jitter, ...)."""

    def npz(self, name: str) -> dict[str, np.ndarray]:
        return read_npz(self.out / name)

    @property
    def num_frames(self) -> int:
        return int(self.npz("detect.npz")["num_frames"])

    @property
    def valid_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the real (not padded) pixels of the output frames (`valid_box`)."""
        det = self.npz("detect.npz")
        return valid_box(det["crop"], tuple(det["source_shape"]), self.config.size)


def step_detect(ctx: Context) -> None:
    """Find the face in every frame (the largest one that stays consistent) and fix a square crop."""
    found = detect_face(ctx.video, ctx.config)
    h, w = found.source_shape
    write_npz(ctx.out / "detect.npz", boxes=found.boxes, counts=found.counts, crop=found.crop,
              num_frames=np.array(found.num_frames), source_shape=np.array([h, w]))
    _log_notes(found.notes)


def step_track(ctx: Context) -> None:
    """Crop and resize every frame, write it as JPEG, and track the 478-point mesh on it."""
    det = ctx.npz("detect.npz")
    write_image(ctx.out / "valid.png", valid_mask(ctx.valid_box, ctx.config.size).astype(np.uint8) * 255)
    with atomic_dir(ctx.out / "frames") as tmp:
        tracked = track_mesh(ctx.video, det["crop"], int(det["num_frames"]), ctx.config, frames_dir=tmp)
        _log_notes(tracked.notes)
        ctx.info["interpolated_frames"] = int((~tracked.found).sum())
        write_npz(ctx.out / "landmarks.npz", mesh=tracked.mesh, found=tracked.found)


def step_pose(ctx: Context) -> None:
    """Canonical shape, per-frame camera pose (smoothed), canonical landmarks and the 68-point motion."""
    motion = solve_motion(ctx.npz("landmarks.npz")["mesh"], ctx.config)
    write_npz(ctx.out / "pose.npz", **motion.pose_arrays())
    write_npz(ctx.out / "motion.npz", **motion.motion_arrays())


def step_masks(ctx: Context) -> None:
    """Person mask (MediaPipe selfie segmentation) split into head and torso with the mesh."""
    mesh = ctx.npz("landmarks.npz")["mesh"]
    valid = valid_mask(ctx.valid_box, ctx.config.size)
    frames = (cv2.imread(str(ctx.out / "frames" / f"{i:06d}.jpg"))[..., ::-1] for i in range(len(mesh)))

    def write(folder: Path, i: int, person: np.ndarray) -> None:
        if not cv2.imwrite(str(folder / f"{i:06d}.png"), masks_mod.parse(person, mesh[i], valid)):
            raise InputError(f"cannot write masks into {ctx.out}")

    # the segmenter uses one core: frames are read ahead, and split and written behind, in two other threads
    with atomic_dir(ctx.out / "parsing") as tmp, face.selfie_segmenter() as segment, \
            ThreadPoolExecutor(1, thread_name_prefix="geneface-masks") as writer:
        pending: deque[Future] = deque()
        for i, rgb in enumerate(tqdm(media.read_ahead(frames), total=len(mesh), desc="masks", unit="frame",
                                     leave=False)):
            pending.append(writer.submit(write, tmp, i, segment(rgb) > 0.5))
            if len(pending) > 16:
                pending.popleft().result()  # its error, if any, here
        for job in pending:
            job.result()


def step_background(ctx: Context) -> None:
    """Static background: per-pixel median over sampled training frames where no person covers the pixel."""
    train = split_frame(ctx.num_frames, ctx.config.val_fraction)  # validation frames stay unseen
    pick = np.unique(np.linspace(0, train - 1, min(train, ctx.config.background_frames)).round().astype(int))
    frames = np.stack([cv2.imread(str(ctx.out / "frames" / f"{i:06d}.jpg"))[..., ::-1] for i in pick])
    person = np.stack([cv2.imread(str(ctx.out / "parsing" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED) > 0
                       for i in pick])
    box = ctx.valid_box
    image, never = masks_mod.estimate_background(frames, person, margin=max(2, ctx.config.size // 64), valid=box)
    valid = valid_mask(box, ctx.config.size)
    write_image(ctx.out / "background_unseen.png", ((never & valid) * 255).astype(np.uint8))  # inpainted there
    write_image(ctx.out / "background.png", image)
    ctx.info["background_inpainted"] = round(float(never[valid].mean()), 4)  # of the real pixels


def step_audio(ctx: Context) -> None:
    """16 kHz mono audio aligned to the lips, cut or zero-padded to the clip's length."""
    audio, sync = clip_audio(ctx.config.audio or ctx.video, ctx.npz("landmarks.npz")["mesh"], ctx.config.av_offset)
    if is_silent(audio):
        log.warning("the audio is silent, so no lip motion can be learned from it; give speech with --audio")
    (log.warning if sync.warn else log.info)(sync.message)
    ctx.info["av_offset"] = sync.as_dict()
    media.write_audio(ctx.out / "audio.wav", audio)


def step_features(ctx: Context) -> None:
    """Audio features at 50 Hz for each requested kind."""
    audio = media.read_audio(ctx.out / "audio.wav")
    features = audio_features(audio, ctx.config.features, ctx.num_frames, ctx.config.feature_model,
                              ctx.config.device)
    for kind, feats in features.items():
        write_npz(ctx.out / "features" / f"{kind}.npz", features=feats, rate=np.array(FEATURE_RATE))


STEPS: list[tuple[str, Callable[[Context], None], Callable[[Context], list[Path]]]] = [
    ("detect", step_detect, lambda c: [c.out / "detect.npz"]),
    ("track", step_track, lambda c: [c.out / "valid.png", c.out / "frames", c.out / "landmarks.npz"]),
    ("pose", step_pose, lambda c: [c.out / "pose.npz", c.out / "motion.npz"]),
    ("masks", step_masks, lambda c: [c.out / "parsing"]),
    ("background", step_background, lambda c: [c.out / "background.png"]),
    ("audio", step_audio, lambda c: [c.out / "audio.wav"]),
    ("features", step_features, lambda c: [c.out / "features" / f"{k}.npz" for k in c.config.features]),
]


# --- driver -----------------------------------------------------------------------------------------

def process(video: str | Path, out: str | Path, config: ProcessConfig = ProcessConfig()) -> dict:
    """Run (or resume) every step; returns the summary also stored in ``meta.json``."""
    video, out = Path(video), Path(out)
    info = check_source(video, config.audio)
    key = {"source_sha256": sha256_file(video), "size": config.size, "fps": float(FPS),
           "focal_scale": config.focal_scale, "crop_scale": config.crop_scale,
           "pose_smoothing": config.pose_smoothing,
           "audio_sha256": sha256_file(config.audio) if config.audio is not None else None,
           "av_offset": config.av_offset}
    for name in ("max_crop", "off_centre"):  # at their defaults, folders of earlier versions still resume
        if getattr(config, name) != getattr(ProcessConfig, name):
            key[name] = getattr(config, name)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    if out.exists():
        _open_output(out, key)  # a folder that is not ours is refused before anything is written into it
    with folder_lock(out):
        return _run_steps(video, out, config, info, key)


def _run_steps(video: Path, out: Path, config: ProcessConfig, info: media.VideoInfo, key: dict) -> dict:
    """The steps of `process` (the caller holds the output folder's lock)."""
    done = _open_output(out, key)
    ctx = Context(video, out, config)
    progress = {"format": FORMAT + "-progress", "version": VERSION, "key": key, "done": done}
    rerun = False
    total = time.perf_counter()
    for name, run_step, outputs in STEPS:
        if not rerun and name in done and all(p.exists() for p in outputs(ctx)):
            continue
        rerun = True
        done.pop(name, None)
        write_json(out / "progress.json", progress)
        start = time.perf_counter()
        log.info(f"[{name}] {run_step.__doc__.splitlines()[0]}")
        run_step(ctx)
        done[name] = {"seconds": round(time.perf_counter() - start, 3), **ctx.info}
        ctx.info = {}
        write_json(out / "progress.json", progress)
    summary = _summary(ctx, done, time.perf_counter() - total, info)
    if rerun or not (out / "meta.json").exists():
        _write_meta(ctx, info, key, summary, done["audio"]["av_offset"])
    else:
        _refresh_source(out / "meta.json", source_record(video, key["source_sha256"], info))
    _log_summary(summary)
    return summary


def _log_notes(notes: list[str]) -> None:
    for note in notes:
        log.info(note)


def _open_output(out: Path, key: dict) -> dict:
    """Check that ``out`` is new, ours and compatible; return the steps already done."""
    if not any(p.name != LOCK_FILE for p in out.iterdir()):
        return {}
    state = None
    for name in ("progress.json", "meta.json"):
        if (out / name).exists():
            try:
                state = read_json(out / name)
            except ValueError:
                raise InputError(f"{out / name} is corrupt; delete {out} or choose another --out") from None
            if state.get("version") != VERSION or not str(state.get("format", "")).startswith(FORMAT):
                raise InputError(f"{out} holds a dataset of another geneface format (version "
                                 f"{state.get('version')}; this one writes {VERSION}); choose another "
                                 f"--out or delete that folder")
    if state is None:
        raise InputError(f"--out {out} is not empty and is not a geneface dataset; choose an empty folder")
    if (out / "progress.json").exists():
        progress = read_json(out / "progress.json")
        made = progress.get("key") or {}
        if "av_offset" not in made and (out / "meta.json").exists() and {**made, "av_offset": key["av_offset"]} == key:
            log.warning(f"{out} was processed before audio/video offsets were measured; using it as it is (its "
                        f"audio as the file had it). Process the video into a new folder to measure and correct it")
            return dict(progress.get("done", {}))
        if made != key:
            raise InputError(f"{out} holds a dataset of another video or other settings; choose another "
                             f"--out or delete that folder")
        return dict(progress.get("done", {}))
    raise InputError(f"{out} has meta.json but no progress.json; choose another --out")


def _shift_inside(start: float, side: float, extent: int, slack: float) -> float:
    """The crop's start along one axis moved by at most ``slack`` towards the inside of [0, extent) (a crop
    larger than the frame stays centred)."""
    if side > extent:
        return start
    if start < 0:
        return min(0.0, start + slack)
    return max(extent - side, start - slack) if start + side > extent else start


def _follow_largest(boxes: list[np.ndarray]) -> np.ndarray:
    """One box per frame [T, 4] (NaN where none): start from the largest face of the clip and follow the
    box that overlaps the previous choice most, so a second face never takes over."""
    sizes = [(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) if len(b) else np.zeros(0) for b in boxes]
    largest = [b[np.argmax(s)] for b, s in zip(boxes, sizes) if len(b)]
    out = np.full((len(boxes), 4), np.nan)
    if not largest:
        return out
    ref = np.median(np.stack(largest), axis=0)
    for i, b in enumerate(boxes):
        if not len(b):
            continue
        iou = _iou(b, ref)
        j = int(np.argmax(iou))
        if iou[j] > 0.2:
            out[i] = b[j]
            ref = b[j]
    return out


def _iou(boxes: np.ndarray, ref: np.ndarray) -> np.ndarray:
    x0 = np.maximum(boxes[:, 0], ref[0]); y0 = np.maximum(boxes[:, 1], ref[1])
    x1 = np.minimum(boxes[:, 2], ref[2]); y1 = np.minimum(boxes[:, 3], ref[3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + (ref[2] - ref[0]) * (ref[3] - ref[1]) - inter)


def _ranges(idx: np.ndarray, limit: int = 6) -> str:
    """'3-7, 12, 40-41' for sorted frame indices (at most ``limit`` runs shown)."""
    runs: list[list[int]] = []
    for i in map(int, idx):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs[:limit])
    return "frames " + text + (", ..." if len(runs) > limit else "")


def _summary(ctx: Context, done: dict, seconds: float, info: media.VideoInfo) -> dict:
    t = ctx.num_frames
    lm = ctx.npz("landmarks.npz")
    pose = ctx.npz("pose.npz")
    jitter = float(np.sqrt(np.mean((pose["euler_raw"] - pose["euler"]) ** 2)))
    steps = {name: done[name]["seconds"] for name, _, _ in STEPS if name in done}
    return {
        "frames": t,
        "seconds_of_video": round(t / FPS, 2),
        "face_found_rate": round(float(lm["found"].mean()), 4),
        "pose_jitter_deg": round(jitter, 3),
        "step_seconds": steps,
        "total_seconds": round(sum(steps.values()), 2),
        "frames_per_second": round(t / max(sum(steps.values()), 1e-9), 2),
        "source": {"width": info.width, "height": info.height, "fps": round(info.fps, 3)},
    }


def source_record(video: Path, sha256: str, info: media.VideoInfo) -> dict:
    """meta.json's ``source``: what `geneface infer --full-frame` needs to find the video again and check it is
    the same file (absolute ``path``, ``sha256``, ``bytes``), and its frame size."""
    return {"path": str(video.resolve()), "sha256": sha256, "bytes": video.stat().st_size, "width": info.width,
            "height": info.height, "fps": info.fps}


def _refresh_source(meta_path: Path, source: dict) -> None:
    """Update the ``source`` of a finished dataset's meta.json when it differs (the same video, moved, or a
    dataset written before ``path`` was absolute and ``bytes`` was recorded)."""
    meta = read_json(meta_path)
    if meta.get("source") != source:
        write_json(meta_path, {**meta, "source": source})


def _write_meta(ctx: Context, info: media.VideoInfo, key: dict, summary: dict, av_offset: dict) -> None:
    t = ctx.num_frames
    box = ctx.valid_box
    split = split_frame(t, ctx.config.val_fraction)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "fps": float(FPS),
        "size": ctx.config.size,
        "num_frames": t,
        "intrinsics": pose_mod.intrinsics(ctx.config.size, ctx.config.focal_scale).tolist(),
        "split": {"train": [0, split], "val": [split, t]},
        "features": sorted(p.stem for p in (ctx.out / "features").glob("*.npz")),
        "source": source_record(ctx.video, key["source_sha256"], info),
        "crop": [int(v) for v in ctx.npz("detect.npz")["crop"]],
        "av_offset": av_offset,
        "valid_box": list(box),
        "valid_fraction": round((box[2] - box[0]) * (box[3] - box[1]) / ctx.config.size ** 2, 4),
        "config": {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                   for k, v in asdict(ctx.config).items()},
        "summary": summary,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(ctx.out / "meta.json", meta)


def _log_summary(s: dict) -> None:
    log.info(f"{s['frames']} frames ({s['seconds_of_video']} s), face found in {100 * s['face_found_rate']:.1f}%, "
             f"pose jitter {s['pose_jitter_deg']:.2f} deg")
    for name, sec in s["step_seconds"].items():
        log.info(f"  {name:<11} {sec:8.2f} s  {s['frames'] / max(sec, 1e-9):8.1f} frames/s")
    log.info(f"  {'total':<11} {s['total_seconds']:8.2f} s  {s['frames_per_second']:8.1f} frames/s")
