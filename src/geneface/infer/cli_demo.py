"""Render the bundled demo person (a synthetic talking head made from scikit-image's astronaut photo)
saying the bundled speech, into demo/output.mp4. The small person model that does it ships with geneface;
`--retrain` makes it again from the raw synthetic video with the project's own commands (synth, then
train all), and `--export DIR` saves the retrained model in the bundled form."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from .. import __version__
from ..cliopts import MAX_STEPS, add_config_options, check_config, config_from_args, opt
from ..device import DEVICES
from ..engine.run import differing_settings
from ..errors import InputError
from ..fileio import atomic_dir, read_json, write_json
from ..synth import SynthConfig, synthesize
from .person import Person
from .pipeline import InferConfig, infer
from .train import TrainConfig, train_person

log = logging.getLogger(__name__)

DEMO_SIZE = 512
"""Frame size of the demo person's video (pixels)."""
DEMO_RENDER_SIZE = 128
"""Size its renderer draws at; super-resolution brings that up to `DEMO_SIZE`."""
DEMO_MOTION_STEPS = 1500
"""SyncNet and generator steps when retraining the demo (the `small` motion preset)."""
DEMO_RENDER_STEPS = 3000
"""Renderer steps when retraining the demo."""
DEMO_SR_STEPS = 1500
"""Super-resolution steps when retraining the demo."""
EXPORTED = ("person.json", "track.npz", "motion/config.json", "motion/metrics.json", "motion/*.safetensors",
            "render/config.json", "render/history.json", "render/*.safetensors", "sr/config.json", "sr/history.json",
            "sr/reference.png", "sr/*.safetensors")
"""What the bundled model keeps of a trained person folder (no dataset, logs, checkpoints or validation images;
the super-resolution's reference image is part of its model)."""
EXPORT_DTYPE = "float16"
"""Floating-point weights are stored at half precision in the bundled model (loading casts them back to
float32); against full precision the demo video differs by about 40 dB PSNR."""


def bundled_person() -> Path:
    """The person model folder shipped in geneface/assets/demo_person."""
    path = Path(str(resources.files("geneface") / "assets" / "demo_person"))
    if not (path / "person.json").exists():
        raise InputError(f"the bundled demo model is missing from {path}; run `geneface demo --retrain` to make one")
    return path


def bundled_speech() -> Path:
    """The bundled speech clip (espeak-ng, 10.9 s)."""
    return Path(str(resources.files("geneface") / "assets" / "speech.flac"))


def export_person(person: Path, dest: Path) -> None:
    """Copy the parts of ``person`` that inference needs to ``dest`` (replaced atomically)."""
    Person(person)  # refuse anything that is not a complete person model
    with atomic_dir(dest) as tmp:
        for pattern in EXPORTED:
            for src in sorted(person.glob(pattern)):
                target = tmp / src.relative_to(person)
                target.parent.mkdir(parents=True, exist_ok=True)
                if src.suffix == ".safetensors":
                    _write_half(src, target)
                elif src.name == "person.json" and src.parent == person:  # the source video is not shipped
                    write_json(target, {k: v for k, v in read_json(src).items() if k != "source"})
                else:
                    shutil.copy2(src, target)


def _write_half(src: Path, dest: Path) -> None:
    """Copy a safetensors file with its float32 tensors stored as float16 (those beyond its range stay)."""
    limit = np.finfo(EXPORT_DTYPE).max
    tensors = {k: v.astype(EXPORT_DTYPE) if v.dtype == np.float32 and np.abs(v).max(initial=0) < limit else v
               for k, v in load_file(src).items()}
    save_file(tensors, dest)


def retrain(work: Path, config: TrainConfig, force: bool = False) -> Path:
    """Make the demo's synthetic clip in ``work`` and train the person from it (resumable); returns the person
    folder. ``work/demo.json`` records what the folder was made with: a folder made otherwise (other steps, an
    older geneface) is an error, or is started again with ``force``."""
    clip, person = work / "person.mp4", work / "person"
    synth = SynthConfig(size=256)
    record = {"geneface": __version__, "synth": asdict(synth),
              "train": {k: v for k, v in asdict(config).items() if k not in ("device", "force")}}
    record = json.loads(json.dumps(record, default=str))
    made_path = work / "demo.json"
    if work.exists() and any(work.iterdir()):
        made = read_json(made_path) if made_path.exists() else {}
        diff = differing_settings(made, record)
        if diff:
            if not force:
                raise InputError(f"{work} holds a demo made with other settings ({', '.join(diff)}); add --force to "
                                 f"start it again, or choose another --work")
            log.warning(f"{work} holds a demo made with other settings ({', '.join(diff)}); starting again (--force)")
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json(made_path, record)
    if not clip.exists():
        synthesize(clip, config=synth)
    train_person(clip, person, config)
    return person


@dataclass
class DemoConfig:
    """Options of `geneface demo` (its paths, --out, --work and --export, aside)."""

    retrain: bool = False
    """Make the synthetic clip and train the person from it (about 20-30 minutes on 2 CPU cores) instead of using
    the bundled model."""
    motion_steps: int = opt(DEMO_MOTION_STEPS, min=1, max=MAX_STEPS)
    """With --retrain: SyncNet and generator steps (the small motion preset)."""
    render_steps: int = opt(DEMO_RENDER_STEPS, min=1, max=MAX_STEPS)
    """With --retrain: renderer steps."""
    sr_steps: int = opt(DEMO_SR_STEPS, min=1, max=MAX_STEPS)
    """With --retrain: super-resolution steps."""
    force: bool = False
    """With --retrain: start again when --work holds a demo made with other settings."""
    side_by_side: bool = False
    """Draw the predicted landmarks beside the video."""
    device: str = opt("auto", choices=DEVICES)
    """Compute device."""

    def __post_init__(self) -> None:
        check_config(self)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo/output.mp4"), help="video to write (its folder is created)")
    p.add_argument("--work", type=Path, default=Path("demo/work"),
                   help="with --retrain: folder for the synthetic clip and the new person model (a rerun resumes)")
    p.add_argument("--export", type=Path, default=None,
                   help="with --retrain: also save the new model in the bundled form to this folder "
                        "(src/geneface/assets/demo_person replaces the shipped one)")
    add_config_options(p, DemoConfig)


def run(args: argparse.Namespace) -> int:
    demo = config_from_args(DemoConfig, args)
    if args.export is not None and not demo.retrain:
        raise InputError("--export saves a retrained model; add --retrain")
    start = time.perf_counter()
    if demo.retrain:
        config = TrainConfig(size=DEMO_SIZE, render_size=DEMO_RENDER_SIZE, motion_steps=demo.motion_steps, render_steps=demo.render_steps,
                             sr_steps=demo.sr_steps,
                             device=demo.device)
        person = retrain(args.work, config, force=demo.force)
        if args.export is not None:
            export_person(person, args.export)
            log.info(f"exported the demo model to {args.export}")
    else:
        person = bundled_person()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = infer(person, bundled_speech(), args.out, InferConfig(side_by_side=demo.side_by_side, device=demo.device))
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s")
    return 0
