"""Training of the motion models: SyncNet, then the audio2motion generator; and the per-person postnet.

Runs on one process or under ``torchrun`` (DistributedDataParallel; gloo on the CPU, nccl on CUDA): each
rank draws its own windows, gradients are averaged, rank 0 writes checkpoints. A checkpoint (weights and
optimizer states) is written every ``save_every`` steps into ``RUN/train_state``; rerunning the same command
resumes from it. A non-finite loss or gradient stops training with an error and leaves the last good
checkpoint in place.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..constants import MOUTH_68
from ..device import resolve_device
from ..errors import GeneFaceError, InputError
from ..fileio import atomic_dir, read_json, write_json
from .data import ClipSet, MotionClip, VoiceAugment, WindowSampler, WindowSource, load_clips, mouth_opening
from .generator import Audio2Motion, GeneratorConfig
from .model import MotionModel
from .postnet import Discriminator, Postnet, PostnetConfig
from .presets import preset
from .runio import (STATE_DIR, config_from_dict, config_to_dict, load_optimizer, load_weights, save_optimizer,
                    save_weights)
from .syncnet import AUDIO_WINDOW, MOUTH_WINDOW, SyncNet, SyncNetConfig


class TrainingError(GeneFaceError):
    """Training cannot go on (a NaN loss, for instance); the last good checkpoint is kept."""


@dataclass
class MotionTrainConfig:
    """Settings of `geneface train motion`."""

    syncnet_steps: int = 4000
    """SyncNet training steps (with --init, further steps on the new data; 0 keeps it as it is)."""
    steps: int = 8000
    """Generator training steps."""
    batch_size: int = 16
    """Windows per step and process."""
    window: int = 64
    """Video frames per training window (a multiple of 4)."""
    lr: float = 5e-4
    """Peak learning rate of the generator (Adam)."""
    syncnet_lr: float = 5e-4
    """Peak learning rate of the SyncNet (Adam, cosine decay)."""
    warmup: int = 200
    """Linear warm-up steps of the generator's learning rate."""
    clip_grad: float = 1.0
    """Gradient norm clipping."""
    syncnet_pairs: int = 512
    """Audio/mouth pairs per SyncNet step and process."""
    sync_min_auc: float = 0.75
    """The generator's SyncNet loss is used only if the SyncNet separates in-sync from shifted windows of
    the validation data at least this well (ROC AUC)."""
    augment: bool = True
    """Random voice changes (spectral warp, pitch, loudness) of the training windows; ``mel`` features only."""
    sync_start: float = 0.25
    """Fraction of the generator steps after which the SyncNet loss switches on."""
    val_speakers: float = 0.05
    """Fraction of a prepared corpus's speakers held out for validation (at least one of two or more; chosen
    by a hash of their names, so every run agrees); person folders keep their own validation split."""
    save_every: int = 500
    """Steps between checkpoints."""
    log_every: int = 10
    """Steps between log lines (train_log.jsonl, TensorBoard, progress bar)."""
    seed: int = 9999
    """Random seed (each process adds its rank)."""

    def __post_init__(self) -> None:
        _check_window(self.window)


@dataclass
class PostnetTrainConfig:
    """Settings of `geneface train postnet`."""

    steps: int = 2000
    """Postnet training steps."""
    batch_size: int = 16
    """Windows per step and process."""
    window: int = 64
    """Video frames per training window (a multiple of 4)."""
    lr: float = 3e-4
    """Learning rate of the postnet (RMSprop; the original used 1e-4 for 12000 steps)."""
    disc_lr: float = 3e-4
    """Learning rate of the discriminator (RMSprop)."""
    temperature: float = 1.0
    """Sampling temperature of the generator whose output the postnet refines."""
    clip_grad: float = 1.0
    """Gradient norm clipping."""
    save_every: int = 500
    """Steps between checkpoints."""
    log_every: int = 10
    """Steps between log lines."""
    seed: int = 9999
    """Random seed (each process adds its rank)."""

    def __post_init__(self) -> None:
        _check_window(self.window)


def _check_window(window: int) -> None:
    if window < 16 or window % 4:
        raise InputError(f"--window must be a multiple of 4 and at least 16 frames, got {window}")


# --- distributed -------------------------------------------------------------------------------

@dataclass
class Dist:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            values = values.clone()
            tdist.all_reduce(values)
            values /= self.world
        return values

    def from_main(self, value):
        """Rank 0's ``value`` on every rank (a picklable Python object)."""
        if self.world > 1:
            box = [value]
            tdist.broadcast_object_list(box, src=0)
            value = box[0]
        return value

    def wrap(self, module: nn.Module) -> nn.Module:
        return DistributedDataParallel(module) if self.world > 1 else module


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group that ``torchrun`` set up (environment ``WORLD_SIZE`` > 1), else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return Dist(0, 1, dev)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(tdist.get_rank(), tdist.get_world_size(), dev)


def close_distributed() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


class _Call(nn.Module):
    """Makes ``module.<method>`` the forward, so DistributedDataParallel can wrap a model's loss."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, *args, **kwargs):
        return getattr(self.module, self.method)(*args, **kwargs)


# --- the step loop -------------------------------------------------------------------------------

class _Logger:
    """Progress bar, train_log.jsonl and optional TensorBoard scalars (rank 0 only)."""

    def __init__(self, out: Path, dist: Dist, tensorboard: bool) -> None:
        self.dist = dist
        self.path = out / "train_log.jsonl"
        self.writer = None
        if tensorboard and dist.main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("warning: --tensorboard needs the tensorboard package (pip install tensorboard); "
                      "logging to train_log.jsonl only", file=sys.stderr)
            else:
                self.writer = SummaryWriter(str(out / "tensorboard"))

    def log(self, stage: str, step: int, values: dict[str, float]) -> None:
        if not self.dist.main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"stage": stage, "step": step, **{k: round(v, 6) for k, v in values.items()}}) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{stage}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _reduce(losses: dict[str, torch.Tensor], dist: Dist) -> dict[str, float]:
    keys = list(losses)
    values = dist.mean(torch.stack([losses[k].detach().float().reshape(()) for k in keys]))
    return dict(zip(keys, values.tolist()))


def _check_finite(values: dict[str, float], grad_norm: torch.Tensor | None, stage: str, step: int,
                  state_dir: Path) -> None:
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if grad_norm is not None and not torch.isfinite(grad_norm):
        bad.append("gradient norm")
    if bad:
        saved = ""
        state = state_dir / "state.json"
        if state.exists():
            s = read_json(state)
            saved = f"; the last good checkpoint ({s['stage']} step {s['step']}) is kept in {state_dir}"
        raise TrainingError(f"{stage} training diverged at step {step + 1}: {', '.join(bad)} not finite{saved}. "
                            f"Lower the learning rate (--lr) and rerun to resume")


def _loop(stage: str, start: int, total: int, step_fn: Callable[[int], dict[str, float]],
          save_fn: Callable[[int], None], save_every: int, log_every: int, logger: _Logger, dist: Dist) -> None:
    from tqdm import tqdm

    if start >= total:
        return
    bar = tqdm(total=total, initial=start, desc=stage, disable=not dist.main, dynamic_ncols=True, leave=True)
    acc: dict[str, float] = {}
    n = 0
    for step in range(start, total):
        values = step_fn(step)
        for k, v in values.items():
            acc[k] = acc.get(k, 0.0) + v
        n += 1
        bar.update(1)
        if (step + 1) % log_every == 0 or step + 1 == total:
            mean = {k: v / n for k, v in acc.items()}
            bar.set_postfix({k: f"{v:.4g}" for k, v in mean.items()}, refresh=False)
            logger.log(stage, step + 1, mean)
            acc, n = {}, 0
        if (step + 1) % save_every == 0 or step + 1 == total:
            save_fn(step + 1)
    bar.close()


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _cosine(step: int, total: int, peak: float, warmup: int = 0, floor: float = 0.1) -> float:
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _backward_step(loss: torch.Tensor, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                   clip: float) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return torch.nn.utils.clip_grad_norm_(params, clip)


# --- statistics and measures -------------------------------------------------------------------

def data_stats(source: WindowSource, windows: int = 256, window: int = 64, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per-channel feature mean and std ``[D]`` and the global std of the offsets, over random windows."""
    rng = np.random.default_rng(seed)
    feats_l, offsets_l = [], []
    for _ in range(windows):
        f, _, o, n = source.sample(rng, window)
        feats_l.append(f[: 2 * n])
        offsets_l.append(o[:n].reshape(n, -1))
    feats = np.concatenate(feats_l).astype(np.float64)
    offsets = np.concatenate(offsets_l).astype(np.float64)
    mean, std = feats.mean(0), feats.std(0)
    std = np.maximum(std, 1e-2 * max(float(std.max()), 1e-6))
    scale = max(float(offsets.std()), 1e-4)
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32), scale


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@torch.no_grad()
def syncnet_auc(syncnet: SyncNet, clips: list[MotionClip], seed: int = 0, max_windows: int = 4000) -> float:
    """ROC AUC of the SyncNet telling in-sync windows from windows shifted by 2..max_shift frames."""
    rng = np.random.default_rng(seed)
    pos, neg = [], []
    dev = syncnet.feature_mean.device
    was = syncnet.training
    syncnet.eval()
    for clip in clips:
        n = clip.num_frames - MOUTH_WINDOW + 1
        if n < 4:
            continue
        idx = np.arange(n)
        if len(idx) > max_windows:
            idx = np.sort(rng.choice(idx, max_windows, replace=False))
        s = syncnet.config.max_shift
        shift = rng.integers(2, s + 1, len(idx)) * rng.choice([-1, 1], len(idx))
        other = idx + shift
        other = np.where((other < 0) | (other >= n), idx - shift, other)
        ok = (other >= 0) & (other < n)
        feats = torch.from_numpy(clip.features).to(dev)
        mouth = torch.from_numpy(clip.offsets).to(dev)[:, MOUTH_68]
        m_idx = torch.from_numpy(idx)[:, None].to(dev) + torch.arange(MOUTH_WINDOW, device=dev)
        a_pos = 2 * torch.from_numpy(idx)[:, None].to(dev) + torch.arange(AUDIO_WINDOW, device=dev)
        a_neg = 2 * torch.from_numpy(other[ok])[:, None].to(dev) + torch.arange(AUDIO_WINDOW, device=dev)
        pos.append(syncnet(feats[a_pos], mouth[m_idx]).cpu().numpy())
        neg.append(syncnet(feats[a_neg], mouth[m_idx[torch.from_numpy(ok).to(dev)]]).cpu().numpy())
    syncnet.train(was)
    if not pos or not sum(len(x) for x in neg):
        return float("nan")
    return _auc(np.concatenate(pos), np.concatenate(neg))


def eval_subset(clips: list[MotionClip], count: int = 32) -> list[MotionClip]:
    """At most ``count`` clips, evenly spread (measures on a large corpus stay quick)."""
    if len(clips) <= count:
        return clips
    return [clips[int(i)] for i in np.linspace(0, len(clips) - 1, count).round()]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 3 or a.std() < 1e-12 or b.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def motion_metrics(model: MotionModel, clips: list[MotionClip], temperature: float = 1.0, seed: int = 0,
                   postnet: bool = True) -> dict[str, float]:
    """Measures of predictions on ``clips`` against their real landmarks (mean over clips).

    ``mouth_lmd``: mean distance of the 20 mouth points (inter-ocular distances); ``mouth_corr``: Pearson
    correlation of the inner-lip opening; ``sync_pred`` / ``sync_real``: mean SyncNet confidence of the
    prediction and of the real landmarks.
    """
    rows = []
    for clip in clips:
        if clip.num_frames < MOUTH_WINDOW + 2:
            continue
        pred = model.predict(clip.features, clip.pitch, temperature=temperature, seed=seed, postnet=postnet)
        real = clip.offsets
        rows.append({
            "mouth_lmd": float(np.linalg.norm(pred[:, MOUTH_68] - real[:, MOUTH_68], axis=-1).mean()),
            "mouth_corr": _pearson(mouth_opening(pred), mouth_opening(real)),
            "sync_pred": model.score(clip.features, pred).mean_confidence,
            "sync_real": model.score(clip.features, real).mean_confidence,
        })
    if not rows:
        return {}
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


# --- train motion ------------------------------------------------------------------------------

def _is_corpus(path: str | os.PathLike) -> bool:
    from ..corpus.store import is_corpus

    return is_corpus(path)


def _default_kind(data: list[str | os.PathLike]) -> str:
    """``mel``, unless the prepared corpora among ``data`` lack it."""
    if not any(_is_corpus(d) for d in data):
        return "mel"
    from ..corpus.source import default_feature_kind

    return default_feature_kind(data)


def _read_state(state_dir: Path) -> dict | None:
    path = state_dir / "state.json"
    if not path.exists():
        return None
    try:
        return read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is corrupt ({e}); delete {state_dir} to start over") from None


def _check_not_finished(out: Path, state: dict | None) -> None:
    if state is None and (out / "config.json").exists():
        raise InputError(f"{out} already holds a trained motion model; choose another --out, or fine-tune it "
                         f"with --init {out}")


def _finish(out: Path, dist: Dist) -> None:
    """Drop the training state of a finished run (the run folder holds everything inference needs)."""
    if dist.main:
        shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    dist.barrier()


def train_motion(data: list[str | os.PathLike], out: str | os.PathLike, *, init: str | os.PathLike | None = None,
                 kind: str | None = None, preset_name: str = "geneface",
                 config: MotionTrainConfig | None = None, device: str = "auto",
                 tensorboard: bool = False, source: WindowSource | None = None) -> dict:
    """Train the SyncNet and then the generator on processed clips under ``data``; returns the metrics.

    ``data`` holds processed person folders (or folders with some below them) and prepared corpora
    (`geneface corpus prepare`); with a corpus among them, windows are streamed speaker-balanced and
    ``config.val_speakers`` of its speakers are held out for the measures. ``source`` replaces the training
    windows drawn from ``data``; the validation clips of ``data`` are still used for the measures.
    """
    cfg = config or MotionTrainConfig()
    dist = init_distributed(device)
    out = Path(out)
    state_dir = out / STATE_DIR
    state = _read_state(state_dir)
    _check_not_finished(out, state)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    init_model = MotionModel.load(init) if init is not None and state is None else None

    # 1. feature kind: from the checkpoint being resumed, the run being fine-tuned, or the option
    if state is not None:
        run_kind = state["feature_kind"]
        where = f"the interrupted run in {out}"
    elif init_model is not None:
        run_kind = init_model.feature_kind
        where = f"--init {init}"
    else:
        run_kind, where = kind or _default_kind(data), ""
    if kind is not None and kind != run_kind:
        raise InputError(f"{where} uses {run_kind!r} features but --features is {kind!r}")

    # 2. data: prepared corpora stream speaker-balanced windows and hold out speakers; person folders alone
    #    are held in memory with their own validation splits
    corpus_info: dict | None = None
    train_clips: list[MotionClip] = []
    if any(_is_corpus(d) for d in data):
        from ..corpus.source import open_training_data

        corpus_data = open_training_data(data, run_kind, cfg.val_speakers)
        val_clips, train_clips, corpus_info = corpus_data.val_clips, corpus_data.train_clips, corpus_data.info
        if source is None:
            source = corpus_data.source
        if dist.main:
            print(f"corpus: {corpus_info['clips']} clips ({corpus_info['frames']} frames) of "
                  f"{corpus_info['speakers']} speakers for training; held out for validation: "
                  f"{corpus_info['val_speakers']} speakers ({corpus_info['val_clips']} clips measured)",
                  file=sys.stderr)
    else:
        val_clips = load_clips(data, run_kind, ("val",))
        if source is None:
            train_clips = load_clips(data, run_kind, ("train",))
            if not train_clips:
                raise InputError(f"the training splits under {', '.join(map(str, data))} are too short to train on")
            source = ClipSet(train_clips)
    eval_clips = val_clips or train_clips

    # 3. models
    if state is not None:
        s_cfg = config_from_dict(SyncNetConfig, state["syncnet"], str(state_dir))
        g_cfg = config_from_dict(GeneratorConfig, state["generator"], str(state_dir))
        syncnet, generator = SyncNet(s_cfg), Audio2Motion(g_cfg)
        load_weights(state_dir / "syncnet.safetensors", syncnet)
        load_weights(state_dir / "generator.safetensors", generator)
        info = state.get("info", {})
    elif init_model is not None:
        syncnet, generator = init_model.syncnet, init_model.generator
        info = {"preset": init_model.info.get("preset"), "init": str(init)}
    else:
        s_cfg, g_cfg, _ = preset(preset_name, source.feature_dim)
        syncnet, generator = SyncNet(s_cfg), Audio2Motion(g_cfg)
        mean, std, scale = data_stats(source, seed=cfg.seed)
        syncnet.set_stats(mean, std, scale)
        generator.set_stats(mean, std, scale)
        info = {"preset": preset_name}
    if generator.config.feature_dim != source.feature_dim:
        raise InputError(f"the model expects {generator.config.feature_dim}-channel features, the {run_kind!r} "
                         f"features of the data have {source.feature_dim}")
    syncnet.to(dist.device)
    generator.to(dist.device)
    s_opt = torch.optim.Adam(syncnet.parameters(), lr=cfg.syncnet_lr, betas=(0.9, 0.999))
    g_opt = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    stage, step = ("syncnet", 0) if state is None else (state["stage"], int(state["step"]))
    sync_enabled = bool(state.get("sync_enabled", False)) if state else False
    syncnet_measure = state.get("syncnet_auc") if state else None
    if state is not None:
        load_optimizer(state_dir / "syncnet_optim.safetensors", s_opt)
        load_optimizer(state_dir / "generator_optim.safetensors", g_opt)
        if dist.main:
            print(f"resuming {stage} training at step {step}", file=sys.stderr)

    def save_state(stage_now: str, step_now: int) -> None:
        if dist.main:
            with atomic_dir(state_dir) as tmp:
                save_weights(tmp / "syncnet.safetensors", syncnet)
                save_weights(tmp / "generator.safetensors", generator)
                save_optimizer(tmp / "syncnet_optim.safetensors", s_opt)
                save_optimizer(tmp / "generator_optim.safetensors", g_opt)
                write_json(tmp / "state.json", {
                    "stage": stage_now, "step": step_now, "feature_kind": run_kind,
                    "syncnet": config_to_dict(syncnet.config), "generator": config_to_dict(generator.config),
                    "sync_enabled": sync_enabled, "syncnet_auc": syncnet_measure, "info": info,
                    "train": config_to_dict(cfg)})
        dist.barrier()

    logger = _Logger(out, dist, tensorboard)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    augment = VoiceAugment() if cfg.augment and run_kind == "mel" else None
    sampler = WindowSampler(source, cfg.window, cfg.batch_size, seed=cfg.seed * 1000 + dist.rank + 7919 * step,
                            augment=augment)
    rng = torch.Generator().manual_seed(cfg.seed + dist.rank + 7919 * step)
    torch.manual_seed(cfg.seed + dist.rank + 7919 * step)

    # 4. SyncNet
    if stage == "syncnet":
        syncnet.train()
        s_ddp = dist.wrap(_Call(syncnet, "loss"))
        s_params = list(syncnet.parameters())

        def syncnet_step(i: int) -> dict[str, float]:
            _set_lr(s_opt, _cosine(i, cfg.syncnet_steps, cfg.syncnet_lr, floor=0.05))
            b = sampler.next().to(dist.device)
            audio, mouth, label = syncnet.sample_pairs(b.features, b.offsets, b.mask, cfg.syncnet_pairs, rng)
            losses = s_ddp(audio, mouth, label)
            norm = _backward_step(losses["total"], s_params, s_opt, cfg.clip_grad)
            values = _reduce({k: v for k, v in losses.items() if k != "total"}, dist)
            _check_finite(values, norm, "syncnet", i, state_dir)
            s_opt.step()
            return values

        _loop("syncnet", step, cfg.syncnet_steps, syncnet_step, lambda i: save_state("syncnet", i),
              cfg.save_every, cfg.log_every, logger, dist)
        del s_ddp
        syncnet.eval()
        syncnet_measure = dist.from_main(syncnet_auc(syncnet, eval_subset(eval_clips, 64), seed=cfg.seed)
                                         if dist.main else None)
        sync_enabled = bool(syncnet_measure >= cfg.sync_min_auc)
        if dist.main:
            print(f"SyncNet AUC (in sync vs shifted, {'validation' if val_clips else 'training'} windows): "
                  f"{syncnet_measure:.3f}; SyncNet loss for the generator "
                  f"{'on' if sync_enabled else 'off (below ' + str(cfg.sync_min_auc) + ')'}", file=sys.stderr)
        stage, step = "generator", 0
        save_state(stage, step)

    # 5. generator
    syncnet.eval().requires_grad_(False)
    if stage == "generator":
        generator.train()
        g_ddp = dist.wrap(_Call(generator, "loss"))
        g_params = list(generator.parameters())
        sync_from = int(cfg.sync_start * cfg.steps)

        def generator_step(i: int) -> dict[str, float]:
            _set_lr(g_opt, _cosine(i, cfg.steps, cfg.lr, warmup=min(cfg.warmup, cfg.steps // 10)))
            b = sampler.next().to(dist.device)
            use_sync = syncnet if (sync_enabled and i >= sync_from) else None
            losses = g_ddp(b.features, b.pitch, b.offsets, b.mask, syncnet=use_sync, generator=rng)
            norm = _backward_step(losses["total"], g_params, g_opt, cfg.clip_grad)
            values = _reduce({k: v for k, v in losses.items() if k != "total"}, dist)
            _check_finite(values, norm, "generator", i, state_dir)
            g_opt.step()
            return values

        _loop("generator", step, cfg.steps, generator_step, lambda i: save_state("generator", i),
              cfg.save_every, cfg.log_every, logger, dist)
        del g_ddp
    logger.close()

    # 6. measures and the finished run (config.json last)
    generator.eval()
    model = MotionModel(run_kind, syncnet, generator, None, info)
    metrics = {"syncnet_auc": syncnet_measure, "sync_loss_used": sync_enabled,
               "split": "val" if val_clips else "train"}
    if corpus_info is not None:
        metrics["val_speakers"] = corpus_info["val_speakers"]
    if dist.main:
        metrics.update(motion_metrics(model, eval_subset(eval_clips), temperature=1.0))
        write_json(out / "metrics.json", metrics)
        model.save(out, training={**config_to_dict(cfg), "world_size": dist.world,
                                  "data": [str(d) for d in data],
                                  **({"corpus": corpus_info} if corpus_info is not None else {})}, metrics=metrics)
        print(f"motion model written to {out}", file=sys.stderr)
    _finish(out, dist)
    return dist.from_main(metrics)


# --- train postnet -----------------------------------------------------------------------------

def train_postnet(person: str | os.PathLike, init: str | os.PathLike, out: str | os.PathLike, *,
                  audio: list[str | os.PathLike] | None = None, postnet_config: PostnetConfig | None = None,
                  config: PostnetTrainConfig | None = None, device: str = "auto",
                  tensorboard: bool = False) -> dict:
    """Adapt run ``init`` to the person in ``person``; writes a complete run (generator + postnet) to ``out``."""
    cfg = config or PostnetTrainConfig()
    dist = init_distributed(device)
    out = Path(out)
    state_dir = out / STATE_DIR
    if out.resolve() == Path(init).resolve():
        raise InputError("--out must differ from --init (the pretrained run stays as it is)")
    state = _read_state(state_dir)
    _check_not_finished(out, state)
    torch.manual_seed(cfg.seed)
    base = MotionModel.load(init)
    kind = base.feature_kind

    person_clips = load_clips([person], kind, ("train",))
    val_clips = load_clips([person], kind, ("val",))
    if not person_clips:
        raise InputError(f"the training split of {person} is too short to train on")
    person_src = ClipSet(person_clips)
    audio_src = None
    if audio:
        from ..corpus.source import open_window_source

        audio_src = open_window_source(audio, kind)  # prepared corpora are streamed
        if audio_src.feature_dim != base.feature_dim:
            raise InputError(f"{init} expects {base.feature_dim}-channel {kind!r} features; the --audio clips "
                             f"have {audio_src.feature_dim}")
    if person_src.feature_dim != base.feature_dim:
        raise InputError(f"{init} expects {base.feature_dim}-channel {kind!r} features; {person} has "
                         f"{person_src.feature_dim}")

    if state is not None:
        p_cfg = config_from_dict(PostnetConfig, state["postnet"], str(state_dir))
    elif postnet_config is not None:
        p_cfg = postnet_config
    else:
        p_cfg = preset(base.info.get("preset") or "geneface", base.feature_dim)[2]
    postnet, disc = Postnet(p_cfg), Discriminator(p_cfg)
    postnet.motion_scale.copy_(base.generator.motion_scale)
    disc.motion_scale.copy_(base.generator.motion_scale)
    generator, syncnet = base.generator.to(dist.device).eval(), base.syncnet.to(dist.device).eval()
    generator.requires_grad_(False)
    syncnet.requires_grad_(False)
    postnet.to(dist.device)
    disc.to(dist.device)
    p_opt = torch.optim.RMSprop(postnet.parameters(), lr=cfg.lr)
    d_opt = torch.optim.RMSprop(disc.parameters(), lr=cfg.disc_lr)
    step = 0
    if state is not None:
        load_weights(state_dir / "postnet.safetensors", postnet)
        load_weights(state_dir / "discriminator.safetensors", disc)
        load_optimizer(state_dir / "postnet_optim.safetensors", p_opt)
        load_optimizer(state_dir / "discriminator_optim.safetensors", d_opt)
        step = int(state["step"])
        if dist.main:
            print(f"resuming postnet training at step {step}", file=sys.stderr)

    def save_state(step_now: int) -> None:
        if dist.main:
            with atomic_dir(state_dir) as tmp:
                save_weights(tmp / "postnet.safetensors", postnet)
                save_weights(tmp / "discriminator.safetensors", disc)
                save_optimizer(tmp / "postnet_optim.safetensors", p_opt)
                save_optimizer(tmp / "discriminator_optim.safetensors", d_opt)
                write_json(tmp / "state.json", {"stage": "postnet", "step": step_now, "feature_kind": kind,
                                                "postnet": config_to_dict(p_cfg), "train": config_to_dict(cfg)})
        dist.barrier()

    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    logger = _Logger(out, dist, tensorboard)
    seed = cfg.seed + dist.rank + 7919 * step
    half = cfg.batch_size // 2 if audio_src is not None else cfg.batch_size
    person_sampler = WindowSampler(person_src, cfg.window, half, seed=seed)
    audio_sampler = (WindowSampler(audio_src, cfg.window, cfg.batch_size - half, seed=seed + 1)
                     if audio_src is not None else None)
    rng = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    p_ddp = dist.wrap(_Call(postnet, "loss"))
    d_ddp = dist.wrap(_Call(disc, "loss"))
    p_params, d_params = list(postnet.parameters()), list(disc.parameters())

    def postnet_step(i: int) -> dict[str, float]:
        b = person_sampler.next().to(dist.device)
        feats, pitch, mask, target_mask = b.features, b.pitch, b.mask, b.mask
        if audio_sampler is not None:  # other speakers' audio: adversarial and sync terms only
            e = audio_sampler.next().to(dist.device)
            feats, pitch = torch.cat([feats, e.features]), torch.cat([pitch, e.pitch])
            mask = torch.cat([mask, e.mask])
            target_mask = torch.cat([target_mask, torch.zeros_like(e.mask)])
        with torch.no_grad():
            raw = generator.sample(feats, pitch, mask, temperature=cfg.temperature, generator=rng)
        target = torch.cat([b.offsets, torch.zeros_like(raw[b.offsets.shape[0]:])])
        disc.requires_grad_(False)
        losses, refined = p_ddp(raw, target, mask, feats, disc, syncnet, rng, target_mask=target_mask)
        norm = _backward_step(losses["total"], p_params, p_opt, cfg.clip_grad)
        disc.requires_grad_(True)
        d_losses = d_ddp(b.offsets, refined.detach(), b.mask, fake_mask=mask)
        d_norm = _backward_step(d_losses["total"], d_params, d_opt, cfg.clip_grad)
        values = _reduce({**{k: v for k, v in losses.items() if k != "total"},
                          **{k: v for k, v in d_losses.items() if k != "total"}}, dist)
        _check_finite(values, torch.stack([norm, d_norm]).sum(), "postnet", i, state_dir)
        p_opt.step()
        d_opt.step()
        return values

    _loop("postnet", step, cfg.steps, postnet_step, save_state, cfg.save_every, cfg.log_every, logger, dist)
    logger.close()
    postnet.eval()
    model = MotionModel(kind, syncnet, generator, postnet, {k: v for k, v in base.info.items() if k != "metrics"})
    eval_clips = eval_subset(val_clips or person_clips)
    metrics = {"split": "val" if val_clips else "train"}
    if dist.main:
        raw = motion_metrics(model, eval_clips, cfg.temperature, postnet=False)
        metrics.update({f"{k}_raw": v for k, v in raw.items()})
        metrics.update(motion_metrics(model, eval_clips, cfg.temperature))
        write_json(out / "metrics.json", metrics)
        model.save(out, postnet_training={**config_to_dict(cfg), "person": str(person), "init": str(init),
                                          "world_size": dist.world}, metrics=metrics)
        print(f"motion model with postnet written to {out}", file=sys.stderr)
    _finish(out, dist)
    return dist.from_main(metrics)
