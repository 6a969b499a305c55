"""Training of a person's renderer on the shared engine: the head NeRF, then the torso field with the head
frozen. The run folder's layout is in `geneface.render.renderer`.

Rerunning the same command resumes from ``train_state``. A non-finite loss stops training with an error and
keeps the last good checkpoint. Periodic work (occupancy-grid updates, validation, checkpoints) runs as
callbacks of the engine's step loop.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..cliopts import MAX_SEED, MAX_SIZE, MAX_STEPS, check_config, opt
from ..dataset import PersonDataset
from ..device import PRECISIONS, amp_dtype, memory_errors, resolve_device
from ..device import defaults_for as device_defaults
from ..engine import Callback, RunFolder, Trainer
from ..errors import InputError
from ..fileio import write_image, write_json
from .data import RenderData
from .model import ModelConfig, RayBatch, RenderModel
from .perceptual import load_perceptual
from .renderer import RUN_KIND, legacy_settings, write_run
from .volume import psnr

log = logging.getLogger(__name__)

PHASES = ("head", "torso")
RESUMABLE_CHANGES = ("save_every", "val_every", "val_frames")
"""Settings that may differ when an interrupted run is resumed."""


@dataclass
class RenderTrainConfig:
    """Settings of `geneface train render` (None: the device's default, see `geneface.device.DEVICE_DEFAULTS`)."""

    size: int | None = opt(None, min=16, max=MAX_SIZE)
    """Training frame side in pixels, at most the dataset's (default: the device's)."""
    steps: int | None = opt(None, min=1, max=MAX_STEPS)
    """Training steps of both phases together (default: the device's)."""
    torso_fraction: float = opt(0.4, min=0.0, below=1.0)
    """Share of the steps spent on the torso phase (the head phase comes first)."""
    frames_per_step: int = opt(8, min=1, max=1024)
    """Frames whose pixels make up one step's rays."""
    rays_per_frame: int | None = opt(None, min=1, max=MAX_SIZE * MAX_SIZE, flag="rays")
    """Rays per frame and step (default: the device's)."""
    torso_rays_factor: int = opt(4, min=1, max=64)
    """The torso phase's steps have this many times more rays (they are much cheaper)."""
    lr: float = opt(2e-2, above=0.0, max=10.0)
    """Learning rate of the feature planes (the MLPs use a tenth), decayed exponentially."""
    lr_decay: float = opt(0.1, above=0.0, max=1.0)
    """Learning-rate factor reached at the end of each phase."""
    lip_fraction: float = opt(0.25, min=0.0, max=1.0)
    """Share of the head rays drawn from the mouth box (lip emphasis)."""
    eye_fraction: float = opt(0.0, min=0.0, max=1.0)
    """Share of every frame's head rays drawn from the eyes' box (the rays that matter for blinks are
    those of the few blink frames: see the next two)."""
    blink_eye_fraction: float = opt(0.25, min=0.0, max=1.0)
    """Extra share of a frame's head rays drawn from the eyes' box, times how far its eye opening is from
    the person's usual one (`RenderData.eye_rarity`, 1 at a full blink): blinks are rare and last a frame
    or two, so closed eyes get few rays otherwise."""
    blink_frame_boost: float = opt(4.0, min=0.0, max=1000.0)
    """Head-phase frames are drawn with weight 1 + this times the same eye rarity, so that blink frames come
    up more often (0: uniformly)."""
    alpha_weight: float = opt(0.05, min=0.0, max=1000.0)
    """Weight of the head-alpha-vs-head-label loss (head phase)."""
    distortion_weight: float = opt(1e-2, min=0.0, max=1000.0)
    """Weight of the distortion loss that gathers each ray's weights into a thin surface (sharper and
    faster to render)."""
    depth_weight: float = opt(0.02, min=0.0, max=1000.0)
    """Weight of the loss that pulls the head's surface to the tracked mesh's depth."""
    depth_fraction: float = opt(0.1, min=0.0, max=1.0)
    """Share of the head rays that pass through tracked mesh vertices (for that loss)."""
    torso_alpha_weight: float = opt(0.02, min=0.0, max=1000.0)
    """Weight of the torso-alpha-vs-torso-label loss (torso phase)."""
    background_weight: float = opt(0.1, min=0.0, max=1000.0)
    """Pull of the background's learned correction (where the background was never seen) toward the
    inpainting, relative to the colour loss (torso phase)."""
    perceptual_weight: float = opt(0.01, min=0.0, max=1000.0)
    """Weight of the LPIPS loss on mouth patches, used only where LPIPS weights are installed
    (`geneface.lpips`; it adds about 2% to a head step on the CPU)."""
    occupancy_every: int = opt(16, min=1, max=MAX_STEPS)
    """Steps between occupancy-grid updates (head phase)."""
    prune_views: int = opt(48, min=1, max=100_000)
    """Training frames rendered at the end of the head phase to empty the occupancy cells none of them sees."""
    val_every: int = opt(250, min=1, max=MAX_STEPS)
    """Steps between validations (PSNR on validation frames, a PNG)."""
    val_frames: int = opt(4, min=1, max=10_000)
    """Validation frames rendered each time."""
    save_every: float = opt(120.0, min=0.0, max=1e7)
    """Seconds between checkpoints."""
    seed: int = opt(0, min=0, max=MAX_SEED)
    """Random seed."""
    precision: str = opt("auto", choices=PRECISIONS)
    """Autocast precision of the fields (`geneface.device.amp_dtype`): ``auto`` is bf16 (or fp16) on CUDA, fp32
    elsewhere; rendering the finished model uses the same."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model sizes (resolutions follow ``size`` unless given)."""

    def __post_init__(self) -> None:
        check_config(self)


def resolve_config(device: torch.device, data_size: int, config: RenderTrainConfig,
                   resolutions_given: bool = False) -> RenderTrainConfig:
    """Fill the None fields from the device's defaults (`geneface.device.DEVICE_DEFAULTS`)."""
    d = device_defaults(device)
    size = config.size or min(data_size, d.render_size)
    model = config.model
    if not resolutions_given:
        top = min(size, 512)
        model = replace(model, resolutions=tuple(max(16, top // f) for f in (4, 2, 1)),
                        torso_resolutions=tuple(max(8, top // f) for f in (8, 4, 2, 1)))
    return replace(config, size=size, steps=config.steps or d.render_steps,
                   rays_per_frame=config.rays_per_frame or d.rays_per_frame, model=model)


class RenderTrainer:
    """Trains a person model on a dataset into a run folder; `run` does everything (and resumes)."""

    def __init__(self, data_dir: str | Path, run_dir: str | Path, config: RenderTrainConfig = RenderTrainConfig(),
                 device: torch.device | str = "cpu", progress: bool = True) -> None:
        self.run_folder = RunFolder(run_dir, RUN_KIND)
        self.run_dir = self.run_folder.root
        self.device = resolve_device(device)
        self.progress = progress
        data_size = PersonDataset(data_dir).size
        resolutions_given = config.model.resolutions != ModelConfig().resolutions
        self.config = resolve_config(self.device, data_size, config, resolutions_given)
        c = self.config
        self.data = RenderData(data_dir, c.size, self.device, progress=progress)
        self.phase_steps = {"head": c.steps - int(round(c.steps * c.torso_fraction)),
                            "torso": int(round(c.steps * c.torso_fraction))}
        self.amp_dtype = amp_dtype(self.device, c.precision)
        self.trainer = Trainer(self.run_folder, log_every=10, progress=progress, lr_hint="lower the learning rate (--lr)",
                               memory_hint=f"use a smaller --size (now {c.size}) or --rays (now {c.rays_per_frame})")
        self.history: list[dict] = []
        self.step = 0  # global step over both phases
        self.wall_before = 0.0  # wall-clock seconds of earlier sessions of this run
        self.session_start = time.perf_counter()
        self.perceptual = load_perceptual(self.device) if c.perceptual_weight > 0 else None
        self.patch = _patch_size(c) if self.perceptual is not None else 0  # side of the mouth patch (0: none)
        self.last: dict = {}

    # --- setup -----------------------------------------------------------------------------------
    def _new_model(self) -> RenderModel:
        d = self.data
        model = RenderModel(self.config.model, d.geometry()).to(self.device)
        model.set_person(d.background, d.torso_region(), d.c2w[d.train_idx], d.offsets[d.train_idx], d.unseen)
        views = d.train_idx[torch.linspace(0, len(d.train_idx) - 1, min(32, len(d.train_idx))).round().long()]
        model.grid.carve(d.c2w[views], d.K, d.head_masks(views), dilate=max(1, d.size // 64), valid=d.valid)
        return model

    def _settings(self) -> dict:
        """What a resumed run must share with the interrupted one."""
        c = asdict(self.config)
        return {"model": c.pop("model"), "data": str(self.data.root), **c}

    def _run_record(self) -> dict:
        c = asdict(self.config)
        c.pop("model")
        return {"format": RUN_KIND.format, "version": RUN_KIND.version, **self.model.config_record(), "train": c,
                "data": str(self.data.root)}

    def optimizer(self, phase: str) -> torch.optim.Optimizer:
        """Adam over `model`'s parameters of ``phase`` (head or torso)."""
        groups = self.model.head_parameters() if phase == "head" else self.model.torso_parameters()
        return torch.optim.Adam([{"params": g["params"], "lr": self.config.lr * g["lr_scale"],
                                  "base_lr": self.config.lr * g["lr_scale"]} for g in groups],
                                betas=(0.9, 0.99), eps=1e-15)

    def _set_lr(self, opt: torch.optim.Optimizer, phase: str, phase_step: int) -> None:
        frac = phase_step / max(1, self.phase_steps[phase])
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * self.config.lr_decay ** frac

    # --- checkpoints -----------------------------------------------------------------------------
    def save_state(self, phase: str, opt: torch.optim.Optimizer) -> None:
        self.run_folder.save_state({"model": self.model}, {"optimizer": opt}, {
            "step": self.step, "phase": phase, "train_seconds": self.trainer.train_seconds,
            "wall_seconds": self._wall(), "run": self._run_record(), "history": self.history})

    def _wall(self) -> float:
        return round(self.wall_before + time.perf_counter() - self.session_start, 2)

    def _load_state(self, state: dict) -> str:
        """Restore an interrupted run; returns the phase it was in."""
        try:
            run = state["run"]
            self.model = RenderModel.from_config_record(run, str(self.run_folder.state_dir))
            saved = {"model": run["model"], "data": run.get("data"), **legacy_settings(run["train"])}
            phase, step = str(state["phase"]), int(state["step"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"training state {self.run_folder.state_dir} is corrupt ({type(e).__name__}: {e}); "
                             f"delete it to start over") from None
        self.run_folder.check_same_settings(saved, self._settings(), RESUMABLE_CHANGES)
        self.model.to(self.device)
        self.run_folder.load_state({"model": self.model}, {})
        self.step = step
        self.trainer.train_seconds = float(state.get("train_seconds", 0.0))
        self.wall_before = float(state.get("wall_seconds", 0.0))
        self.history = list(state.get("history", []))
        return phase

    def _finish(self) -> None:
        write_json(self.run_dir / "history.json", self.history)
        record = self._run_record()
        write_run(self.model, self.run_dir, train=record["train"], data=record["data"])

    # --- validation ------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, phase: str) -> dict:
        """Render validation frames: PSNR of the full frame and of the head over the true torso, on the real
        pixels (`RenderData.valid`: never the padding), and of the full frame where the background was never
        seen (`RenderData.unseen`, where it has such pixels); a PNG. A dataset without validation frames is validated
        on training frames, and the record says so."""
        d = self.data
        idx, split = (d.val_idx, "val") if len(d.val_idx) else (d.train_idx, "train")
        if split == "train" and not self.history:
            log.warning(f"{d.root} has no validation frames; validating on training frames (the PSNR is optimistic)")
        pick = idx[torch.linspace(0, len(idx) - 1, min(self.config.val_frames, len(idx))).round().long()]
        self.model.eval()
        out = self.model.render_images(d.c2w[pick], d.windows(pick))
        self.model.train()
        gt = d.frames[pick].float() / 255
        # the head over the true torso and background: what the head phase optimises
        behind = torch.where((d.labels[pick] == 1)[..., None], d.background.float()[None] / 255, gt)
        head_over = (out.head_rgb + (1 - out.head_alpha[..., None]) * behind).clamp(0, 1)
        record = {"step": self.step, "phase": phase, "split": split,
                  "train_seconds": round(self.trainer.train_seconds, 2), "wall_seconds": self._wall(),
                  "psnr": round(psnr(_valid_mse(out.rgb, gt, d.valid)), 3),
                  "psnr_head": round(psnr(_valid_mse(head_over, gt, d.valid)), 3)}
        if d.unseen.any():
            record["psnr_unseen"] = round(psnr(_valid_mse(out.rgb, gt, d.unseen)), 3)
        rows = []
        for i in range(len(pick)):
            shown = out.rgb[i] if phase == "torso" else head_over[i]
            err = ((shown - gt[i]).abs() * 4).clamp(0, 1)
            rows.append(torch.cat([gt[i], shown, err], 1))
        image = (torch.cat(rows, 0).cpu().numpy() * 255).round().astype(np.uint8)
        write_image(self.run_dir / "val" / f"step_{self.step:06d}.png", image)
        self.history.append(record)
        write_json(self.run_dir / "history.json", self.history)
        return record

    # --- training --------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train (or resume) to the end; returns the last validation record. The run folder is locked meanwhile
        (one writer per folder)."""
        with self.run_folder:
            return self._train()

    def _train(self) -> dict:
        c = self.config
        torch.manual_seed(c.seed)
        state = self.run_folder.begin()
        if state is None:
            self.model = self._new_model()
            start_phase = "head"
        else:
            start_phase = self._load_state(state)
        self.model.amp_dtype = self.amp_dtype
        gen = torch.Generator(device=self.device)
        gen.manual_seed(c.seed + self.step)
        self.last = self.history[-1] if self.history else {}
        offset = 0
        for phase in PHASES:
            n = self.phase_steps[phase]
            if PHASES.index(phase) >= PHASES.index(start_phase) and n > 0:
                self._run_phase(phase, offset, gen)
            offset += n
        self.trainer.close()
        self._finish()
        self.run_folder.finish()
        return self.last

    def _run_phase(self, phase: str, offset: int, gen: torch.Generator) -> None:
        c = self.config
        n = self.phase_steps[phase]
        opt = self.optimizer(phase)
        first = self.step - offset  # steps of this phase already done
        if first > 0 and (self.run_folder.state_dir / "optimizer.safetensors").exists():
            self.run_folder.load_state({}, {"optimizer": opt})
        self.step = offset + max(first, 0)
        scaler = self.grad_scaler()
        d = self.data

        def occupancy(step: int) -> None:
            frame = d.train_idx[torch.randint(len(d.train_idx), (1,), generator=gen, device=self.device)]
            self.model.update_occupancy(d.windows(frame)[0])

        def validation(step: int) -> None:
            self.last = self.validate(phase)

        def step_fn(k: int) -> dict[str, torch.Tensor]:
            self._set_lr(opt, phase, k - offset)
            losses = self.train_step(phase, opt, scaler, gen)
            self.step = k + 1
            return losses

        def status(mean: dict[str, float]) -> str:
            last = f", val {self.last['psnr']:.2f} dB" if self.last else ""
            return f"psnr {psnr(mean['rgb']):.2f} dB{last}"

        callbacks = [Callback(validation, every=c.val_every)]
        if phase == "head":
            callbacks.insert(0, Callback(occupancy, every=c.occupancy_every))
            if self.step == offset:
                occupancy(0)
        self.model.train()
        self.trainer.fit(phase, self.step, offset + n, step_fn, checkpoint=lambda step: self.save_state(phase, opt),
                         save_seconds=c.save_every, callbacks=callbacks, status=status, base=offset,
                         save_at_end=False)
        if self.step % c.val_every != 0:
            self.last = self.validate(phase)
        if phase == "head":  # the torso phase starts from here, with a fresh optimizer
            views = d.train_idx[::max(1, len(d.train_idx) // c.prune_views)]
            with memory_errors(self.device, "while pruning the occupancy grid", self.trainer.memory_hint):
                self.model.prune_invisible(d.c2w[views], d.windows(views))
            self.save_state("torso", self.optimizer("torso"))

    def train_step(self, phase: str, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   gen: torch.Generator) -> dict[str, torch.Tensor]:
        """One step of ``phase`` (head or torso) on `model`: random rays, the losses, backward, an optimizer step
        through ``scaler`` (`grad_scaler`)."""
        c = self.config
        rays = c.rays_per_frame * (1 if phase == "head" else c.torso_rays_factor)
        batch = self.data.sample(c.frames_per_step, rays, phase, c.lip_fraction, generator=gen,
                                 patch=self.patch if phase == "head" else 0, depth_fraction=c.depth_fraction,
                                 eye_fraction=c.eye_fraction, blink_eye_fraction=c.blink_eye_fraction,
                                 blink_frame_boost=c.blink_frame_boost)
        losses = self._losses(phase, batch)
        opt.zero_grad(set_to_none=True)
        scaler.scale(sum(losses.values())).backward()
        scaler.step(opt)
        scaler.update()
        return losses

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 (bf16 and fp32 need none: then it passes the loss through)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def _losses(self, phase: str, batch: RayBatch) -> dict[str, torch.Tensor]:
        c = self.config
        if phase == "head":
            losses, _ = self.model.head_loss_dict(batch, alpha_weight=c.alpha_weight,
                                                  distortion_weight=c.distortion_weight, depth_weight=c.depth_weight,
                                                  perceptual=self.perceptual,
                                                  perceptual_weight=c.perceptual_weight, patch=self.patch)
        else:
            losses, _ = self.model.torso_loss_dict(batch, alpha_weight=c.torso_alpha_weight,
                                                   background_weight=c.background_weight)
        return losses


def _valid_mse(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error of images a, b [B, S, S, 3] over the pixels where ``valid`` [S, S] is True."""
    return ((a - b) ** 2 * valid[None, :, :, None]).sum() / (valid.sum() * a.shape[0] * a.shape[-1]).clamp_min(1)


def _patch_size(c: RenderTrainConfig) -> int:
    """Side of the mouth patch for the perceptual loss: the lip rays of a frame, as a square (0: too few)."""
    side = math.isqrt(int(c.rays_per_frame * c.lip_fraction))
    return side if side >= 4 else 0


def train_render(data_dir: str | Path, run_dir: str | Path, config: RenderTrainConfig = RenderTrainConfig(),
                 device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """Train a person's renderer (see `RenderTrainer`); returns the last validation record."""
    return RenderTrainer(data_dir, run_dir, config, device, progress).run()


