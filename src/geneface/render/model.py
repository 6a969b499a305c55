"""The person model: landmark condition, head NeRF, occupancy grid, torso field and background, with the
ray marcher, the full-frame renderer and the training losses of both phases."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..device import autocast
from ..engine.saveload import Savable
from .fields import HeadField, LandmarkCondition, TorsoField
from .occupancy import OccupancyGrid
from .volume import distortion, image_rays, over, pixel_rays, ray_box, render_weights

PARTS = ("full", "person", "head")
HIDDEN = 1e-3
"""Rendering frames skips the torso behind head pixels more opaque than ``1 - HIDDEN`` (a change of at most
this much, in [0, 1] units)."""


@dataclass
class ModelConfig:
    """Sizes of the person model's parts (saved with a run; the defaults suit 128-512 px)."""

    resolutions: tuple[int, ...] = (32, 64, 128)
    """Tri-plane resolutions of the head encoding, coarse to fine."""
    channels: int = 4
    """Feature channels per plane and level."""
    embed_dim: int = 16
    """Size of each region's landmark embedding."""
    hidden: int = 64
    """Width of the MLPs."""
    layers: int = 1
    """Hidden layers of the head's density MLP."""
    geo_dim: int = 15
    """Geometry feature passed from the density to the colour MLP."""
    code_dim: int = 4
    """Per-frame appearance (lighting) code size; inference uses the zero code."""
    grid_resolution: int = 64
    """Cells per side of the occupancy grid."""
    density_threshold: float = 1.0
    """Density (per head unit) below which a cell counts as empty."""
    train_samples: int = 64
    """Samples per ray through the head box while training."""
    infer_samples: int = 64
    """Samples per ray through the head box when rendering."""
    torso_resolutions: tuple[int, ...] = (16, 32, 64, 128)
    """Plane resolutions of the torso encoding."""
    torso_channels: int = 4
    """Feature channels of the torso planes."""
    window: str = "centred"
    """How the landmark condition weighs its 5-frame window: ``centred`` (a symmetric kernel peaked at the
    frame, the eyes from the frame alone, so blinks and lips are never shifted in time) or ``free`` (any
    learned weights; models saved before this option)."""
    background_cell: int = 0
    """Training pixels per side of a cell of a learned background correction: a plane added to the
    background only where no training frame showed it (`RenderModel.unseen`, inpainted there), upsampled
    bilinearly; 0: none. Off by default: on a tightly framed clip (76% inpainted) it did not raise the
    validation PSNR at 600 steps (-0.1 to -0.35 dB full frame) and fringed revealed areas at new poses."""

    LEGACY = {"window": "free", "background_cell": 0}  # runs saved before an option keep what they were trained with


@dataclass
class PersonGeometry:
    """What the model needs to know about the person's data (from the dataset; saved with a run)."""

    size: int
    """Training frame side in pixels."""
    intrinsics: list[list[float]]
    """3x3 camera intrinsics at ``size``."""
    box_lo: list[float]
    """Lower corner of the head box in head space."""
    box_hi: list[float]
    """Upper corner of the head box."""
    region_lo: list[list[float]] = field(default_factory=list)
    """[R, 3] lower corners of the landmark regions' boxes (mouth, eyes)."""
    region_hi: list[list[float]] = field(default_factory=list)
    """[R, 3] upper corners."""
    num_frames: int = 1
    """Frames in the training clip (one appearance code each)."""
    valid_box: list[float] = field(default_factory=lambda: [0.0, 0.0, 1.0, 1.0])
    """(x0, y0, x1, y1) of the frames' real pixels, in fractions of the side: outside it the dataset's crop
    reached past the source frame (padding, never trained on), and rendered frames replicate the edges of
    this box there, as the dataset's frames do (`valid_pixels`)."""


def valid_pixels(box: list[float] | tuple[float, ...], size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) half-open pixel range of a ``size`` image whose pixels lie wholly inside ``box``
    (fractions of the side, `PersonGeometry.valid_box`); never empty."""
    x0, y0 = (min(size - 1, math.ceil(v * size - 1e-4)) for v in box[:2])
    x1, y1 = (math.floor(v * size + 1e-4) for v in box[2:])
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def replicate_edges(image: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    """``image`` [B, H, W, ...] with the pixels outside ``box`` (x0, y0, x1, y1) replaced by the nearest pixel
    inside it (as `cv2.BORDER_REPLICATE` pads)."""
    x0, y0, x1, y1 = box
    h, w = image.shape[1:3]
    if (x0, y0, x1, y1) == (0, 0, w, h):
        return image
    rows = torch.arange(h, device=image.device).clamp(y0, y1 - 1)
    cols = torch.arange(w, device=image.device).clamp(x0, x1 - 1)
    return image[:, rows][:, :, cols]


@dataclass
class RenderOutput:
    """Rendered frames."""

    rgb: Tensor
    """[B, H, W, 3] in [0, 1]: over the background (``parts="full"``), else premultiplied by ``alpha``."""
    alpha: Tensor
    """[B, H, W] coverage of what was rendered (1 everywhere for ``full``)."""
    depth: Tensor
    """[B, H, W] camera z-depth of the head (head units), 0 where the head is absent."""
    head_alpha: Tensor
    """[B, H, W] coverage of the head alone."""
    head_rgb: Tensor
    """[B, H, W, 3] the head alone, premultiplied by ``head_alpha``."""


@dataclass
class RayBatch:
    """Training rays of B frames."""

    frames: Tensor
    """[B] dataset frame index (appearance code)."""
    window: Tensor
    """[B, 5, 68, 3] landmark offsets of the frames' windows."""
    c2w: Tensor
    """[B, 4, 4] cameras."""
    ray_frame: Tensor
    """[N] index into the B frames."""
    u: Tensor
    """[N] pixel x (centres at +0.5)."""
    v: Tensor
    """[N] pixel y."""
    rgb: Tensor
    """[N, 3] target colour in [0, 1]."""
    label: Tensor
    """[N] parsing label (0 background, 1 head, 2 torso)."""
    bg: Tensor
    """[N, 3] background colour."""
    depth: Tensor | None = None
    """[N] camera z-depth of the face surface (from the tracked mesh) where known, NaN elsewhere."""


class RenderModel(Savable, nn.Module):
    """Everything a render run saves: build with a config and the person's geometry."""

    config_args = {"config": ModelConfig, "geometry": PersonGeometry}
    record_keys = {"config": "model"}

    def __init__(self, config: ModelConfig, geometry: PersonGeometry) -> None:
        super().__init__()
        self.config = config
        self.geometry = geometry
        c, g = config, geometry
        self.size = int(g.size)
        self.condition = LandmarkCondition(embed_dim=c.embed_dim, hidden=c.hidden, window=c.window)
        self.head = HeadField(tuple(g.box_lo), tuple(g.box_hi), g.region_lo, g.region_hi, resolutions=c.resolutions,
                              channels=c.channels, embed_dim=c.embed_dim, hidden=c.hidden, layers=c.layers,
                              geo_dim=c.geo_dim, code_dim=c.code_dim)
        self.grid = OccupancyGrid(tuple(g.box_lo), tuple(g.box_hi), c.grid_resolution, c.density_threshold)
        self.head_codes = nn.Embedding(g.num_frames, c.code_dim)
        self.torso = TorsoField(c.torso_resolutions, c.torso_channels, code_dim=c.code_dim, hidden=c.hidden)
        self.torso_codes = nn.Embedding(g.num_frames, c.code_dim)
        nn.init.zeros_(self.head_codes.weight)
        nn.init.zeros_(self.torso_codes.weight)
        self.register_buffer("K", torch.tensor(g.intrinsics, dtype=torch.float32))
        self.register_buffer("background", torch.zeros(self.size, self.size, 3, dtype=torch.uint8))
        self.register_buffer("torso_region", torch.ones(self.size, self.size, dtype=torch.bool))
        if c.background_cell > 0:
            side = -(-self.size // c.background_cell)
            self.background_residual = nn.Parameter(torch.zeros(1, 3, side, side))  # colour correction, [0, 1] units
            self.register_buffer("unseen", torch.zeros(self.size, self.size, dtype=torch.bool))  # where it applies
        else:  # saved models without it load and render as before
            self.register_parameter("background_residual", None)
            self.register_buffer("unseen", None)
        self._background_cache: dict = {}
        self.register_buffer("pose_mean", torch.zeros(12))
        self.register_buffer("pose_std", torch.ones(12))
        self.amp_dtype: torch.dtype | None = None  # the fields run under autocast with this dtype (None: fp32)

    def _autocast(self):
        return autocast(self.K.device, self.amp_dtype)

    # --- person data ------------------------------------------------------------------------------
    def set_person(self, background: Tensor, torso_region: Tensor, c2w: Tensor, offsets: Tensor,
                   unseen: Tensor | None = None) -> None:
        """Store the background [S, S, 3] uint8, the torso's pixel region [S, S] bool, and the pose and
        landmark statistics of the training frames (c2w [T, 4, 4], offsets [T, 68, 3]). ``unseen`` [S, S] bool:
        where the background was never seen (inpainted), the only pixels its learned correction may change
        (default: none)."""
        self.background.copy_(background)
        self.torso_region.copy_(torso_region)
        if self.unseen is not None:
            self.unseen.copy_(unseen if unseen is not None else torch.zeros_like(self.unseen))
        p = c2w[:, :3, :4].reshape(-1, 12)
        self.pose_mean.copy_(p.mean(0))
        self.pose_std.copy_(p.std(0).clamp_min(1e-3))
        self.condition.set_statistics(offsets)

    def pose_features(self, c2w: Tensor) -> Tensor:
        """Normalised head pose [B, 12] of cameras [B, 4, 4] (the torso's condition)."""
        return (c2w[:, :3, :4].reshape(-1, 12) - self.pose_mean) / self.pose_std

    # --- head ------------------------------------------------------------------------------------
    def density_at(self, x: Tensor, cond: Tensor) -> Tensor:
        """Head density [N] at x [N, 3] for one frame's condition cond [R, E]."""
        return self.head.density(x, cond[None], torch.zeros(x.shape[0], dtype=torch.long, device=x.device))[0]

    def render_head(self, o: Tensor, d: Tensor, cond: Tensor, ray_frame: Tensor, code: Tensor, samples: int,
                    perturb: bool = False, segments: int = 0, stop_transmittance: float = 1e-4,
                    min_weight: float = 1e-3, visible: Tensor | None = None,
                    target_depth: Tensor | None = None) -> dict[str, Tensor]:
        """March rays o, d [N, 3] through the head box.

        cond [B, R, E] and code [B, A] per frame, ray_frame [N] picks a ray's frame. ``samples`` points per
        ray, evenly spaced between the box entry and exit (jittered when ``perturb``), marched in ``segments``
        chunks (0: `march_segments` of the device): a ray stops once its transmittance is below
        ``stop_transmittance``, and only points in occupied cells are sent to the network.
        - with gradients enabled (training) or a ``target_depth``: two passes, densities without gradients to
          find the points reached, then density and colour again with gradients at those points;
        - without (inference): one pass, colour only where the weight is at least ``min_weight``, summed
          straight into the rays segment by segment.
        Returns premultiplied ``rgb`` [N, 3], ``alpha`` [N] and ``depth`` [N] (expected z-depth, not
        normalised by alpha). ``visible`` (bool [res^3]), if given, gets the occupancy cells of the points
        seen with a transmittance above 1e-3 set. With ``target_depth`` [N] (NaN: none) also
        ``depth_error`` [N]: ``sum_i w_i |t_i - target|``, how far the ray's weight lies from that depth.
        """
        n = o.shape[0]
        dev = o.device
        segments = segments or march_segments(dev)
        rgb = torch.zeros(n, 3, device=dev)
        alpha = torch.zeros(n, device=dev)
        depth = torch.zeros(n, device=dev)
        near, far, hit = ray_box(o, d, self.head.lo, self.head.hi)
        rays = hit.nonzero()[:, 0]
        if rays.numel() == 0:
            return {"rgb": rgb, "alpha": alpha, "depth": depth, "distortion": torch.zeros(n, device=dev),
                    "depth_error": torch.zeros(n, device=dev)}
        m = rays.numel()
        o, d, near, far, fr = o[rays], d[rays], near[rays], far[rays], ray_frame[rays]
        step = (far - near) / samples  # [M]
        delta = (step * d.norm(dim=-1))[:, None].expand(m, samples)  # world distance between samples [M, S]
        k = torch.arange(samples, device=dev, dtype=torch.float32)
        jitter = torch.rand(m, samples, device=dev) if perturb else 0.5
        t = near[:, None] + (k + jitter) * step[:, None]  # [M, S]
        lo, span = self.head.lo, self.head.hi - self.head.lo
        base, ahead = (o - lo) / span * 2 - 1, d / span * 2  # rays in the grid's [-1, 1] box: base + t * ahead
        bounds = [round(samples * i / segments) for i in range(segments + 1)]

        def points(i: Tensor, j: Tensor) -> Tensor:
            return o[i] + t[i, j, None] * d[i]

        if not torch.is_grad_enabled() and target_depth is None:
            ray_rgb, ray_alpha, ray_depth = self._march(base, ahead, t, delta, points, cond, code, fr, bounds,
                                                        stop_transmittance, min_weight, visible)
            return {"rgb": rgb.index_put((rays,), ray_rgb), "alpha": alpha.index_put((rays,), ray_alpha),
                    "depth": depth.index_put((rays,), ray_depth)}

        # 1. densities without gradients, marching segment by segment (the occupancy looked up only for the
        # rays still marching)
        sigma0 = torch.zeros(m, samples, device=dev)
        reached = torch.zeros(m, samples, dtype=torch.bool, device=dev)
        trans = torch.ones(m, device=dev)
        marching = torch.arange(m, device=dev)
        with torch.no_grad():
            for s0, s1 in zip(bounds[:-1], bounds[1:]):
                a = marching
                occ = self.grid.query_normalised(base[a, None] + t[a, s0:s1, None] * ahead[a, None])  # [A, s1 - s0]
                idx = occ.nonzero()
                if idx.numel():
                    i, j = a[idx[:, 0]], s0 + idx[:, 1]
                    reached[i, j] = True
                    with self._autocast():
                        s, _ = self.head.density(points(i, j), cond, fr[i])
                    sigma0[i, j] = s.float()
                if s1 == samples:
                    break
                trans_a = trans[a] * torch.exp(-(sigma0[a, s0:s1] * delta[a, s0:s1]).sum(1))
                trans[a] = trans_a
                marching = a[trans_a > stop_transmittance]
                if marching.numel() == 0:
                    break
            tau = sigma0 * delta
            before = torch.exp(-(torch.cumsum(tau, 1) - tau))  # [M, S] transmittance at each sample
            reached &= before > stop_transmittance  # not the points of a segment behind where the ray stopped

        if visible is not None:
            occ = self.grid.query_normalised(base[:, None] + t[..., None] * ahead[:, None])  # [M, S]
            seen = occ & (before > 1e-3)
            i, j = seen.nonzero().unbind(1)
            cells, _ = self.grid.cell_index(points(i, j))
            visible[cells] = True

        # 2. density and colour with gradients where the rays reached
        color = torch.zeros(m, samples, 3, device=dev)
        idx = reached.nonzero()
        sigma = torch.zeros(m, samples, device=dev)
        if idx.numel():
            i, j = idx[:, 0], idx[:, 1]
            with self._autocast():
                s, geo = self.head.density(points(i, j), cond, fr[i])
                c = self.head.color(geo, code[fr[i]])
            sigma = sigma.index_put((i, j), s.float())
            color = color.index_put((i, j), c.float())
        w = render_weights(sigma, delta)
        ray_rgb = (w[..., None] * color).sum(1)
        rgb = rgb.index_put((rays,), ray_rgb)
        alpha = alpha.index_put((rays,), w.sum(1))
        depth = depth.index_put((rays,), (w * t).sum(1))
        out = {"rgb": rgb, "alpha": alpha, "depth": depth}
        if torch.is_grad_enabled():  # on the ray's box interval mapped to [0, 1]
            pos = ((k + jitter) / samples) * torch.ones_like(w)
            out["distortion"] = torch.zeros(n, device=dev).index_put(
                (rays,), distortion(w, pos, torch.full_like(w, 1 / samples)))
        if target_depth is not None:
            z = target_depth[rays]
            err = (w * (t - z.nan_to_num()[:, None]).abs()).sum(1)
            out["depth_error"] = torch.zeros(n, device=dev).index_put((rays,), torch.where(z.isnan(), 0.0, err))
        return out

    def _march(self, base: Tensor, ahead: Tensor, t: Tensor, delta: Tensor, points, cond: Tensor, code: Tensor,
               fr: Tensor, bounds: list[int], stop_transmittance: float, min_weight: float,
               visible: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """`render_head` without gradients, in one pass over the segments of M rays (``base + t * ahead`` in
        the grid's box; t, delta [M, S]): premultiplied rgb [M, 3], alpha [M] and depth [M]. A segment's
        weights are ``T_start * exp(-sum of tau before the point in the segment) * (1 - exp(-tau))``, the same
        as `render_weights` over the whole ray."""
        m, dev = t.shape[0], t.device
        rgb = torch.zeros(m, 3, device=dev)
        alpha = torch.zeros(m, device=dev)
        depth = torch.zeros(m, device=dev)
        trans = torch.ones(m, device=dev)
        marching = torch.arange(m, device=dev)
        for s0, s1 in zip(bounds[:-1], bounds[1:]):
            a = marching
            occ = self.grid.query_normalised(base[a, None] + t[a, s0:s1, None] * ahead[a, None])  # [A, L]
            idx = occ.nonzero()
            if idx.numel() == 0:
                continue
            hit, r = torch.unique_consecutive(idx[:, 0], return_inverse=True)  # rows of a with points; row in hit
            j = idx[:, 1]  # sample in the segment
            a_hit = a[hit]
            i = a_hit[r]
            with self._autocast():
                s, geo = self.head.density(points(i, s0 + j), cond, fr[i])
            tau = torch.zeros(len(hit), s1 - s0, device=dev).index_put_((r, j), s.float()) * delta[a_hit, :1]
            before = torch.exp(-(torch.cumsum(tau, 1) - tau)) * trans[a_hit, None]  # transmittance at each sample
            w = before * -torch.expm1(-tau)  # [H, L]
            if visible is not None:
                seen = (occ[hit] & (before > 1e-3)).nonzero()
                cells, _ = self.grid.cell_index(points(a_hit[seen[:, 0]], s0 + seen[:, 1]))
                visible[cells] = True
            wp = w[r, j]
            sel = (wp >= min_weight).nonzero()[:, 0]
            if sel.numel():
                with self._autocast():
                    c = self.head.color(geo[sel], code[fr[i[sel]]])
                rgb.index_add_(0, i[sel], wp[sel, None] * c.float())
            alpha[a_hit] += w.sum(1)
            depth[a_hit] += (w * t[a_hit, s0:s1]).sum(1)
            trans[a_hit] *= torch.exp(-tau.sum(1))
            marching = a[trans[a] > stop_transmittance]
            if marching.numel() == 0:
                break
        return rgb, alpha, depth

    @torch.no_grad()
    def update_occupancy(self, window: Tensor, decay: float = 0.9) -> float:
        """Refresh the occupancy grid with the condition of one frame's window [5, 68, 3] (a callback
        of the trainer). Returns the occupied fraction."""
        cond = self.condition(window[None])[0]
        return self.grid.update(lambda x: self.density_at(x, cond), decay=decay)

    @torch.no_grad()
    def prune_invisible(self, c2w: Tensor, windows: Tensor, chunk: int = 1 << 16) -> float:
        """Mark occupied cells that no view of c2w [F, 4, 4] (with landmark windows [F, 5, 68, 3]) sees
        as empty (the head's inside), keeping a one-cell margin; returns the occupied fraction."""
        r = self.grid.resolution
        visible = torch.zeros(r ** 3, dtype=torch.bool, device=self.K.device)
        zero = torch.zeros(1, self.config.code_dim, device=self.K.device)
        x0, y0, x1, y1 = valid_pixels(self.geometry.valid_box, self.size)  # padding sees nothing
        for i in range(c2w.shape[0]):
            o, d = image_rays(c2w[i:i + 1], self.K, self.size, self.size)
            o, d = o[0, y0:y1, x0:x1].reshape(-1, 3), d[0, y0:y1, x0:x1].reshape(-1, 3)
            cond = self.condition(windows[i:i + 1])
            frame = torch.zeros(o.shape[0], dtype=torch.long, device=o.device)
            for j in range(0, o.shape[0], chunk):
                self.render_head(o[j:j + chunk], d[j:j + chunk], cond, frame[j:j + chunk], zero,
                                 self.config.infer_samples, visible=visible)
        grown = F.max_pool3d(visible.view(1, 1, r, r, r).float(), 3, stride=1, padding=1)[0, 0] > 0
        self.grid.occupied &= grown
        return float(self.grid.occupied.float().mean())

    # --- torso -----------------------------------------------------------------------------------
    def render_torso(self, u: Tensor, v: Tensor, size: int, pose: Tensor, ray_frame: Tensor, code: Tensor,
                     where: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Torso colour [N, 3] and alpha [N] at pixels u, v [N] of a ``size`` image; pose [B, 12] and
        code [B, A] per frame. Alpha is 0 outside the torso's region and where ``where`` [N] (bool) is False."""
        uv = torch.stack([u, v], -1) / size * 2 - 1
        ri = (v / size * self.size).long().clamp(0, self.size - 1)
        ci = (u / size * self.size).long().clamp(0, self.size - 1)
        inside = self.torso_region[ri, ci]
        if where is not None:
            inside &= where
        rgb = torch.zeros(u.shape[0], 3, device=u.device)
        alpha = torch.zeros(u.shape[0], device=u.device)
        idx = inside.nonzero()[:, 0]
        if idx.numel():
            fr = ray_frame[idx]
            with self._autocast():
                c, a = self.torso(uv[idx], pose[fr], code[fr])
            rgb = rgb.index_put((idx,), c.float())
            alpha = alpha.index_put((idx,), a.float())
        return rgb, alpha

    def background_correction(self) -> Tensor:
        """The learned background correction [S, S, 3] ([0, 1] units): the plane upsampled bilinearly, zero
        wherever the background was seen (outside `unseen`) and everywhere for models without it."""
        if self.background_residual is None:
            return torch.zeros(self.size, self.size, 3, device=self.K.device)
        up = F.interpolate(self.background_residual, size=(self.size, self.size), mode="bilinear",
                           align_corners=False)[0].permute(1, 2, 0)
        return up * self.unseen[..., None]

    def background_at(self, size: int) -> Tensor:
        """The background [size, size, 3] float in [0, 1], corrected where it was never seen. Without gradients
        it is computed once per size and kept until the weights change."""
        grad = torch.is_grad_enabled()
        parts = [t for t in (self.background, self.background_residual, self.unseen) if t is not None]
        key = (size, *((t.device, t.data_ptr(), t._version) for t in parts))  # _version: bumped by in-place writes
        if not grad and self._background_cache.get("key") == key:
            return self._background_cache["image"]
        bg = self.background.float().div(255)
        if self.background_residual is not None:
            bg = (bg + self.background_correction()).clamp(0, 1)
        if size != self.size:
            bg = F.interpolate(bg.permute(2, 0, 1)[None], size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False)[0].permute(1, 2, 0)
        if not grad:
            self._background_cache = {"key": key, "image": bg}
        return bg

    # --- full frames -----------------------------------------------------------------------------
    def render_images(self, c2w: Tensor, window: Tensor, size: int | None = None, parts: str = "full",
                      chunk: int = 1 << 16) -> RenderOutput:
        """Render B frames: c2w [B, 4, 4], window [B, 5, 68, 3] (or [B, 68, 3]) -> `RenderOutput` at
        ``size`` (default: the training size); ``parts``: full, person (head + torso) or head. Only the pixels
        of `PersonGeometry.valid_box` are rendered; the padding around them replicates their edges."""
        if parts not in PARTS:
            raise ValueError(f"parts must be one of {PARTS}, got {parts!r}")
        size = int(size or self.size)
        b = c2w.shape[0]
        dev = self.K.device
        c2w = c2w.to(dev, torch.float32)
        K = self.K.clone()
        K[:2] *= size / self.size
        cond = self.condition(window.to(dev, torch.float32))
        zero = torch.zeros(b, self.config.code_dim, device=dev)
        o, d = image_rays(c2w, K, size, size)
        o, d = o.reshape(-1, 3), d.reshape(-1, 3)
        n = o.shape[0]
        ray_frame = torch.arange(b, device=dev).repeat_interleave(size * size)
        # only the rays that may meet an occupied cell, in the real part of the frame
        box = valid_pixels(self.geometry.valid_box, size)
        real = torch.zeros(size, size, dtype=torch.bool, device=dev)
        real[box[1]:box[3], box[0]:box[2]] = True
        rays = (self.grid.footprint(c2w, K, size) & real).reshape(-1).nonzero()[:, 0]
        h_rgb = torch.zeros(n, 3, device=dev)
        h_alpha = torch.zeros(n, device=dev)
        h_depth = torch.zeros(n, device=dev)
        for i in range(0, rays.numel(), chunk):
            sel = rays[i:i + chunk]
            r = self.render_head(o[sel], d[sel], cond, ray_frame[sel], zero, self.config.infer_samples)
            h_rgb[sel], h_alpha[sel], h_depth[sel] = r["rgb"], r["alpha"], r["depth"]
        h_depth = torch.where(h_alpha > 1e-4, h_depth / h_alpha.clamp_min(1e-4), torch.zeros_like(h_depth))
        rgb, alpha = h_rgb, h_alpha
        if parts != "head":
            v, u = torch.meshgrid(torch.arange(size, device=dev) + 0.5, torch.arange(size, device=dev) + 0.5,
                                  indexing="ij")
            u, v = u.reshape(-1).repeat(b), v.reshape(-1).repeat(b)
            # not behind the opaque head (where the torso would change a pixel by less than HIDDEN)
            t_rgb, t_alpha = self.render_torso(u, v, size, self.pose_features(c2w), ray_frame, zero,
                                               where=(h_alpha < 1 - HIDDEN) & real.reshape(-1).repeat(b))
            if parts == "full":
                bg = self.background_at(size).reshape(-1, 3).repeat(b, 1)
                rgb = over(h_rgb, h_alpha, over(t_rgb * t_alpha[:, None], t_alpha, bg))
                alpha = torch.ones_like(h_alpha)
            else:
                rgb = over(h_rgb, h_alpha, t_rgb * t_alpha[:, None])
                alpha = h_alpha + (1 - h_alpha) * t_alpha
        shape = (b, size, size)
        fill = lambda x: replicate_edges(x, box)  # noqa: E731
        return RenderOutput(fill(rgb.reshape(*shape, 3).clamp(0, 1)), fill(alpha.reshape(shape)),
                            fill(h_depth.reshape(shape)), fill(h_alpha.reshape(shape)),
                            fill(h_rgb.reshape(*shape, 3).clamp(0, 1)))

    # --- losses ----------------------------------------------------------------------------------
    def head_loss_dict(self, batch: RayBatch, alpha_weight: float = 0.05, code_weight: float = 1e-3,
                       distortion_weight: float = 1e-2, depth_weight: float = 0.02,
                       perceptual: nn.Module | None = None, perceptual_weight: float = 0.0, patch: int = 0
                       ) -> tuple[dict[str, Tensor], Tensor]:
        """Head phase: composited over a random colour per ray, the head should give the frame's colour on
        head pixels and the random colour elsewhere (so its alpha follows the head label and it cannot
        borrow the background's colour). Rays through tracked mesh vertices (``batch.depth``) pull the
        head's surface to the mesh's depth, which the near-frontal views alone leave ambiguous. With
        ``perceptual`` (LPIPS: two [B, 3, P, P] images in [-1, 1] -> [B]), the first ``patch``^2 rays of
        each frame form a mouth patch that also gets a perceptual loss. Returns (weighted losses,
        predicted rgb [N, 3] composited over the true background)."""
        cond = self.condition(batch.window)
        code = self.head_codes(batch.frames)
        o, d = _batch_rays(batch, self.K)
        out = self.render_head(o, d, cond, batch.ray_frame, code, self.config.train_samples, perturb=True,
                               target_depth=batch.depth)
        is_head = batch.label == 1
        behind = torch.rand_like(batch.rgb)
        target = torch.where(is_head[:, None], batch.rgb, behind)
        pred = over(out["rgb"], out["alpha"], behind)
        losses = {"rgb": F.mse_loss(pred, target),
                  "alpha": alpha_weight * F.mse_loss(out["alpha"], is_head.float()),
                  "distortion": distortion_weight * out["distortion"].mean(),
                  "code": code_weight * code.pow(2).mean()}
        if batch.depth is not None and depth_weight > 0:
            known = (~batch.depth.isnan() & is_head).float()
            losses["depth"] = depth_weight * (out["depth_error"] * known).sum() / known.sum().clamp_min(1)
        if perceptual is not None and patch > 0 and perceptual_weight > 0:
            b = batch.frames.shape[0]
            per = pred.shape[0] // b

            def patches(x: Tensor) -> Tensor:
                return x.view(b, per, 3)[:, :patch * patch].reshape(b, patch, patch, 3).permute(0, 3, 1, 2) * 2 - 1

            losses["perceptual"] = perceptual_weight * perceptual(patches(pred), patches(target)).mean()
        return losses, over(out["rgb"], out["alpha"], torch.where(is_head[:, None], batch.bg, batch.rgb))

    def torso_loss_dict(self, batch: RayBatch, alpha_weight: float = 0.02, code_weight: float = 1e-3,
                        background_weight: float = 0.1) -> tuple[dict[str, Tensor], Tensor]:
        """Torso phase (head frozen): head over torso over background should give the frame; the torso's
        alpha follows the torso label where the head does not cover it. The background's learned correction
        (`background_correction`, if the model has one) learns from the colour of the pixels labelled
        background (where head and torso leave it visible; a person pixel is no evidence of what is behind
        it), pulled toward the inpainting with ``background_weight`` (relative to the colour loss)."""
        with torch.no_grad():
            cond = self.condition(batch.window)
            o, d = _batch_rays(batch, self.K)
            head = self.render_head(o, d, cond, batch.ray_frame, self.head_codes(batch.frames),
                                    self.config.infer_samples)
        code = self.torso_codes(batch.frames)
        t_rgb, t_alpha = self.render_torso(batch.u, batch.v, self.size, self.pose_features(batch.c2w),
                                           batch.ray_frame, code)
        bg, free = batch.bg, batch.label != 1
        if self.background_residual is not None:
            vi, ui = batch.v.long().clamp(0, self.size - 1), batch.u.long().clamp(0, self.size - 1)
            correction = self.background_correction()[vi, ui]  # [N, 3]
            shows = (batch.label == 0)[:, None]  # only a pixel labelled background shows it: the rest of the
            bg = (bg + torch.where(shows, correction, correction.detach())).clamp(0, 1)  # person is no evidence
        pred = over(head["rgb"], head["alpha"], over(t_rgb * t_alpha[:, None], t_alpha, bg))
        target = (batch.label == 2).float()
        alpha_loss = ((t_alpha - target).pow(2) * free).sum() / free.sum().clamp_min(1)
        losses = {"rgb": F.mse_loss(pred, batch.rgb), "alpha": alpha_weight * alpha_loss,
                  "code": code_weight * code.pow(2).mean()}
        if self.background_residual is not None:
            losses["background"] = background_weight * correction.pow(2).mean()
        return losses, pred

    def head_parameters(self) -> list[dict]:
        """Parameter groups of the head phase (planes learn faster than the MLPs)."""
        planes = list(self.head.encoding.parameters())
        ids = {id(p) for p in planes}
        rest = [p for p in list(self.head.parameters()) + list(self.condition.parameters()) if id(p) not in ids]
        return [{"params": planes, "lr_scale": 1.0}, {"params": rest, "lr_scale": 1.0},
                {"params": list(self.head_codes.parameters()), "lr_scale": 0.1}]

    def torso_parameters(self) -> list[dict]:
        planes = list(self.torso.encoding.parameters()) + list(self.torso.coarse.parameters())
        ids = {id(p) for p in planes}
        rest = [p for p in self.torso.parameters() if id(p) not in ids]
        groups = [{"params": planes, "lr_scale": 1.0}, {"params": rest, "lr_scale": 1.0},
                  {"params": list(self.torso_codes.parameters()), "lr_scale": 0.1}]
        if self.background_residual is not None:
            groups.append({"params": [self.background_residual], "lr_scale": 0.5})
        return groups


def march_segments(device: torch.device) -> int:
    """Segments a ray is marched in: on a CPU 8, so that the points behind a surface are skipped, on a GPU 1:
    each segment makes the host wait for the GPU twice (to size the points still marching), which costs more
    than the points it would skip."""
    return 1 if device.type == "cuda" else 8


def _batch_rays(batch: RayBatch, K: Tensor) -> tuple[Tensor, Tensor]:
    return pixel_rays(batch.c2w[batch.ray_frame], K, batch.u, batch.v)
