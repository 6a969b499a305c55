"""An occupancy grid over the head box for empty-space skipping.

The grid keeps a running (decayed maximum) estimate of the density in each cell. Samples in cells below a
threshold are never sent to the network. Cells that fall outside the person's head silhouette in some
training view (a visual hull, `carve`) stay empty for good. The trainer calls `update` periodically (a
callback); the model only reads `query`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class OccupancyGrid(nn.Module):
    """A ``res^3`` grid of cells over the box ``[lo, hi]`` (head space)."""

    def __init__(self, lo: tuple[float, float, float], hi: tuple[float, float, float], resolution: int = 64,
                 threshold: float = 1.0) -> None:
        super().__init__()
        self.resolution = int(resolution)
        self.threshold = float(threshold)
        r = self.resolution
        self.register_buffer("lo", torch.tensor(lo, dtype=torch.float32))
        self.register_buffer("hi", torch.tensor(hi, dtype=torch.float32))
        self.register_buffer("density", torch.full((r, r, r), float("inf")))  # unknown = occupied
        self.register_buffer("allowed", torch.ones(r, r, r, dtype=torch.bool))
        self.register_buffer("occupied", torch.ones(r, r, r, dtype=torch.bool))

    def cell_index(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Flat cell index [N] (long) of points x [N, 3] and whether each lies inside the box [N]."""
        r = self.resolution
        f = (x - self.lo) / (self.hi - self.lo)
        inside = ((f >= 0) & (f < 1)).all(-1)
        ijk = (f * r).long().clamp(0, r - 1)
        return (ijk[:, 0] * r + ijk[:, 1]) * r + ijk[:, 2], inside

    def query(self, x: Tensor) -> Tensor:
        """Whether points x [..., 3] fall in occupied cells: bool [...]."""
        return self.query_normalised((x - self.lo) / (self.hi - self.lo) * 2 - 1)

    def query_normalised(self, g: Tensor) -> Tensor:
        """`query` for points already mapped to the box's [-1, 1]^3: bool [...] (one nearest-neighbour
        `grid_sample`; the volume is indexed [z, y, x] as grid_sample expects)."""
        key = (self.occupied.data_ptr(), self.occupied._version, g.dtype)
        if getattr(self, "_volume_key", None) != key:  # kept until the grid changes (inference asks often)
            self._volume = self.occupied.permute(2, 1, 0).to(g.dtype)[None, None].contiguous()
            self._volume_key = key
        volume = self._volume
        out = F.grid_sample(volume, g.reshape(1, -1, 1, 1, 3), mode="nearest", padding_mode="zeros",
                            align_corners=False)
        return out.view(g.shape[:-1]) > 0.5

    @torch.no_grad()
    def footprint(self, c2w: Tensor, K: Tensor, size: int) -> Tensor:
        """Pixels [B, size, size] (bool) whose rays may meet an occupied cell, for cameras c2w [B, 4, 4]
        and intrinsics K [3, 3] at ``size``: the occupied cells' centres projected and grown by the
        cells' projected size."""
        x = self.occupied_centres()  # [C, 3]
        b = c2w.shape[0]
        mask = torch.zeros(b, size * size, device=x.device)
        if x.shape[0] == 0:
            return mask.view(b, size, size) > 0
        w2c = torch.linalg.inv(c2w)
        cam = torch.einsum("bij,cj->bci", w2c[:, :3, :3], x) + w2c[:, None, :3, 3]  # [B, C, 3]
        z = cam[..., 2].clamp_min(1e-3)
        u = (cam[..., 0] / z * K[0, 0] + K[0, 2]).floor().long()
        v = (cam[..., 1] / z * K[1, 1] + K[1, 2]).floor().long()
        ok = (u >= 0) & (u < size) & (v >= 0) & (v < size) & (cam[..., 2] > 1e-3)
        flat = (v * size + u).clamp(0, size * size - 1)
        mask.scatter_add_(1, flat, ok.float())
        # grow by half a cell's diagonal in pixels at the nearest depth, plus one pixel
        cell = float(((self.hi - self.lo) / self.resolution).norm())
        radius = int(math.ceil(0.5 * cell * float(K[0, 0]) / float(z[ok].min()))) + 1 if ok.any() else 1
        mask = F.max_pool2d(mask.view(b, 1, size, size), 2 * radius + 1, stride=1, padding=radius)
        return mask[:, 0] > 0

    def occupied_centres(self) -> Tensor:
        """Centres [C, 3] of the occupied cells, kept until the grid changes (inference asks every frame)."""
        key = (self.occupied.data_ptr(), self.occupied._version)
        if getattr(self, "_centres_key", None) != key:
            self._centres = self.cell_centres()[self.occupied.reshape(-1)]
            self._centres_key = key
        return self._centres

    def cell_centres(self) -> Tensor:
        """Centres of all cells [res^3, 3] in flat-index order."""
        r = self.resolution
        g = (torch.arange(r, device=self.lo.device, dtype=torch.float32) + 0.5) / r
        ijk = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
        return self.lo + ijk * (self.hi - self.lo)

    @torch.no_grad()
    def carve(self, c2w: Tensor, K: Tensor, masks: Tensor, dilate: int = 2, valid: Tensor | None = None) -> None:
        """Keep only cells whose centre projects inside ``masks`` in every view (outside the image counts
        as inside, and so do pixels outside ``valid`` [H, W] bool, the padding of a crop past the frame's
        edge: unknown, not empty). c2w [F, 4, 4], K [3, 3], masks [F, H, W] bool."""
        h, w = masks.shape[-2:]
        m = masks.float().unsqueeze(1)
        if dilate > 0:
            m = F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)
        m = m[:, 0] > 0
        if valid is not None:
            m = m | ~valid.to(m.device)
        x = self.cell_centres()
        keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        w2c = torch.linalg.inv(c2w)
        for i in range(c2w.shape[0]):
            cam = x @ w2c[i, :3, :3].T + w2c[i, :3, 3]
            z = cam[:, 2].clamp_min(1e-6)
            u = cam[:, 0] / z * K[0, 0] + K[0, 2]
            v = cam[:, 1] / z * K[1, 1] + K[1, 2]
            in_image = (u >= 0) & (u < w) & (v >= 0) & (v < h)
            ui = u.long().clamp(0, w - 1)
            vi = v.long().clamp(0, h - 1)
            keep &= ~in_image | m[i, vi, ui]
        r = self.resolution
        self.allowed.copy_(keep.reshape(r, r, r))
        self.occupied.copy_(self.allowed)

    @torch.no_grad()
    def update(self, density_fn: Callable[[Tensor], Tensor], decay: float = 0.9, chunk: int = 1 << 18) -> float:
        """Refresh the estimate at one random point per allowed cell; ``density_fn(x [N, 3]) -> sigma [N]``.

        ``density = max(decay * density, new)`` (the first update replaces the initial 'unknown'); cells
        with density above ``min(threshold, mean)`` are occupied. Returns the occupied fraction.
        """
        r = self.resolution
        idx = self.allowed.reshape(-1).nonzero()[:, 0]
        size = (self.hi - self.lo) / r
        x = self.cell_centres()[idx] + (torch.rand(idx.shape[0], 3, device=idx.device) - 0.5) * size
        new = torch.cat([density_fn(x[i:i + chunk]).float() for i in range(0, x.shape[0], chunk)]) \
            if idx.numel() else x.new_zeros(0)
        flat = self.density.reshape(-1)
        old = flat[idx]
        flat[idx] = torch.where(torch.isinf(old), new, torch.maximum(old * decay, new))
        flat[~self.allowed.reshape(-1)] = 0
        vals = flat[idx]
        thr = min(self.threshold, float(vals.mean())) if vals.numel() else self.threshold
        self.occupied.copy_(self.allowed & (self.density > thr))
        return float(self.occupied.float().mean())
