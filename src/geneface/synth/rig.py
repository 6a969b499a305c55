"""A 3-D face rig built from one photo's mesh: lift to head space, then jaw, lips, blinks and head pose.

Head space (as ``docs/dataset-format.md``): origin at the photo mesh's centroid, axes those of the
camera in the photo (OpenCV: x right, y down, z forward), units with inter-ocular distance 0.3. A
pinhole camera with focal ``1.5 * size`` px and the principal point at the image centre sees the head
at the depth where its projection reproduces the photo's mesh exactly.

Each expression control has a displacement field over the 478 points, pinned on the parts that move
as a whole (the lips, the eyelid rims) and on the parts that stay (nose, brows, far skin), and filled
in between by harmonic interpolation over the face tessellation, so the skin stretches smoothly.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from matplotlib.path import Path as PolyPath

from ..face import (CHIN, FACE_OVAL, LEFT_EYE, LIPS_INNER, LIPS_OUTER, NUM_MESH_POINTS, RIGHT_EYE,
                    interocular, mesh_triangles)

HEAD_IOD = 0.3
"""Inter-ocular distance in head units."""
NOSE_BASE = 2
EAR_LEVEL = (234, 454)
UPPER_INNER = LIPS_INNER[:11]  # corner 78 -> 13 -> corner 308
LOWER_INNER = np.r_[LIPS_INNER[10:], LIPS_INNER[0]]  # corner 308 -> 14 -> corner 78
IRIS = np.arange(468, 478)


def face_triangles() -> np.ndarray:
    """The face tessellation ``[F, 3]`` without the spurious 3-cycles (triangles whose three edges
    all belong to three triangles are not faces of the surface)."""
    tris = mesh_triangles()
    edges = np.sort(np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [0, 2]]]), axis=1)
    keys, counts = np.unique(edges[:, 0] * NUM_MESH_POINTS + edges[:, 1], return_counts=True)
    count = dict(zip(keys.tolist(), counts.tolist()))
    per_edge = np.array([count[k] for k in (edges[:, 0] * NUM_MESH_POINTS + edges[:, 1]).tolist()])
    per_tri = per_edge.reshape(3, -1)
    return tris[~(per_tri == 3).all(0)]


def _laplacian(points: np.ndarray, triangles: np.ndarray) -> sp.csr_matrix:
    """Graph Laplacian ``[P, P]`` with inverse edge-length weights."""
    e = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [0, 2]]])
    e = np.unique(np.sort(e, axis=1), axis=0)
    w = 1.0 / (np.linalg.norm(points[e[:, 0]] - points[e[:, 1]], axis=1) + 1e-6)
    n = len(points)
    W = sp.coo_matrix((np.r_[w, w], (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])), shape=(n, n)).tocsr()
    return sp.diags(np.asarray(W.sum(1)).ravel()) - W


def harmonic(lap: sp.csr_matrix, pinned: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Fill a field ``[P, D]`` given at ``pinned`` points (bool ``[P]``, values ``[P, D]``) by solving
    Laplace's equation on the free ones (points with no path to a pin get zero)."""
    values = np.asarray(values, dtype=np.float64).reshape(len(pinned), -1)
    out = np.where(pinned[:, None], values, 0.0)
    free = ~pinned
    if free.any():
        A = lap[free][:, free].tocsc() + sp.identity(int(free.sum())) * 1e-9
        b = -lap[free][:, pinned] @ values[pinned]
        out[free] = spla.splu(A).solve(b)
    return out


def _curve(points: np.ndarray, idx: np.ndarray):
    """``f(x) -> (y, z)`` interpolating the contour ``idx`` of ``points`` (head space) along x."""
    p = points[idx]
    order = np.argsort(p[:, 0])
    xs = p[order, 0]
    return lambda x: (np.interp(x, xs, p[order, 1]), np.interp(x, xs, p[order, 2]))


def rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


class FaceRig:
    """Expression and pose of the photo's face.

    Args:
        mesh_px: the photo's mesh ``[478, 3]`` (x, y pixels with the image spanning [0, size];
            z scaled like x, larger = farther).
        size: side of the square photo, pixels.
        jaw_max_deg: jaw rotation at full opening.
    """

    def __init__(self, mesh_px: np.ndarray, size: int, jaw_max_deg: float = 13.0) -> None:
        self.size = size
        self.focal = 1.5 * size
        self.center = np.array([size / 2, size / 2])
        self.intrinsics = np.array([[self.focal, 0, self.center[0]], [0, self.focal, self.center[1]],
                                    [0, 0, 1]])
        self.jaw_max = np.deg2rad(jaw_max_deg)
        mesh_px = np.asarray(mesh_px, dtype=np.float64)
        self.z_offset = mesh_px[:, 2].mean()
        cam = self.lift_px(mesh_px)
        # Scale the scene so that the 3-D inter-ocular distance is HEAD_IOD (projection unchanged).
        self.scale = HEAD_IOD / float(interocular(cam))
        cam *= self.scale
        self.origin = cam.mean(0)
        """Translation of the head in the photo (head-to-camera, rotation identity)."""
        self.neutral = cam - self.origin
        """[478, 3] the photo's mesh in head space."""
        self.triangles = face_triangles()
        self._lap = _laplacian(self.neutral, self.triangles)
        self._build_fields()

    # ---- geometry ------------------------------------------------------------------------------
    def lift_px(self, px: np.ndarray) -> np.ndarray:
        """Pixel points ``[N, 3]`` (x, y, z scaled like x) -> camera space ``[N, 3]`` before scaling, with
        the mesh centroid at depth ``focal`` so one pixel there is one unit."""
        z = self.focal + (px[:, 2] - self.z_offset)
        return np.stack([(px[:, 0] - self.center[0]) * z / self.focal,
                         (px[:, 1] - self.center[1]) * z / self.focal, z], axis=1)

    def lift_head(self, px: np.ndarray) -> np.ndarray:
        """Pixel points ``[N, 3]`` of the photo -> head space ``[N, 3]``."""
        return self.lift_px(np.asarray(px, dtype=np.float64)) * self.scale - self.origin

    def project(self, head: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
        """Head-space points ``[N, 3]`` -> frame pixels ``[N, 3]``: x, y, and z scaled like x relative
        to the head centre's depth (the input convention)."""
        cam = head @ rotation.T + translation
        xy = cam[:, :2] / cam[:, 2:3] * self.focal + self.center
        z = (cam[:, 2] - translation[2]) * self.focal / translation[2]
        return np.concatenate([xy, z[:, None]], axis=1)

    # ---- expression fields ---------------------------------------------------------------------
    def _build_fields(self) -> None:
        n = self.neutral
        x, y = n[:, 0], n[:, 1]
        up, low = _curve(n, UPPER_INNER), _curve(n, LOWER_INNER)
        corners = n[[78, 308]]
        mouth_c = corners.mean(0)
        half_w = 0.5 * abs(corners[1, 0] - corners[0, 0])
        # Lip vertices: inside the outer lip contour; upper or lower of the inner-lip midline.
        outer = PolyPath(n[LIPS_OUTER, :2])
        in_lips = outer.contains_points(n[:, :2], radius=1e-6) | np.isin(np.arange(len(n)), LIPS_OUTER)
        in_lips[IRIS] = False
        within = (x > corners[0, 0] + 0.08 * half_w) & (x < corners[1, 0] - 0.08 * half_w)
        mid = 0.5 * (up(x)[0] + low(x)[0])
        upper = in_lips & within & (y < mid)
        lower = in_lips & within & (y >= mid)
        upper[UPPER_INNER[1:-1]] = True
        lower[LOWER_INNER[1:-1]] = True
        lower[UPPER_INNER[1:-1]] = False
        self.upper_lip, self.lower_lip = upper, lower
        y_mc, y_chin, y_nose = mouth_c[1], n[CHIN, 1], n[NOSE_BASE, 1]
        far_mouth = ((x - mouth_c[0]) / (1.9 * half_w)) ** 2 + ((y - mouth_c[1]) / (1.5 * half_w)) ** 2 > 1
        above_nose = y < y_nose
        iris = np.zeros(len(n), bool)
        iris[IRIS] = True

        # Closure: the rest pose has the lips together, whatever the photo shows.
        (yu, zu), (yl, zl) = up(x), low(x)
        gap = np.maximum(yl - yu, 0.0)
        close = np.zeros_like(n)
        close[upper, 1], close[upper, 2] = 0.45 * gap[upper], 0.45 * (zl - zu)[upper]
        close[lower, 1], close[lower, 2] = -0.55 * gap[lower], -0.55 * (zl - zu)[lower]
        pins = upper | lower | far_mouth | iris
        self.closure = harmonic(self._lap, pins, close)

        # Jaw weight: lower lip, chin and jaw line 1; upper lip, nose and above 0.
        oval = np.zeros(len(n), bool)
        oval[FACE_OVAL] = True
        chin_zone = y > y_mc + 0.5 * (y_chin - y_mc)
        jaw_line = oval & (y > y_mc)
        ones = lower | chin_zone | jaw_line
        zeros = (upper | above_nose | iris) & ~ones
        self.jaw_weight = harmonic(self._lap, ones | zeros, ones.astype(float))[:, 0]
        ear = n[list(EAR_LEVEL)].mean(0)
        self.jaw_pivot = np.array([0.0, ear[1] + 0.15 * (y_chin - ear[1]), ear[2]])

        # Upper lip lift when the jaw opens.
        ones = upper
        zeros = (above_nose | lower | (y > y_mc + 0.1 * (y_chin - y_mc)) | iris | far_mouth) & ~ones
        self.lift_weight = harmonic(self._lap, ones | zeros, ones.astype(float))[:, 0]

        # Lip width (rounding / spreading) and protrusion.
        ones = upper | lower
        ones[[61, 291, 78, 308]] = True
        zeros = (far_mouth | iris) & ~ones
        self.lip_weight = harmonic(self._lap, ones | zeros, ones.astype(float))[:, 0]
        self.mouth_center = mouth_c
        self.mouth_half_width = half_w

        self.blink_field = self._blink_field()

    def _blink_field(self) -> np.ndarray:
        """Displacement ``[478, 3]`` that closes both eyes: the lids meet a quarter of the way up from
        the lower rim (the upper one slightly overlapping); the upper lid's skin follows; irises
        squeeze between the lids. The eye corners stay."""
        n = self.neutral
        disp = np.zeros_like(n)
        pins = np.zeros(len(n), bool)
        far = np.ones(len(n), bool)  # far from both eyes: stays
        for contour in (RIGHT_EYE, LEFT_EYE):
            upper_idx, lower_idx = contour[:9], np.r_[contour[8:], contour[0]]
            up, low = _curve(n, upper_idx), _curve(n, lower_idx)
            centre = n[contour].mean(0)
            width = np.ptp(n[contour, 0])
            meet = lambda x: low(x)[0] - 0.25 * (low(x)[0] - up(x)[0])  # noqa: E731
            # The upper lid ends a little past the lower one so that the closed lids overlap.
            overlap = 0.08 * np.ptp(n[contour, 1])
            disp[upper_idx, 1] = meet(n[upper_idx, 0]) + overlap - n[upper_idx, 1]
            disp[lower_idx, 1] = meet(n[lower_idx, 0]) - n[lower_idx, 1]
            disp[contour[[0, 8]], 1] = 0.0
            pins[contour] = True
            far &= np.linalg.norm((n[:, :2] - centre[:2]) / [1.0, 0.8], axis=1) > 1.1 * width
            iris = IRIS[np.linalg.norm(n[IRIS, :2] - centre[:2], axis=1) < width]
            yu, yl = up(n[iris, 0])[0], low(n[iris, 0])[0]
            s = np.clip((n[iris, 1] - yu) / np.maximum(yl - yu, 1e-9), 0, 1)
            m = meet(n[iris, 0])
            disp[iris, 1] = (1 - s) * (m - yu) + s * (m - yl)
        pins[IRIS] = True
        return harmonic(self._lap, pins | far, disp)

    def expression(self, open_: float, width: float, blink: float) -> np.ndarray:
        """The mesh in head space ``[478, 3]`` for jaw opening ``open_`` in [0, 1], lip ``width`` in
        [-1 rounded, 1 spread] and eyelid closure ``blink`` in [0, 1]."""
        p = self.neutral + self.closure
        # Lips: corners in (rounded) or out (spread) about the mouth centre; rounded lips protrude.
        k = 0.30 * width if width < 0 else 0.12 * width
        p[:, 0] += self.lip_weight * k * (p[:, 0] - self.mouth_center[0])
        p[:, 2] -= self.lip_weight * max(-width, 0.0) * 0.35 * self.mouth_half_width
        # Upper lip lifts a little as the jaw drops.
        p[:, 1] -= self.lift_weight * open_ * 0.05 * HEAD_IOD
        # Jaw: rotate about the jaw axis (x through the pivot), blended by the jaw weight.
        if open_ > 0:
            rel = p - self.jaw_pivot
            rotated = rel @ rotation_x(open_ * self.jaw_max).T
            p += self.jaw_weight[:, None] * (rotated - rel)
        if blink > 0:
            p += blink * self.blink_field
        return p

    def jaw_transform(self, points: np.ndarray, open_: float, weight: np.ndarray) -> np.ndarray:
        """Move extra head-space points ``[N, 3]`` with the jaw, each by its ``weight`` ``[N]``."""
        if open_ <= 0:
            return points
        rel = points - self.jaw_pivot
        return points + weight[:, None] * (rel @ rotation_x(open_ * self.jaw_max).T - rel)
