"""`process`: a video of one person -> a training dataset (docs/dataset-format.md).

Steps run in order; each writes its outputs atomically and is recorded in ``progress.json``; a rerun skips
finished steps whose outputs are still there and redoes everything from the first one that is not.
``meta.json`` is written last.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from .. import face, media
from ..dataset import FORMAT, VERSION
from ..errors import InputError, NoFaceError
from ..fileio import atomic_dir, atomic_path, read_json, read_npz, write_json, write_npz
from . import masks as masks_mod
from . import pose as pose_mod

MIN_SOURCE_SIDE = 96
"""Smallest accepted short side of the source video, in pixels."""
DETECT_SIDE = 640
"""Frames are downscaled to this longest side for face detection."""


@dataclass
class ProcessConfig:
    """Options of `geneface process`."""

    size: int = 512
    """Side of the square output frames, in pixels."""
    fps: float = 25.0
    """Frame rate of the dataset; other source rates are resampled."""
    audio: Path | None = None
    """Audio file to use instead of the video's own track."""
    features: tuple[str, ...] = ("mel",)
    """Audio feature kinds to compute (mel, whisper, hubert)."""
    feature_model: Path | None = None
    """Model folder for the whisper or hubert features (whisper defaults to the installed package)."""
    focal_scale: float = 1.5
    """Focal length of the assumed pinhole camera, as a multiple of ``size``."""
    crop_scale: float = 2.6
    """Side of the square crop over the detected face-box width."""
    pose_smoothing: float = 1.5
    """Gaussian smoothing of the head pose in time, sigma in frames (0 = off)."""
    max_missing: float = 0.5
    """Largest fraction of frames without a face before processing stops."""
    val_fraction: float = 1 / 11
    """The last part of the clip kept for validation."""
    background_frames: int = 150
    """Frames sampled evenly over the clip to estimate the static background."""
    track_side: int = 256
    """Smallest frame side at which the face mesh is tracked (smaller outputs are tracked upscaled)."""


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


# --- steps ------------------------------------------------------------------------------------------

def step_detect(ctx: Context) -> None:
    """Find the face in every frame (the largest one that stays consistent) and fix a square crop."""
    boxes: list[np.ndarray] = []
    counts: list[int] = []
    shape = None
    with face.FaceDetector() as detect:
        for rgb in tqdm(media.read_video(ctx.video, ctx.config.fps), desc="detect", unit="frame", leave=False):
            shape = rgb.shape[:2]
            scale = min(1.0, DETECT_SIDE / max(shape))
            small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else rgb
            b, _ = detect(small)
            boxes.append(b / scale)
            counts.append(len(b))
    if shape is None:
        raise InputError(f"no video frames in {ctx.video}")
    h, w = shape
    chosen = _follow_largest(boxes)
    found = ~np.isnan(chosen[:, 0])
    t = len(boxes)
    if found.sum() < (1 - ctx.config.max_missing) * t:
        raise NoFaceError(f"no face found in {t - found.sum()} of {t} frames "
                          f"({_ranges(np.flatnonzero(~found))}); is a face clearly visible?")
    good = chosen[found]
    bw = np.median(good[:, 2] - good[:, 0])
    bh = np.median(good[:, 3] - good[:, 1])
    cx = np.median((good[:, 0] + good[:, 2]) / 2)
    cy = np.median((good[:, 1] + good[:, 3]) / 2) + 0.25 * bh
    side = int(round(min(ctx.config.crop_scale * max(bw, bh), w, h)))
    x0 = int(round(np.clip(cx - side / 2, 0, w - side)))
    y0 = int(round(np.clip(cy - side / 2, 0, h - side)))
    several = int((np.asarray(counts) > 1).sum())
    write_npz(ctx.out / "detect.npz", boxes=chosen.astype(np.float32), counts=np.asarray(counts),
              crop=np.array([x0, y0, side]), num_frames=np.array(t), source_shape=np.array([h, w]))
    if several:
        print(f"note: several faces in {several} frames; following the largest consistent one")


def step_track(ctx: Context) -> None:
    """Crop and resize every frame, write it as JPEG, and track the 478-point mesh on it."""
    det = ctx.npz("detect.npz")
    x0, y0, side = (int(v) for v in det["crop"])
    t = int(det["num_frames"])
    size = ctx.config.size
    track = max(size, ctx.config.track_side)
    mesh = np.zeros((t, face.NUM_MESH_POINTS, 3), np.float32)
    found = np.zeros(t, bool)
    n = 0
    with atomic_dir(ctx.out / "frames") as tmp, face.FaceMesh(video=True) as tracker:
        for i, rgb in enumerate(tqdm(media.read_video(ctx.video, ctx.config.fps), total=t, desc="track",
                                     unit="frame", leave=False)):
            if i >= t:
                break
            crop = rgb[y0:y0 + side, x0:x0 + side]
            interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
            out = cv2.resize(crop, (size, size), interpolation=interp)
            if not cv2.imwrite(str(tmp / f"{i:06d}.jpg"), out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise InputError(f"cannot write frames into {ctx.out}")
            view = out if track == size else cv2.resize(crop, (track, track), interpolation=interp)
            faces = tracker(view)
            if faces:
                mesh[i] = faces[0] * (size / track)
                found[i] = True
            n = i + 1
        if n < t:
            raise InputError(f"{ctx.video} changed while processing: {n} frames now, {t} before")
        if found.sum() < (1 - ctx.config.max_missing) * t:
            raise NoFaceError(f"no face mesh in {t - found.sum()} of {t} frames "
                              f"({_ranges(np.flatnonzero(~found))}); is the face large and clear enough?")
        missing = np.flatnonzero(~found)
        if len(missing):
            idx = np.flatnonzero(found)
            flat = mesh.reshape(t, -1)
            for j in range(flat.shape[1]):
                flat[missing, j] = np.interp(missing, idx, flat[idx, j])
            print(f"note: no face in {len(missing)} frames ({_ranges(missing)}); interpolated")
        ctx.info["interpolated_frames"] = len(missing)
        write_npz(ctx.out / "landmarks.npz", mesh=mesh, found=found)


def step_pose(ctx: Context) -> None:
    """Canonical shape, per-frame camera pose (smoothed), canonical landmarks and the 68-point motion."""
    mesh = ctx.npz("landmarks.npz")["mesh"].astype(np.float64)
    K = pose_mod.intrinsics(ctx.config.size, ctx.config.focal_scale)
    shape = pose_mod.canonical_shape(mesh)
    raw = pose_mod.solve_poses(mesh, shape, K)
    smooth = pose_mod.smooth_poses(raw, ctx.config.pose_smoothing)
    canonical = pose_mod.canonicalise(mesh, smooth, K)
    offsets, mean68, iod = pose_mod.motion_offsets(canonical)
    euler, euler_raw = smooth.euler, raw.euler
    write_npz(ctx.out / "pose.npz", rotation=smooth.rotation.astype(np.float32),
              translation=smooth.translation.astype(np.float32), c2w=smooth.c2w().astype(np.float32),
              euler=euler.astype(np.float32), euler_raw=euler_raw.astype(np.float32),
              intrinsics=K.astype(np.float32), canonical=canonical, mean_shape=shape)
    write_npz(ctx.out / "motion.npz", offsets=offsets, mean68=mean68, iod=np.array(iod, np.float32))


def step_masks(ctx: Context) -> None:
    """Person mask (MediaPipe selfie segmentation) split into head and torso with the mesh."""
    mesh = ctx.npz("landmarks.npz")["mesh"]
    with atomic_dir(ctx.out / "parsing") as tmp, face.selfie_segmenter() as segment:
        for i in tqdm(range(len(mesh)), desc="masks", unit="frame", leave=False):
            rgb = cv2.imread(str(ctx.out / "frames" / f"{i:06d}.jpg"))[..., ::-1]
            person = segment(rgb) > 0.5
            cv2.imwrite(str(tmp / f"{i:06d}.png"), masks_mod.parse(person, mesh[i]))


def step_background(ctx: Context) -> None:
    """Static background: per-pixel median over sampled frames where no person covers the pixel."""
    t = ctx.num_frames
    pick = np.unique(np.linspace(0, t - 1, min(t, ctx.config.background_frames)).round().astype(int))
    frames = np.stack([cv2.imread(str(ctx.out / "frames" / f"{i:06d}.jpg"))[..., ::-1] for i in pick])
    person = np.stack([cv2.imread(str(ctx.out / "parsing" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED) > 0
                       for i in pick])
    image, never = masks_mod.estimate_background(frames, person, margin=max(2, ctx.config.size // 64))
    with atomic_path(ctx.out / "background.png") as tmp:
        cv2.imwrite(str(tmp), image[..., ::-1])
    ctx.info["background_inpainted"] = float(never.mean())


def step_audio(ctx: Context) -> None:
    """16 kHz mono audio, cut or zero-padded to the clip's length."""
    audio = media.read_audio(ctx.config.audio or ctx.video)
    n = int(round(ctx.num_frames / ctx.config.fps * media.AUDIO_RATE))
    audio = np.pad(audio[:n], (0, max(0, n - len(audio))))
    if np.sqrt(np.mean(audio ** 2)) < 1e-4:
        print("warning: the audio is silent, so no lip motion can be learned from it; give speech with --audio",
              file=sys.stderr)
    media.write_audio(ctx.out / "audio.wav", audio)


def step_features(ctx: Context) -> None:
    """Audio features at 50 Hz for each requested kind."""
    from ..features import extract_features

    audio = media.read_audio(ctx.out / "audio.wav")
    for kind in ctx.config.features:
        feats = extract_features(kind, audio, num_frames=ctx.num_frames, model_path=ctx.config.feature_model)
        write_npz(ctx.out / "features" / f"{kind}.npz", features=feats.astype(np.float32), rate=np.array(50))


STEPS: list[tuple[str, Callable[[Context], None], Callable[[Context], list[Path]]]] = [
    ("detect", step_detect, lambda c: [c.out / "detect.npz"]),
    ("track", step_track, lambda c: [c.out / "frames", c.out / "landmarks.npz"]),
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
    _check_config(config)
    info = media.probe(video)  # raises on missing / unreadable / no video
    if min(info.width, info.height) < MIN_SOURCE_SIDE:
        raise InputError(f"{video} is {info.width}x{info.height}; at least {MIN_SOURCE_SIDE} px on the "
                         f"short side are needed to track a face")
    if config.audio is None and not info.has_audio:
        raise InputError(f"{video} has no audio track; give the speech with --audio FILE")
    if config.audio is not None:
        media.read_audio(config.audio)  # fail now, not after the long steps
    key = {"source_sha256": _sha256(video), "size": config.size, "fps": config.fps,
           "focal_scale": config.focal_scale, "crop_scale": config.crop_scale,
           "pose_smoothing": config.pose_smoothing,
           "audio_sha256": _sha256(config.audio) if config.audio is not None else None}
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
        print(f"[{name}] {run_step.__doc__.splitlines()[0]}")
        run_step(ctx)
        done[name] = {"seconds": round(time.perf_counter() - start, 3), **ctx.info}
        ctx.info = {}
        write_json(out / "progress.json", progress)
    summary = _summary(ctx, done, time.perf_counter() - total, info)
    if rerun or not (out / "meta.json").exists():
        _write_meta(ctx, info, key, summary)
    _print_summary(summary)
    return summary


def _check_config(config: ProcessConfig) -> None:
    if config.size < 32 or config.size % 2:
        raise InputError(f"--size must be an even number of at least 32, got {config.size}")
    if not 1 <= config.fps <= 120:
        raise InputError(f"--fps must be between 1 and 120, got {config.fps}")
    from ..features import FEATURE_KINDS

    for kind in config.features:
        if kind not in FEATURE_KINDS:
            raise InputError(f"unknown feature kind {kind!r}; choose from {', '.join(FEATURE_KINDS)}")


def _open_output(out: Path, key: dict) -> dict:
    """Check that ``out`` is new, ours and compatible; return the steps already done."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
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
        if progress.get("key") != key:
            raise InputError(f"{out} holds a dataset of another video or other settings; choose another "
                             f"--out or delete that folder")
        return dict(progress.get("done", {}))
    raise InputError(f"{out} has meta.json but no progress.json; choose another --out")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
        "seconds_of_video": round(t / ctx.config.fps, 2),
        "face_found_rate": round(float(lm["found"].mean()), 4),
        "pose_jitter_deg": round(jitter, 3),
        "step_seconds": steps,
        "total_seconds": round(sum(steps.values()), 2),
        "frames_per_second": round(t / max(sum(steps.values()), 1e-9), 2),
        "source": {"width": info.width, "height": info.height, "fps": round(info.fps, 3)},
    }


def _write_meta(ctx: Context, info: media.VideoInfo, key: dict, summary: dict) -> None:
    t = ctx.num_frames
    n_val = max(1, int(round(t * ctx.config.val_fraction))) if t > 1 else 0
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "fps": ctx.config.fps,
        "size": ctx.config.size,
        "num_frames": t,
        "intrinsics": pose_mod.intrinsics(ctx.config.size, ctx.config.focal_scale).tolist(),
        "split": {"train": [0, t - n_val], "val": [t - n_val, t]},
        "features": sorted(p.stem for p in (ctx.out / "features").glob("*.npz")),
        "source": {"path": str(ctx.video), "sha256": key["source_sha256"], "width": info.width,
                   "height": info.height, "fps": info.fps},
        "crop": [int(v) for v in ctx.npz("detect.npz")["crop"]],
        "config": {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                   for k, v in asdict(ctx.config).items()},
        "summary": summary,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(ctx.out / "meta.json", meta)


def _print_summary(s: dict) -> None:
    print(f"{s['frames']} frames ({s['seconds_of_video']} s), face found in {100 * s['face_found_rate']:.1f}%, "
          f"pose jitter {s['pose_jitter_deg']:.2f} deg")
    for name, sec in s["step_seconds"].items():
        print(f"  {name:<11} {sec:8.2f} s  {s['frames'] / max(sec, 1e-9):8.1f} frames/s")
    print(f"  {'total':<11} {s['total_seconds']:8.2f} s  {s['frames_per_second']:8.1f} frames/s")
