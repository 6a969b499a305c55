"""Degrade a synthetic clip the way real footage is degraded, keeping its ground truth exact.

`degrade` reads ``VIDEO.mp4`` and ``VIDEO.truth.npz`` (from `geneface.synth.synthesize`) and writes a new
clip and truth. In the order they are applied:

- **timing**: a fraction of the frames dropped at random; the rest keep their time stamps, so the stream
  has irregular presentation times (a variable frame rate, as phones record);
- **geometry**, one affine map per frame: a crop (``crop``, fractions of the source frame), a canvas of any
  size the crop is scaled into (fitting its width or height, the rest filled by repeating the edge pixels:
  a portrait 1080x1920 phone video, or a small 224 px source), and a camera shake (a smooth random
  translation and rotation about the frame's centre);
- **pixels**: a slow brightness drift (a sinusoidal gain) and Gaussian noise;
- **encoding**: H.264 at a fixed low bit rate instead of a quality target;
- **audio**: shifted against the video by a whole number of samples (positive ``av_offset_ms``: the audio
  leads, i.e. every sound comes that much before its mouth movement).

The truth follows: per-frame arrays keep the frames kept; ``mesh`` x, y go through each frame's affine map;
``intrinsics`` through the static part (crop and canvas); the shake, a rotation of the image about the
principal point plus a small shift, is folded into the head pose as a camera roll and pan (``rotation``,
``euler``). Keys added to the truth: ``times`` [T] (seconds of each frame), ``frame_affine`` [T, 2, 3]
(source pixels -> output pixels), ``width``, ``height``, ``av_offset_ms`` and ``av_offset_samples``; the
``static_mask`` is dropped (it no longer holds) and ``size`` is the output width. `truth_at` samples the truth
at other times (what a 25 fps decode of the clip shows).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.transform import Rotation

from ..cliopts import MAX_SEED, MAX_SIZE, check_config, opt
from ..constants import AUDIO_RATE
from ..errors import InputError
from ..fileio import atomic_path, read_npz, write_npz
from ..media import _audio_frames, nearest_frames, probe, read_audio, read_video
from .generator import truth_path

PER_FRAME = ("mesh", "mesh_head", "rotation", "translation", "euler", "mouth_open", "blink", "jaw_open", "lip_width")
"""Truth arrays with one row per frame."""
TIME_BASE = Fraction(1, 90000)
"""Time base of the written video stream (MPEG's 90 kHz clock): fine enough for any frame time."""


@dataclass(frozen=True)
class DegradeConfig:
    """How to degrade a synthetic clip (the defaults change nothing but re-encode it)."""

    av_offset_ms: float = opt(0.0, min=-5000.0, max=5000.0)
    """Shift of the audio against the video, ms (positive: the audio leads); rounded to whole samples."""
    bitrate_kbps: float | None = opt(None, min=10.0, max=100_000.0)
    """H.264 at this fixed bit rate (kbit/s) instead of the quality target ``crf``."""
    crf: int = opt(18, min=0, max=51)
    """H.264 quality when no bit rate is given (lower is better)."""
    noise: float = opt(0.0, min=0.0, max=128.0)
    """Standard deviation of Gaussian pixel noise, in 8-bit levels."""
    brightness_drift: float = opt(0.0, min=0.0, max=0.9)
    """Amplitude of a slow brightness change: the pixels are scaled by 1 + amplitude * sin(2 pi t / period)."""
    drift_seconds: float = opt(20.0, above=0.0, max=3600.0)
    """Period of the brightness drift, seconds."""
    shake_shift: float = opt(0.0, min=0.0, max=0.2)
    """Largest camera-shake translation, as a fraction of the output's short side."""
    shake_deg: float = opt(0.0, min=0.0, max=30.0)
    """Largest camera-shake rotation, degrees."""
    shake_hz: float = opt(1.0, above=0.0, max=10.0)
    """Typical frequency of the shake."""
    crop: tuple[float, float, float, float] | None = opt(None, min=-1.0, max=2.0,
                                                         metavar=("LEFT", "TOP", "WIDTH", "HEIGHT"))
    """Keep this box of the source frame (fractions of its width and height; may reach outside it, where the
    edge pixels repeat)."""
    canvas: tuple[int, int] | None = opt(None, min=16, max=MAX_SIZE, multiple_of=2, metavar=("WIDTH", "HEIGHT"))
    """Output frame size; the (cropped) frame is scaled to fit it and centred, edges repeated (default: the
    crop's own size)."""
    drop_frames: float = opt(0.0, min=0.0, max=0.9)
    """Fraction of the frames dropped at random (the rest keep their times: a variable frame rate)."""
    seed: int = opt(0, min=0, max=MAX_SEED)
    """Seed of the noise, the shake and the dropped frames."""

    def __post_init__(self) -> None:
        check_config(self)
        if self.crop is not None and not (self.crop[2] > 0 and self.crop[3] > 0):
            raise InputError(f"--crop WIDTH and HEIGHT must be positive, got {self.crop}")


def shift_audio(audio: np.ndarray, samples: int) -> np.ndarray:
    """``audio`` [N] moved ``samples`` earlier (positive: the audio leads) or later (negative), same length,
    zeros where nothing is left: ``out[i] = audio[i + samples]``."""
    out = np.zeros_like(audio)
    n = len(audio)
    if samples >= 0:
        out[: max(n - samples, 0)] = audio[samples:]
    else:
        out[-samples:] = audio[: max(n + samples, 0)]
    return out


def offset_samples(ms: float, rate: int = AUDIO_RATE) -> int:
    """Whole samples of an offset in milliseconds."""
    return int(round(ms * rate / 1000))


def _smooth_noise(rng: np.random.Generator, n: int, fps: float, hz: float) -> np.ndarray:
    """[n] smooth random signal in [-1, 1] (filtered white noise, typical frequency ``hz``)."""
    x = gaussian_filter1d(rng.standard_normal(n + 64), sigma=fps / (2 * np.pi * hz), mode="reflect")[32:-32]
    return x / (np.abs(x).max() + 1e-12)


def geometry(width: int, height: int, config: DegradeConfig, times: np.ndarray, fps: float
             ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The static map ``[3, 3]`` (crop and canvas) and the per-frame maps ``[T, 2, 3]`` (static, then shake)
    from source pixels to output pixels (MediaPipe's convention: the image spans [0, W]), and the output
    (width, height)."""
    x0, y0, cw, ch = (0.0, 0.0, float(width), float(height)) if config.crop is None else \
        (config.crop[0] * width, config.crop[1] * height, config.crop[2] * width, config.crop[3] * height)
    out_w, out_h = config.canvas if config.canvas is not None else \
        (int(round(cw / 2)) * 2, int(round(ch / 2)) * 2)
    scale = min(out_w / cw, out_h / ch)
    static = np.array([[scale, 0, (out_w - scale * cw) / 2 - scale * x0],
                       [0, scale, (out_h - scale * ch) / 2 - scale * y0],
                       [0, 0, 1]])
    n = len(times)
    rng = np.random.default_rng(config.seed + 1)
    shift_px = config.shake_shift * min(out_w, out_h)
    dx, dy = (shift_px * _smooth_noise(rng, n, fps, config.shake_hz) for _ in range(2))
    angle = np.deg2rad(config.shake_deg) * _smooth_noise(rng, n, fps, config.shake_hz)
    cx, cy = out_w / 2, out_h / 2
    maps = np.zeros((n, 2, 3))
    for k in range(n):
        c, s = np.cos(angle[k]), np.sin(angle[k])
        shake = np.array([[c, -s, cx - c * cx + s * cy + dx[k]], [s, c, cy - s * cx - c * cy + dy[k]], [0, 0, 1]])
        maps[k] = (shake @ static)[:2]
    return static, maps, (out_w, out_h)


def _shake_pose(rotation: np.ndarray, maps: np.ndarray, static: np.ndarray, focal: float, centre: np.ndarray
                ) -> np.ndarray:
    """Head-to-camera rotations ``[T, 3, 3]`` seen through the shaken frames: the shake's image rotation about
    the principal point is a camera roll, its shift (small) a pan of atan(shift / focal)."""
    out = np.empty_like(rotation)
    for k in range(len(rotation)):
        shake = np.r_[maps[k], [[0, 0, 1]]] @ np.linalg.inv(static)
        lin = shake[:2, :2]
        tx, ty = shake[:2, :2] @ centre + shake[:2, 2] - centre
        roll = np.eye(3)
        roll[:2, :2] = lin
        pan = Rotation.from_euler("YX", [np.arctan(tx / focal), -np.arctan(ty / focal)]).as_matrix()
        out[k] = pan @ roll @ rotation[k]
    return out


def _open_writer(path: Path, width: int, height: int, fps: float, config: DegradeConfig):
    container = av.open(str(path), "w", format="mp4")
    stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = TIME_BASE
    stream.codec_context.time_base = TIME_BASE
    if config.bitrate_kbps is not None:
        stream.bit_rate = int(config.bitrate_kbps * 1000)
        stream.options = {"preset": "veryfast"}
    else:
        stream.options = {"crf": str(config.crf), "preset": "veryfast"}
    audio = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
    return container, stream, audio


def degrade(video: str | os.PathLike, out: str | os.PathLike, config: DegradeConfig = DegradeConfig()) -> Path:
    """Write ``out`` (mp4) and its truth ``OUT.truth.npz``: ``video`` and its truth degraded as ``config``
    says (see the module docstring). Returns the truth's path."""
    video, out = Path(video), Path(out)
    if out.suffix.lower() != ".mp4":
        raise InputError(f"output must be an .mp4 file, got {out}")
    if out.resolve() == video.resolve():
        raise InputError("the degraded clip must not overwrite its source")
    truth_in = truth_path(video)
    if not truth_in.exists():
        raise InputError(f"no ground truth {truth_in} beside {video}: degrade works on clips of `geneface synth`")
    truth = read_npz(truth_in)
    fps = float(truth["fps"])
    n_src = len(truth["mouth_open"])
    info = probe(video)

    # 1. timing: which frames stay
    rng = np.random.default_rng(config.seed)
    keep = np.ones(n_src, bool)
    if config.drop_frames > 0:
        drop = rng.choice(np.arange(1, n_src), size=int(round(config.drop_frames * (n_src - 1))), replace=False)
        keep[drop] = False  # the first frame stays: it fixes the stream's start
    kept = np.flatnonzero(keep)
    times = kept / fps

    # 2. geometry
    w, h = info.width, info.height
    static, maps, (out_w, out_h) = geometry(w, h, config, times, fps)
    scale = static[0, 0]
    # a large reduction shrinks first with area averaging, then warps the rest of the way
    pre_size = (w, h) if scale >= 0.75 else (int(round(w * scale)), int(round(h * scale)))
    pre_map = np.diag([w / pre_size[0], h / pre_size[1], 1.0])

    # 3. the new truth
    new = {k: v for k, v in truth.items() if k != "static_mask"}
    for key in PER_FRAME:
        new[key] = truth[key][kept]
    mesh = new["mesh"].astype(np.float64)
    xy1 = np.concatenate([mesh[..., :2], np.ones_like(mesh[..., :1])], -1)  # [T, 478, 3]
    mesh[..., :2] = np.einsum("tij,tpj->tpi", maps, xy1)
    mesh[..., 2] *= scale
    new["mesh"] = mesh.astype(np.float32)
    new["intrinsics"] = (static @ truth["intrinsics"]).astype(np.float32)
    if config.shake_shift > 0 or config.shake_deg > 0:
        rot = _shake_pose(new["rotation"].astype(np.float64), maps, static, float(new["intrinsics"][0, 0]),
                          new["intrinsics"][:2, 2].astype(np.float64))
        new["rotation"] = rot.astype(np.float32)
        new["euler"] = Rotation.from_matrix(rot).as_euler("YXZ", degrees=True).astype(np.float32)
    shift = offset_samples(config.av_offset_ms)
    new.update(times=times.astype(np.float64), frame_affine=maps.astype(np.float32), width=np.int32(out_w),
               height=np.int32(out_h), size=np.int32(out_w), av_offset_ms=np.float32(shift * 1000 / AUDIO_RATE),
               av_offset_samples=np.int32(shift))

    # 4. pixels, encoding and audio
    padding = None  # [H, W, 1] weight of the backdrop where the canvas reaches past the source frame
    if config.canvas is not None:
        inside = cv2.warpAffine(np.ones((h, w), np.float32), static[:2], (out_w, out_h), flags=cv2.INTER_LINEAR)
        if inside.min() < 1:
            padding = cv2.GaussianBlur(1 - inside, (0, 0), max(out_w, out_h) / 100)[..., None]
    audio = shift_audio(read_audio(video)[: int(round(n_src / fps * AUDIO_RATE))], shift)
    truth_out = truth_path(out)
    truth_out.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".mp4") as tmp:
        container, stream, audio_stream = _open_writer(tmp, out_w, out_h, fps, config)
        with container:
            j = 0
            for k, image in enumerate(read_video(video, fps=fps)):
                if k >= n_src:
                    break
                if not keep[k]:
                    continue
                if pre_size != (w, h):
                    image = cv2.resize(image, pre_size, interpolation=cv2.INTER_AREA)
                m = maps[j] @ pre_map
                # MediaPipe pixel convention (pixel i spans [i, i + 1]) -> OpenCV's (pixel i at i): shift by 1/2
                m = m.copy()
                m[:, 2] += 0.5 * (m[:, 0] + m[:, 1]) - 0.5
                image = cv2.warpAffine(image, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                if padding is not None:  # repeated edge pixels are streaks: smooth them into a soft backdrop
                    soft = cv2.resize(cv2.resize(image, (max(out_w // 128, 2), max(out_h // 128, 2)),
                                                 interpolation=cv2.INTER_AREA), (out_w, out_h),
                                      interpolation=cv2.INTER_LINEAR)
                    image = (image * (1 - padding) + soft * padding + 0.5).astype(np.uint8)
                if config.brightness_drift > 0 or config.noise > 0:
                    pixels = image.astype(np.float32)
                    if config.brightness_drift > 0:
                        pixels *= 1 + config.brightness_drift * np.sin(2 * np.pi * times[j] / config.drift_seconds)
                    if config.noise > 0:
                        pixels += rng.normal(0, config.noise, pixels.shape).astype(np.float32)
                    image = np.clip(pixels + 0.5, 0, 255).astype(np.uint8)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                frame.pts = int(round(times[j] / TIME_BASE))
                frame.time_base = TIME_BASE
                for packet in stream.encode(frame):
                    container.mux(packet)
                j += 1
            if j < len(kept):
                raise InputError(f"{video} holds {k + 1} frames, its truth {n_src}")
            for packet in stream.encode(None):
                container.mux(packet)
            for frame in _audio_frames(audio, AUDIO_RATE, audio_stream.codec_context.frame_size or 1024):
                for packet in audio_stream.encode(frame):
                    container.mux(packet)
            for packet in audio_stream.encode(None):
                container.mux(packet)
    write_npz(truth_out, **new)  # last: its presence marks a finished clip
    return truth_out


def truth_at(truth: dict[str, np.ndarray], times: np.ndarray) -> dict[str, np.ndarray]:
    """The per-frame truth arrays at ``times`` [N] seconds: the source frame nearest each time, as
    `geneface.media.read_video` resamples a clip."""
    own = truth["times"] if "times" in truth else np.arange(len(truth["mouth_open"])) / float(truth["fps"])
    index = nearest_frames(own, times)
    return {k: truth[k][index] for k in PER_FRAME if k in truth}
