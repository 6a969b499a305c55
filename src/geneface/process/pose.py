"""Rigid head pose from the face mesh: canonical shape, per-frame pinhole pose, smoothing, canonicalisation.

Head space: origin at the canonical shape's centroid, units with an inter-ocular distance of
``HEAD_IOD``. Cameras follow OpenCV (x right, y down, z forward). ``x_cam = R @ x_head + t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.transform import Rotation

from .. import face

HEAD_IOD = 0.3
"""Inter-ocular distance of the canonical shape, in head units."""
EULER_ORDER = "YXZ"
"""Intrinsic yaw (y), pitch (x), roll (z), as `scipy.spatial.transform.Rotation` spells it."""


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity ``dst ≈ s * R @ src + t`` by least squares (Umeyama 1991).

    src, dst: [N, 3]. Returns s (scalar), R [3, 3] (a proper rotation), t [3].
    """
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1
    rot = u @ np.diag(d) @ vt
    scale = float((sig * d).sum() / a.var(0).sum())
    return scale, rot, mu_d - scale * rot @ mu_s


def rigid_points(shape: np.ndarray) -> np.ndarray:
    """Indices of mesh points that move little with expression: the upper face and nose, minus the eyes.

    shape: canonical [478, 3] (y down).
    """
    eyes = set(face.RIGHT_EYE) | set(face.LEFT_EYE)
    limit = shape[face.NOSE_TIP, 1]
    return np.array([i for i in range(len(shape)) if shape[i, 1] <= limit and i not in eyes and i < 468])


def canonical_shape(mesh: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Mean shape [478, 3] of a mesh sequence [T, 478, 3] by generalised Procrustes on rigid points.

    Centred at the origin and scaled to ``HEAD_IOD``; its orientation is the sequence's mean pose.
    """
    mean = _normalise(np.median(mesh, axis=0).astype(np.float64))
    for _ in range(iterations):
        idx = rigid_points(mean)
        total = np.zeros_like(mean)  # a running sum: a long clip never holds a second copy of its mesh
        for y in mesh:
            y = y.astype(np.float64)
            s, r, t = umeyama(y[idx], mean[idx])
            total += s * y @ r.T + t
        mean = _normalise(total / len(mesh))
    return mean.astype(np.float32)


def _normalise(shape: np.ndarray) -> np.ndarray:
    shape = shape - shape.mean(0)
    return shape * (HEAD_IOD / face.interocular(shape))


@dataclass
class HeadPose:
    """Per-frame head-to-camera poses."""

    rotation: np.ndarray
    """[T, 3, 3]"""
    translation: np.ndarray
    """[T, 3] head origin in camera space (head units)"""

    @property
    def euler(self) -> np.ndarray:
        """[T, 3] (yaw, pitch, roll) in degrees."""
        return Rotation.from_matrix(self.rotation).as_euler(EULER_ORDER, degrees=True)

    def c2w(self) -> np.ndarray:
        """[T, 4, 4] camera-to-head transforms (the NeRF camera)."""
        out = np.tile(np.eye(4, dtype=np.float64), (len(self.rotation), 1, 1))
        rt = np.transpose(self.rotation, (0, 2, 1))
        out[:, :3, :3] = rt
        out[:, :3, 3] = -np.einsum("tij,tj->ti", rt, self.translation)
        return out


def intrinsics(size: int, focal_scale: float) -> np.ndarray:
    """Pinhole matrix [3, 3] for a square frame, focal ``focal_scale * size``, centred principal point."""
    f = focal_scale * size
    return np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=np.float64)


def solve_poses(mesh: np.ndarray, shape: np.ndarray, K: np.ndarray, refine: bool = True) -> HeadPose:
    """Pose of ``shape`` [478, 3] in each frame of ``mesh`` [T, 478, 3] (pixels), for camera ``K``.

    A similarity fit of the rigid points gives a weak-perspective pose (depth = focal / scale); with
    ``refine`` it is refined by a pinhole reprojection fit (``cv2.solvePnP``) on the image points.
    """
    idx = rigid_points(shape)
    f, cx, cy = K[0, 0], K[0, 2], K[1, 2]
    rots, trans = [], []
    for y in mesh:
        s, r, t = umeyama(shape[idx], y[idx].astype(np.float64))
        tvec = np.array([(t[0] - cx) / s, (t[1] - cy) / s, f / s])
        if refine:
            ok, rvec, tv = cv2.solvePnP(shape[idx].astype(np.float64), y[idx, :2].astype(np.float64), K, None,
                                        cv2.Rodrigues(r)[0], tvec.reshape(3, 1).copy(),
                                        useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
            if ok and np.all(np.isfinite(tv)) and tv[2, 0] > 0:
                r, tvec = cv2.Rodrigues(rvec)[0], tv.reshape(3)
        rots.append(r)
        trans.append(tvec)
    return HeadPose(np.array(rots), np.array(trans))


def smooth_poses(pose: HeadPose, sigma: float) -> HeadPose:
    """Gaussian smoothing in time (``sigma`` in frames) of rotations (as rotation vectors about their
    mean) and translations. ``sigma <= 0`` returns the poses unchanged."""
    if sigma <= 0 or len(pose.rotation) < 3:
        return pose
    rot = Rotation.from_matrix(pose.rotation)
    mean = rot.mean()
    rel = (mean.inv() * rot).as_rotvec()
    rel = gaussian_filter1d(rel, sigma, axis=0, mode="nearest")
    trans = gaussian_filter1d(pose.translation, sigma, axis=0, mode="nearest")
    return HeadPose((mean * Rotation.from_rotvec(rel)).as_matrix(), trans)


def canonicalise(mesh: np.ndarray, pose: HeadPose, K: np.ndarray) -> np.ndarray:
    """Remove the head pose: mesh [T, 478, 3] in pixels -> head space [T, 478, 3].

    Each point is back-projected through the pinhole at the head's depth plus the point's own relative
    depth (MediaPipe's z, converted from pixels to head units by the frame's scale), then rotated back.
    """
    f, cx, cy = K[0, 0], K[0, 2], K[1, 2]
    out = np.empty(mesh.shape, dtype=np.float32)
    for i, (y, r, t) in enumerate(zip(mesh, pose.rotation, pose.translation)):
        y = y.astype(np.float64)  # frame by frame: no float64 copy of the whole clip
        scale = f / t[2]  # pixels per head unit at the head's depth
        depth = t[2] + (y[:, 2] - y[:, 2].mean()) / scale
        cam = np.stack([(y[:, 0] - cx) * depth / f, (y[:, 1] - cy) * depth / f, depth], axis=1)
        out[i] = (cam - t) @ r  # R^T (cam - t)
    return out


def motion_offsets(canonical: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """68-point motion representation from canonical meshes [T, 478, 3].

    Returns offsets [T, 68, 3] (from the mean, over the inter-ocular distance), mean68 [68, 3], iod.
    """
    lm = canonical[:, face.LANDMARKS_68]
    mean68 = lm.mean(0)
    iod = float(face.interocular(canonical.mean(0)))
    return ((lm - mean68) / iod).astype(np.float32), mean68.astype(np.float32), iod
