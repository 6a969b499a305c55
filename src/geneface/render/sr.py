"""Per-person super-resolution (DESIGN.md step 10): a small 2-D network that brings the renderer's low-resolution
frames to 2x or 4x their side, trained on the person's own high-resolution frames.

The network works at the low resolution (residual 3x3 convolutions), upsamples with a pixel shuffle and adds
its output to a bicubic upsampling of the input, so an untrained one is close to bicubic. Besides the render it
sees a reference image at the output size, the per-pixel median of the person's training frames: the detail of
what barely moves (the torso's clothes, the background) that the low-resolution render has lost. It also
predicts, per output pixel, the share of that reference to take as it is (the blend): where nothing moves, the
reference is the answer at full detail, which a narrow network could not carry through its features. Training renders
the dataset's training frames once with the finished renderer and fits random patches of them (a share centred
on the mouth) to the dataset's frames at the output size.

A run folder::

    RUN/config.json          format, version, model config, sizes, training settings; written last
    RUN/model.safetensors    the network's weights
    RUN/reference.png        the reference image at the output size
    RUN/history.json         validation PSNR (full frame and mouth, super-resolved and bicubic) against step
    RUN/val/*.png            validation frames: bicubic | super-resolved | truth, one row per frame
    RUN/train_log.jsonl      losses every few steps
    RUN/train_state/         while training: weights + optimizer state + state.json, replaced atomically
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..cliopts import MAX_SEED, MAX_STEPS, check_config, opt
from ..constants import EYES_68, MOUTH_68
from ..dataset import PersonDataset
from ..device import resolve_device
from ..engine import Callback, RunFolder, RunKind, Savable, Trainer
from ..errors import InputError
from ..fileio import read_image, write_image, write_json
from .model import valid_pixels
from .perceptual import load_perceptual
from .renderer import PersonRenderer
from .volume import psnr

log = logging.getLogger(__name__)

RUN_KIND = RunKind("geneface-sr", 1, "super-resolution model", "geneface train sr")
FACTORS = (2, 4)
IN_CHANNELS = 5
"""The network's input (`render_low`): the rendered RGB over the background, the head's coverage
(`RenderOutput.head_alpha`) and the person's (head and torso)."""
RESUMABLE_CHANGES = ("save_every", "log_every", "val_every", "val_frames", "render_batch")
"""Settings that may differ when an interrupted run is resumed."""


@dataclass
class SRConfig:
    """Sizes of the super-resolution network."""

    factor: int | None = opt(None, min=2, max=4, choices=FACTORS)
    """Upscaling factor (default: the dataset's frame side over the renderer's)."""
    channels: int = opt(32, min=4, max=256)
    """Feature channels (all at the low resolution)."""
    blocks: int = opt(3, min=0, max=32)
    """Residual blocks of two 3x3 convolutions."""
    reference: bool = True
    """See the person's coverage and the reference image (False: the RGB and the head's coverage only, as
    networks saved before this option)."""
    blend: bool = True
    """Also predict, per output pixel, how much of the reference image to take as it is (what does not move,
    such as the background and a still torso, then keeps the reference's full detail); needs ``reference``."""

    LEGACY = {"reference": False, "blend": False}  # networks saved before an option keep what they were trained with

    def __post_init__(self) -> None:
        check_config(self)
        if self.blend and not self.reference:
            raise InputError("the super-resolution network's blend needs its reference (reference=True)")


@dataclass
class SRTrainConfig:
    """Settings of `geneface train sr`."""

    steps: int = opt(1500, min=1, max=MAX_STEPS)
    """Training steps."""
    batch: int = opt(16, min=1, max=1024)
    """Patches per step."""
    patch: int = opt(32, min=8, max=512)
    """Side of a patch at the low resolution (its target is ``patch`` x factor at the output size)."""
    lr: float = opt(2e-3, above=0.0, max=1.0)
    """Adam's learning rate, decayed exponentially."""
    lr_decay: float = opt(0.1, above=0.0, max=1.0)
    """Learning-rate factor reached at the last step."""
    mouth_fraction: float = opt(0.4, min=0.0, max=1.0)
    """Share of the patches centred on the mouth."""
    mouth_weight: float = opt(4.0, min=0.0, max=1000.0)
    """L1 weight of the mouth's pixels (the rest weigh 1)."""
    eye_weight: float = opt(4.0, min=0.0, max=1000.0)
    """L1 weight of the eyes' pixels."""
    perceptual_weight: float = opt(0.05, min=0.0, max=1000.0)
    """Weight of the LPIPS loss on the patches, used only where LPIPS weights are installed (`geneface.lpips`)."""
    perceptual_patches: int = opt(4, min=1, max=1024)
    """Patches of a step scored by LPIPS (the first ones, mouth patches first; LPIPS costs about four times
    the network's own step per patch on a CPU)."""
    max_frames: int = opt(600, min=1, max=1_000_000)
    """Most training frames rendered (evenly spaced over the training split): rendering them once is the slow
    part of a short run. A run of few steps renders no more than its ``steps`` x ``batch`` patches need."""
    render_batch: int = opt(8, min=1, max=1024)
    """Frames rendered at once."""
    val_every: int = opt(500, min=1, max=MAX_STEPS)
    """Steps between validations (PSNR on validation frames, a PNG)."""
    val_frames: int = opt(8, min=1, max=10_000)
    """Validation frames (evenly spaced over the validation split)."""
    save_every: float = opt(120.0, min=0.0, max=1e7)
    """Seconds between checkpoints."""
    log_every: int = opt(10, min=1, max=MAX_STEPS)
    """Steps between lines of train_log.jsonl."""
    seed: int = opt(0, min=0, max=MAX_SEED)
    """Random seed."""
    model: SRConfig = field(default_factory=SRConfig)
    """Network sizes."""

    def __post_init__(self) -> None:
        check_config(self)


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x), inplace=True))


class SuperRes(Savable, nn.Module):
    """Low-resolution render [B, 5, h, w] (`render_low`: RGB in [0, 1], head alpha, person alpha) and, with
    ``config.reference``, the reference image's features (`reference_features`) -> RGB [B, 3, h*f, w*f]: bicubic
    upsampling of the RGB plus a learned residual computed at the low resolution."""

    config_args = {"config": SRConfig}

    def __init__(self, config: SRConfig) -> None:
        super().__init__()
        if config.factor not in FACTORS:
            raise InputError(f"super-resolution factor must be one of {FACTORS}, got {config.factor}")
        self.config = config
        f, c = config.factor, config.channels
        self.inputs = IN_CHANNELS if config.reference else 4
        self.head = nn.Conv2d(self.inputs, c, 3, padding=1)
        # the reference, folded to the low resolution (pixel unshuffle): added to the head's features
        self.reference = nn.Conv2d(3 * f * f, c, 3, padding=1, bias=False) if config.reference else None
        self.body = nn.Sequential(*[ResBlock(c) for _ in range(config.blocks)])
        # the residual's 3 channels at f x f output pixels per input pixel, and with ``blend`` the reference's share
        self.tail = nn.Conv2d(c, (4 if config.blend else 3) * f * f, 3, padding=1)
        self.shuffle = nn.PixelShuffle(f)
        with torch.no_grad():  # start near bicubic, taking little of the reference
            self.tail.weight.mul_(0.1)
            self.tail.bias.zero_()
            if config.blend:
                self.tail.bias[3 * f * f:] = -3.0

    @property
    def factor(self) -> int:
        return int(self.config.factor)

    def reference_features(self, reference: Tensor) -> Tensor:
        """Reference images [B, 3, H, W] in [0, 1] (H, W multiples of the factor) -> features [B, C, H/f, W/f]
        (computed once per size for whole frames: they do not change from frame to frame)."""
        return self.reference(F.pixel_unshuffle(reference * 2 - 1, self.factor))

    def forward(self, x: Tensor, reference: Tensor | None = None, clamp: bool = True,
                reference_image: Tensor | None = None) -> Tensor:
        """x [B, 5, h, w]; ``reference``: `reference_features` [B, C, h, w] (needed with ``config.reference``);
        ``reference_image`` [B, 3, h*f, w*f] in [0, 1]: the reference itself (needed with ``config.blend``)
        -> RGB [B, 3, h*f, w*f], clamped to [0, 1] with ``clamp``."""
        f = self.factor
        up = F.interpolate(x[:, :3], scale_factor=f, mode="bicubic", align_corners=False)  # [B, 3, H, W]
        feat = self.head(x[:, :self.inputs] * 2 - 1)  # [B, C, h, w]
        if self.reference is not None:
            if reference is None or reference.shape[-2:] != feat.shape[-2:]:
                raise InputError(f"the super-resolution network needs the reference's features at "
                                 f"{list(feat.shape[-2:])}, got {None if reference is None else list(reference.shape)}")
            feat = feat + reference
        feat = F.relu(feat, inplace=True)
        tail = self.tail(self.body(feat) + feat)  # [B, (3 or 4) * f * f, h, w]
        out = up + self.shuffle(tail[:, :3 * f * f])  # [B, 3, H, W]
        if self.config.blend:
            if reference_image is None or reference_image.shape[-2:] != out.shape[-2:]:
                raise InputError(f"the super-resolution network needs the reference image at "
                                 f"{list(out.shape[-2:])}, got "
                                 f"{None if reference_image is None else list(reference_image.shape)}")
            share = torch.sigmoid(self.shuffle(tail[:, 3 * f * f:]))  # [B, 1, H, W]
            out = out + share * (reference_image - out)
        return out.clamp(0, 1) if clamp else out

    def loss(self, pred: Tensor, target: Tensor, weight: Tensor, perceptual: nn.Module | None = None,
             perceptual_weight: float = 0.0, perceptual_patches: int | None = None) -> dict[str, Tensor]:
        """Losses of predictions ``pred`` [B, 3, H, W] against ``target`` [B, 3, H, W] (both in [0, 1]): ``l1``,
        weighted per pixel by ``weight`` [B, 1, H, W] (0 on pixels that must not count, such as padding), and
        ``perceptual``: LPIPS of the first ``perceptual_patches`` images (default all) where ``perceptual`` is
        given, with the zero-weight pixels of ``pred`` replaced by the target's."""
        l1 = ((pred - target).abs().mean(1, keepdim=True) * weight).sum() / weight.sum().clamp_min(1e-6)
        losses = {"l1": l1}
        if perceptual is not None and perceptual_weight > 0:
            n = perceptual_patches or len(pred)
            shown = torch.where(weight[:n] > 0, pred[:n], target[:n])
            losses["perceptual"] = perceptual_weight * perceptual(shown * 2 - 1, target[:n] * 2 - 1).mean()
        return losses


def render_low(renderer: PersonRenderer, c2w: Tensor, windows: Tensor, size: int | None = None) -> Tensor:
    """The super-resolution network's input [B, 5, h, w] for cameras c2w [B, 4, 4] and landmark windows
    [B, 5, 68, 3], rendered at ``size`` (default the renderer's): the person over the renderer's background
    (RGB in [0, 1]), the head's coverage and the person's (head and torso)."""
    out = renderer.render(c2w, windows, size=size, parts="person")
    rgb = out.rgb + (1 - out.alpha)[..., None] * renderer.model.background_at(out.rgb.shape[1])
    return torch.cat([rgb.clamp(0, 1), out.head_alpha[..., None], out.alpha[..., None]], -1).permute(0, 3, 1, 2)


class SRModel:
    """A trained super-resolution network for inference: ``load_sr(run_dir).upscale(render_low(...))``."""

    def __init__(self, net: SuperRes, render_size: int, size: int, reference: Tensor | None) -> None:
        self.net = net.eval().requires_grad_(False)
        self.render_size = render_size
        """Side of the renderer's frames it was trained on."""
        self.size = size
        """Side of its output for frames of ``render_size``."""
        self.reference = reference
        """[3, size, size] float in [0, 1], or None for networks without ``config.reference``."""
        self._features: dict = {}

    @property
    def factor(self) -> int:
        return self.net.factor

    @property
    def device(self) -> torch.device:
        return self.net.tail.weight.device

    def reference_features(self, side: int) -> tuple[Tensor | None, Tensor | None]:
        """The reference's features [1, C, side, side] for renders of ``side`` px and the reference itself
        [1, 3, side*f, side*f] (resized when that is not its size), computed once per side; None, None without
        a reference."""
        if self.reference is None:
            return None, None
        if self._features.get("side") != side:
            ref, out = self.reference[None], side * self.factor
            if out != self.size:
                ref = F.interpolate(ref, size=(out, out), mode="bilinear", antialias=True, align_corners=False)
            self._features = {"side": side, "features": self.net.reference_features(ref), "image": ref}
        return self._features["features"], self._features["image"]

    @torch.no_grad()
    def upscale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`render_low`'s [B, 5, h, h] -> RGB [B, h*f, h*f, 3] in [0, 1] and the person's coverage
        [B, h*f, h*f] in [0, 1] (upsampled bilinearly)."""
        if x.dim() != 4 or x.shape[1] != IN_CHANNELS or x.shape[2] != x.shape[3]:
            raise InputError(f"upscale needs square renders [B, {IN_CHANNELS}, h, h] (render_low), "
                             f"got {list(x.shape)}")
        x = x.to(self.device, torch.float32).contiguous()
        ref, image = self.reference_features(x.shape[-1])
        rgb = self.net(x, None if ref is None else ref.expand(len(x), -1, -1, -1),
                       reference_image=None if image is None else image.expand(len(x), -1, -1, -1))
        cover = F.interpolate(x[:, 4:5], scale_factor=self.factor, mode="bilinear", align_corners=False)
        return rgb.permute(0, 2, 3, 1), cover[:, 0].clamp(0, 1)


def render_frames(renderer: PersonRenderer, sr: SRModel | None, c2w: Tensor, windows: Tensor,
                  size: int | None = None) -> tuple[Tensor, Tensor]:
    """Frames of cameras c2w [B, 4, 4] and landmark windows [B, 5, 68, 3] at side ``size`` (default the
    renderer's, times the network's factor): RGB [B, S, S, 3] and the person's coverage [B, S, S], both in
    [0, 1]. With ``sr`` and S above the renderer's size the renderer draws S / factor (rounded) and the network
    brings it up; up to the renderer's size they are rendered directly; a side the factor does not divide is
    resized to exactly S."""
    target = int(size or renderer.size * (sr.factor if sr is not None else 1))
    use = sr if sr is not None and target > renderer.size else None
    low = target if use is None else max(8, round(target / use.factor))
    x = render_low(renderer, c2w, windows, low)  # [B, 5, low, low]
    if use is not None:
        rgb, cover = use.upscale(x)
    else:
        rgb, cover = x[:, :3].permute(0, 2, 3, 1), x[:, 4]
    if rgb.shape[1] != target:  # bilinear, antialiased: [B, S', S', C] -> [B, S, S, C]
        both = torch.cat([rgb, cover[..., None]], -1).permute(0, 3, 1, 2)
        both = F.interpolate(both, size=(target, target), mode="bilinear", align_corners=False, antialias=True)
        rgb, cover = both[:, :3].permute(0, 2, 3, 1), both[:, 3]
    return rgb.clamp(0, 1), cover.clamp(0, 1)


def load_sr(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> SRModel:
    """Load a finished run of `geneface train sr` onto ``device``."""
    run = RunFolder(run_dir, RUN_KIND)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    config = run.read_config()
    where = str(run.root / "config.json")
    net = SuperRes.from_config_record(config.get("model"), where).load(run.root / "model.safetensors")
    try:
        render_size, size = int(config["render_size"]), int(config["size"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{where} lacks the sizes (render_size, size)") from None
    if size != render_size * net.factor:
        raise InputError(f"{where}: size {size} is not render_size {render_size} x factor {net.factor}")
    reference = None
    if net.config.reference:
        image = read_image(run.root / "reference.png")
        if image.shape != (size, size, 3):
            raise InputError(f"{run.root / 'reference.png'} is {image.shape[1]}x{image.shape[0]}, not "
                             f"{size}x{size}; train the super-resolution again")
        reference = torch.from_numpy(image).permute(2, 0, 1).float().div(255).to(dev)
    return SRModel(net.to(dev), render_size, size, reference)


# --- training --------------------------------------------------------------------------------------------

def _region_boxes(ds: PersonDataset, frames: np.ndarray, points: np.ndarray, pad: float) -> np.ndarray:
    """Boxes [N, 4] (x0, y0, x1, y1) in the dataset's pixels around the 68-landmark ``points`` of ``frames``
    [N], grown by ``pad`` of their size (as `RenderData` boxes its lip rays)."""
    motion, c2w, K = ds.motion, ds.pose["c2w"][frames].astype(np.float64), ds.intrinsics.astype(np.float64)
    head = motion["mean68"][None, points] + motion["offsets"][frames][:, points] * float(motion["iod"])
    w2c = np.linalg.inv(c2w)
    cam = np.einsum("tij,tpj->tpi", w2c[:, :3, :3], head) + w2c[:, None, :3, 3]
    pts = cam[..., :2] / cam[..., 2:3] * K[[0, 1], [0, 1]] + K[:2, 2]  # [N, P, 2]
    lo, hi = pts.min(1), pts.max(1)
    grow = (hi - lo) * pad + 2
    return np.concatenate([lo - grow, hi + grow], 1).astype(np.float32)


def _in_boxes(boxes: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """[B, 1, H, W] True inside each patch's box [B, 4] at pixel rows ``ys`` [B, H] and columns ``xs`` [B, W]."""
    inx = (xs >= boxes[:, 0:1]) & (xs < boxes[:, 2:3])  # [B, W]
    iny = (ys >= boxes[:, 1:2]) & (ys < boxes[:, 3:4])  # [B, H]
    return (iny[:, :, None] & inx[:, None, :])[:, None]


def reference_image(frames: Tensor) -> Tensor:
    """The reference image [3, S, S] uint8: the per-pixel median of frames [N, S, S, 3] uint8 (the lower of the
    middle two for even N; 32 rows at a time, to bound the memory)."""
    rows = [frames[:, y:y + 32].median(0).values for y in range(0, frames.shape[1], 32)]
    return torch.cat(rows).permute(2, 0, 1).contiguous()


class SRTrainer:
    """Trains a person's super-resolution network into a run folder; `run` does everything (and resumes)."""

    def __init__(self, data_dir: str | os.PathLike, render_dir: str | os.PathLike, run_dir: str | os.PathLike,
                 config: SRTrainConfig = SRTrainConfig(), device: torch.device | str = "cpu",
                 progress: bool = True) -> None:
        self.run_folder = RunFolder(run_dir, RUN_KIND)
        self.run_dir = self.run_folder.root
        self.device = resolve_device(device)
        self.progress = progress
        self.ds = PersonDataset(data_dir)
        self.render_dir = Path(render_dir)
        self.renderer = PersonRenderer.load(render_dir, self.device)
        self.render_size = self.renderer.size
        self.size = self.ds.size
        factor = config.model.factor or self.size // self.render_size
        if factor not in FACTORS or self.size != self.render_size * factor:
            want = " or ".join(str(self.render_size * f) for f in ((factor,) if config.model.factor else FACTORS))
            raise InputError(f"super-resolution needs the dataset {self.ds.root} at the output size ({want} px for "
                             f"the renderer's {self.render_size} px), but it was processed at {self.size} px; "
                             f"process the video again with --size {want.split(' or ')[-1]}")
        self.config = replace(config, model=replace(config.model, factor=factor))
        self.factor = factor
        self.trainer = Trainer(self.run_folder, log_every=self.config.log_every, progress=progress,
                               lr_hint="lower the learning rate (--lr)",
                               memory_hint=f"use a smaller --batch (now {config.batch}) or --patch "
                                           f"(now {config.patch})")
        c = self.config
        self.perceptual = load_perceptual(self.device) if c.perceptual_weight > 0 else None
        self.history: list[dict] = []
        self.step = 0
        self.wall_before = 0.0
        self.session_start = time.perf_counter()
        self.last: dict = {}
        s = self.size
        x0, y0, x1, y1 = valid_pixels([v / s for v in self.ds.valid_box], s)
        self.valid_box = (x0, y0, x1, y1)  # the real pixels at the output size, half-open
        self.valid = torch.zeros(s, s, dtype=torch.bool, device=self.device)  # [S, S]
        self.valid[y0:y1, x0:x1] = True
        self.valid &= torch.from_numpy(self.ds.valid_mask()).to(self.device)

    # --- data --------------------------------------------------------------------------------------
    def _pick(self, split: str, count: int) -> np.ndarray:
        idx = self.ds.split(split)
        if len(idx) == 0:
            return idx
        return idx[np.unique(np.linspace(0, len(idx) - 1, min(count, len(idx))).round().astype(int))]

    def _render(self, frames: np.ndarray, desc: str) -> Tensor:
        """The network's inputs [N, 5, h, w] float16 (`render_low`) for dataset ``frames`` [N], rendered at the
        renderer's size from the dataset's poses and landmark windows, as `geneface.evaluate` renders them."""
        offsets = torch.from_numpy(np.ascontiguousarray(self.ds.motion["offsets"], np.float32))
        c2w = torch.from_numpy(np.asarray(self.ds.pose["c2w"], np.float32))
        out = []
        step = self.config.render_batch
        for i in tqdm(range(0, len(frames), step), desc=desc, unit="batch", disable=not self.progress, leave=False):
            idx = torch.from_numpy(frames[i:i + step])
            x = render_low(self.renderer, c2w[idx], PersonRenderer.windows(offsets, idx))
            out.append(x.to(torch.float16).contiguous())
        return torch.cat(out).to(self.device)

    def _truth(self, frames: np.ndarray) -> Tensor:
        """Dataset frames [N, S, S, 3] uint8."""
        return torch.from_numpy(np.stack([self.ds.frame(int(i)) for i in frames])).to(self.device)

    def _load_data(self) -> None:
        c = self.config
        self.train_frames = self._pick("train", min(c.max_frames, c.steps * c.batch))  # no frame left unused
        if len(self.train_frames) == 0:
            raise InputError(f"dataset {self.ds.root} has no training frames")
        self.val_frames, self.val_split = self._pick("val", c.val_frames), "val"
        if len(self.val_frames) == 0:
            log.warning(f"{self.ds.root} has no validation frames; validating on training frames")
            self.val_frames, self.val_split = self._pick("train", c.val_frames), "train"
        self.lr = self._render(self.train_frames, "render frames")  # [N, 4, h, w] float16
        self.hr = self._truth(self.train_frames)  # [N, S, S, 3] uint8
        self.mouth = torch.from_numpy(_region_boxes(self.ds, self.train_frames, MOUTH_68, 0.3)).to(self.device)
        self.eyes = torch.from_numpy(_region_boxes(self.ds, self.train_frames, EYES_68, 0.5)).to(self.device)
        self.val_lr = self._render(self.val_frames, "render validation frames")
        self.val_hr = self._truth(self.val_frames)
        self.val_mouth = _region_boxes(self.ds, self.val_frames, MOUTH_68, 0.3)
        self.reference = reference_image(self.hr)  # [3, S, S] uint8

    def sample(self, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A batch of patches: input [B, 5, p, p], reference [B, 3, p*f, p*f] uint8, target [B, 3, p*f, p*f] in
        [0, 1] and loss weight [B, 1, p*f, p*f] (0 on padding, ``mouth_weight`` / ``eye_weight`` in their boxes,
        else 1)."""
        c, f, dev = self.config, self.factor, self.device
        h = self.lr.shape[-1]
        p = min(c.patch, h)
        n = c.batch
        pick = torch.randint(len(self.train_frames), (n,), generator=gen, device=dev)
        # top-left corners at the low resolution: uniform over the real pixels, or around the mouth's centre
        x0, y0, x1, y1 = (v / f for v in self.valid_box)
        lo = torch.tensor([x0, y0], device=dev)
        hi = torch.tensor([max(x0, x1 - p), max(y0, y1 - p)], device=dev)
        corner = lo + torch.rand(n, 2, generator=gen, device=dev) * (hi - lo)
        mouth = torch.arange(n, device=dev) < round(n * c.mouth_fraction)  # mouth patches first
        box = self.mouth[pick] / f
        centre = (box[:, :2] + box[:, 2:]) / 2 + (torch.rand(n, 2, generator=gen, device=dev) - 0.5) * (p / 2)
        corner = torch.where(mouth[:, None], centre - p / 2, corner)
        corner = corner.round().long().clamp(0, h - p)  # [B, 2] x, y
        q = p * f
        inputs, references, targets = [], [], []
        for k in range(n):
            x, y, i = int(corner[k, 0]), int(corner[k, 1]), int(pick[k])
            inputs.append(self.lr[i, :, y:y + p, x:x + p])
            references.append(self.reference[:, y * f:y * f + q, x * f:x * f + q])
            targets.append(self.hr[i, y * f:y * f + q, x * f:x * f + q])
        inputs_t = torch.stack(inputs).float()
        reference = torch.stack(references)  # uint8
        target = torch.stack(targets).permute(0, 3, 1, 2).float() / 255
        ar = torch.arange(q, device=dev)
        ys, xs = corner[:, 1:2] * f + ar, corner[:, 0:1] * f + ar  # [B, q] pixel rows and columns
        weight = self.valid[ys[:, :, None], xs[:, None, :]][:, None].float()  # [B, 1, q, q]
        weight = weight * (1 + (c.mouth_weight - 1) * _in_boxes(self.mouth[pick], ys, xs).float()
                           + (c.eye_weight - 1) * _in_boxes(self.eyes[pick], ys, xs).float()).clamp_min(0)
        return inputs_t, reference, target, weight

    def _reference_features(self, reference: Tensor) -> Tensor | None:
        """Features of reference crops [B, 3, H, W] in [0, 1] (None for a network without them)."""
        return self.net.reference_features(reference) if self.net.reference is not None else None

    # --- checkpoints -------------------------------------------------------------------------------
    def _run_record(self) -> dict:
        """What config.json holds (and a checkpoint, to resume with the same settings)."""
        c = asdict(self.config)
        return {"model": c.pop("model"), "render_size": self.render_size, "size": self.size, "train": c,
                "data": str(self.ds.root), "render": str(self.render_dir)}

    def _wall(self) -> float:
        return round(self.wall_before + time.perf_counter() - self.session_start, 2)

    def save_state(self, opt: torch.optim.Optimizer) -> None:
        self.run_folder.save_state({"model": self.net}, {"optimizer": opt}, {
            "step": self.step, "train_seconds": self.trainer.train_seconds, "wall_seconds": self._wall(),
            "run": self._run_record(), "history": self.history})

    def _load_state(self, state: dict, opt: torch.optim.Optimizer) -> None:
        try:
            saved, step = dict(state["run"]), int(state["step"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"training state {self.run_folder.state_dir} is corrupt ({type(e).__name__}: {e}); "
                             f"delete it to start over") from None
        self.run_folder.check_same_settings(saved, self._run_record(), RESUMABLE_CHANGES)
        self.run_folder.load_state({"model": self.net}, {"optimizer": opt})
        self.step = step
        self.trainer.train_seconds = float(state.get("train_seconds", 0.0))
        self.wall_before = float(state.get("wall_seconds", 0.0))
        self.history = list(state.get("history", []))

    # --- validation --------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        """PSNR of the super-resolved and of the bicubic validation frames against the truth, over the real
        pixels and over the mouth's box; a PNG (bicubic | super-resolved | truth)."""
        self.net.eval()
        image = self.reference[None].float() / 255
        ref = self._reference_features(image)
        sr = torch.cat([self.net(x.float(), None if ref is None else ref.expand(len(x), -1, -1, -1),
                                 reference_image=image.expand(len(x), -1, -1, -1))
                        for x in self.val_lr.split(4)])  # [N, 3, S, S]
        self.net.train()
        f = self.factor
        bicubic = F.interpolate(self.val_lr[:, :3].float(), scale_factor=f, mode="bicubic",
                                align_corners=False).clamp(0, 1)
        gt = self.val_hr.permute(0, 3, 1, 2).float() / 255
        mouth = torch.zeros_like(gt[:, :1], dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(np.round(self.val_mouth).astype(int).clip(0, self.size)):
            mouth[k, :, y0:y1, x0:x1] = True
        mouth &= self.valid
        valid = self.valid.expand_as(mouth)

        def score(pred: Tensor, where: Tensor) -> float:
            mse = (((pred - gt) ** 2).mean(1, keepdim=True) * where).sum() / where.sum().clamp_min(1)
            return round(psnr(mse), 3)

        record = {"step": self.step, "split": self.val_split, "train_seconds": round(self.trainer.train_seconds, 2),
                  "wall_seconds": self._wall(), "psnr": score(sr, valid), "psnr_bicubic": score(bicubic, valid),
                  "psnr_mouth": score(sr, mouth), "psnr_mouth_bicubic": score(bicubic, mouth)}
        rows = [torch.cat([bicubic[k], sr[k], gt[k]], 2) for k in range(min(2, len(gt)))]
        image = (torch.cat(rows, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        write_image(self.run_dir / "val" / f"step_{self.step:06d}.png", image)
        self.history.append(record)
        write_json(self.run_dir / "history.json", self.history)
        return record

    # --- training ----------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train (or resume) to the end; returns the last validation record. The run folder is locked meanwhile."""
        with self.run_folder:
            return self._train()

    def _train(self) -> dict:
        c = self.config
        torch.manual_seed(c.seed)
        state = self.run_folder.begin()
        self.net = SuperRes(c.model).to(self.device)
        opt = torch.optim.Adam(self.net.parameters(), lr=c.lr)
        if state is not None:
            self._load_state(state, opt)
        self._load_data()
        gen = torch.Generator(device=self.device)
        gen.manual_seed(c.seed + self.step)
        self.last = self.history[-1] if self.history else {}

        def step_fn(k: int) -> dict[str, Tensor]:
            for g in opt.param_groups:
                g["lr"] = c.lr * c.lr_decay ** (k / max(1, c.steps))
            inputs, reference, target, weight = self.sample(gen)
            reference = reference.float() / 255
            pred = self.net(inputs, self._reference_features(reference), clamp=False, reference_image=reference)
            losses = self.net.loss(pred, target, weight, self.perceptual,
                                   c.perceptual_weight, c.perceptual_patches)
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            opt.step()
            self.step = k + 1
            return losses

        def validation(step: int) -> None:
            self.last = self.validate()

        def status(mean: dict[str, float]) -> str:
            last = f", val {self.last['psnr']:.2f} dB (bicubic {self.last['psnr_bicubic']:.2f})" if self.last else ""
            return f"l1 {mean.get('l1', float('nan')):.4f}{last}"

        self.net.train()
        self.trainer.fit("sr", self.step, c.steps, step_fn, checkpoint=lambda step: self.save_state(opt),
                         save_seconds=c.save_every, callbacks=[Callback(validation, every=c.val_every)],
                         status=status, save_at_end=False)
        if not self.history or self.history[-1]["step"] != self.step:
            self.last = self.validate()
        self.trainer.close()
        write_json(self.run_dir / "history.json", self.history)
        (self.run_dir / "config.json").unlink(missing_ok=True)
        self.net.save(self.run_dir / "model.safetensors")
        write_image(self.run_dir / "reference.png", self.reference.permute(1, 2, 0).cpu().numpy())
        self.run_folder.write_config(self._run_record())  # last: the run is finished
        self.run_folder.finish()
        return self.last


def train_sr(data_dir: str | os.PathLike, render_dir: str | os.PathLike, out_dir: str | os.PathLike,
             config: SRTrainConfig = SRTrainConfig(), device: torch.device | str = "cpu",
             progress: bool = True) -> dict:
    """Train a person's super-resolution network (see `SRTrainer`) on dataset ``data_dir`` (processed at the
    output size) and the finished renderer ``render_dir``; returns the last validation record."""
    return SRTrainer(data_dir, render_dir, out_dir, config, device, progress).run()
