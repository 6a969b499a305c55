"""Glasses worn by the synthetic face: a rigid 3-D frame in head space, drawn over the rendered frame.

The frame is built once from the photo's mesh: two lens rims in a gently wrapped plane in front of the
eyes (centred on them, aligned with the line through them), a bridge over the nose and temple arms back
to the ears. Every part is a band between two 3-D outlines, so the rims narrow and foreshorten with the
head's yaw and pitch as the face does. Each frame: a soft shadow on the skin, the lenses' faint tint and
reflection, then the rims, bridge and the visible run of each arm: an arm shortens and goes as its side
of the head turns away from the camera, and stops where it passes behind the face. The truth is the
face's; the glasses never change the mesh.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..face import LEFT_EYE_CORNERS, RIGHT_EYE_CORNERS, interocular
from .render import SUBPIXEL_BITS
from .rig import FaceRig

GLASSES = ("none", "thin", "thick")
"""Frame styles of ``SynthConfig.glasses``."""
NOSE_BRIDGE = 168
EAR_LEVEL = (234, 454)
RIM_COLOUR = np.array([24, 21, 22], np.float32)
GLOSS_COLOUR = np.array([150, 150, 156], np.float32)
TINT_COLOUR = np.array([200, 214, 226], np.float32)
SHADOW = 0.35
"""Darkening under the frame at full shadow."""
HAZE, GLARE = 0.2, 0.6
"""At tint 1: the lenses' veil of ``TINT_COLOUR`` (fraction mixed in) and the peak of their reflection
(fraction of the way to white)."""


@dataclass(frozen=True)
class Style:
    """Sizes of one frame style, head units (inter-ocular distance 0.3, about 63 mm)."""

    rim: float
    """Rim width around the sides and bottom of a lens."""
    rim_top: float
    """Rim width along the top of a lens."""
    arm: float
    """Height of a temple arm."""


STYLES = {"thin": Style(rim=0.009, rim_top=0.011, arm=0.010), "thick": Style(rim=0.020, rim_top=0.030, arm=0.022)}
LENS_HALF = (0.112, 0.080)
"""Half width and half height of a lens opening."""
LENS_OUT = 0.008
"""Lens centres this much further out than the eye centres."""
LENS_UP = 0.008
"""Lens centres this much above the eye centres."""
ROUNDNESS = 3.0
"""Superellipse exponent of the lens outline (2: an ellipse; larger: squarer)."""
WRAP = 0.35
"""Depth added per squared head unit across the face (the frame curves around it)."""
TILT = 0.15
"""Depth added per head unit down the lens (the bottom sits closer to the cheeks)."""
POINTS = 64
"""Points of each lens outline."""
ARM_POINTS = 24
SIDE_ANGLE = np.deg2rad(30.0)
"""The sides of the head (where the arms run) face this far forward of straight sideways."""
ARM_HIDES, ARM_FADE = -0.1, 0.25
"""An arm starts to hide when the cosine between its side's normal and the way to the camera falls below
``ARM_HIDES + ARM_FADE``, and is gone at ``ARM_HIDES`` (shortening from the ear end)."""


def _lens_outline(side: int) -> np.ndarray:
    """A lens opening ``[POINTS, 2]`` about its centre in the glasses' plane, x outwards for ``side``
    (-1 the right eye, +1 the left), y down: a rounded rectangle, narrower at the bottom (where the
    nose side is cut back)."""
    t = np.linspace(0, 2 * np.pi, POINTS, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    e = 2 / ROUNDNESS
    x, y = np.sign(c) * np.abs(c) ** e, np.sign(s) * np.abs(s) ** e
    x = x * (1 - 0.07 * y) + 0.07 * (y + 1) / 2
    return np.stack([side * x * LENS_HALF[0], y * LENS_HALF[1]], axis=1)


def _offset(outline: np.ndarray, top: float, other: float) -> np.ndarray:
    """Closed outline ``[N, 2]`` moved outwards along its normals, by ``top`` on its upper part and
    ``other`` elsewhere (blended)."""
    tangent = np.roll(outline, -1, 0) - np.roll(outline, 1, 0)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    if np.mean(np.sum(normal * (outline - outline.mean(0)), axis=1)) < 0:
        normal = -normal
    up = np.clip(-normal[:, 1], 0, 1) ** 2
    return outline + normal * (other + (top - other) * up)[:, None]


class Glasses:
    """A pair of glasses fitted to one face.

    Args:
        neutral: the face's mesh in head space ``[478, 3]`` (``FaceRig.neutral``).
        style: ``"thin"`` or ``"thick"`` rims.
        tint: strength of the lens tint and reflection in [0, 1] (0: clear lenses).
    """

    def __init__(self, neutral: np.ndarray, style: str, tint: float = 0.3) -> None:
        if style not in STYLES:
            raise ValueError(f"glasses style must be one of {sorted(STYLES)}, got {style!r}")
        st = STYLES[style]
        self.tint = float(tint)
        n = np.asarray(neutral, dtype=np.float64)
        right = n[list(RIGHT_EYE_CORNERS)].mean(0)
        left = n[list(LEFT_EYE_CORNERS)].mean(0)
        centre = 0.5 * (right + left)
        # The glasses' axes in head space: x along the eye line, y down the face, z into the head.
        ax = (left - right) / np.linalg.norm(left - right)
        az = np.array([0.0, 0.0, 1.0]) - ax[2] * ax
        az /= np.linalg.norm(az)
        ay = np.cross(az, ax)
        half_iod = 0.5 * float(np.linalg.norm(left - right))
        front = float((n[NOSE_BRIDGE] - centre) @ az) - 0.008  # just in front of the nose bridge

        def lift(xy: np.ndarray) -> np.ndarray:
            """Glasses-plane points ``[N, 2]`` -> head space ``[N, 3]`` on the wrapped, tilted surface."""
            x, y = xy[:, 0], xy[:, 1]
            z = front + WRAP * np.maximum(np.abs(x) - 0.04, 0) ** 2 + TILT * y
            return centre + x[:, None] * ax + y[:, None] * ay + z[:, None] * az

        self.lenses, self.rims = [], []
        """Per eye (right, left): the lens opening ``[POINTS, 3]`` and the rim's outer outline, head space."""
        openings, hinges = [], []
        for side in (-1, 1):
            opening = _lens_outline(side) + [side * (half_iod + LENS_OUT), -LENS_UP]
            outer = _offset(opening, st.rim_top, st.rim)
            openings.append(opening)
            self.lenses.append(lift(opening))
            self.rims.append(lift(outer))
            hinges.append(outer[np.argmax(side * outer[:, 0] - 0.5 * outer[:, 1])])  # outer, upper end
        # Bridge: a slight arch over the nose between the inner sides of the rims, 45% up the lenses.
        y_mid = -LENS_UP - 0.45 * LENS_HALF[1]
        inner = openings[1][openings[1][:, 0] < half_iod + LENS_OUT]  # the left lens's nose side
        inner = inner[np.argsort(inner[:, 1])]
        end = float(np.interp(y_mid, inner[:, 1], inner[:, 0])) + 0.5 * st.rim
        xs = np.linspace(-end, end, 17)
        arch = y_mid - 0.012 * (1 - (xs / end) ** 2)
        self.bridge = lift(np.concatenate([np.stack([xs, arch - 0.5 * st.rim_top], 1),
                                           np.stack([xs, arch + 0.5 * st.rim_top], 1)[::-1]]))
        """[34, 3] the bridge's outline, head space."""
        # Arms: from each hinge straight back to just above the ear.
        self.arms = []
        """Per side (right, left): the arm's upper and lower edges ``[ARM_POINTS, 3]`` from the hinge back."""
        s = np.linspace(0, 1, ARM_POINTS)[:, None]
        for side, hinge, ear_idx in zip((-1, 1), hinges, EAR_LEVEL):
            ear = n[ear_idx] - centre
            start = lift(hinge[None])[0]
            stop = centre + (ear @ ax + side * 0.01) * ax + (hinge[1] + 0.02) * ay + (ear @ az) * az
            mid = start + (stop - start) * s
            self.arms.append((mid - 0.5 * st.arm * ay, mid + 0.5 * st.arm * ay))
        # Outward normals of the sides of the head along the arms, a little forward.
        self.side_normals = [np.cos(SIDE_ANGLE) * side * ax - np.sin(SIDE_ANGLE) * az for side in (-1, 1)]

    def arm_shown(self, side: int, rotation: np.ndarray, translation: np.ndarray) -> float:
        """Fraction in [0, 1] of the ``side`` arm (0 right, 1 left) that shows from its hinge back: all of it
        while the camera sees that side of the head, none once it has turned away (the head hides it)."""
        hinge = self.arms[side][0][0]
        to_camera = -rotation.T @ translation - hinge  # head space
        facing = float(self.side_normals[side] @ to_camera) / float(np.linalg.norm(to_camera))
        return float(np.clip((facing - ARM_HIDES) / ARM_FADE, 0.0, 1.0))

    def draw(self, image: np.ndarray, rig: FaceRig, rotation: np.ndarray, translation: np.ndarray,
             mesh: np.ndarray, touched: np.ndarray | None = None) -> None:
        """Draw the glasses on ``image`` (RGB ``[S, S, 3]`` uint8) in place, for the head pose ``rotation``
        ``[3, 3]``, ``translation`` ``[3]`` (head to camera, as ``FaceRig.project``); ``mesh`` is the frame's
        face mesh in frame pixels ``[478, 3]`` (hides arms behind the face; sets the shadow's scale);
        ``touched`` ``[S, S]``, optional, gets the changed pixels."""
        size = image.shape[0]
        iod_px = float(interocular(mesh[:, :2]))
        px = lambda p: rig.project(p, rotation, translation)[:, :2] - 0.5  # noqa: E731  array coordinates
        lenses = [px(p) for p in self.lenses]
        rims = [px(p) for p in self.rims]
        bridge = px(self.bridge)
        arms = [self._arm_run(k, rig, rotation, translation, mesh) for k in range(2)]
        arms = [a for a in arms if a is not None]
        # Bounding box of everything drawn, with room for the shadow's blur.
        allp = np.concatenate(rims + [bridge] + arms)
        pad = int(np.ceil(0.15 * iod_px)) + 3
        x0, y0 = np.maximum(np.floor(allp.min(0)).astype(int) - pad, 0)
        x1, y1 = np.minimum(np.ceil(allp.max(0)).astype(int) + pad, size)
        if x1 <= x0 or y1 <= y0:
            return
        shape = (y1 - y0, x1 - x0)

        def fill(poly: np.ndarray) -> np.ndarray:
            """Anti-aliased coverage ``[h, w]`` in [0, 1] of a polygon ``[N, 2]`` (array coordinates)."""
            layer = np.zeros(shape, np.uint8)
            cv2.fillPoly(layer, [np.round((poly - [x0, y0]) * (1 << SUBPIXEL_BITS)).astype(np.int32)], 255,
                         cv2.LINE_AA, SUBPIXEL_BITS)
            return layer.astype(np.float32) / 255

        openings = [fill(p) for p in lenses]
        frame = np.zeros(shape, np.float32)  # coverage of the rims, bridge and arms
        for rim, opening in zip(rims, openings):
            np.maximum(frame, np.clip(fill(rim) - opening, 0, 1), out=frame)
        for part in [bridge] + arms:
            np.maximum(frame, fill(part), out=frame)
        patch = image[y0:y1, x0:x1].astype(np.float32)
        # 1. Shadow: the frame's silhouette blurred and dropped a little (light from above).
        drop = np.float32([[1, 0, 0.02 * iod_px], [0, 1, 0.06 * iod_px]])
        shadow = cv2.GaussianBlur(cv2.warpAffine(frame, drop, shape[::-1]), (0, 0), max(0.04 * iod_px, 0.6))
        patch *= 1 - SHADOW * shadow[..., None]
        # 2. Lenses: a faint tint and two soft diagonal streaks of reflection across the upper corner.
        changed = (frame > 0) | (shadow > 1 / 512)
        if self.tint > 0:
            yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
            for lens, opening in zip(lenses, openings):
                c = lens.mean(0) - [x0, y0]
                u = ((xx - c[0]) + 0.8 * (yy - c[1])) / max(float(np.ptp(lens[:, 0])), 1.0)
                glare = np.exp(-((u + 0.42) / 0.1) ** 2) + 0.6 * np.exp(-((u + 0.22) / 0.035) ** 2)  # off the eye
                a = (opening * self.tint)[..., None]
                patch = patch * (1 - HAZE * a) + TINT_COLOUR * (HAZE * a)
                patch += (255 - patch) * (GLARE * a * glare[..., None])
                changed |= opening > 0
        # 3. The frame itself, a little glossier along its top edge.
        lift = np.float32([[1, 0, 0], [0, 1, -0.012 * iod_px]])
        gloss = np.clip(frame - cv2.warpAffine(frame, lift, shape[::-1]), 0, 1)[..., None]
        colour = RIM_COLOUR + (GLOSS_COLOUR - RIM_COLOUR) * (0.35 * gloss)
        patch = patch * (1 - frame[..., None]) + colour * frame[..., None]
        image[y0:y1, x0:x1] = np.clip(patch + 0.5, 0, 255).astype(np.uint8)
        if touched is not None:
            touched[y0:y1, x0:x1] |= changed

    def _arm_run(self, side: int, rig: FaceRig, rotation: np.ndarray, translation: np.ndarray,
                 mesh: np.ndarray) -> np.ndarray | None:
        """The visible run of the ``side`` arm as a polygon in array coordinates: from the hinge, its shown
        fraction (`arm_shown`), up to where it passes behind the face (a point inside the mesh's convex
        hull and deeper than the nearest mesh point); None if none shows."""
        upper, lower = self.arms[side]
        length = self.arm_shown(side, rotation, translation) * (len(upper) - 1)
        if length < 1e-3:
            return None
        # Cut the arm at its shown length, interpolating the last point.
        k = int(np.floor(length))
        f = length - k
        cut = lambda p: np.concatenate([p[: k + 1], p[k : k + 1] + f * (p[k + 1 : k + 2] - p[k : k + 1])])  # noqa: E731
        upper, lower = (cut(p) if k + 1 < len(p) else p for p in (upper, lower))
        mid = rig.project(0.5 * (upper + lower), rotation, translation)
        hull = cv2.convexHull(mesh[:, :2].astype(np.float32))
        run = len(mid)
        for i in range(1, len(mid)):
            x, y, z = mid[i]
            if cv2.pointPolygonTest(hull, (float(x), float(y)), False) > 0:
                nearest = np.argmin(np.sum((mesh[:, :2] - [x, y]) ** 2, axis=1))
                if z > mesh[nearest, 2] + 0.5:
                    run = i
                    break
        if run < 2:
            return None
        a = rig.project(upper[:run], rotation, translation)[:, :2]
        b = rig.project(lower[:run], rotation, translation)[:, :2]
        return np.concatenate([a, b[::-1]]) - 0.5
