"""Training of a person's renderer: the head NeRF, then the torso field with the head frozen.

A run folder::

    RUN/config.json          format, version, model config, person geometry; written last (finished run)
    RUN/model.safetensors    all weights and buffers (background, occupancy grid, ...)
    RUN/history.json         validation PSNR against step and time
    RUN/val/*.png            validation frames: truth | render | error x4, one row per frame
    RUN/train_state/         weights + optimizer state + state.json, replaced atomically at each save

Rerunning the same command resumes from ``train_state``. A non-finite loss stops training with an error and
keeps the last good checkpoint. Periodic work (occupancy-grid updates, validation, checkpoints) runs as
callbacks of the step loop.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import GeneFaceError, InputError
from ..fileio import atomic_dir, atomic_path, read_json, write_json
from ..weights import load_optimizer, load_weights, save_optimizer, save_weights
from .data import RenderData
from .model import ModelConfig, PersonGeometry, PersonModel, RayBatch
from .perceptual import load_perceptual
from .volume import psnr

RUN_FORMAT = "geneface-render"
RUN_VERSION = 1
STATE_DIR = "train_state"
PHASES = ("head", "torso")


class TrainingError(GeneFaceError):
    """Training cannot go on (a NaN loss, for instance); the last good checkpoint is kept."""


@dataclass
class RenderTrainConfig:
    """Settings of `geneface train render` (None: the device's default, see `defaults_for`)."""

    size: int | None = None
    """Training frame side in pixels (at most the dataset's)."""
    steps: int | None = None
    """Training steps of both phases together."""
    torso_fraction: float = 0.4
    """Share of the steps spent on the torso phase (the head phase comes first)."""
    frames_per_step: int = 8
    """Frames whose pixels make up one step's rays."""
    rays_per_frame: int | None = None
    """Rays per frame and step."""
    torso_rays_factor: int = 4
    """The torso phase's steps have this many times more rays (they are much cheaper)."""
    lr: float = 2e-2
    """Learning rate of the feature planes (the MLPs use a tenth), decayed exponentially."""
    lr_decay: float = 0.1
    """Learning-rate factor reached at the end of each phase."""
    lip_fraction: float = 0.25
    """Share of the head rays drawn from the mouth box (lip emphasis)."""
    eye_fraction: float = 0.0
    """Share of every frame's head rays drawn from the eyes' box (the rays that matter for blinks are
    those of the few blink frames: see the next two)."""
    blink_eye_fraction: float = 0.25
    """Extra share of a frame's head rays drawn from the eyes' box, times how far its eye opening is from
    the person's usual one (`RenderData.eye_rarity`, 1 at a full blink): blinks are rare and last a frame
    or two, so closed eyes get few rays otherwise."""
    blink_frame_boost: float = 4.0
    """Head-phase frames are drawn with weight 1 + this times the same eye rarity, so that blink frames come
    up more often (0: uniformly)."""
    alpha_weight: float = 0.05
    """Weight of the head-alpha-vs-head-label loss (head phase)."""
    distortion_weight: float = 1e-2
    """Weight of the distortion loss that gathers each ray's weights into a thin surface (sharper and
    faster to render)."""
    depth_weight: float = 0.02
    """Weight of the loss that pulls the head's surface to the tracked mesh's depth."""
    depth_fraction: float = 0.1
    """Share of the head rays that pass through tracked mesh vertices (for that loss)."""
    torso_alpha_weight: float = 0.02
    """Weight of the torso-alpha-vs-torso-label loss (torso phase)."""
    perceptual_weight: float = 0.01
    """Weight of the LPIPS loss on mouth patches, used only where LPIPS weights are installed
    (`geneface.lpips`; it adds about 2% to a head step on the CPU)."""
    occupancy_every: int = 16
    """Steps between occupancy-grid updates (head phase)."""
    val_every: int = 250
    """Steps between validations (PSNR on validation frames, a PNG)."""
    val_frames: int = 4
    """Validation frames rendered each time."""
    save_every: float = 120.0
    """Seconds between checkpoints."""
    seed: int = 0
    """Random seed."""
    amp: bool = True
    """Mixed precision on CUDA."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model sizes (resolutions follow ``size`` unless given)."""


def defaults_for(device: torch.device, data_size: int, config: RenderTrainConfig,
                 resolutions_given: bool = False) -> RenderTrainConfig:
    """Fill the None fields for ``device``: small and quick on the CPU, full size on a GPU."""
    kind = device.type
    size = config.size or min(data_size, {"cpu": 128, "mps": 256}.get(kind, 512))
    steps = config.steps or {"cpu": 3000, "mps": 8000}.get(kind, 20000)
    rays = config.rays_per_frame or {"cpu": 512, "mps": 1024}.get(kind, 2048)
    model = config.model
    if not resolutions_given:
        top = min(size, 512)
        model = replace(model, resolutions=tuple(max(16, top // f) for f in (4, 2, 1)),
                        torso_resolutions=tuple(max(8, top // f) for f in (8, 4, 2, 1)))
    return replace(config, size=size, steps=steps, rays_per_frame=rays, model=model)


@dataclass
class Callback:
    """Call ``fn(step)`` every ``every`` steps (or ``seconds``) while ``phases`` are running."""

    fn: Callable[[int], None]
    every: int = 0
    seconds: float = 0.0
    phases: tuple[str, ...] = PHASES
    _last: float = field(default_factory=time.perf_counter)

    def maybe(self, step: int, phase: str) -> None:
        if phase not in self.phases:
            return
        now = time.perf_counter()
        if (self.every and step % self.every == 0) or (self.seconds and now - self._last >= self.seconds):
            self._last = now
            self.fn(step)


class RenderTrainer:
    """Trains a person model on a dataset into a run folder; `run` does everything (and resumes)."""

    def __init__(self, data_dir: str | Path, run_dir: str | Path, config: RenderTrainConfig = RenderTrainConfig(),
                 device: torch.device | str = "cpu", progress: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.progress = progress
        from ..dataset import PersonDataset

        data_size = PersonDataset(data_dir).size
        resolutions_given = config.model.resolutions != ModelConfig().resolutions
        self.config = defaults_for(self.device, data_size, config, resolutions_given)
        c = self.config
        if c.steps is not None and c.steps < 1:
            raise InputError(f"--steps must be at least 1, got {c.steps}")
        if not 0 <= c.torso_fraction < 1:
            raise InputError(f"torso_fraction must be in [0, 1), got {c.torso_fraction}")
        self.data = RenderData(data_dir, c.size, self.device, progress=progress)
        self.phase_steps = {"head": c.steps - int(round(c.steps * c.torso_fraction)),
                            "torso": int(round(c.steps * c.torso_fraction))}
        self.amp_dtype = None
        if c.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.history: list[dict] = []
        self.step = 0  # global step over both phases
        self.train_seconds = 0.0  # in training steps only
        self.wall_before = 0.0  # wall-clock seconds of earlier sessions of this run
        self.session_start = time.perf_counter()
        self.perceptual = None
        self.patch = 0

    # --- setup -----------------------------------------------------------------------------------
    def _new_model(self) -> PersonModel:
        d = self.data
        model = PersonModel(self.config.model, d.geometry()).to(self.device)
        model.set_person(d.background, d.torso_region(), d.c2w[d.train_idx], d.offsets[d.train_idx])
        views = d.train_idx[torch.linspace(0, len(d.train_idx) - 1, min(32, len(d.train_idx))).round().long()]
        model.grid.carve(d.c2w[views], d.K, d.head_masks(views), dilate=max(1, d.size // 64))
        return model

    def _run_record(self) -> dict:
        c = asdict(self.config)
        model = c.pop("model")
        return {"format": RUN_FORMAT, "version": RUN_VERSION, "model": model,
                "geometry": asdict(self.model.geometry), "train": c, "data": str(self.data.root)}

    def _optimizer(self, phase: str) -> torch.optim.Optimizer:
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
        with atomic_dir(self.run_dir / STATE_DIR) as tmp:
            save_weights(tmp / "model.safetensors", self.model)
            save_optimizer(tmp / "optimizer.safetensors", opt)
            write_json(tmp / "state.json", {"step": self.step, "phase": phase, "train_seconds": self.train_seconds,
                                            "wall_seconds": self._wall(), "run": self._run_record(),
                                            "history": self.history})

    def _wall(self) -> float:
        return round(self.wall_before + time.perf_counter() - self.session_start, 2)

    def _load_state(self) -> tuple[str, dict] | None:
        state_dir = self.run_dir / STATE_DIR
        if not (state_dir / "state.json").exists():
            return None
        try:
            state = read_json(state_dir / "state.json")
            run = state["run"]
            geometry = PersonGeometry(**run["geometry"])
            model_config = ModelConfig.from_dict(run["model"])
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"training state {state_dir} is corrupt ({type(e).__name__}: {e}); delete it to "
                             f"start over") from None
        mine = asdict(self.config)
        mine.pop("model")
        theirs = dict(run["train"])
        for key in ("save_every", "val_every", "val_frames"):  # may change between runs
            mine.pop(key, None)
            theirs.pop(key, None)
        if theirs != mine or model_config != self.config.model or run.get("data") != str(self.data.root):
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            what = ", ".join(diff) or ("model" if model_config != self.config.model else "data")
            raise InputError(f"{self.run_dir} holds an unfinished run with other settings ({what}); use the same "
                             f"options to resume, or another --out")
        self.model = PersonModel(model_config, geometry).to(self.device)
        load_weights(state_dir / "model.safetensors", self.model)
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.wall_before = float(state.get("wall_seconds", 0.0))
        self.history = list(state.get("history", []))
        return str(state["phase"]), state

    def _finish(self) -> None:
        save_weights(self.run_dir / "model.safetensors", self.model)
        write_json(self.run_dir / "history.json", self.history)
        write_json(self.run_dir / "config.json", self._run_record())

    # --- validation ------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, phase: str) -> dict:
        """Render validation frames: PSNR of the full frame and of the head over the true torso; a PNG."""
        d = self.data
        idx = d.val_idx if len(d.val_idx) else d.train_idx
        pick = idx[torch.linspace(0, len(idx) - 1, min(self.config.val_frames, len(idx))).round().long()]
        self.model.eval()
        out = self.model.render_images(d.c2w[pick], d.windows(pick))
        self.model.train()
        gt = d.frames[pick].float() / 255
        # the head over the true torso and background: what the head phase optimises
        behind = torch.where((d.labels[pick] == 1)[..., None], d.background.float()[None] / 255, gt)
        head_over = (out.head_rgb + (1 - out.head_alpha[..., None]) * behind).clamp(0, 1)
        record = {"step": self.step, "phase": phase, "train_seconds": round(self.train_seconds, 2),
                  "wall_seconds": self._wall(),
                  "psnr": round(psnr(((out.rgb - gt) ** 2).mean()), 3),
                  "psnr_head": round(psnr(((head_over - gt) ** 2).mean()), 3)}
        rows = []
        for i in range(len(pick)):
            shown = out.rgb[i] if phase == "torso" else head_over[i]
            err = ((shown - gt[i]).abs() * 4).clamp(0, 1)
            rows.append(torch.cat([gt[i], shown, err], 1))
        image = (torch.cat(rows, 0).cpu().numpy() * 255).round().astype(np.uint8)
        _write_png(self.run_dir / "val" / f"step_{self.step:06d}.png", image)
        self.history.append(record)
        write_json(self.run_dir / "history.json", self.history)
        return record

    # --- training --------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train (or resume) to the end; returns the last validation record."""
        c = self.config
        torch.manual_seed(c.seed)
        if (self.run_dir / "config.json").exists() and (self.run_dir / "model.safetensors").exists():
            raise InputError(f"{self.run_dir} already holds a trained renderer; choose another --out")
        resumed = self._load_state()
        if resumed is None:
            self.model = self._new_model()
            start_phase = "head"
        else:
            start_phase = resumed[0]
        self.model.amp_dtype = self.amp_dtype
        self.perceptual = load_perceptual(self.device) if c.perceptual_weight > 0 else None
        self.patch = _patch_size(c) if self.perceptual is not None else 0
        gen = torch.Generator(device=self.device)
        gen.manual_seed(c.seed + self.step)
        last: dict = self.history[-1] if self.history else {}
        offset = 0
        for phase in PHASES:
            n = self.phase_steps[phase]
            if PHASES.index(phase) < PHASES.index(start_phase):
                offset += n
                continue
            if n > 0:
                last = self._run_phase(phase, offset, gen) or last
            offset += n
        self._finish()
        if (self.run_dir / STATE_DIR).exists():
            shutil.rmtree(self.run_dir / STATE_DIR)
        return last

    def _run_phase(self, phase: str, offset: int, gen: torch.Generator) -> dict | None:
        c = self.config
        n = self.phase_steps[phase]
        opt = self._optimizer(phase)
        state_opt = self.run_dir / STATE_DIR / "optimizer.safetensors"
        first = self.step - offset  # steps of this phase already done
        if first > 0 and state_opt.exists():
            load_optimizer(state_opt, opt)
        first = max(first, 0)
        self.step = offset + first
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        last: dict | None = None
        d = self.data

        def occupancy(step: int) -> None:
            frame = d.train_idx[torch.randint(len(d.train_idx), (1,), generator=gen, device=self.device)]
            self.model.update_occupancy(d.windows(frame)[0])

        def validation(step: int) -> None:
            nonlocal last
            last = self.validate(phase)
            bar.set_postfix_str(f"val {last['psnr']:.2f} dB, head {last['psnr_head']:.2f} dB")

        callbacks = [Callback(occupancy, every=c.occupancy_every, phases=("head",)),
                     Callback(validation, every=c.val_every),
                     Callback(lambda step: self.save_state(phase, opt), seconds=c.save_every)]
        from tqdm import tqdm

        bar = tqdm(total=n, initial=first, desc=f"train {phase}", unit="step", disable=not self.progress,
                   dynamic_ncols=True)
        if phase == "head" and first == 0:
            occupancy(0)
        self.model.train()
        try:
            for k in range(first, n):
                t0 = time.perf_counter()
                self._set_lr(opt, phase, k)
                batch = d.sample(c.frames_per_step, c.rays_per_frame * (1 if phase == "head" else c.torso_rays_factor),
                                 phase, c.lip_fraction, generator=gen, patch=self.patch if phase == "head" else 0,
                                 depth_fraction=c.depth_fraction, eye_fraction=c.eye_fraction,
                                 blink_eye_fraction=c.blink_eye_fraction, blink_frame_boost=c.blink_frame_boost)
                losses = self._losses(phase, batch)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise TrainingError(f"training diverged at step {self.step} ({phase} phase, loss {loss.item()}); "
                                        f"the last good checkpoint in {self.run_dir / STATE_DIR} is kept; try a "
                                        f"lower learning rate")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                self.step += 1
                self.train_seconds += time.perf_counter() - t0
                bar.update(1)
                if k % 10 == 0:
                    bar.set_postfix_str(f"psnr {psnr(losses['rgb'].item()):.2f} dB"
                                        + (f", val {last['psnr']:.2f}" if last else ""), refresh=False)
                for cb in callbacks:
                    cb.maybe(self.step, phase)
        except KeyboardInterrupt:
            self.save_state(phase, opt)
            raise
        except torch.cuda.OutOfMemoryError:
            raise InputError(f"out of memory on {self.device.type} at --size {c.size} with {c.frames_per_step} x "
                             f"{c.rays_per_frame} rays per step; use a smaller --size or --rays") from None
        except RuntimeError as e:
            if "can't allocate memory" in str(e) or "out of memory" in str(e):
                raise InputError(f"out of memory on {self.device.type} at --size {c.size}; use a smaller --size "
                                 f"or --rays") from None
            raise
        finally:
            bar.close()
        if self.step % c.val_every != 0:
            last = self.validate(phase)
        if phase == "head":  # the torso phase starts from here, with a fresh optimizer
            d = self.data
            views = d.train_idx[::max(1, len(d.train_idx) // 48)]
            self.model.prune_invisible(d.c2w[views], d.windows(views))
            self.save_state("torso", self._optimizer("torso"))
        return last

    def _losses(self, phase: str, batch: RayBatch) -> dict[str, torch.Tensor]:
        c = self.config
        if phase == "head":
            losses, _ = self.model.head_loss_dict(batch, alpha_weight=c.alpha_weight,
                                                  distortion_weight=c.distortion_weight, depth_weight=c.depth_weight,
                                                  perceptual=self.perceptual,
                                                  perceptual_weight=c.perceptual_weight, patch=self.patch)
        else:
            losses, _ = self.model.torso_loss_dict(batch, alpha_weight=c.torso_alpha_weight)
        return losses


def _patch_size(c: RenderTrainConfig) -> int:
    """Side of the mouth patch for the perceptual loss: the lip rays of a frame, as a square (0: too few)."""
    side = math.isqrt(int(c.rays_per_frame * c.lip_fraction))
    return side if side >= 4 else 0


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), rgb[..., ::-1]):
            raise OSError(f"could not write {path}")


def train_render(data_dir: str | Path, run_dir: str | Path, config: RenderTrainConfig = RenderTrainConfig(),
                 device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """Train a person's renderer (see `RenderTrainer`); returns the last validation record."""
    return RenderTrainer(data_dir, run_dir, config, device, progress).run()


