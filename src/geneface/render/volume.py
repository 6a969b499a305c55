"""Cameras, rays and volume rendering, as small functions on tensors.

Cameras follow OpenCV (x right, y down, z forward). A ray is ``o + t * d`` with ``d = R K^-1 [u, v, 1]``
left unnormalised, so ``t`` is the camera z-depth of the point and world distances are ``dt * |d|``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pixel_rays(c2w: Tensor, K: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Rays through pixel positions.

    c2w [R, 4, 4] camera-to-world per ray; K [3, 3] or [R, 3, 3]; u, v [R] pixel coordinates (pixel
    centres at integer + 0.5). Returns origins [R, 3] and directions [R, 3] (camera z component 1).
    """
    K = K.expand(c2w.shape[0], 3, 3) if K.dim() == 2 else K
    cam = torch.stack([(u - K[:, 0, 2]) / K[:, 0, 0], (v - K[:, 1, 2]) / K[:, 1, 1], torch.ones_like(u)], -1)
    d = torch.einsum("rij,rj->ri", c2w[:, :3, :3], cam)
    return c2w[:, :3, 3], d


def image_rays(c2w: Tensor, K: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """All pixel rays of B images: c2w [B, 4, 4], K [3, 3] -> origins, directions [B, H, W, 3]."""
    b = c2w.shape[0]
    dev = c2w.device
    v, u = torch.meshgrid(torch.arange(height, device=dev, dtype=c2w.dtype) + 0.5,
                          torch.arange(width, device=dev, dtype=c2w.dtype) + 0.5, indexing="ij")
    cam = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], -1)  # [H, W, 3]
    d = torch.einsum("bij,hwj->bhwi", c2w[:, :3, :3], cam)
    o = c2w[:, None, None, :3, 3].expand(b, height, width, 3)
    return o, d


def ray_box(o: Tensor, d: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Slab intersection of rays o, d [R, 3] with the box [lo, hi] ([3] each).

    Returns t_near [R] (clamped at 0), t_far [R] and hit [R] (bool: the ray meets the box in front of it).
    """
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t0 = (lo - o) * inv
    t1 = (hi - o) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far, far > near


def render_weights(sigma: Tensor, delta: Tensor) -> Tensor:
    """Volume-rendering weights ``w_i = T_i (1 - exp(-sigma_i delta_i))`` with transmittance
    ``T_i = exp(-sum_{j<i} sigma_j delta_j)``; sigma, delta [R, S] -> w [R, S].

    ``sum_i w_i = 1 - exp(-sum_i sigma_i delta_i) <= 1``. Equivalent to `render_weights_reference`
    (``alpha_i prod_{j<i} (1 - alpha_j)``).
    """
    tau = sigma * delta
    before = torch.cumsum(tau, -1) - tau  # exclusive prefix sum
    return torch.exp(-before) * -torch.expm1(-tau)


def render_weights_reference(sigma: Tensor, delta: Tensor) -> Tensor:
    """Textbook loop over samples: alpha compositing front to back; for tests."""
    alpha = 1 - torch.exp(-sigma * delta)
    trans = torch.ones_like(sigma[:, 0])
    out = []
    for i in range(sigma.shape[1]):
        out.append(trans * alpha[:, i])
        trans = trans * (1 - alpha[:, i])
    return torch.stack(out, -1)


def distortion(w: Tensor, s: Tensor, ds: Tensor) -> Tensor:
    """Distortion loss per ray (mip-NeRF 360): weights w [R, S] at sorted interval midpoints s [R, S] with
    interval lengths ds [R, S] ->
    ``sum_{i,j} w_i w_j |s_i - s_j| + 1/3 sum_i w_i^2 ds_i`` [R], computed in O(S) with prefix sums as
    ``2 sum_i w_i (s_i W_{<i} - (ws)_{<i})`` for the first term; see `distortion_reference`."""
    cw = torch.cumsum(w, -1) - w
    cws = torch.cumsum(w * s, -1) - w * s
    return 2 * (w * (s * cw - cws)).sum(-1) + (w.pow(2) * ds).sum(-1) / 3


def distortion_reference(w: Tensor, s: Tensor, ds: Tensor) -> Tensor:
    """The O(S^2) double sum of `distortion`; for tests."""
    return (w[:, :, None] * w[:, None, :] * (s[:, :, None] - s[:, None, :]).abs()).sum((1, 2)) \
        + (w.pow(2) * ds).sum(-1) / 3


def over(front_rgb: Tensor, front_alpha: Tensor, back_rgb: Tensor) -> Tensor:
    """Composite premultiplied ``front_rgb [..., 3]`` with ``front_alpha [...]`` over ``back_rgb [..., 3]``."""
    return front_rgb + (1 - front_alpha).unsqueeze(-1) * back_rgb


def psnr(mse: Tensor | float) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error on [0, 1] images."""
    mse = float(mse)
    return float("inf") if mse <= 0 else -10.0 * torch.log10(torch.tensor(mse)).item()
