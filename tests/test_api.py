"""The public API (`geneface.train_person`, `PersonModel`), what `train all` and `demo --retrain` build on it, and
the on-disk formats staying readable: the bundled demo person renders as it did before the engine refactor."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import geneface
from geneface import InferConfig, PersonModel, TrainConfig, train_person
from geneface.cli import main
from geneface.fileio import read_npz
from geneface.infer.cli_demo import bundled_person
from geneface.render import PersonRenderer

FIXTURES = Path(__file__).parent / "fixtures"


def test_bundled_demo_person_renders_as_before():
    """Frames rendered from the shipped demo person with the code before the training engine and the API
    (commit e26752a; `tests/fixtures/demo_person_frames.png`) are reproduced within 1/255."""
    person = PersonModel.load(bundled_person(), "cpu")
    offsets = torch.from_numpy(read_npz(FIXTURES / "demo_person_offsets.npz")["offsets"])
    windows = PersonRenderer.windows(offsets)[[1, 3]]
    c2w = torch.from_numpy(person.person.c2w[[0, len(person.person.c2w) // 2]]).float()
    rgb = person.renderer.render(c2w, windows).rgb.clamp(0, 1).numpy()
    before = cv2.imread(str(FIXTURES / "demo_person_frames.png"))[..., ::-1].astype(np.float32) / 255
    now = np.concatenate(list(rgb), 1)
    assert now.shape == before.shape == (128, 256, 3)
    assert np.abs(now - before).max() <= 1 / 255 + 1e-6


def test_public_api_is_importable_from_the_package():
    for name in ("train_person", "TrainConfig", "PersonModel", "InferConfig", "ProcessConfig", "MotionModel",
                 "PersonRenderer", "EvalConfig"):
        assert isinstance(getattr(geneface, name), type) or callable(getattr(geneface, name))
    from geneface.evaluate import evaluate
    from geneface.process import process

    assert callable(process) and callable(evaluate)
    with pytest.raises(AttributeError):
        geneface.nothing_like_this  # noqa: B018


def test_person_model_speaks_frames_and_files(tiny_person, tmp_path):
    """`PersonModel.speak` writes the video; `landmarks` + `frames` stream the same frames one batch at a time."""
    person = PersonModel.load(tiny_person, "cpu")
    audio = geneface.synth.default_speech()[: 16000 * 2]
    config = InferConfig(temperature=0.0, blink="off", pose="still", batch=3)
    offsets = person.landmarks(audio, config)
    assert offsets.shape == (50, 68, 3)
    frames = person.frames(offsets, person.poses("still", 50), config)
    first = next(frames)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    out = person.speak(audio, tmp_path / "a.mp4", config, progress=False)
    assert geneface.media.probe(out).has_audio
    decoded = list(geneface.media.read_video(out))
    assert len(decoded) == 50
    assert np.abs(decoded[0].astype(np.float32) - first).mean() < 8  # the same frame, through H.264


def test_train_all_with_whisper_features_trains_and_renders(synthetic_clip, tmp_path, capsys):
    """`train all --features whisper`: the dataset, the motion model and the person model all use whisper."""
    person = tmp_path / "person"
    argv = ["train", "all", str(synthetic_clip[0]), "--out", str(person), "--size", "64", "--features", "whisper",
            "--motion-preset", "tiny", "--motion-steps", "6", "--render-steps", "6", "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((person / "person.json").read_text())["features"] == "whisper"
    model = PersonModel.load(person, "cpu")
    assert model.motion.feature_kind == "whisper" and model.motion.feature_dim == 384
    assert (person / "data" / "features" / "whisper.npz").exists()
    speech = tmp_path / "speech.wav"
    geneface.media.write_audio(speech, geneface.synth.default_speech()[: 16000])
    assert main(["infer", "--person", str(person), "--audio", str(speech), "--out", str(tmp_path / "w.mp4"),
                 "--device", "cpu"]) == 0
    assert len(list(geneface.media.read_video(tmp_path / "w.mp4"))) == 25


def test_finished_stages_with_other_settings_are_refused_then_forced(tiny_dataset, synthetic_clip, tmp_path):
    """A finished stage made with other settings is an error naming them; --force trains that stage again and
    keeps the others; the same settings again train nothing."""
    import shutil
    from dataclasses import replace

    from geneface.motion.train import MotionTrainConfig
    from geneface.render.model import ModelConfig
    from geneface.render.train import RenderTrainConfig

    root = tmp_path / "person"
    shutil.copytree(tiny_dataset, root / "data")
    model = ModelConfig(resolutions=(16, 32), torso_resolutions=(8, 16, 32), train_samples=16, infer_samples=16,
                        grid_resolution=16)
    config = TrainConfig(size=128, motion_preset="tiny", device="cpu",
                         motion=MotionTrainConfig(syncnet_steps=4, steps=4, batch_size=2, window=16, warmup=1),
                         render=replace(RenderTrainConfig(), size=32, steps=4, prune_views=8, frames_per_step=2, rays_per_frame=64,
                                        val_frames=1, model=model))
    train_person(synthetic_clip[0], root, config, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.safetensors")}
    train_person(synthetic_clip[0], root, config, progress=False)  # nothing to do
    assert stamps == {p: p.stat().st_mtime_ns for p in root.rglob("*.safetensors")}
    # nor for a motion run saved before the settings added since existed (it has none of them)
    from geneface.motion.train import ADDED_SETTINGS

    made = json.loads((root / "motion" / "config.json").read_text())
    assert set(ADDED_SETTINGS) <= set(made["training"])
    made["training"] = {k: v for k, v in made["training"].items() if k not in ADDED_SETTINGS}
    (root / "motion" / "config.json").write_text(json.dumps(made))
    train_person(synthetic_clip[0], root, config, progress=False)
    assert stamps == {p: p.stat().st_mtime_ns for p in root.rglob("*.safetensors")}

    other = replace(config, render_steps=6)
    with pytest.raises(geneface.errors.InputError, match=r"render was trained with other settings \(train.steps\)"):
        train_person(synthetic_clip[0], root, other, progress=False)
    train_person(synthetic_clip[0], root, replace(other, force=True), progress=False)
    assert json.loads((root / "render" / "config.json").read_text())["train"]["steps"] == 6
    motion = root / "motion" / "generator.safetensors"
    assert motion.stat().st_mtime_ns == stamps[motion]  # the motion stage was kept


def test_demo_retrain_and_export(tmp_path, capsys, monkeypatch):
    """`demo --retrain --export`: the code that made the shipped model. The export holds half-precision weights
    and renders; a rerun with other steps is refused instead of reusing the stale work folder."""
    from geneface.infer import cli_demo

    work, export, out = tmp_path / "work", tmp_path / "export", tmp_path / "demo.mp4"
    # the retrained person says the first second of the bundled speech (the whole 11 s, rendered by the bundled
    # model, is test_infer.py's test_bundled_demo_model_renders); the synthetic clip it is trained on is unchanged
    speech = tmp_path / "speech.flac"
    geneface.media.write_audio(speech, geneface.media.read_audio(cli_demo.bundled_speech())[: 16000])
    monkeypatch.setattr(cli_demo, "bundled_speech", lambda: speech)
    argv = ["demo", "--retrain", "--work", str(work), "--export", str(export), "--out", str(out),
            "--motion-steps", "3", "--sr-steps", "3", "--render-steps", "3", "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    assert geneface.media.probe(out).has_audio and len(list(geneface.media.read_video(out))) == 25
    weights = load_file(export / "render" / "model.safetensors")
    floats = [v for v in weights.values() if v.dtype.kind == "f"]
    assert floats and all(v.dtype == np.float16 for v in floats if np.abs(v).max(initial=0) < 6e4)
    assert not (export / "data").exists() and not (export / "render" / "train_state").exists()
    assert PersonModel.load(export, "cpu").size == 512 and (export / "sr" / "model.safetensors").exists()
    assert "source" not in json.loads((export / "person.json").read_text())  # no path of this machine shipped
    made = json.loads((work / "demo.json").read_text())
    assert made["train"]["render_steps"] == 3

    capsys.readouterr()
    assert main([*argv[:-4], "--render-steps", "4", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "other settings (train.render_steps)" in err and "--force" in err
