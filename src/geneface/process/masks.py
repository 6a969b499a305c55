"""Head / torso parsing from the person mask and the face mesh (no face-parsing network needed)."""

from __future__ import annotations


import cv2
import numpy as np

from .. import face

BACKGROUND, HEAD, TORSO = 0, 1, 2


def head_hull(mesh: np.ndarray, hair: float = 1.35) -> np.ndarray:
    """Polygon [N, 2] (float pixels) of the face oval with its upper half pushed out by ``hair`` to
    take in the forehead and hair. mesh: [478, >=2] pixels."""
    oval = mesh[face.FACE_OVAL, :2].astype(np.float64)
    centre = mesh[face.NOSE_TIP, :2].astype(np.float64)
    jaw_y = mesh[list(face.LANDMARKS_68[[0, 16]]), 1].mean()
    upper = oval[:, 1] < jaw_y
    oval[upper] = centre + (oval[upper] - centre) * hair
    return oval


def parse(person: np.ndarray, mesh: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Labels [H, W] uint8 (0 background, 1 head, 2 torso) from a person mask [H, W] bool and the mesh.

    Head: the person's pixels above the jaw line (the oval's lower contour, extended sideways at ear
    height) within about a head width of the face, plus the face hull itself. Torso: the rest of the person.
    ``valid`` [H, W] bool: the real pixels of a padded crop; padding is labelled 0 (it is never trained on:
    `geneface.dataset.PersonDataset.valid_mask` tells it apart from the background).
    """
    h, w = person.shape
    oval = mesh[face.FACE_OVAL, :2].astype(np.float64)
    left_ear, right_ear = mesh[face.LANDMARKS_68[0], :2], mesh[face.LANDMARKS_68[16], :2]
    # Jaw contour from ear to ear through the chin, as y(x).
    lower = oval[oval[:, 1] >= min(left_ear[1], right_ear[1])]
    order = np.argsort(lower[:, 0])
    xs = np.arange(w, dtype=np.float64)
    jaw = np.interp(xs, lower[order, 0], lower[order, 1])  # constant (ear height) beyond the ends
    width = oval[:, 0].max() - oval[:, 0].min()
    centre_x = mesh[face.NOSE_TIP, 0]
    rows = np.arange(h, dtype=np.float64)[:, None]
    above = (rows < jaw[None, :]) & (np.abs(xs - centre_x)[None, :] < 0.9 * width)
    hull = np.zeros((h, w), np.uint8)
    cv2.fillPoly(hull, [np.round(head_hull(mesh)).astype(np.int32)], 1)
    labels = np.zeros((h, w), np.uint8)
    labels[person] = TORSO
    labels[(person & above) | (hull > 0)] = HEAD
    if valid is not None:
        labels[~valid] = BACKGROUND
    return labels


def uncovered_median(frames: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Per-pixel median [H, W, C] float32 of frames [N, H, W, C] uint8 over the frames where ``covered`` [N, H, W]
    is False (the mean of the middle two for an even count; NaN where every frame is covered): `np.nanmedian`'s
    result, from one sort (NaN sorts last) instead of its much slower masked path."""
    values = np.sort(np.where(covered[..., None], np.nan, frames.astype(np.float32)), axis=0)
    count = (~covered).sum(0)[None, ..., None]  # [1, H, W, 1]: frames showing each pixel
    lo = np.take_along_axis(values, np.maximum(count - 1, 0) // 2, 0)[0]
    hi = np.take_along_axis(values, count // 2, 0)[0]  # < N: count <= N
    return np.where(count[0] > 0, (lo + hi) / 2, np.nan).astype(np.float32)


def estimate_background(frames: np.ndarray, person: np.ndarray, margin: int,
                        valid: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Static background from frames [N, H, W, 3] uint8 and person masks [N, H, W] bool.

    Each pixel is the median over the frames where no person (dilated by ``margin`` px) covers it;
    pixels always covered are inpainted. ``valid`` (x0, y0, x1, y1): the real pixels of padded frames; the
    padding is unknown (never a sample) and is filled by replicating the edges of the real part, as the
    frames' own padding is. Returns the image [H, W, 3] uint8 and the never-seen mask [H, W] (padding included).
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
    covered = np.stack([cv2.dilate(m.astype(np.uint8), kernel) > 0 for m in person])
    h, w = person.shape[1:]
    x0, y0, x1, y1 = valid if valid is not None else (0, 0, w, h)
    padding = np.ones((h, w), bool)
    padding[y0:y1, x0:x1] = False
    covered |= padding
    background = np.empty(frames.shape[1:], np.float32)
    for y in range(0, frames.shape[1], 32):  # row blocks bound the memory
        background[y:y + 32] = uncovered_median(frames[:, y:y + 32], covered[:, y:y + 32])
    never = np.isnan(background[..., 0])
    background = np.nan_to_num(background).round().astype(np.uint8)
    inner = np.ascontiguousarray(background[y0:y1, x0:x1])
    if never[y0:y1, x0:x1].any():
        inner = cv2.inpaint(inner, never[y0:y1, x0:x1].astype(np.uint8), 5, cv2.INPAINT_TELEA)
    if padding.any():
        inner = cv2.copyMakeBorder(inner, y0, h - y1, x0, w - x1, cv2.BORDER_REPLICATE)
    return inner, never
