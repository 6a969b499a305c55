"""A trained renderer for inference: load a run, render batches of frames from poses and landmarks."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from ..device import amp_dtype, resolve_device
from ..engine import RunFolder, RunKind
from ..errors import InputError
from .fields import WINDOW
from .model import PARTS, RenderModel, RenderOutput

RUN_KIND = RunKind("geneface-render", 1, "renderer", "geneface train render")
"""A render run folder::

    RUN/config.json          format, version, model config, person geometry, training settings; written last
    RUN/model.safetensors    all weights and buffers (background, occupancy grid, ...)
    RUN/history.json         validation PSNR against step and time
    RUN/val/*.png            validation frames: truth | render | error x4, one row per frame
    RUN/train_log.jsonl      losses every few steps
    RUN/train_state/         while training: weights + optimizer state + state.json, replaced atomically
"""


class PersonRenderer:
    """Renders a person: ``PersonRenderer.load(run_dir).render(c2w, landmarks)``.

    Everything runs without gradients; frames are batched. ``landmarks`` are the dataset's ``offsets``
    (68 points in head space minus the person's mean, over the inter-ocular distance), either one frame
    each [B, 68, 3] or a window of 5 frames centred on each [B, 5, 68, 3] (see `windows`), which smooths
    the condition as in training.
    """

    def __init__(self, model: RenderModel, precision: str = "auto") -> None:
        self.model = model.eval().requires_grad_(False)
        self.device = model.K.device
        self.model.amp_dtype = amp_dtype(self.device, precision)  # `geneface.device.PRECISIONS`

    @property
    def size(self) -> int:
        """The training frame size (the default output size)."""
        return self.model.size

    @property
    def intrinsics(self) -> np.ndarray:
        """[3, 3] camera intrinsics at `size`."""
        return self.model.K.cpu().numpy()

    @classmethod
    def load(cls, run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> "PersonRenderer":
        """Load a finished run of `geneface train render` onto ``device`` (cpu, cuda, mps or auto); it renders
        at the precision it was trained with."""
        run = RunFolder(run_dir, RUN_KIND)
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        config = run.read_config()
        model = RenderModel.from_config_record(config, str(run.root / "config.json")).load(run.root / "model.safetensors")
        return cls(model.to(dev), legacy_settings(config.get("train") or {}).get("precision", "auto"))

    def save(self, run_dir: str | os.PathLike, **info) -> None:
        """Write the folder `load` reads: the weights, then ``config.json`` (last) with the model's configs and
        ``info`` (training settings, data)."""
        write_run(self.model, run_dir, **info)

    @staticmethod
    def windows(landmarks: Tensor, frames: Tensor | None = None) -> Tensor:
        """Windows [B, 5, 68, 3] centred on ``frames`` [B] (default: every frame) of a landmark sequence
        [T, 68, 3], clamped at its ends."""
        t = landmarks.shape[0]
        k = torch.arange(WINDOW, device=landmarks.device) - WINDOW // 2
        centres = torch.arange(t, device=landmarks.device) if frames is None else torch.as_tensor(frames)
        return landmarks[(centres.to(landmarks.device)[:, None] + k).clamp(0, t - 1)]

    @torch.no_grad()
    def render(self, c2w: Tensor, landmarks: Tensor, size: int | None = None, parts: str = "full",
               chunk: int = 1 << 16) -> RenderOutput:
        """Render B frames.

        c2w [B, 4, 4] camera-to-head poses; landmarks [B, 68, 3] or [B, 5, 68, 3] offsets; ``size`` the
        output side (default: the training size; intrinsics scale with it); ``parts``: ``full`` (head over
        torso over the background), ``person`` (head and torso, premultiplied, with their alpha) or ``head``.
        Returns a `RenderOutput` with rgb [B, H, W, 3] in [0, 1], alpha, depth and head_alpha [B, H, W].
        """
        # 1. check the inputs
        c2w = torch.as_tensor(c2w)
        landmarks = torch.as_tensor(landmarks)
        if c2w.dim() != 3 or c2w.shape[1:] != (4, 4):
            raise InputError(f"c2w must have shape [B, 4, 4], got {list(c2w.shape)}")
        if landmarks.shape[-2:] != (68, 3) or landmarks.dim() not in (3, 4) or \
                (landmarks.dim() == 4 and landmarks.shape[1] != WINDOW):
            raise InputError(f"landmarks must have shape [B, 68, 3] or [B, {WINDOW}, 68, 3], "
                             f"got {list(landmarks.shape)}")
        if landmarks.shape[0] != c2w.shape[0]:
            raise InputError(f"{c2w.shape[0]} poses but {landmarks.shape[0]} landmark frames")
        if parts not in PARTS:
            raise InputError(f"parts must be one of {', '.join(PARTS)}, got {parts!r}")
        if size is not None and not 8 <= int(size) <= 4096:
            raise InputError(f"size must be between 8 and 4096, got {size}")
        if not (torch.isfinite(c2w).all() and torch.isfinite(landmarks).all()):
            raise InputError("poses or landmarks contain NaN or infinity")
        # 2. render (the fields at the precision the model was trained and validated at)
        return self.model.render_images(c2w.to(self.device, torch.float32), landmarks.to(self.device, torch.float32),
                                        size=size, parts=parts, chunk=chunk)


ADDED_SETTINGS = {"background_weight": 0.1, "prune_views": 48}
"""Training settings added after runs were first saved, with the values that do what those runs did."""


def legacy_settings(train: dict) -> dict:
    """Training settings of a saved run in today's terms: ``precision`` for the ``amp`` flag it replaced (True:
    auto, False: fp32) and `ADDED_SETTINGS` where missing, so a run saved before them compares as unchanged."""
    train = dict(train)
    if "amp" in train:
        train.setdefault("precision", "auto" if train.pop("amp") else "fp32")
    for key, value in ADDED_SETTINGS.items():
        train.setdefault(key, value)
    return train


def write_run(model: RenderModel, run_dir: str | os.PathLike, **info) -> None:
    """`PersonRenderer.save` for a model still in training (left as it is)."""
    run = RunFolder(run_dir, RUN_KIND)
    run.root.mkdir(parents=True, exist_ok=True)
    (run.root / "config.json").unlink(missing_ok=True)
    model.save(run.root / "model.safetensors")
    run.write_config({**model.config_record(), **info})
