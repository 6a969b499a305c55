"""A processed person dataset in memory as tensors, and the sampling of training rays."""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..constants import EYE_CORNERS_68, EYE_LOWER_68, EYE_UPPER_68, EYES_68, MOUTH_68
from ..dataset import PersonDataset
from ..device import memory_errors
from ..errors import InputError
from .fields import REGIONS, WINDOW
from .model import PersonGeometry, RayBatch, valid_pixels



def eye_opening(landmarks: np.ndarray) -> np.ndarray:
    """Eye opening [T] of 68-point landmarks [T, 68, 3]: the mean gap between facing lid points over the
    eye's width (about 0.3 for open eyes, near 0 when closed)."""
    gap = np.linalg.norm(landmarks[:, EYE_UPPER_68] - landmarks[:, EYE_LOWER_68], axis=-1)
    width = np.linalg.norm(landmarks[:, EYE_CORNERS_68[:, 0]] - landmarks[:, EYE_CORNERS_68[:, 1]], axis=-1)
    return (gap / np.maximum(width, 1e-6)).mean(1)


def eye_rarity(opening: np.ndarray, reference: np.ndarray, full: float = 0.5) -> np.ndarray:
    """How unusual each frame's eye opening [T] is, in [0, 1]: its distance from the median of
    ``reference`` (the training frames' openings) over ``full`` times that median (a blink's full
    closure gives 1, a half-closed lid about 0.5, tracking jitter a few hundredths)."""
    usual = float(np.median(reference))
    return np.clip(np.abs(opening - usual) / max(full * usual, 1e-6), 0.0, 1.0)


def available_memory(device: torch.device) -> int:
    """Free bytes on ``device`` (physical memory for the CPU), or -1 if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return -1


CHUNK_FRAMES = 256
"""Frames a whole-clip reduction over the labels reads at once (no [T, S, S] temporary: a 5-minute clip at 512 px
has 2 GiB of labels)."""


class RenderData:
    """Frames, labels, cameras and landmarks of a person at ``size`` x ``size`` on ``device``."""

    def __init__(self, root: str | os.PathLike, size: int | None = None, device: torch.device | str = "cpu",
                 progress: bool = False) -> None:
        ds = PersonDataset(root)
        self.root = ds.root
        self.device = torch.device(device)
        size = int(size or ds.size)
        if size < 16:
            raise InputError(f"--size {size} is too small; use at least 16")
        if size > ds.size:
            raise InputError(f"--size {size} is larger than the dataset's frames ({ds.size} px); use at most {ds.size}")
        self.size = size
        t = ds.num_frames
        need = t * size * size * 4 + 64 * size * size * 4
        free = available_memory(self.device)
        if free > 0 and need > 0.8 * free:
            raise InputError(f"--size {size} needs about {need / 2**30:.1f} GiB on {self.device.type} for the "
                             f"{t} frames but only {free / 2**30:.1f} GiB are free; use a smaller --size "
                             f"(e.g. {max(16, size // 2)})")
        pose = ds.pose
        motion = ds.motion
        for name, arrays, keys in (("pose.npz", pose, ("c2w",)), ("motion.npz", motion, ("offsets", "mean68", "iod"))):
            missing = [k for k in keys if k not in arrays]
            if missing:
                raise InputError(f"dataset {ds.root}: {name} lacks {', '.join(missing)}; process the video again")
        c2w = np.asarray(pose["c2w"], np.float32)
        offsets = np.asarray(motion["offsets"], np.float32)
        if c2w.shape != (t, 4, 4) or offsets.shape != (t, 68, 3):
            raise InputError(f"dataset {ds.root}: poses {list(c2w.shape)} or offsets {list(offsets.shape)} do not "
                             f"match its {t} frames; process the video again")
        if not (np.isfinite(c2w).all() and np.isfinite(offsets).all()):
            raise InputError(f"dataset {ds.root}: poses or landmarks contain NaN; process the video again")
        K = ds.intrinsics.copy()
        K[:2] *= size / ds.size
        self.K = torch.from_numpy(K).to(self.device)
        self.c2w = torch.from_numpy(c2w).to(self.device)
        self.offsets = torch.from_numpy(offsets).to(self.device)
        self.mean68 = np.asarray(motion["mean68"], np.float32)
        self.iod = float(motion["iod"])
        self.train_idx = torch.from_numpy(ds.split("train")).to(self.device)
        self.val_idx = torch.from_numpy(ds.split("val")).to(self.device)
        if len(self.train_idx) == 0:
            raise InputError(f"dataset {ds.root} has no training frames")

        frames = np.empty((t, size, size, 3), np.uint8)
        labels = np.empty((t, size, size), np.uint8)
        it = range(t)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc="load frames", unit="frame", leave=False)
        for i in it:
            f, p = ds.frame(i), ds.parsing(i)
            if size != ds.size:
                f = cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
                p = cv2.resize(p, (size, size), interpolation=cv2.INTER_NEAREST)
            frames[i], labels[i] = f, p
        bg = ds.background()
        unseen = ds.background_unseen().astype(np.uint8) * 255
        if size != ds.size:
            bg = cv2.resize(bg, (size, size), interpolation=cv2.INTER_AREA)
            unseen = cv2.resize(unseen, (size, size), interpolation=cv2.INTER_AREA)
        with memory_errors(self.device, f"while loading {t} frames of {size} px", f"use a smaller --size (e.g. "
                                                                            f"{max(16, size // 2)})"):
            self.frames = torch.from_numpy(frames).to(self.device)  # [T, S, S, 3] uint8
            self.labels = torch.from_numpy(labels).to(self.device)  # [T, S, S] uint8
        self.background = torch.from_numpy(bg).to(self.device)  # [S, S, 3] uint8
        # the real pixels (the rest is padding of a crop past the source frame: never sampled nor scored)
        self.valid_fraction_box = [v / ds.size for v in ds.valid_box]  # (x0, y0, x1, y1) fractions of the side
        self.valid_box = valid_pixels(self.valid_fraction_box, size)  # (x0, y0, x1, y1) pixels, half-open
        x0, y0, x1, y1 = self.valid_box
        self.valid = torch.zeros(size, size, dtype=torch.bool, device=self.device)  # [S, S]
        self.valid[y0:y1, x0:x1] = True
        # [S, S] bool: where no training frame showed the background (partly, at a smaller size)
        self.unseen = torch.from_numpy(unseen > 0).to(self.device) & self.valid
        self.mouth_boxes = self._boxes(MOUTH_68, 0.3)  # [T, 4] x0, y0, x1, y1
        self.eye_boxes = self._boxes(EYES_68, 0.5)  # [T, 4]
        opening = eye_opening(self.landmarks_head())
        self.eye_rarity = torch.from_numpy(eye_rarity(opening, opening[self.train_idx.cpu().numpy()])
                                           .astype(np.float32)).to(self.device)  # [T] 1 at a full blink
        self.head_boxes = self._label_boxes(1, margin=max(2, size // 32))  # [T, 4]
        self.torso_pixels = (self.torso_region() & self.valid).reshape(-1).nonzero()[:, 0]  # flat pixel indices
        self.surface = self._surface(pose)  # [T, V, 3] pixel x, y and camera depth of mesh vertices, or None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    # --- geometry ---------------------------------------------------------------------------------
    def project(self, points: np.ndarray) -> np.ndarray:
        """Head-space points [T, P, 3] -> pixels [T, P, 2] under each frame's camera."""
        w2c = np.linalg.inv(self.c2w.cpu().numpy())
        cam = np.einsum("tij,tpj->tpi", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]
        K = self.K.cpu().numpy()
        return cam[..., :2] / cam[..., 2:3] * K[[0, 1], [0, 1]] + K[:2, 2]

    def landmarks_head(self) -> np.ndarray:
        """68 landmarks in head space per frame [T, 68, 3]."""
        return self.mean68[None] + self.offsets.cpu().numpy() * self.iod

    def _boxes(self, points: list[int], pad: float) -> Tensor:
        """Image boxes [T, 4] (x0, y0, x1, y1) around landmarks ``points``, grown by ``pad`` of their size."""
        pts = self.project(self.landmarks_head()[:, points])  # [T, P, 2]
        lo, hi = pts.min(1), pts.max(1)
        pad = (hi - lo) * pad + 2
        box = np.concatenate([lo - pad, hi + pad], 1)
        x0, y0, x1, y1 = self.valid_box  # the real pixels only
        box = box.clip([x0, y0, x0, y0], [x1, y1, x1, y1])
        return torch.from_numpy(box.astype(np.float32)).to(self.device)

    def _surface(self, pose: dict[str, np.ndarray]) -> Tensor | None:
        """The tracked mesh (``canonical``, head space) per frame, projected: [T, V, 3] (u, v, z)."""
        mesh = pose.get("canonical")
        if mesh is None or mesh.shape[0] != self.num_frames or not np.isfinite(mesh).all():
            return None
        w2c = np.linalg.inv(self.c2w.cpu().numpy())
        cam = np.einsum("tij,tvj->tvi", w2c[:, :3, :3], mesh.astype(np.float32)) + w2c[:, None, :3, 3]
        K = self.K.cpu().numpy()
        uv = cam[..., :2] / cam[..., 2:3] * K[[0, 1], [0, 1]] + K[:2, 2]
        return torch.from_numpy(np.concatenate([uv, cam[..., 2:3]], -1).astype(np.float32)).to(self.device)

    def _label_boxes(self, label: int, margin: int) -> Tensor:
        """Image boxes [T, 4] around each frame's pixels of ``label``, grown by ``margin`` (the whole frame where
        there are none)."""
        rows = torch.cat([(c == label).any(2) for c in self.labels.split(CHUNK_FRAMES)])  # [T, S]
        cols = torch.cat([(c == label).any(1) for c in self.labels.split(CHUNK_FRAMES)])  # [T, S]
        ar = torch.arange(self.size, device=self.device)
        big = self.size
        y0 = torch.where(rows, ar, big).amin(1)
        y1 = torch.where(rows, ar, -1).amax(1) + 1
        x0 = torch.where(cols, ar, big).amin(1)
        x1 = torch.where(cols, ar, -1).amax(1) + 1
        empty = y1 <= 0
        box = torch.stack([x0 - margin, y0 - margin, x1 + margin, y1 + margin], 1).float()
        box[empty] = torch.tensor([0.0, 0.0, big, big], device=self.device)
        vx0, vy0, vx1, vy1 = self.valid_box  # the real pixels only
        lo = torch.tensor([vx0, vy0, vx0, vy0], device=self.device, dtype=torch.float32)
        hi = torch.tensor([vx1, vy1, vx1, vy1], device=self.device, dtype=torch.float32)
        return torch.maximum(torch.minimum(box, hi), lo)

    def geometry(self) -> PersonGeometry:
        """Head box and region boxes for the model, from the landmarks and the head silhouettes."""
        lm = self.landmarks_head()  # [T, 68, 3]
        # x, y: the head silhouette's visual hull over a coarse grid; z: from the face's depth range
        lo_xy, hi_xy = self._silhouette_bounds()
        z_front = float(lm[..., 2].min())
        width = float(hi_xy[0] - lo_xy[0])
        lo = [float(lo_xy[0]), float(lo_xy[1]), z_front - 0.15]
        hi = [float(hi_xy[0]), float(hi_xy[1]), z_front - 0.15 + max(0.8, 0.7 * width)]
        region_lo, region_hi = [], []
        for name, idx in REGIONS.items():
            pts = lm[:, list(idx)].reshape(-1, 3)
            a, b = pts.min(0), pts.max(0)
            pad = np.array([0.08, 0.08, 0.15]) if name == "mouth" else np.array([0.06, 0.06, 0.15])
            a, b = a - pad, b + pad
            if name == "mouth":  # the open jaw reaches below its landmarks' range
                b[1] += 0.05
            region_lo.append([float(v) for v in a])
            region_hi.append([float(v) for v in b])
        return PersonGeometry(size=self.size, intrinsics=self.K.cpu().tolist(), box_lo=lo, box_hi=hi,
                              region_lo=region_lo, region_hi=region_hi, num_frames=self.num_frames,
                              valid_box=[float(v) for v in self.valid_fraction_box])

    def _silhouette_bounds(self, extent: float = 1.0, res: int = 64, views: int = 24) -> tuple[np.ndarray, np.ndarray]:
        """x, y range of the points in [-extent, extent]^2 x (z near the face) seen by some sampled view
        and inside the (dilated) head label of every view that sees them; with a small margin. A view sees
        only its real pixels (`valid_box`): the head above a frame edge that cuts it in every view is left out
        (never seen, so never learned; rendering it would only smear)."""
        g = np.linspace(-extent, extent, res)
        z = np.linspace(float(self.landmarks_head()[..., 2].min()), 0.6, 8)
        X, Y, Z = np.meshgrid(g, g, z, indexing="ij")
        pts = np.stack([X, Y, Z], -1).reshape(-1, 3)
        frames = self.train_idx.cpu().numpy()
        frames = frames[np.linspace(0, len(frames) - 1, min(views, len(frames))).round().astype(int)]
        masks = (self.labels[torch.from_numpy(frames).to(self.device)] == 1).float()[:, None]
        pad = max(1, self.size // 64)
        masks = (F.max_pool2d(masks, 2 * pad + 1, stride=1, padding=pad)[:, 0] > 0).cpu().numpy()
        c2w = self.c2w.cpu().numpy()[frames]
        K = self.K.cpu().numpy()
        keep = np.ones(len(pts), bool)
        seen = np.zeros(len(pts), bool)
        for i in range(len(frames)):
            w2c = np.linalg.inv(c2w[i])
            cam = pts @ w2c[:3, :3].T + w2c[:3, 3]
            uv = cam[:, :2] / cam[:, 2:3] * K[[0, 1], [0, 1]] + K[:2, 2]
            x0, y0, x1, y1 = self.valid_box
            inside = (uv[:, 0] >= x0) & (uv[:, 0] < x1) & (uv[:, 1] >= y0) & (uv[:, 1] < y1)
            ui = uv[:, 0].clip(0, self.size - 1).astype(int)
            vi = uv[:, 1].clip(0, self.size - 1).astype(int)
            keep &= ~inside | masks[i, vi, ui]
            seen |= inside
        keep &= seen
        if not keep.any():
            raise InputError(f"dataset {self.root}: the head labels do not agree with the head poses; "
                             f"process the video again")
        kept = pts[keep]
        margin = 2 * extent / res + 0.05
        lo = np.maximum(kept[:, :2].min(0) - margin, -extent)
        hi = np.minimum(kept[:, :2].max(0) + margin, extent)
        return lo, hi

    def head_masks(self, frames: Tensor) -> Tensor:
        return self.labels[frames] == 1

    def torso_region(self, dilate: int | None = None) -> Tensor:
        """Pixels [S, S] bool where the torso may appear: any training frame's torso label, dilated."""
        m = torch.zeros(self.size, self.size, dtype=torch.bool, device=self.device)
        for chunk in self.train_idx.split(CHUNK_FRAMES):
            m |= (self.labels[chunk] == 2).any(0)
        m = m.float()[None, None]
        dilate = max(2, self.size // 16) if dilate is None else dilate
        return F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)[0, 0] > 0

    # --- batches ----------------------------------------------------------------------------------
    def windows(self, frames: Tensor) -> Tensor:
        """Landmark windows [B, 5, 68, 3] of frames [B] (clamped at the clip's ends)."""
        k = torch.arange(WINDOW, device=self.device) - WINDOW // 2
        idx = (frames[:, None] + k).clamp(0, self.num_frames - 1)
        return self.offsets[idx]

    def sample(self, num_frames: int, rays_per_frame: int, phase: str, lip_fraction: float = 0.25,
               generator: torch.Generator | None = None, patch: int = 0, depth_fraction: float = 0.1,
               eye_fraction: float = 0.0, blink_eye_fraction: float = 0.0, blink_frame_boost: float = 0.0
               ) -> RayBatch:
        """Training rays: ``num_frames`` random training frames, ``rays_per_frame`` pixels each.

        Blinks are rare and short, so closed eyes would get few rays: in the head phase frames are drawn
        with weight ``1 + blink_frame_boost * eye_rarity`` and each frame's eye share is
        ``eye_fraction + blink_eye_fraction * eye_rarity`` (`eye_rarity`: 0 for the usual opening, 1 for a
        full blink). head phase: a ``lip_fraction`` of the pixels from the mouth box (lip emphasis), the
        eye share from the eyes' box, the rest from the head's bounding box; with ``patch`` > 0 the first
        ``patch``^2 pixels of each frame are instead a square patch (row-major) at a random place over the
        mouth box; the last ``depth_fraction`` go through tracked mesh vertices and carry their depth.
        torso phase: frames uniformly, pixels anywhere in the torso's region. Every pixel lies in `valid_box`
        (padding is never sampled; a mesh vertex in the padding gives a ray without depth at the box's edge).
        """
        dev = self.device
        if phase == "head" and blink_frame_boost > 0:
            weights = 1 + blink_frame_boost * self.eye_rarity[self.train_idx]
            pick = torch.multinomial(weights, num_frames, replacement=True, generator=generator)
        else:
            pick = torch.randint(len(self.train_idx), (num_frames,), device=dev, generator=generator)
        frames = self.train_idx[pick]
        n = rays_per_frame
        if phase == "head":
            n_lip = int(round(n * lip_fraction))
            n_depth = int(round(n * depth_fraction)) if self.surface is not None else 0
            share = eye_fraction + blink_eye_fraction * self.eye_rarity[frames]  # [B]
            n_eye = (share * n).round().long().clamp(0, max(0, n - n_lip - n_depth))  # [B], before the depth rays
            j = torch.arange(n, device=dev)[None]  # [1, n]
            which = torch.where(j < n_lip, 0, torch.where(j < n_lip + n_eye[:, None], 1, 2))  # [B, n]
            boxes = torch.stack([self.mouth_boxes[frames], self.eye_boxes[frames], self.head_boxes[frames]], 1)
            boxes = torch.gather(boxes, 1, which[..., None].expand(-1, -1, 4))  # [B, n, 4]
            r = torch.rand(num_frames, n, 2, device=dev, generator=generator)
            u = boxes[..., 0] + r[..., 0] * (boxes[..., 2] - boxes[..., 0])
            v = boxes[..., 1] + r[..., 1] * (boxes[..., 3] - boxes[..., 1])
            if patch > 0:
                if patch * patch > n - int(round(n * depth_fraction)) or patch > self.size:
                    raise ValueError(f"a {patch} px patch does not fit {n} rays or a {self.size} px frame")
                box = self.mouth_boxes[frames]
                r0 = torch.rand(num_frames, 2, device=dev, generator=generator)
                vx0, vy0, vx1, vy1 = self.valid_box
                if patch > min(vx1 - vx0, vy1 - vy0):
                    raise ValueError(f"a {patch} px patch does not fit the frame's {vx1 - vx0}x{vy1 - vy0} real pixels")
                v_lo = torch.tensor([vx0, vy0], device=dev, dtype=torch.float32)
                v_hi = torch.tensor([vx1 - patch, vy1 - patch], device=dev, dtype=torch.float32)
                lo = torch.minimum(torch.maximum(torch.minimum(box[:, :2], box[:, 2:] - patch), v_lo), v_hi)
                hi = torch.minimum(torch.maximum(torch.maximum(box[:, :2], box[:, 2:] - patch), v_lo), v_hi)
                corner = (lo + r0 * (hi - lo)).floor()  # [B, 2]
                g = torch.arange(patch, device=dev, dtype=torch.float32)
                gv, gu = torch.meshgrid(g, g, indexing="ij")
                u = torch.cat([corner[:, :1] + gu.reshape(1, -1), u[:, patch * patch:]], 1)
                v = torch.cat([corner[:, 1:] + gv.reshape(1, -1), v[:, patch * patch:]], 1)
        elif phase == "torso":
            pixels = self.torso_pixels
            pick = torch.randint(len(pixels), (num_frames, n), device=dev, generator=generator)
            u = (pixels[pick] % self.size).float()
            v = (pixels[pick] // self.size).float()
        else:
            raise ValueError(f"unknown phase {phase!r}")
        depth = None
        if phase == "head" and self.surface is not None and depth_fraction > 0:
            n_depth = int(round(n * depth_fraction))
            verts = torch.randint(self.surface.shape[1], (num_frames, n_depth), device=dev, generator=generator)
            s = self.surface[frames[:, None], verts]  # [B, n_depth, 3]
            u = torch.cat([u[:, :n - n_depth], s[..., 0]], 1)
            v = torch.cat([v[:, :n - n_depth], s[..., 1]], 1)
            depth = torch.cat([torch.full((num_frames, n - n_depth), float("nan"), device=dev), s[..., 2]], 1)
            x0, y0, x1, y1 = self.valid_box
            outside = (u < x0) | (u >= x1) | (v < y0) | (v >= y1)
            depth = torch.where(outside, float("nan"), depth).reshape(-1)
        x0, y0, x1, y1 = self.valid_box
        u = u.floor().clamp(x0, x1 - 1)
        v = v.floor().clamp(y0, y1 - 1)
        ray_frame = torch.arange(num_frames, device=dev).repeat_interleave(n)
        ui, vi = u.reshape(-1).long(), v.reshape(-1).long()
        fi = frames[ray_frame]
        return RayBatch(frames=frames, window=self.windows(frames), c2w=self.c2w[frames], ray_frame=ray_frame,
                        u=ui.float() + 0.5, v=vi.float() + 0.5, rgb=self.frames[fi, vi, ui].float() / 255,
                        label=self.labels[fi, vi, ui], bg=self.background[vi, ui].float() / 255, depth=depth)
