"""The face photo: load it, crop a square around the face, track its mesh."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError
from ..face import FACE_OVAL, FaceDetector, FaceMesh


def default_face() -> np.ndarray:
    """scikit-image's astronaut photo (Eileen Collins, public domain): RGB uint8 ``[512, 512, 3]``."""
    from skimage import data

    return data.astronaut()


def load_face(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 ``[H, W, 3]``; ``InputError`` when missing or not an image."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file: {path}")
    if path.is_dir():
        raise InputError(f"expected an image file, got a folder: {path}")
    # np.fromfile + imdecode reads any path (spaces, non-ASCII) that cv2.imread may not.
    image = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"not a readable image: {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def as_rgb(face: np.ndarray) -> np.ndarray:
    """Gray ``[H, W]``, RGB or RGBA ``[H, W, 3|4]`` (uint8, or float in [0, 1]) -> RGB uint8."""
    face = np.asarray(face)
    if face.dtype != np.uint8:
        if not np.issubdtype(face.dtype, np.floating):
            raise InputError(f"face image must be uint8 or float, got {face.dtype}")
        face = (np.clip(face, 0, 1) * 255 + 0.5).astype(np.uint8)
    if face.ndim == 2:
        face = np.repeat(face[..., None], 3, axis=2)
    if face.ndim != 3 or face.shape[2] not in (3, 4) or min(face.shape[:2]) < 32:
        raise InputError(f"face image must be [H, W, 3] RGB (at least 32 px), got shape {face.shape}")
    return np.ascontiguousarray(face[..., :3])


def _largest_face(faces: list[np.ndarray]) -> np.ndarray:
    return max(faces, key=lambda p: np.ptp(p[:, 0]) * np.ptp(p[:, 1]))


def _square(rgb: np.ndarray, left: int, top: int, side: int) -> np.ndarray:
    """The square ``[side, side, 3]`` at (left, top), padded by reflection where it leaves the image."""
    h, w = rgb.shape[:2]
    pad = max(0, -left, -top, left + side - w, top + side - h)
    if pad:
        rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    return rgb[top + pad : top + pad + side, left + pad : left + pad + side]


def _face_outline(rgb: np.ndarray, mesh: FaceMesh) -> np.ndarray:
    """The largest face's outline ``[36, 2]`` in photo pixels.

    The mesh's own detector is short-range; for a small face in a big or wide photo, a full-range
    detector finds it first and the mesh runs on a square around it.
    """
    faces = mesh(rgb)
    if faces:
        return _largest_face(faces)[FACE_OVAL, :2]
    with FaceDetector(full_range=True) as detector:
        boxes, _ = detector(rgb)
    if len(boxes):
        x0, y0, x1, y1 = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))]
        side = int(round(2.5 * max(x1 - x0, y1 - y0)))
        left, top = int(round((x0 + x1 - side) / 2)), int(round((y0 + y1 - side) / 2))
        zoom = 384 / side
        faces = mesh(cv2.resize(_square(rgb, left, top, side), (384, 384), interpolation=cv2.INTER_CUBIC))
        if faces:
            return _largest_face(faces)[FACE_OVAL, :2] / zoom + [left, top]
    raise InputError("no face found in the photo; use a clear, roughly frontal portrait")


def crop_face(face: np.ndarray, size: int, face_fraction: float = 0.42,
              face_center_y: float = 0.42) -> tuple[np.ndarray, np.ndarray]:
    """Crop a square around the face and resize it to ``size``; track the mesh on the crop.

    The face (its mesh outline) spans ``face_fraction`` of the square's side and its centre sits at
    ``face_center_y`` of the side from the top, which leaves room for the neck and shoulders. The
    square is shifted to stay inside the photo where the photo is big enough, and padded by
    reflection otherwise.

    Returns the crop ``[size, size, 3]`` uint8 and its mesh ``[478, 3]`` (pixels, z scaled like x).
    Raises ``InputError`` when no face is found.
    """
    rgb = as_rgb(face)
    h, w = rgb.shape[:2]
    with FaceMesh(video=False) as mesh:
        oval = _face_outline(rgb, mesh)
        x0, y0 = oval.min(0)
        x1, y1 = oval.max(0)
        side = max(x1 - x0, 0.8 * (y1 - y0)) / face_fraction
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        left, top = cx - side / 2, cy - face_center_y * side
        if side <= w:
            left = float(np.clip(left, 0, w - side))
        if side <= h:
            top = float(np.clip(top, 0, h - side))
        side, left, top = int(round(side)), int(round(left)), int(round(top))
        square = _square(rgb, left, top, side)
        interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
        crop = cv2.resize(square, (size, size), interpolation=interp)
        faces = mesh(crop)
    if not faces:
        raise InputError("the face in the photo could not be tracked after cropping; use a larger, "
                         "clearer portrait")
    return crop, _largest_face(faces)
