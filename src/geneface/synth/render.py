"""Piecewise-affine warping of the photo, and the mouth interior drawn where the lips part.

The warp is a dense backward map: every destination pixel inside a moving triangle gets the source
position under that triangle's affine map, then ``cv2.remap`` samples the photo once. Triangles are
rasterised far to near, so a nearer one wins where the mesh folds (the nose over a cheek). Pixels
outside every moving triangle keep the exact identity map: they are the photo, bit for bit.
"""

from __future__ import annotations

import cv2
import numpy as np

SUBPIXEL_BITS = 4
CAVITY_DARK = np.array([28, 8, 10], np.float32)
CAVITY_EDGE = np.array([105, 45, 48], np.float32)
TEETH = np.array([236, 232, 220], np.float32)
TONGUE = np.array([150, 62, 68], np.float32)


class Warper:
    """Warp a fixed source image by moving its control points.

    Args:
        src: control points in the source image ``[P, 2]`` (array coordinates: pixel ``i`` at ``i``).
        triangles: ``[F, 3]`` indices into the points.
        moving: ``[P]`` bool, points that may move; triangles of fixed points only are never drawn.
        size: side of the square image.
        behind: ``[F]`` bool, triangles always drawn first (the insides of the eyes and the mouth,
            which the lids and lips cover where they overlap).
    """

    def __init__(self, src: np.ndarray, triangles: np.ndarray, moving: np.ndarray, size: int,
                 behind: np.ndarray | None = None) -> None:
        self.size = size
        keep = moving[triangles].any(1)
        self.triangles = triangles[keep]
        self.behind = np.zeros(len(triangles), bool) if behind is None else behind
        self.behind = self.behind[keep]
        self.src_tri = src[self.triangles].astype(np.float64)  # [F, 3, 2]
        # Destination triangles stay inside the ring of fixed points, so only its bounding box changes.
        lo = np.floor(np.clip(src.min(0) - 2, 0, size)).astype(int)
        hi = np.ceil(np.clip(src.max(0) + 3, 0, size)).astype(int)
        self.box = (lo[0], lo[1], hi[0], hi[1])
        x0, y0, x1, y1 = self.box
        self.grid_x, self.grid_y = np.meshgrid(np.arange(x0, x1, dtype=np.float32),
                                               np.arange(y0, y1, dtype=np.float32))
        self._index = np.empty((y1 - y0, x1 - x0), np.int32)

    def maps(self, dst: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Backward maps ``map_x, map_y`` ``[h, w]`` float32 over ``self.box`` and the mask of pixels
        inside a moving triangle, for destination points ``[P, 2]`` with ``depth`` ``[P]``."""
        x0, y0, _, _ = self.box
        d = dst[self.triangles].astype(np.float64)  # [F, 3, 2]
        e1, e2 = d[:, 1] - d[:, 0], d[:, 2] - d[:, 0]
        area = 0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
        ok = np.abs(area) > 0.02
        # Affine dst -> src per triangle: A = S @ inv(D), D = [[x], [y], [1]] of the three corners.
        D = np.concatenate([d[ok].transpose(0, 2, 1), np.ones((ok.sum(), 1, 3))], axis=1)
        A = np.zeros((len(d), 2, 3))
        A[ok] = self.src_tri[ok].transpose(0, 2, 1) @ np.linalg.inv(D)
        key = depth[self.triangles[ok]].mean(1) + np.where(self.behind[ok], np.inf, 0.0)
        order = np.flatnonzero(ok)[np.argsort(-key, kind="stable")]
        index = self._index
        index.fill(-1)
        corners = np.round((d - [x0, y0]) * (1 << SUBPIXEL_BITS)).astype(np.int32)
        for k in order.tolist():
            cv2.fillConvexPoly(index, corners[k], k, cv2.LINE_8, SUBPIXEL_BITS)
        inside = index >= 0
        a = A[np.maximum(index, 0)].astype(np.float32)  # [h, w, 2, 3]
        gx, gy = self.grid_x, self.grid_y
        map_x = np.where(inside, a[..., 0, 0] * gx + a[..., 0, 1] * gy + a[..., 0, 2], gx)
        map_y = np.where(inside, a[..., 1, 0] * gx + a[..., 1, 1] * gy + a[..., 1, 2], gy)
        return map_x.astype(np.float32), map_y.astype(np.float32), inside

    def warp(self, image: np.ndarray, dst: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The warped image ``[S, S, 3]`` and the mask ``[S, S]`` of pixels that may differ from it."""
        map_x, map_y, inside = self.maps(dst, depth)
        x0, y0, x1, y1 = self.box
        out = image.copy()
        out[y0:y1, x0:x1] = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        touched = np.zeros(image.shape[:2], bool)
        touched[y0:y1, x0:x1] = inside
        return out, touched


def draw_mouth(image: np.ndarray, upper: np.ndarray, lower: np.ndarray, iod_px: float,
               touched: np.ndarray | None = None) -> None:
    """Paint the mouth cavity inside the inner-lip contour, in place.

    Args:
        image: RGB frame ``[S, S, 3]`` uint8.
        upper: upper inner-lip contour ``[U, 2]`` from one corner to the other (array coordinates).
        lower: lower inner-lip contour ``[L, 2]`` from the second corner back to the first.
        iod_px: inter-ocular distance in pixels (scales the teeth).
        touched: optional mask ``[S, S]`` updated with the painted pixels.
    """
    # The lip gap across the mouth: lower contour (reversed to run like the upper) minus upper.
    lower_fwd = lower[::-1]
    xs = np.linspace(upper[0, 0], upper[-1, 0], 9)[1:-1]
    order_u, order_l = np.argsort(upper[:, 0]), np.argsort(lower_fwd[:, 0])
    gap = (np.interp(xs, lower_fwd[order_l, 0], lower_fwd[order_l, 1])
           - np.interp(xs, upper[order_u, 0], upper[order_u, 1]))
    max_gap = float(gap.max())
    if max_gap < 0.3:
        return
    poly = np.concatenate([upper, lower[1:-1]])
    x0, y0 = np.floor(poly.min(0)).astype(int) - 2
    x1, y1 = np.ceil(poly.max(0)).astype(int) + 3
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return
    scale = 1 << SUBPIXEL_BITS
    shape = (y1 - y0, x1 - x0)

    def fill(points: np.ndarray) -> np.ndarray:
        m = np.zeros(shape, np.uint8)
        cv2.fillPoly(m, [np.round((points - [x0, y0]) * scale).astype(np.int32)], 255, cv2.LINE_AA, SUBPIXEL_BITS)
        return m.astype(np.float32) / 255

    cavity = fill(poly)
    # Teeth: a band under the upper lip (and a fainter one over the lower lip), as deep as the gap
    # allows. The bands start beyond the lip line so that the edge there is the cavity's (alpha) edge.
    tooth = min(0.4 * max_gap, 0.11 * iod_px)
    margin = np.array([0, 2.0])
    teeth = fill(np.concatenate([upper - margin, (upper + [0, tooth])[::-1]]))
    lower_teeth = fill(np.concatenate([lower + margin, (lower - [0, 0.3 * tooth])[::-1]])) * 0.35
    # The cavity: dark in its depth, lighter near the lips, with the tongue low in the middle.
    sigma = max(0.3 * max_gap, 0.5)
    depth = cv2.GaussianBlur(cavity, (0, 0), sigma)
    shade = np.clip(1.0 - depth, 0, 1)[..., None]
    colour = CAVITY_DARK + (CAVITY_EDGE - CAVITY_DARK) * shade
    cx = 0.5 * (upper[0, 0] + upper[-1, 0]) - x0
    half = max(0.5 * abs(upper[-1, 0] - upper[0, 0]), 1.0)
    lower_mid = np.interp(cx + x0, lower_fwd[order_l, 0], lower_fwd[order_l, 1]) - y0
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    tongue = np.exp(-(((xx - cx) / (0.55 * half)) ** 2 + ((yy - lower_mid) / (0.45 * max_gap + 0.5)) ** 2))
    tongue = tongue[..., None] * 0.8
    colour = colour * (1 - tongue) + TONGUE * tongue
    falloff = np.clip(1 - 0.5 * ((np.arange(shape[1]) - cx) / half) ** 2, 0.35, 1)[None, :, None]
    # Faint gaps between the teeth (incisors meet at the middle), darker towards the biting edge.
    # The arch seen from the front: teeth narrow towards the corners (arcsin of the across position).
    arch = np.arcsin(np.clip((np.arange(shape[1]) - cx) / (1.15 * half), -1, 1)) * (2 / np.pi)
    phase = arch * 4.0  # four teeth a side
    visible = np.clip((half / 4.0 - 3.0) / 4.0, 0.0, 1.0)  # no gaps where teeth are a few pixels wide
    gaps = visible * np.exp(-((phase - np.round(phase)) / 0.07) ** 2)[None, :, None]
    upper_y = np.interp(np.arange(shape[1]) + x0, upper[order_u, 0], upper[order_u, 1]) - y0
    edge = np.clip((yy - upper_y[None, :]) / max(tooth, 1e-3), 0, 1)[..., None]
    enamel = TEETH * falloff * (1 - 0.15 * gaps) * (1 - 0.18 * edge)
    t = np.clip(teeth + lower_teeth, 0, 1)[..., None]
    colour = colour * (1 - t) + enamel * t
    alpha = (cavity * min(max_gap / 1.5, 1.0))[..., None]
    patch = image[y0:y1, x0:x1].astype(np.float32)
    image[y0:y1, x0:x1] = np.clip(patch * (1 - alpha) + colour * alpha + 0.5, 0, 255).astype(np.uint8)
    if touched is not None:
        touched[y0:y1, x0:x1] |= alpha[..., 0] > 0
