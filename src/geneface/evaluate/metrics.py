"""Metric helpers of `geneface evaluate`: image quality, landmark distance, correlation, loudness, and the
optional perceptual metrics (LPIPS, FID) whose weights come from registry packages."""

from __future__ import annotations

from typing import Any, Callable

import cv2
import numpy as np
import torch

from ..constants import AUDIO_RATE, MOUTH_68
from ..errors import MissingModelError
from ..face import LANDMARKS_68, FaceMesh, interocular
from .fid import frechet_distance

MAX_PSNR = 100.0
"""PSNR of identical images (the ideal value; keeps the report finite)."""
FACE_68 = np.arange(68)
"""All 68 points (the face LMD)."""


def _unit(images: np.ndarray) -> np.ndarray:
    """Images [..., H, W, 3] as float64 in [0, 1] (uint8 is divided by 255)."""
    images = np.asarray(images)
    return images.astype(np.float64) / 255.0 if images.dtype == np.uint8 else images.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-image PSNR [N] in dB of images a, b [N, H, W, 3] (uint8 or float in [0, 1]), capped at `MAX_PSNR`.

    ``10 log10(1 / mean((a - b)^2))`` over the pixels and channels of each image; with ``mask`` [H, W] bool,
    over the pixels where it is True only (a dataset's real pixels: `PersonDataset.valid_mask`).
    """
    err = (_unit(a) - _unit(b)) ** 2
    if mask is not None:
        err = err[:, np.asarray(mask, bool)]  # [N, P, 3]
    mse = err.reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        value = 10.0 * np.log10(1.0 / mse)
    return np.minimum(value, MAX_PSNR)


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-image SSIM [N] in (-1, 1] (1 = identical) of images a, b [N, H, W, 3], with scikit-image's
    ``structural_similarity`` (7x7 window, colour channels averaged); with ``mask`` [H, W] bool, the SSIM map
    is averaged over the pixels whose whole window lies where it is True."""
    from skimage.metrics import structural_similarity

    a, b = _unit(a), _unit(b)
    if mask is None:
        return np.array([structural_similarity(x, y, channel_axis=2, data_range=1.0) for x, y in zip(a, b)])
    inner = cv2.erode(np.asarray(mask, np.uint8), np.ones((7, 7), np.uint8), borderType=cv2.BORDER_REPLICATE) > 0
    inner = inner if inner.any() else np.asarray(mask, bool)
    maps = [structural_similarity(x, y, channel_axis=2, data_range=1.0, full=True)[1] for x, y in zip(a, b)]
    return np.array([m.mean(-1)[inner].mean() for m in maps])


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation of two series [T]; None when either is (nearly) constant or T < 3."""
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    if x.shape != y.shape or x.size < 3 or x.std() < 1e-9 or y.std() < 1e-9:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def landmark_distance(pred: np.ndarray, true: np.ndarray, points: np.ndarray, iod: np.ndarray) -> tuple[float, float]:
    """Mean Euclidean distance of ``points`` between landmarks pred, true [N, 68, D]: (in their units, in
    percent of the per-frame inter-ocular distance ``iod`` [N])."""
    d = np.linalg.norm(pred[:, points] - true[:, points], axis=-1)  # [N, P]
    return float(d.mean()), float((d / iod[:, None]).mean() * 100.0)


def track_faces(images: np.ndarray, size: int, progress: Callable | None = None) -> list[np.ndarray | None]:
    """MediaPipe face mesh [478, 3] (pixels of a ``size`` x ``size`` frame) of each image [N, h, w, 3] uint8,
    or None where no face is found. Images are resized to ``size`` first (small renders are upscaled so the
    detector sees the face at the dataset's scale); each image is detected anew (no tracking)."""
    out: list[np.ndarray | None] = []
    items = progress(images) if progress is not None else images
    with FaceMesh(video=False) as mesh:
        for image in items:
            if image.shape[0] != size:
                interp = cv2.INTER_CUBIC if image.shape[0] < size else cv2.INTER_AREA
                image = cv2.resize(image, (size, size), interpolation=interp)
            faces = mesh(image)
            out.append(faces[0] if faces else None)
    return out


def image_lmd(found: list[np.ndarray | None], true_mesh: np.ndarray) -> dict[str, float] | None:
    """LMD of tracked meshes ``found`` (N entries, [478, 3] or None) against the dataset's meshes
    ``true_mesh`` [N, 478, 3], both in the same pixels, on the 68-point layout (x, y only).

    Returns ``lmd_mouth_px``, ``lmd_mouth_iod`` (percent of inter-ocular distance), ``lmd_face_px``,
    ``lmd_face_iod`` over the frames with a face, and ``face_found`` (fraction of frames); None if no face.
    """
    keep = [i for i, m in enumerate(found) if m is not None]
    if not keep:
        return None
    pred = np.stack([found[i] for i in keep])[:, LANDMARKS_68, :2]  # [K, 68, 2]
    true = true_mesh[keep][:, LANDMARKS_68, :2]
    iod = interocular(true_mesh[keep][..., :2])  # [K]
    mouth_px, mouth_iod = landmark_distance(pred, true, MOUTH_68, iod)
    face_px, face_iod = landmark_distance(pred, true, FACE_68, iod)
    return {"lmd_mouth_px": mouth_px, "lmd_mouth_iod": mouth_iod, "lmd_face_px": face_px,
            "lmd_face_iod": face_iod, "face_found": len(keep) / len(found)}


def frame_loudness(audio: np.ndarray, num_frames: int, fps: float, rate: int = AUDIO_RATE) -> np.ndarray:
    """RMS loudness [T] of 16 kHz audio [N] in each video frame's span (zero past the end)."""
    hop = rate / fps
    out = np.zeros(num_frames)
    for t in range(num_frames):
        chunk = audio[int(round(t * hop)):int(round((t + 1) * hop))]
        out[t] = float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2))) if chunk.size else 0.0
    return out


# --- optional perceptual metrics -----------------------------------------------------------------

def load_optional(loader: Callable[[Any], Any], device: Any) -> tuple[Any, str | None]:
    """``loader(device)`` (`geneface.lpips.load_lpips`, `geneface.evaluate.fid.load_inception`), or (None, the
    loader's message) when its weight package is not installed (`MissingModelError`). Any other error is a
    bug and propagates."""
    try:
        return loader(device), None
    except MissingModelError as e:
        return None, str(e)


def lpips_distance(net: Callable, a: np.ndarray, b: np.ndarray, device: Any, batch: int = 8) -> np.ndarray:
    """Per-image LPIPS [N] (0 = identical) of images a, b [N, H, W, 3] with ``net`` ((x, y) [B, 3, H, W] in
    [-1, 1] -> [B])."""
    out = []
    with torch.no_grad():
        for i in range(0, len(a), batch):
            x = torch.from_numpy(_unit(a[i:i + batch])).float().permute(0, 3, 1, 2).to(device) * 2 - 1
            y = torch.from_numpy(_unit(b[i:i + batch])).float().permute(0, 3, 1, 2).to(device) * 2 - 1
            out.append(torch.as_tensor(net(x, y)).reshape(-1).float().cpu().numpy())
    return np.concatenate(out)


def inception_features(net: Callable, images: np.ndarray, device: Any, batch: int = 16) -> np.ndarray:
    """Inception pool features [N, 2048] of images [N, H, W, 3] with ``net`` ([B, 3, H, W] in [0, 1] -> [B, D])."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(_unit(images[i:i + batch])).float().permute(0, 3, 1, 2).to(device)
            out.append(torch.as_tensor(net(x)).reshape(x.shape[0], -1).double().cpu().numpy())
    return np.concatenate(out)


def fid_score(a_features: np.ndarray, b_features: np.ndarray) -> float:
    """Fréchet distance of two feature sets [N, D], [M, D] (``geneface.evaluate.fid.frechet_distance``)."""
    return float(frechet_distance(a_features, b_features))
