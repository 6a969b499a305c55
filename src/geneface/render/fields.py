"""Neural fields: the landmark condition, the head radiance field and the 2-D torso field."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..constants import BROWS_68, EYES_68, MOUTH_68
from .encoding import PlaneEncoding, TriPlaneEncoding

# Landmark regions of the iBUG-68 layout that drive separate parts of the head. The mouth path also sees
# the lower jaw (it moves with the mouth); the eye path sees brows and eyes.
REGIONS: dict[str, tuple[int, ...]] = {
    "mouth": tuple(range(4, 13)) + tuple(MOUTH_68.tolist()),
    "eyes": tuple(BROWS_68.tolist()) + tuple(EYES_68.tolist()),
}
WINDOW = 5  # frames in the condition's attention window (t-2 .. t+2)


class _TruncExp(torch.autograd.Function):
    """exp with its gradient clamped (instant-ngp's density activation)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(-15, 15))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x.float().clamp(max=15))


def mlp(dims: list[int], out_init_zero: bool = False) -> nn.Sequential:
    """Linear layers with ReLU between them."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    if out_init_zero:
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


WINDOW_MODES = ("centred", "free")
CENTRED_SHARPNESS = 1.0
"""Initial decay per frame of the centred window's logits (centre weight 0.5, +-1: 0.18, +-2: 0.07)."""
_SOFTPLUS_INV_SHARPNESS = math.log(math.expm1(CENTRED_SHARPNESS))


class LandmarkCondition(nn.Module):
    """68-landmark windows -> one embedding per region, smoothed by attention over the window.

    window [B, 5, 68, 3] raw offsets -> normalised with the person's statistics (``(x - mean) / std``)
    -> per region an MLP -> [B, 5, R, E] -> weights over the 5 frames -> [B, R, E]. The weights come from
    an MLP over all the frames' embeddings:

    - ``window="centred"``: a kernel symmetric about the frame and decaying with the distance from it,
      ``softmax(-|k| * s)`` over offsets k = -2..2 with a sharpness ``s >= 0`` from the MLP; the eyes take
      the frame's own embedding (a blink lasts a frame or two: any smoothing half-closes it). The condition
      can never lag or lead the frame.
    - ``window="free"``: any weights (a softmax of the MLP's 5 outputs). Trained ones tend to pick one
      frame, not always the centre one: a condition two frames off loses blinks and shifts the lips in
      time. Runs saved before the option read as ``free``.
    """

    def __init__(self, embed_dim: int = 16, hidden: int = 64, window: str = "centred") -> None:
        super().__init__()
        if window not in WINDOW_MODES:
            raise ValueError(f"window must be one of {WINDOW_MODES}, got {window!r}")
        self.window = window
        self.embed_dim = int(embed_dim)
        self.region_names = tuple(REGIONS)
        for name in self.region_names:
            self.register_buffer(f"idx_{name}", torch.tensor(REGIONS[name]), persistent=False)
        self.register_buffer("mean", torch.zeros(68, 3))
        self.register_buffer("std", torch.ones(68, 3))
        self.encoders = nn.ModuleList(
            nn.Sequential(nn.Linear(3 * len(REGIONS[n]), hidden), nn.LeakyReLU(0.02), nn.Linear(hidden, embed_dim))
            for n in self.region_names)
        r = len(self.region_names)
        self.attention = nn.Sequential(nn.Linear(WINDOW * r * embed_dim, 32), nn.LeakyReLU(0.02), nn.Linear(32, WINDOW))
        nn.init.zeros_(self.attention[-1].weight)  # starts as an even average over the window
        nn.init.zeros_(self.attention[-1].bias)

    @property
    def num_regions(self) -> int:
        return len(self.region_names)

    def set_statistics(self, offsets: Tensor) -> None:
        """Per-person normalisation from training offsets [T, 68, 3] (std floored at a tenth of its median)."""
        std = offsets.std(0)
        self.mean.copy_(offsets.mean(0))
        self.std.copy_(std.clamp_min(0.1 * float(std.median()) + 1e-6))

    def forward(self, window: Tensor) -> Tensor:
        """window [B, 5, 68, 3] (or [B, 68, 3], a still window) -> [B, R, E]."""
        if window.dim() == 3:
            window = window.unsqueeze(1).expand(-1, WINDOW, -1, -1)
        b = window.shape[0]
        x = (window - self.mean) / self.std
        emb = torch.stack([enc(x[:, :, getattr(self, f"idx_{n}")].reshape(b, WINDOW, -1))
                           for n, enc in zip(self.region_names, self.encoders)], 2)  # [B, 5, R, E]
        out = torch.einsum("bw,bwre->bre", self.window_weights(emb), emb)
        if self.window == "free":
            return out
        eyes = self.region_names.index("eyes")
        return torch.cat([out[:, :eyes], emb[:, WINDOW // 2, eyes:eyes + 1], out[:, eyes + 1:]], 1)

    def window_weights(self, emb: Tensor) -> Tensor:
        """Weights [B, 5] (summing to 1) of the window's frames from their embeddings [B, 5, R, E]."""
        logits = self.attention(emb.reshape(emb.shape[0], -1))  # [B, 5]
        if self.window == "free":
            return torch.softmax(logits, -1)
        sharp = F.softplus(logits.mean(-1, keepdim=True) + _SOFTPLUS_INV_SHARPNESS)  # [B, 1], >= 0
        k = (torch.arange(WINDOW, device=emb.device) - WINDOW // 2).abs().to(emb.dtype)
        return torch.softmax(-k * sharp, -1)  # symmetric, largest at the frame itself


class HeadField(nn.Module):
    """Radiance field of the head in canonical head space, conditioned per region.

    density: tri-plane features f(x) and the region embeddings, each gated by a learned attention from f(x)
    times a soft box around its region (from the person's mean landmarks), go through an MLP -> sigma and a
    geometry feature. colour: geometry feature + a per-frame appearance code -> rgb. Outside a region's box
    its landmarks cannot change the field, so the mouth moves and the rest of the head stays put.
    """

    def __init__(self, lo: tuple[float, float, float], hi: tuple[float, float, float],
                 region_lo: list[list[float]], region_hi: list[list[float]],
                 resolutions: tuple[int, ...] = (32, 64, 128), channels: int = 4, embed_dim: int = 16,
                 hidden: int = 64, layers: int = 1, geo_dim: int = 15, code_dim: int = 4,
                 region_softness: float = 0.05) -> None:
        super().__init__()
        self.register_buffer("lo", torch.tensor(lo, dtype=torch.float32))
        self.register_buffer("hi", torch.tensor(hi, dtype=torch.float32))
        self.register_buffer("region_lo", torch.tensor(region_lo, dtype=torch.float32))  # [R, 3]
        self.register_buffer("region_hi", torch.tensor(region_hi, dtype=torch.float32))  # [R, 3]
        self.softness = float(region_softness)
        self.num_regions = len(region_lo)
        self.embed_dim = int(embed_dim)
        self.code_dim = int(code_dim)
        self.encoding = TriPlaneEncoding(resolutions, channels)
        self.region_gate = nn.Linear(self.encoding.out_dim, self.num_regions * embed_dim)
        # the density MLP's first layer, split: spatial features, and the gated condition (added only
        # where a region reaches)
        self.sigma_in = nn.Linear(self.encoding.out_dim, hidden)
        self.cond_in = nn.Linear(self.num_regions * embed_dim, hidden, bias=False)
        nn.init.zeros_(self.cond_in.weight)  # the condition starts without effect and grows where it helps
        self.sigma_net = mlp([hidden] * layers + [1 + geo_dim])
        self.color_net = mlp([geo_dim + code_dim, hidden, 3])

    def region_prior(self, x: Tensor) -> Tensor:
        """Indicator [N, R] of each region's box at points x [N, 3]: 1 inside, ramping linearly to 0 over
        ``softness`` outside (exactly 0 beyond, so a region's landmarks cannot reach past it)."""
        inside = torch.minimum(x[:, None] - self.region_lo, self.region_hi - x[:, None])  # [N, R, 3]
        return (1 + inside / self.softness).clamp(0, 1).prod(-1)

    def near_regions(self, x: Tensor) -> Tensor:
        """Whether points x [N, 3] are within ``softness`` of a region's box (where the prior is > 0): bool [N]."""
        m = self.softness
        return ((x[:, None] > self.region_lo - m) & (x[:, None] < self.region_hi + m)).all(-1).any(-1)

    def density(self, x: Tensor, cond: Tensor, frame: Tensor) -> tuple[Tensor, Tensor]:
        """x [N, 3] head space; cond [B, R, E] per frame; frame [N] long picks each point's frame ->
        sigma [N] (float32), geometry feature [N, G]."""
        f = self.encoding((x - self.lo) / (self.hi - self.lo) * 2 - 1)  # [N, D]
        h = self.sigma_in(f)  # [N, H], changed in place below (its autograd needs only f)
        prior = self.region_prior(x)  # [N, R]
        idx = (prior.amax(-1) > 0).nonzero()[:, 0]  # the points near a region (as `near_regions`)
        if idx.numel():
            gate = torch.sigmoid(self.region_gate(f[idx])).view(-1, self.num_regions, self.embed_dim)
            gate = gate * prior[idx].unsqueeze(-1).to(gate.dtype)
            h.index_add_(0, idx, self.cond_in((gate * cond[frame[idx]].to(gate.dtype)).flatten(1)).to(h.dtype))
        h = self.sigma_net(torch.relu_(h))
        return trunc_exp(h[:, 0] - 1.0), h[:, 1:]

    def color(self, geo: Tensor, code: Tensor) -> Tensor:
        """geometry feature [N, G], appearance code [N, A] -> rgb [N, 3] in [0, 1]."""
        return torch.sigmoid(self.color_net(torch.cat([geo, code.to(geo.dtype)], -1)).float())


class TorsoField(nn.Module):
    """2-D torso in image space: pixel position uv [N, 2] in [-1, 1], head pose [N, P] (normalised),
    appearance code [N, A] -> rgb [N, 3], alpha [N].

    A pose-conditioned deformation moves uv (as the torso sways with the head), then multi-resolution
    planes and an MLP give colour and alpha.
    """

    def __init__(self, resolutions: tuple[int, ...] = (16, 32, 64, 128), channels: int = 4, pose_dim: int = 12,
                 pose_embed: int = 8, hidden: int = 64, code_dim: int = 4, max_shift: float = 0.1) -> None:
        super().__init__()
        self.max_shift = float(max_shift)
        self.pose_embed = nn.Linear(pose_dim, pose_embed)
        self.coarse = PlaneEncoding(tuple(r for r in resolutions[:2]), channels)
        self.deform = mlp([self.coarse.out_dim + pose_embed, 32, 2], out_init_zero=True)
        self.encoding = PlaneEncoding(resolutions, channels)
        self.net = mlp([self.encoding.out_dim + pose_embed + code_dim, hidden, hidden, 4])

    def forward(self, uv: Tensor, pose: Tensor, code: Tensor) -> tuple[Tensor, Tensor]:
        p = self.pose_embed(pose)
        shift = torch.tanh(self.deform(torch.cat([self.coarse(uv), p], -1))) * self.max_shift
        h = self.net(torch.cat([self.encoding(uv + shift), p, code.to(p.dtype)], -1)).float()
        return torch.sigmoid(h[:, :3]), torch.sigmoid(h[:, 3])
