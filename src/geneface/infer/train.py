"""Make a person model from one video: process it, train the audio2motion model (or adapt a pretrained prior
with the postnet), then the head NeRF + torso, then the super-resolution network when the output size is larger
than the renderer's; `train_person` is what `geneface train all` runs.

Each stage resumes when run again. A stage that already finished is kept only if it was made with the
settings asked for now; otherwise the run stops with the settings that differ, and ``force`` retrains it.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..cliopts import MAX_SIZE, MAX_STEPS, check_config, opt
from ..dataset import PersonDataset
from ..device import DEVICES, defaults_for, resolve_device
from ..engine import RunFolder
from ..engine.run import differing_settings
from ..errors import InputError
from ..fileio import folder_lock
from ..features import FEATURE_KINDS
from ..motion.model import RUN_KIND as MOTION_RUN
from ..motion.presets import PRESETS
from ..motion.train import MotionTrainConfig, PostnetTrainConfig, train_motion, train_postnet
from ..motion.train import legacy_settings as motion_legacy_settings
from ..process.pipeline import ProcessConfig, check_source, process
from ..render.model import ModelConfig
from ..render.renderer import RUN_KIND as RENDER_RUN
from ..render.renderer import legacy_settings
from ..render.sr import FACTORS, SRTrainConfig, train_sr
from ..render.sr import RUN_KIND as SR_RUN
from ..render.train import RenderTrainConfig, resolve_config, train_render
from ..weights import config_to_dict
from .person import Person
from .pipeline import PersonModel

log = logging.getLogger(__name__)

IGNORED = ("save_every", "log_every", "val_every", "val_frames", "world_size", "data", "corpus", "person", "init")
"""Settings that do not change what a stage makes (cadences, where the data lay)."""


@dataclass
class TrainConfig:
    """Settings of `geneface train all` (None: the device's default, `geneface.device.DEVICE_DEFAULTS`)."""

    size: int | None = opt(None, min=32, max=MAX_SIZE, multiple_of=2)
    """Output frame size: the dataset's, and the person model's frames (default: the device's)."""
    render_size: int | None = opt(None, min=16, max=MAX_SIZE)
    """Renderer (NeRF) frame size: ``size``, or ``size`` / 2 or / 4 with a super-resolution network trained to
    bring it up (default: the device's, at most ``size``)."""
    features: str = opt("mel", choices=FEATURE_KINDS)
    """Audio feature kind."""
    feature_model: Path | None = None
    """Local model folder for --features hubert (a transformers HubertModel; recorded in the person model)."""
    audio: Path | None = None
    """Speech to use instead of the video's audio track."""
    prior: Path | None = None
    """A pretrained audio2motion run to adapt with the postnet instead of training from scratch."""
    motion_preset: str | None = opt(None, choices=tuple(PRESETS))
    """Audio2motion model sizes of a new motion run (default: the device's)."""
    motion_steps: int | None = opt(None, min=1, max=MAX_STEPS)
    """Audio2motion training steps: SyncNet and generator each, or postnet (default: their configs')."""
    render_steps: int | None = opt(None, min=1, max=MAX_STEPS)
    """Renderer training steps (default: the device's)."""
    sr_steps: int | None = opt(None, min=1, max=MAX_STEPS)
    """Super-resolution training steps (default: its config's)."""
    device: str = opt("auto", choices=DEVICES)
    """Compute device."""
    force: bool = False
    """Retrain every finished stage whose settings differ from these (else such a stage is an error)."""
    motion: MotionTrainConfig = field(default_factory=MotionTrainConfig)
    """Motion training settings (``motion_steps`` replaces its step counts)."""
    postnet: PostnetTrainConfig = field(default_factory=PostnetTrainConfig)
    """Postnet training settings, with ``prior`` (``motion_steps`` replaces its step count)."""
    render: RenderTrainConfig = field(default_factory=RenderTrainConfig)
    """Renderer training settings (``render_steps`` replaces its steps; its size is ``render_size``: one given
    here instead trains the renderer at it with no super-resolution, and the person renders at it)."""
    sr: SRTrainConfig = field(default_factory=SRTrainConfig)
    """Super-resolution training settings (``sr_steps`` replaces its steps; its factor follows the sizes)."""

    def __post_init__(self) -> None:
        check_config(self)


def train_person(video: str | os.PathLike, out: str | os.PathLike, config: TrainConfig = TrainConfig(),
                 progress: bool = True) -> PersonModel:
    """Process ``video`` into ``out/data`` at the output size and train ``out/motion``, ``out/render`` (at the
    renderer's size) and, when the output is larger, ``out/sr``; returns the loaded model.

    The layout of ``out`` is `geneface.infer.person`'s. Rerunning resumes; see the module docstring for
    finished stages.
    """
    out = Path(out)
    device = resolve_device(config.device)
    defaults = defaults_for(device)
    size, render_size, sr_factor = train_sizes(config, device)
    if config.prior is not None and config.motion_preset is not None:
        raise InputError("--motion-preset sizes a new motion model; with --prior the prior's sizes are used")

    # 1. the dataset
    check_source(Path(video), config.audio)  # before any folder is made
    with folder_lock(out):  # one train_person per person folder
        data = out / "data"
        _check_dataset(data, size, config.force)
        _stage("process", data)
        process(video, data, ProcessConfig(size=size, audio=config.audio, features=(config.features,),
                                           feature_model=config.feature_model, device=config.device))

        # 2. motion: trained on the person, or a prior adapted with the postnet
        motion_dir = out / "motion"
        if config.prior is None:
            preset = config.motion_preset or defaults.motion_preset
            cfg = config.motion if config.motion_steps is None else \
                replace(config.motion, steps=config.motion_steps, syncnet_steps=config.motion_steps)
            wanted = {"training": config_to_dict(cfg), "preset": preset, "feature_kind": config.features,
                      "postnet": None}
            if _keep(RunFolder(motion_dir, MOTION_RUN), wanted, config.force, "train motion"):
                train_motion([data], motion_dir, kind=config.features, preset_name=preset, config=cfg,
                             device=config.device, progress=progress)
        else:
            cfg = config.postnet if config.motion_steps is None else replace(config.postnet, steps=config.motion_steps)
            wanted = {"postnet_training": config_to_dict(cfg), "feature_kind": config.features,
                      "init": str(config.prior)}
            if _keep(RunFolder(motion_dir, MOTION_RUN), wanted, config.force, "train postnet"):
                prior_kind = RunFolder(config.prior, MOTION_RUN).read_config().get("feature_kind")
                if prior_kind != config.features:
                    raise InputError(f"--prior {config.prior} was trained on {prior_kind!r} features, not "
                                     f"{config.features!r}; give --features {prior_kind}")
                train_postnet(data, config.prior, motion_dir, config=cfg, device=config.device, progress=progress)

        # 3. renderer
        render_dir = out / "render"
        rcfg = replace(config.render, size=render_size, steps=config.render_steps or config.render.steps)
        resolutions_given = rcfg.model.resolutions != ModelConfig().resolutions
        resolved = resolve_config(device, PersonDataset(data).size, rcfg, resolutions_given)
        settings = asdict(resolved)
        wanted = {"model": settings.pop("model"), "train": settings}
        sr_dir = out / "sr"
        if _keep(RunFolder(render_dir, RENDER_RUN), wanted, config.force, "train render"):
            if sr_dir.exists():  # made from another renderer
                log.warning(f"removing {sr_dir}: the renderer it was trained on is being trained again")
                shutil.rmtree(sr_dir)
            train_render(data, render_dir, rcfg, device=device, progress=progress)

        # 4. super-resolution from the renderer's size to the output size
        if sr_factor is not None:
            scfg = replace(config.sr, steps=config.sr_steps or config.sr.steps,
                           model=replace(config.sr.model, factor=sr_factor))
            settings = asdict(scfg)
            wanted = {"model": settings.pop("model"), "train": settings, "render_size": render_size, "size": size}
            if _keep(RunFolder(sr_dir, SR_RUN), wanted, config.force, "train sr"):
                train_sr(data, render_dir, sr_dir, scfg, device=device, progress=progress)

        # 5. the person model
        Person.write(out, PersonDataset(data), feature_kind=config.features, feature_model=config.feature_model,
                     sr="sr" if sr_factor is not None else None)
        model = PersonModel.load(out, device)
        log.info(f"person model written to {out}; render speech with: geneface infer --person {out} --audio SPEECH "
                 f"--out OUT.mp4")
        return model


def train_sizes(config: TrainConfig, device: torch.device | None = None) -> tuple[int, int, int | None]:
    """The output size, the renderer's size and the super-resolution factor (None: none) that `train_person`
    uses with ``config`` on ``device`` (default: ``config.device`` resolved); bad sizes are an `InputError`."""
    defaults = defaults_for(device if device is not None else resolve_device(config.device))
    size = config.size or defaults.output_size
    return (size, *_render_size(config, size, defaults.render_size))


def _render_size(config: TrainConfig, size: int, device_size: int) -> tuple[int, int | None]:
    """The renderer's frame size and the super-resolution factor (None: none) for output ``size``."""
    if config.render_size is None and config.render.size is not None:
        return config.render.size, None  # the renderer's own size, as the person's (no super-resolution)
    render_size = config.render_size or min(device_size, size)
    if config.render.size is not None and config.render.size != render_size:
        raise InputError(f"the renderer's size is given twice ({render_size} and {config.render.size}); give one")
    if render_size == size:
        return render_size, None
    if not any(size == render_size * f for f in FACTORS):
        fits = " or ".join(str(size // f) for f in FACTORS if size % f == 0 and size // f >= 16)
        raise InputError(f"--size {size} must be --render-size {render_size} times 1, 2 or 4 (super-resolution "
                         f"scales by 2 or 4){f'; use --render-size {fits}' if fits else ''}")
    return render_size, size // render_size


def _stage(name: str, folder: Path) -> None:
    log.info(f"== {name}: {folder}")


def _keep(run: RunFolder, wanted: dict, force: bool, command: str) -> bool:
    """Whether stage ``run`` must (still) be trained: False for a finished run made with ``wanted`` (a subset
    of its config.json); a finished or interrupted run made otherwise is an error, or removed with ``force``."""
    if run.finished:
        made = run.read_config()
        if run.kind == RENDER_RUN and isinstance(made.get("train"), dict):
            made["train"] = legacy_settings(made["train"])
        if run.kind == MOTION_RUN and isinstance(made.get("training"), dict) and "training" in wanted:
            made["training"] = motion_legacy_settings(made["training"], wanted["training"])
        diff = differing_settings({k: made.get(k) for k in wanted}, wanted, IGNORED)
        if not diff:
            log.info(f"== {run.root} is already trained; skipping `geneface {command}`")
            return False
        if not force:
            raise InputError(f"{run.root} was trained with other settings ({', '.join(diff)}); add --force to "
                             f"train it again, or choose another --out")
        log.warning(f"{run.root} was trained with other settings ({', '.join(diff)}); training it again (--force)")
        shutil.rmtree(run.root)
    elif run.state_dir.exists() and force:
        state = run.read_state() or {}
        saved = state.get("train", state.get("run", {}).get("train", {}))
        requested = wanted.get("training", wanted.get("postnet_training", wanted.get("train", {})))
        if run.kind == MOTION_RUN and "training" in wanted:
            saved = motion_legacy_settings(saved, requested)
        if differing_settings(saved, requested, IGNORED):
            log.warning(f"{run.root} holds an interrupted run with other settings; starting it again (--force)")
            shutil.rmtree(run.root)
    _stage(command, run.root)
    return True


def _check_dataset(data: Path, size: int, force: bool) -> None:
    """A processed dataset of another size cannot be resumed: an error, or removed with ``force``."""
    meta = data / "meta.json"
    if not meta.exists():
        return
    made = PersonDataset(data).size
    if made == size:
        return
    if not force:
        raise InputError(f"{data} was processed at --size {made}, not {size}; add --force to process the video "
                         f"again, or choose another --out")
    log.warning(f"{data} was processed at --size {made}; processing again at {size} (--force)")
    shutil.rmtree(data)
