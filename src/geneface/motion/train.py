"""Training of the motion models on the shared engine: the SyncNet, then the audio2motion generator; and the
per-person postnet.

Runs on one process or under ``torchrun`` on one node or several (DistributedDataParallel; gloo on the CPU,
nccl on CUDA, a GPU per process: `geneface.engine.dist`): each rank draws its own windows, gradients are
averaged, rank 0 writes checkpoints. A checkpoint (weights and optimizer states) is written every
``save_every`` steps into ``RUN/train_state``; rerunning the same command resumes from it, and so does a
``torchrun --max-restarts`` restart after a process or a node was lost (every rank reads the checkpoint, so on
several nodes the run folder must be on storage they all share). A non-finite loss or gradient stops training with an error and leaves the last good
checkpoint in place. The run folder's layout is in `geneface.motion.model`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..cliopts import MAX_SEED, MAX_STEPS, check_config, opt
from ..corpusdata import is_corpus
from ..device import fused_adam
from ..engine import Callback, Dist, LossCall, Plateau, RunFolder, Trainer, init_distributed
from ..errors import InputError
from ..weights import config_to_dict
from .corpus import default_feature_kind, open_training_data, open_window_source
from .data import ClipSet, MotionBatch, MotionClip, VoiceAugment, WindowSampler, WindowSource, load_clips
from .generator import Audio2Motion
from .measures import data_stats, eval_subset, motion_metrics, syncnet_auc
from .model import RUN_KIND, MotionModel
from .postnet import Discriminator, Postnet, PostnetConfig
from .presets import preset
from .syncnet import SyncNet

log = logging.getLogger(__name__)

RESUMABLE_CHANGES = ("save_every", "log_every")
"""Settings that may differ when an interrupted run is resumed."""
ADDED_SETTINGS = ("sync_check_every", "sync_patience", "sync_min_gain", "val_every", "patience", "min_delta",
                  "lr_end")
"""Settings added since runs were first saved (early stopping, the final learning rate): a run saved before
them counts as made with the values asked for now, so it is kept, or resumed with them."""


def legacy_settings(saved: dict, requested: dict) -> dict:
    """Training settings of a saved run in today's terms: `ADDED_SETTINGS` filled in from ``requested``."""
    return {**{k: requested[k] for k in ADDED_SETTINGS if k in requested}, **saved}


@dataclass
class StepConfig:
    """Settings shared by the motion trainers."""

    batch_size: int = opt(16, min=1, max=4096)
    """Windows per step and process."""
    window: int = opt(64, min=16, max=4096, multiple_of=4)
    """Video frames per training window (a multiple of 4)."""
    clip_grad: float = opt(1.0, above=0.0, max=1e6)
    """Gradient norm clipping."""
    save_every: int = opt(500, min=1, max=MAX_STEPS)
    """Steps between checkpoints."""
    log_every: int = opt(10, min=1, max=MAX_STEPS)
    """Steps between log lines (train_log.jsonl, TensorBoard, progress bar)."""
    seed: int = opt(9999, min=0, max=MAX_SEED)
    """Random seed (each process adds its rank)."""

    def __post_init__(self) -> None:
        check_config(self)


@dataclass
class MotionTrainConfig(StepConfig):
    """Settings of `geneface train motion`."""

    syncnet_steps: int = opt(4000, min=0, max=MAX_STEPS)
    """SyncNet training steps (with --init, further steps on the new data; 0 keeps it as it is)."""
    steps: int = opt(5000, min=1, max=MAX_STEPS)
    """Generator training steps."""
    lr: float = opt(5e-4, above=0.0, max=1.0)
    """Peak learning rate of the generator (Adam)."""
    lr_end: float = opt(0.4, min=0.0, max=1.0)
    """The generator's learning rate at its last step, as a fraction of ``lr`` (cosine decay after the warm-up).
    Decayed further, its samples (temperature > 0) follow the audio less well for the same steps."""
    syncnet_lr: float = opt(5e-4, above=0.0, max=1.0)
    """Peak learning rate of the SyncNet (Adam, cosine decay)."""
    warmup: int = opt(200, min=0, max=MAX_STEPS)
    """Linear warm-up steps of the generator's learning rate."""
    syncnet_pairs: int = opt(512, min=1, max=1_000_000)
    """Audio/mouth pairs per SyncNet step and process."""
    sync_min_auc: float = opt(0.75, min=0.0, max=1.0)
    """The generator's SyncNet loss is used only if the SyncNet separates in-sync from shifted windows at least
    this well (ROC AUC), measured on the held-out ends of the training clips (see ``sync_holdout``)."""
    sync_holdout: float = opt(0.1, min=0.0, max=0.5)
    """Share of the end of every training clip that the SyncNet does not train on, to measure that AUC (the
    generator still trains on it; the validation split is only reported, never used to decide)."""
    augment: bool = True
    """Random voice changes (spectral warp, pitch, loudness) of the training windows; ``mel`` features only."""
    sync_check_every: int = opt(250, min=1, max=MAX_STEPS)
    """SyncNet steps between checks of its AUC on the held-out ends of the training clips."""
    sync_patience: int = opt(2, min=0, max=10_000)
    """SyncNet training stops after this many checks in a row without an AUC gain of ``sync_min_gain`` over its
    best (0: it always runs ``syncnet_steps``)."""
    sync_min_gain: float = opt(0.01, min=0.0, max=1.0)
    """Smallest relative AUC gain that counts as progress."""
    val_every: int = opt(250, min=1, max=MAX_STEPS)
    """Generator steps between checks of its mouth-opening correlation with the real one (sampled at
    temperature 1) on the held-out ends of the training clips."""
    patience: int = opt(0, min=0, max=10_000)
    """Generator training stops after this many checks in a row without an improvement of ``min_delta`` and
    keeps its best weights; the held-out ends are then never trained on (0, the default: it runs ``steps`` on
    all the training frames, which rendered speech it never heard better than stopping early did)."""
    min_delta: float = opt(0.01, min=0.0, max=1.0)
    """Smallest relative improvement of that correlation that counts."""
    sync_start: float = opt(0.25, min=0.0, max=1.0)
    """Fraction of the generator steps after which the SyncNet loss switches on."""
    val_speakers: float = opt(0.05, min=0.0, max=1.0)
    """Fraction of a prepared corpus's speakers held out for validation (at least one of two or more; chosen
    by a hash of their names, so every run agrees); person folders keep their own validation split."""


@dataclass
class PostnetTrainConfig(StepConfig):
    """Settings of `geneface train postnet`."""

    steps: int = opt(2000, min=1, max=MAX_STEPS)
    """Postnet training steps."""
    lr: float = opt(3e-4, above=0.0, max=1.0)
    """Learning rate of the postnet (RMSprop; the original used 1e-4 for 12000 steps)."""
    disc_lr: float = opt(3e-4, above=0.0, max=1.0)
    """Learning rate of the discriminator (RMSprop)."""
    temperature: float = opt(1.0, min=0.0, max=10.0)
    """Sampling temperature of the generator whose output the postnet refines."""


# --- helpers --------------------------------------------------------------------------------------------

def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _cosine(step: int, total: int, peak: float, warmup: int = 0, floor: float = 0.1) -> float:
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _optimize(losses: dict[str, torch.Tensor], params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
              clip: float) -> dict[str, torch.Tensor]:
    """Backward ``losses["total"]``, clip, step; the other losses and the gradient norm, for the log."""
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    norm = torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    return {**{k: v for k, v in losses.items() if k != "total"}, "grad_norm": norm}


# --- the training steps (the trainers, and benchmarks/gpu.py timing them) ------------------------------

def syncnet_step(syncnet: SyncNet, loss: Callable, batch: MotionBatch, rng: torch.Generator,
                 optimizer: torch.optim.Optimizer, params: list[nn.Parameter], cfg: MotionTrainConfig
                 ) -> dict[str, torch.Tensor]:
    """One SyncNet step on ``batch``: random in-sync and shifted pairs, ``loss`` (``syncnet.loss``, or it under
    DistributedDataParallel), backward, clip, step."""
    audio, mouth, label = syncnet.sample_pairs(batch.features, batch.offsets, batch.mask, cfg.syncnet_pairs, rng)
    return _optimize(loss(audio, mouth, label), params, optimizer, cfg.clip_grad)


def generator_step(loss: Callable, batch: MotionBatch, syncnet: SyncNet | None, rng: torch.Generator,
                   optimizer: torch.optim.Optimizer, params: list[nn.Parameter], cfg: MotionTrainConfig
                   ) -> dict[str, torch.Tensor]:
    """One generator step (``loss``: ``Audio2Motion.loss``), with the SyncNet's loss when ``syncnet`` is given."""
    losses = loss(batch.features, batch.pitch, batch.offsets, batch.mask, syncnet=syncnet, generator=rng)
    return _optimize(losses, params, optimizer, cfg.clip_grad)


def postnet_step(refiner: tuple[Postnet, Callable, torch.optim.Optimizer],
                 critic: tuple[Discriminator, Callable, torch.optim.Optimizer], generator: Audio2Motion,
                 syncnet: SyncNet, batch: MotionBatch, other: MotionBatch | None, rng: torch.Generator,
                 cfg: PostnetTrainConfig) -> dict[str, torch.Tensor]:
    """One postnet step, then one discriminator step: ``refiner`` and ``critic`` are (module, its loss, its
    optimizer). ``batch`` is the person's; ``other`` speakers' audio, if given, only gets the adversarial and
    sync terms."""
    (postnet, p_loss, p_opt), (disc, d_loss, d_opt) = refiner, critic
    feats, pitch, mask, target_mask = batch.features, batch.pitch, batch.mask, batch.mask
    if other is not None:
        feats, pitch = torch.cat([feats, other.features]), torch.cat([pitch, other.pitch])
        mask = torch.cat([mask, other.mask])
        target_mask = torch.cat([target_mask, torch.zeros_like(other.mask)])
    with torch.no_grad():
        raw = generator.sample(feats, pitch, mask, temperature=cfg.temperature, generator=rng)
    target = torch.cat([batch.offsets, torch.zeros_like(raw[batch.offsets.shape[0]:])])
    disc.requires_grad_(False)
    losses, refined = p_loss(raw, target, mask, feats, disc, syncnet, rng, target_mask=target_mask)
    p_values = _optimize(losses, list(postnet.parameters()), p_opt, cfg.clip_grad)
    disc.requires_grad_(True)
    d_values = _optimize(d_loss(batch.offsets, refined.detach(), batch.mask, fake_mask=mask),
                         list(disc.parameters()), d_opt, cfg.clip_grad)
    return {**p_values, **{k if k != "grad_norm" else "disc_grad_norm": v for k, v in d_values.items()}}


def _seed(cfg: StepConfig, dist: Dist, step: int) -> int:
    """Each rank and each resumed session draws other windows and noise."""
    return cfg.seed + dist.rank + 7919 * step


def _default_kind(data: Sequence[str | os.PathLike]) -> str:
    """``mel``, unless the prepared corpora among ``data`` lack it."""
    return default_feature_kind(data) if any(is_corpus(d) for d in data) else "mel"


@dataclass
class _Data:
    """What `train_motion` draws from and measures on."""

    source: WindowSource
    val_clips: list[MotionClip]
    train_clips: list[MotionClip]
    corpus_info: dict | None


def _open_data(data: Sequence[str | os.PathLike], kind: str, cfg: MotionTrainConfig, dist: Dist) -> _Data:
    """Prepared corpora stream speaker-balanced windows and hold out speakers; person folders alone are held in
    memory with their own validation splits."""
    if any(is_corpus(d) for d in data):
        corpus = open_training_data(data, kind, cfg.val_speakers)
        if dist.main:
            i = corpus.info
            log.info(f"corpus: {i['clips']} clips ({i['frames']} frames) of {i['speakers']} speakers for training; "
                     f"held out for validation: {i['val_speakers']} speakers ({i['val_clips']} clips measured)")
        return _Data(corpus.source, corpus.val_clips, corpus.train_clips, corpus.info)
    train_clips = load_clips(data, kind, ("train",))
    if not train_clips:
        raise InputError(f"the training splits under {', '.join(map(str, data))} are too short to train on")
    return _Data(ClipSet(train_clips), load_clips(data, kind, ("val",)), train_clips, None)


# --- train motion ---------------------------------------------------------------------------------------

def train_motion(data: Sequence[str | os.PathLike], out: str | os.PathLike, *, init: str | os.PathLike | None = None,
                 kind: str | None = None, preset_name: str = "geneface", config: MotionTrainConfig | None = None,
                 device: str = "auto", tensorboard: bool = False, progress: bool = True) -> dict:
    """Train the SyncNet and then the generator on processed clips under ``data``; returns the metrics.

    ``data`` holds processed person folders (or folders with some below them) and prepared corpora
    (`geneface corpus prepare`); with a corpus among them, windows are streamed speaker-balanced and
    ``config.val_speakers`` of its speakers are held out for the measures.
    """
    cfg = config or MotionTrainConfig()
    dist = init_distributed(device)
    run = RunFolder(out, RUN_KIND, dist)
    with run:  # one writer per run folder
        state = run.begin(f"choose another --out, or fine-tune it with --init {run.root}")
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
        init_model = MotionModel.load(init) if init is not None and state is None else None

        # 1. feature kind: from the checkpoint being resumed, the run being fine-tuned, or the option
        if state is not None:
            requested = config_to_dict(cfg)
            run.check_same_settings(legacy_settings(state.get("train", {}), requested), requested, RESUMABLE_CHANGES)
            run_kind, where = state["feature_kind"], f"the interrupted run in {run.root}"
        elif init_model is not None:
            run_kind, where = init_model.feature_kind, f"--init {init}"
        else:
            run_kind, where = kind or _default_kind(data), ""
        if kind is not None and kind != run_kind:
            raise InputError(f"{where} uses {run_kind!r} features but --features is {kind!r}")

        # 2. data; the ends of the training clips are kept from the SyncNet to decide on its loss
        d = _open_data(data, run_kind, cfg, dist)
        sync_source, holdout = d.source.split_tail(cfg.sync_holdout)

        # 3. models
        if state is not None:
            syncnet = SyncNet.from_config_record(state["syncnet"], str(run.state_dir))
            generator = Audio2Motion.from_config_record(state["generator"], str(run.state_dir))
            run.load_state({"syncnet": syncnet, "generator": generator}, {})
            info = state.get("info", {})
        elif init_model is not None:
            syncnet, generator = init_model.syncnet, init_model.generator
            info = {"preset": init_model.info.get("preset"), "init": str(init)}
        else:
            s_cfg, g_cfg, _ = preset(preset_name, d.source.feature_dim)
            syncnet, generator = SyncNet(s_cfg), Audio2Motion(g_cfg)
            mean, std, scale = data_stats(d.source, seed=cfg.seed)
            syncnet.set_stats(mean, std, scale)
            generator.set_stats(mean, std, scale)
            info = {"preset": preset_name}
        if generator.config.feature_dim != d.source.feature_dim:
            raise InputError(f"the model expects {generator.config.feature_dim}-channel features, the {run_kind!r} "
                             f"features of the data have {d.source.feature_dim}")
        syncnet.to(dist.device)
        generator.to(dist.device)
        fused = fused_adam(dist.device)
        s_opt = torch.optim.Adam(syncnet.parameters(), lr=cfg.syncnet_lr, betas=(0.9, 0.999), fused=fused)
        g_opt = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=(0.9, 0.999), fused=fused)
        stage, step = ("syncnet", 0) if state is None else (state["stage"], int(state["step"]))
        sync = {"enabled": bool(state.get("sync_enabled", False)) if state else False,
                "auc": state.get("syncnet_auc") if state else None}
        # early stopping on the held-out ends (none to hold out: every step is run)
        saved = (state or {}).get("checks", {})
        sync_checks = Plateau(cfg.sync_patience if holdout else 0, cfg.sync_min_gain, higher_is_better=True,
                              history=saved.get("syncnet", []))
        gen_checks = Plateau(cfg.patience if holdout else 0, cfg.min_delta, higher_is_better=True,
                             history=saved.get("generator", []))
        best = Audio2Motion(generator.config).to(dist.device).requires_grad_(False)  # the best weights so far
        best.load_state_dict(generator.state_dict())
        if state is not None:
            run.load_state({"generator_best": best} if gen_checks.history else {},
                           {"syncnet_optim": s_opt, "generator_optim": g_opt})
            if dist.main:
                log.info(f"resuming {stage} training at step {step}")

        def save(stage_now: str, step_now: int) -> None:
            kept = {"generator_best": best} if gen_checks.history else {}  # loaded on resume by the same rule
            run.save_state({"syncnet": syncnet, "generator": generator, **kept},
                           {"syncnet_optim": s_opt, "generator_optim": g_opt},
                           {"stage": stage_now, "step": step_now, "feature_kind": run_kind,
                            "syncnet": syncnet.config_record(), "generator": generator.config_record(),
                            "sync_enabled": sync["enabled"], "syncnet_auc": sync["auc"], "info": info,
                            "checks": {"syncnet": sync_checks.history, "generator": gen_checks.history},
                            "train": config_to_dict(cfg)})

        trainer = Trainer(run, dist, log_every=cfg.log_every, tensorboard=tensorboard, progress=progress,
                          memory_hint="use a smaller --batch-size or --window")
        seed = _seed(cfg, dist, step)
        augment = VoiceAugment() if cfg.augment and run_kind == "mel" else None
        rng = torch.Generator(device=dist.device).manual_seed(seed)  # the model's random draws, on its device
        torch.manual_seed(seed)

        # 4. SyncNet, then the decision on its loss
        if stage == "syncnet":
            sampler = WindowSampler(sync_source, cfg.window, cfg.batch_size, seed=cfg.seed * 1000 + seed - cfg.seed,
                                    augment=augment)
            batches = sampler.batches(dist.device)
            syncnet.train()
            s_loss = dist.wrap(LossCall(syncnet, "loss"))
            s_params = list(syncnet.parameters())

            def syncnet_step_at(i: int) -> dict[str, torch.Tensor]:
                _set_lr(s_opt, _cosine(i, cfg.syncnet_steps, cfg.syncnet_lr, floor=0.05))
                return syncnet_step(syncnet, s_loss, next(batches), rng, s_opt, s_params, cfg)

            def syncnet_check(i: int) -> None:
                if sync_checks.patience:
                    sync_checks.add(i, _holdout_auc(syncnet, holdout, cfg, dist))  # leaves it training

            def syncnet_stop(i: int) -> str | None:
                if not sync_checks.stalled:
                    return None
                auc = sync_checks.history[-1][1]
                return (f"its held-out AUC ({auc:.3f}) gained less than {cfg.sync_min_gain:.0%} in the last "
                        f"{cfg.sync_patience} checks")

            trainer.fit("syncnet", step, cfg.syncnet_steps, syncnet_step_at, checkpoint=lambda i: save("syncnet", i),
                        save_every=cfg.save_every, callbacks=[Callback(syncnet_check, every=cfg.sync_check_every)],
                        stop=syncnet_stop)
            syncnet.eval()
            sync.update(_decide_sync_loss(syncnet, holdout, cfg, dist))
            stage, step = "generator", 0
            save(stage, step)

        # 5. generator
        syncnet.eval().requires_grad_(False)
        if stage == "generator":
            # with early stopping the held-out ends decide when to stop, so they are not trained on
            source = sync_source if gen_checks.patience else d.source
            sampler = WindowSampler(source, cfg.window, cfg.batch_size, seed=cfg.seed * 1000 + seed - cfg.seed,
                                    augment=augment)
            batches = sampler.batches(dist.device)
            generator.train()
            g_loss = dist.wrap(LossCall(generator, "loss"))
            g_params = list(generator.parameters())
            sync_from = int(cfg.sync_start * cfg.steps)

            def generator_step_at(i: int) -> dict[str, torch.Tensor]:
                _set_lr(g_opt, _cosine(i, cfg.steps, cfg.lr, warmup=min(cfg.warmup, cfg.steps // 10), floor=cfg.lr_end))
                use_sync = syncnet if (sync["enabled"] and i >= sync_from) else None
                return generator_step(g_loss, next(batches), use_sync, rng, g_opt, g_params, cfg)

            def generator_check(i: int) -> None:
                if gen_checks.patience:
                    model = MotionModel(run_kind, syncnet, generator.eval(), None, info)
                    corr = dist.from_main(_holdout_corr(model, holdout) if dist.main else math.nan)
                    generator.train()
                    if gen_checks.add(i, corr):
                        best.load_state_dict(generator.state_dict())

            def generator_stop(i: int) -> str | None:
                if not gen_checks.stalled:
                    return None
                at, corr = gen_checks.best
                return (f"its held-out mouth-opening correlation has not improved by {cfg.min_delta:.0%} in "
                        f"{cfg.patience} checks; keeping the best weights (step {at}, r = {corr:.3f})")

            trainer.fit("generator", step, cfg.steps, generator_step_at, checkpoint=lambda i: save("generator", i),
                        save_every=cfg.save_every, callbacks=[Callback(generator_check, every=cfg.val_every)],
                        stop=generator_stop)
            if gen_checks.history:
                generator.load_state_dict(best.state_dict())
                save("generator", cfg.steps)  # done: a rerun goes on to the measures
        trainer.close()

        # 6. measures and the finished run (config.json last)
        generator.eval()
        model = MotionModel(run_kind, syncnet, generator, None, info)
        eval_clips = d.val_clips or d.train_clips
        metrics = {"syncnet_auc": sync["auc"], "sync_loss_used": sync["enabled"],
                   "split": "val" if d.val_clips else "train",
                   "syncnet_steps_run": sync_checks.history[-1][0] if sync_checks.stalled else cfg.syncnet_steps,
                   "generator_steps_run": gen_checks.history[-1][0] if gen_checks.stalled else cfg.steps,
                   "generator_best_step": gen_checks.best[0] if gen_checks.history else cfg.steps,
                   "syncnet_checks": sync_checks.history, "generator_checks": gen_checks.history}
        if d.corpus_info is not None:
            metrics["val_speakers"] = d.corpus_info["val_speakers"]
        if dist.main:
            metrics["syncnet_auc_" + metrics["split"]] = syncnet_auc(syncnet, eval_subset(eval_clips, 64), seed=cfg.seed)
            metrics.update(motion_metrics(model, eval_subset(eval_clips), temperature=1.0))
            model.save(run.root, training={**config_to_dict(cfg), "world_size": dist.world,
                                           "data": [str(p) for p in data],
                                           **({"corpus": d.corpus_info} if d.corpus_info is not None else {})},
                       metrics=metrics)
            log.info(f"motion model written to {run.root}")
        run.finish()
        return dist.from_main(metrics)


CHECK_SEEDS = (0, 1)
"""Sampling seeds of the generator's held-out checks (the same draws at every check)."""


def _holdout_corr(model: MotionModel, holdout: list[MotionClip]) -> float:
    """The correlation of the generator's mouth opening with the real one on (up to 32 of) the held-out clip
    ends, sampled at temperature 1 as the run's final measures are, averaged over `CHECK_SEEDS`; NaN: none.
    (Its mean motion, at temperature 0, and the landmark distance stop improving long before its samples'
    timing does.)"""
    clips = eval_subset(holdout)
    values = [motion_metrics(model, clips, temperature=1.0, seed=s).get("mouth_corr", math.nan) for s in CHECK_SEEDS]
    return float(sum(values) / len(values))


def _holdout_auc(syncnet: SyncNet, holdout: list[MotionClip], cfg: MotionTrainConfig, dist: Dist) -> float:
    """The SyncNet's AUC on (up to 64 of) the held-out clip ends, measured on the main process; NaN: none."""
    auc = syncnet_auc(syncnet, eval_subset(holdout, 64), seed=cfg.seed) if dist.main and holdout else math.nan
    return dist.from_main(auc)


def _decide_sync_loss(syncnet: SyncNet, holdout: list[MotionClip], cfg: MotionTrainConfig, dist: Dist) -> dict:
    """Whether the generator gets the SyncNet loss: the SyncNet's AUC on the held-out clip ends."""
    auc = _holdout_auc(syncnet, holdout, cfg, dist)
    enabled = bool(auc >= cfg.sync_min_auc)
    if dist.main:
        if math.isnan(auc):
            log.info("SyncNet: the training clips are too short to hold out windows for its check; SyncNet loss "
                     "for the generator off")
        else:
            log.info(f"SyncNet AUC (in sync vs shifted, held-out ends of the training clips): {auc:.3f}; SyncNet "
                     f"loss for the generator {'on' if enabled else f'off (below {cfg.sync_min_auc})'}")
    return {"enabled": enabled, "auc": None if math.isnan(auc) else auc}


# --- train postnet ------------------------------------------------------------------------------------

def train_postnet(person: str | os.PathLike, init: str | os.PathLike, out: str | os.PathLike, *,
                  audio: Sequence[str | os.PathLike] | None = None, postnet_config: PostnetConfig | None = None,
                  config: PostnetTrainConfig | None = None, device: str = "auto", tensorboard: bool = False,
                  progress: bool = True) -> dict:
    """Adapt run ``init`` to the person in ``person``; writes a complete run (generator + postnet) to ``out``."""
    cfg = config or PostnetTrainConfig()
    dist = init_distributed(device)
    if Path(out).resolve() == Path(init).resolve():
        raise InputError("--out must differ from --init (the pretrained run stays as it is)")
    run = RunFolder(out, RUN_KIND, dist)
    with run:  # one writer per run folder
        state = run.begin()
        if state is not None:
            run.check_same_settings(state.get("train", {}), config_to_dict(cfg), RESUMABLE_CHANGES)
        torch.manual_seed(cfg.seed)
        base = MotionModel.load(init)
        kind = base.feature_kind

        # 1. data: the person's windows, and optionally other speakers' audio
        person_clips = load_clips([person], kind, ("train",))
        val_clips = load_clips([person], kind, ("val",))
        if not person_clips:
            raise InputError(f"the training split of {person} is too short to train on")
        person_src = ClipSet(person_clips)
        audio_src = open_window_source(audio, kind) if audio else None
        for src, what in ((person_src, str(person)), (audio_src, "the --audio clips")):
            if src is not None and src.feature_dim != base.feature_dim:
                raise InputError(f"{init} expects {base.feature_dim}-channel {kind!r} features; {what} "
                                 f"{'has' if src is person_src else 'have'} {src.feature_dim}")

        # 2. models
        if state is not None:
            postnet = Postnet.from_config_record(state["postnet"], str(run.state_dir))
        else:
            postnet = Postnet(postnet_config or preset(base.info.get("preset") or "geneface", base.feature_dim)[2])
        disc = Discriminator(postnet.config)
        postnet.motion_scale.copy_(base.generator.motion_scale)
        disc.motion_scale.copy_(base.generator.motion_scale)
        generator, syncnet = base.generator.to(dist.device).eval(), base.syncnet.to(dist.device).eval()
        generator.requires_grad_(False)
        syncnet.requires_grad_(False)
        postnet.to(dist.device)
        disc.to(dist.device)
        p_opt = torch.optim.RMSprop(postnet.parameters(), lr=cfg.lr)
        d_opt = torch.optim.RMSprop(disc.parameters(), lr=cfg.disc_lr)
        modules, optimizers = {"postnet": postnet, "discriminator": disc}, \
            {"postnet_optim": p_opt, "discriminator_optim": d_opt}
        step = 0
        if state is not None:
            run.load_state(modules, optimizers)
            step = int(state["step"])
            if dist.main:
                log.info(f"resuming postnet training at step {step}")

        def save(step_now: int) -> None:
            run.save_state(modules, optimizers, {"stage": "postnet", "step": step_now, "feature_kind": kind,
                                                 "postnet": postnet.config_record(), "train": config_to_dict(cfg)})

        # 3. steps
        trainer = Trainer(run, dist, log_every=cfg.log_every, tensorboard=tensorboard, progress=progress,
                          memory_hint="use a smaller --batch-size or --window")
        seed = _seed(cfg, dist, step)
        half = cfg.batch_size // 2 if audio_src is not None else cfg.batch_size
        person_sampler = WindowSampler(person_src, cfg.window, half, seed=seed)
        audio_sampler = (WindowSampler(audio_src, cfg.window, cfg.batch_size - half, seed=seed + 1)
                         if audio_src is not None else None)
        rng = torch.Generator(device=dist.device).manual_seed(seed)
        torch.manual_seed(seed)
        person_batches = person_sampler.batches(dist.device)
        audio_batches = audio_sampler.batches(dist.device) if audio_sampler is not None else None
        p_loss = dist.wrap(LossCall(postnet, "loss"))
        d_loss = dist.wrap(LossCall(disc, "loss"))

        def postnet_step_at(i: int) -> dict[str, torch.Tensor]:
            other = next(audio_batches) if audio_batches is not None else None
            return postnet_step((postnet, p_loss, p_opt), (disc, d_loss, d_opt), generator, syncnet,
                                next(person_batches), other, rng, cfg)

        trainer.fit("postnet", step, cfg.steps, postnet_step_at, checkpoint=save, save_every=cfg.save_every)
        trainer.close()

        # 4. measures and the finished run
        postnet.eval()
        model = MotionModel(kind, syncnet, generator, postnet, {k: v for k, v in base.info.items() if k != "metrics"})
        eval_clips = eval_subset(val_clips or person_clips)
        metrics: dict = {"split": "val" if val_clips else "train"}
        if dist.main:
            raw_metrics = motion_metrics(model, eval_clips, cfg.temperature, postnet=False)
            metrics.update({f"{k}_raw": v for k, v in raw_metrics.items()})
            metrics.update(motion_metrics(model, eval_clips, cfg.temperature))
            model.save(run.root, postnet_training={**config_to_dict(cfg), "person": str(person), "init": str(init),
                                                   "world_size": dist.world}, metrics=metrics)
            log.info(f"motion model with postnet written to {run.root}")
        run.finish()
        return dist.from_main(metrics)
