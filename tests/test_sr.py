"""The super-resolution stage (`geneface.render.sr`): the network, its training run (save, load, resume), and a
person model that renders through it (`PersonModel.render`, `geneface infer`, `train_person`)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from geneface import media
from geneface.cli import main
from geneface.dataset import PersonDataset
from geneface.errors import InputError
from geneface.infer.person import Person
from geneface.infer.pipeline import PersonModel
from geneface.render.model import ModelConfig
from geneface.render.renderer import PersonRenderer
from geneface.render.sr import SRConfig, SRTrainConfig, SRTrainer, SuperRes, load_sr, train_sr
from geneface.render.train import RenderTrainConfig, train_render
from geneface.synth import default_speech

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = SRTrainConfig(steps=20, batch=4, patch=8, val_every=10, val_frames=2, max_frames=12, perceptual_weight=0.0,
                     save_every=1e7, model=SRConfig(channels=8, blocks=1))
"""A run of a second or two on the tiny dataset."""


@pytest.fixture(scope="module")
def render32(tiny_dataset, tmp_path_factory) -> Path:
    """A renderer trained for a few steps at 32 px on the 128 px tiny dataset (super-resolution x4)."""
    model = ModelConfig(resolutions=(8, 16, 32), torso_resolutions=(8, 8, 16, 32), train_samples=16,
                        infer_samples=16, grid_resolution=16)
    run = tmp_path_factory.mktemp("render32") / "render"
    train_render(tiny_dataset, run, replace(RenderTrainConfig(), size=32, steps=4, prune_views=4, frames_per_step=2,
                                            rays_per_frame=64, val_every=10_000, val_frames=1, model=model),
                 device="cpu", progress=False)
    return run


@pytest.fixture(scope="module")
def sr_person(tiny_person, render32, tmp_path_factory) -> Path:
    """The tiny person with the 32 px renderer and a super-resolution run to 128 px."""
    root = tmp_path_factory.mktemp("sr_person") / "person"
    root.mkdir()
    for name in ("motion", "data"):
        shutil.copytree(tiny_person / name, root / name)
    shutil.copytree(render32, root / "render")
    train_sr(root / "data", root / "render", root / "sr", TINY, progress=False)
    Person.write(root, PersonDataset(root / "data"), feature_kind="mel", sr="sr")
    return root


def test_network_shapes_and_range():
    for factor in (2, 4):
        net = SuperRes(SRConfig(factor=factor, channels=8, blocks=1))
        x = torch.rand(2, 5, 12, 10) * 1.5 - 0.25
        image = torch.rand(2, 3, 12 * factor, 10 * factor)
        ref = net.reference_features(image)
        assert ref.shape == (2, 8, 12, 10)
        rgb = net(x, ref, reference_image=image)
        assert rgb.shape == (2, 3, 12 * factor, 10 * factor) and rgb.min() >= 0 and rgb.max() <= 1
        with pytest.raises(InputError, match="reference's features"):
            net(x, reference_image=image)
        with pytest.raises(InputError, match="reference image"):
            net(x, ref)
    with pytest.raises(InputError, match="factor"):
        SuperRes(SRConfig(channels=8))  # no factor: train_sr fills it in from the sizes


def test_untrained_network_is_bicubic_and_legacy_networks_load():
    """With a zero last layer the output is the bicubic upsampling whatever the reference, moved toward the
    reference image by the blend's starting share (sigmoid(-3)); a share near 1 copies the reference. A network
    saved before the reference existed (``reference`` False) takes the RGB and head alpha only, one saved before
    the blend (``blend`` False) gives the bicubic upsampling plus its residual."""
    x = torch.rand(1, 5, 8, 8)
    bicubic = torch.nn.functional.interpolate(x[:, :3], scale_factor=2, mode="bicubic", align_corners=False)
    image = torch.rand(1, 3, 16, 16)
    for reference, blend in ((True, True), (True, False), (False, False)):
        net = SuperRes(SRConfig(factor=2, channels=8, blocks=1, reference=reference, blend=blend))
        with torch.no_grad():
            net.tail.weight.zero_()
        ref = net.reference_features(image) if reference else None
        share = torch.sigmoid(torch.tensor(-3.0)) if blend else 0.0
        torch.testing.assert_close(net(x, ref, reference_image=image), (bicubic + share * (image - bicubic)).clamp(0, 1))
        assert net.head.in_channels == (5 if reference else 4) and (net.reference is None) != reference
        assert net.tail.out_channels == (4 if blend else 3) * 4
        if blend:
            with torch.no_grad():
                net.tail.bias[12:] = 30.0
            torch.testing.assert_close(net(x, ref, reference_image=image), image)
    assert SRConfig.LEGACY == {"reference": False, "blend": False}
    with pytest.raises(InputError, match="blend needs"):
        SRConfig(factor=2, reference=False)


def test_loss_decreases_and_ignores_zero_weight():
    torch.manual_seed(0)
    net = SuperRes(SRConfig(factor=2, channels=8, blocks=1))
    x = torch.rand(2, 5, 8, 8)
    target, reference = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    weight = torch.ones(2, 1, 16, 16)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = net.loss(net(x, net.reference_features(reference), clamp=False, reference_image=reference),
                        target, weight)["l1"]
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.9 * losses[0]
    # pixels of weight 0 (padding) do not count
    pred = target.clone()
    pred[..., :4] = 1 - pred[..., :4]
    weight[..., :4] = 0
    assert float(net.loss(pred, target, weight)["l1"]) == 0.0


def test_blend_learns_to_copy_what_does_not_move():
    """Where the target is the reference (a still background), the blend learns to take it as it is; a network
    without the blend must rebuild its fine detail through its features and stays far from it."""
    torch.manual_seed(0)
    x = torch.rand(4, 5, 8, 8)
    reference = torch.rand(4, 3, 32, 32)  # detail at the output size that the low-resolution input lacks
    weight = torch.ones(4, 1, 32, 32)
    final = {}
    for blend in (True, False):
        net = SuperRes(SRConfig(factor=4, channels=8, blocks=1, blend=blend))
        opt = torch.optim.Adam(net.parameters(), lr=2e-2)
        for _ in range(60):
            loss = net.loss(net(x, net.reference_features(reference), clamp=False, reference_image=reference),
                            reference, weight)["l1"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        final[blend] = loss.item()
    assert final[True] < 0.05 and final[True] < 0.3 * final[False], final


def test_run_saves_loads_and_resumes(tiny_dataset, render32, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    train_sr(tiny_dataset, render32, whole, TINY, progress=False)
    history = json.loads((whole / "history.json").read_text())
    assert [h["step"] for h in history] == [10, 20]
    assert {"psnr", "psnr_bicubic", "psnr_mouth", "psnr_mouth_bicubic"} <= set(history[-1])
    assert list((whole / "val").glob("*.png"))
    sr = load_sr(whole)
    assert (sr.factor, sr.render_size, sr.size) == (4, 32, 128)
    x = torch.rand(3, 5, 32, 32)
    rgb, cover = sr.upscale(x)
    assert rgb.shape == (3, 128, 128, 3) and cover.shape == (3, 128, 128) and rgb.dtype == torch.float32
    assert 0 <= rgb.min() <= rgb.max() <= 1 and 0 <= cover.min() <= cover.max() <= 1
    assert abs(float(cover.mean() - x[:, 4].mean())) < 0.01  # the person's coverage, upsampled
    # the reference: the per-pixel median of the training frames it used
    frames = SRTrainer(tiny_dataset, render32, tmp_path / "unused", TINY, progress=False)._pick("train", 12)
    ds = PersonDataset(tiny_dataset)
    stack = np.sort(np.stack([ds.frame(int(i)) for i in frames]), 0)
    median = stack[(len(stack) - 1) // 2].transpose(2, 0, 1)  # the lower of the middle two
    assert np.abs(sr.reference.numpy() * 255 - median).max() < 0.01
    with pytest.raises(InputError, match="upscale needs"):
        sr.upscale(torch.rand(3, 4, 32, 32))
    # a run that lost its reference is refused by name; one saved before the option loads without one
    lost = tmp_path / "lost"
    shutil.copytree(whole, lost)
    (lost / "reference.png").unlink()
    with pytest.raises(InputError, match="reference.png"):
        load_sr(lost)
    # saved before the blend (no "blend" in its config), and before the reference (neither)
    for gone in (("blend",), ("blend", "reference")):
        old = tmp_path / f"old-{len(gone)}"
        shutil.copytree(whole, old)
        config = json.loads((old / "config.json").read_text())
        for key in gone:
            del config["model"][key]
        (old / "config.json").write_text(json.dumps(config))
        SuperRes(replace(TINY.model, factor=4, reference="reference" not in gone, blend=False)).save(
            old / "model.safetensors")
        legacy = load_sr(old)
        assert not legacy.net.config.blend and legacy.net.config.reference == ("reference" not in gone)
        assert (legacy.reference is None) == ("reference" in gone)
        assert legacy.upscale(x)[0].shape == (3, 128, 128, 3)
    with pytest.raises(InputError, match="already holds"):
        train_sr(tiny_dataset, render32, whole, TINY, progress=False)

    # interrupted at step 10, then resumed: the same steps as the run that was not
    run = tmp_path / "run"
    trainer = SRTrainer(tiny_dataset, render32, run, TINY, progress=False)
    original = trainer.validate

    def interrupt_at_10():
        record = original()
        if record["step"] == 10:
            raise KeyboardInterrupt
        return record

    monkeypatch.setattr(trainer, "validate", interrupt_at_10)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert json.loads((run / "train_state" / "state.json").read_text())["step"] == 10
    assert not (run / "config.json").exists()
    with pytest.raises(InputError, match="no config.json"):
        load_sr(run)
    with pytest.raises(InputError, match="other settings"):
        train_sr(tiny_dataset, render32, run, replace(TINY, lr=1e-4), progress=False)
    train_sr(tiny_dataset, render32, run, TINY, progress=False)
    assert [h["step"] for h in json.loads((run / "history.json").read_text())] == [10, 20]
    assert not (run / "train_state").exists()
    assert load_sr(run).size == 128


def test_a_short_run_renders_only_the_frames_its_patches_need(tiny_dataset, render32, tmp_path):
    """Rendering the training frames is the slow part of a short run: 2 steps of 3 patches render 6 frames,
    evenly spaced over the training split, not ``max_frames``."""
    trainer = SRTrainer(tiny_dataset, render32, tmp_path / "run", replace(TINY, steps=2, batch=3), progress=False)
    trainer._load_data()
    assert len(trainer.train_frames) == 6 and trainer.lr.shape[0] == trainer.hr.shape[0] == 6
    assert np.array_equal(trainer.train_frames, trainer._pick("train", 6))
    full = SRTrainer(tiny_dataset, render32, tmp_path / "run2", TINY, progress=False)
    full._load_data()
    assert len(full.train_frames) == TINY.max_frames  # 20 steps x 4 patches: max_frames decides


def test_dataset_of_another_size_is_refused(tiny_dataset, render32, tmp_path):
    with pytest.raises(InputError, match=r"64 px.*renderer's 32 px.*processed at 128 px"):
        train_sr(tiny_dataset, render32, tmp_path / "sr", replace(TINY, model=SRConfig(factor=2)), progress=False)
    assert not (tmp_path / "sr").exists()


def test_person_renders_through_sr(sr_person):
    model = PersonModel.load(sr_person, "cpu")
    assert model.sr is not None and model.size == 128 and model.renderer.size == 32
    c2w = model.person.c2w[:2]
    windows = PersonRenderer.windows(torch.zeros(2, 68, 3))
    frames = model.render(windows, c2w)
    assert frames.shape == (2, 128, 128, 3) and frames.dtype == np.uint8 and frames.std() > 1
    assert model.render(windows, c2w, size=90).shape == (2, 90, 90, 3)  # 22 px rendered, x4, resized
    # up to the renderer's size frames are rendered directly, without the network
    direct = (model.renderer.render(torch.from_numpy(c2w).float(), windows).rgb.clamp(0, 1).numpy() * 255).round()
    assert np.abs(model.render(windows, c2w, size=32).astype(int) - direct).max() <= 1  # float rounding
    # the layers: the same frames, and the person's coverage at the output size
    rgb, cover = model.render_layers(windows, c2w)
    np.testing.assert_array_equal(rgb, frames)
    assert cover.shape == (2, 128, 128) and 0 <= cover.min() and cover.max() <= 1 and (cover > 0.5).any()
    # a live stream defaults to the renderer's size (real time on a CPU); a larger size goes through the network
    from geneface.infer.stream import SpeechStream, StreamConfig

    assert SpeechStream(model, render=False).size == 32 and SpeechStream(model, StreamConfig(size=128)).size == 128


def test_infer_cli_at_4x(sr_person, tmp_path):
    speech = tmp_path / "speech.wav"
    media.write_audio(speech, default_speech()[: media.AUDIO_RATE])
    out = tmp_path / "out.mp4"
    assert main(["infer", "--person", str(sr_person), "--audio", str(speech), "--out", str(out),
                 "--device", "cpu"]) == 0
    info = media.probe(out)
    assert (info.width, info.height) == (128, 128)


def test_old_person_without_sr_key(tiny_person, tmp_path):
    root = tmp_path / "old"
    shutil.copytree(tiny_person, root, ignore=shutil.ignore_patterns("data"))
    meta = json.loads((root / "person.json").read_text())
    meta.pop("sr", None)
    (root / "person.json").write_text(json.dumps(meta))
    assert Person(root).sr_dir is None
    model = PersonModel.load(root, "cpu")
    assert model.sr is None and model.size == model.renderer.size == 64
    frames = model.render(PersonRenderer.windows(torch.zeros(1, 68, 3)), model.person.c2w[:1])
    assert frames.shape == (1, 64, 64, 3)


def test_train_person_adds_the_sr_stage(tiny_person, synthetic_clip, tmp_path):
    """`train_person` with --render-size half of --size: the finished stages of the tiny person are kept (the
    same settings) and a super-resolution run is added."""
    from geneface import TrainConfig, train_person
    from geneface.motion.train import MotionTrainConfig

    root = tmp_path / "person"
    shutil.copytree(tiny_person, root)
    model = ModelConfig(resolutions=(16, 32, 64), torso_resolutions=(8, 16, 32, 64), train_samples=32,
                        infer_samples=32, grid_resolution=32)
    config = TrainConfig(  # conftest's tiny person, with the renderer's size given as render_size
        size=128, render_size=64, motion_preset="tiny", device="cpu",
        motion=MotionTrainConfig(syncnet_steps=20, steps=30, batch_size=4, window=16, warmup=5, save_every=10_000,
                                 log_every=10),
        render=replace(RenderTrainConfig(), steps=40, prune_views=8, torso_fraction=0.5, frames_per_step=4,
                       rays_per_frame=128, val_every=10_000, val_frames=2, model=model),
        sr=TINY)
    person = train_person(synthetic_clip[0], root, config, progress=False)
    assert json.loads((root / "person.json").read_text())["sr"] == "sr"
    assert person.size == 128 and person.renderer.size == 64 and person.sr.factor == 2
    assert (root / "sr" / "config.json").exists()
    with pytest.raises(InputError, match="--render-size"):
        train_person(synthetic_clip[0], root, replace(config, render_size=48), progress=False)


def test_train_sr_cli(tiny_dataset, render32, tmp_path, capsys):
    base = ["train", "sr", "--data", str(tiny_dataset), "--render", str(render32), "--steps", "4", "--batch", "2",
            "--patch", "8", "--max-frames", "4", "--val-frames", "1", "--perceptual-weight", "0", "--channels", "8",
            "--blocks", "1", "--device", "cpu"]
    assert main(base + ["--out", str(tmp_path / "sr")]) == 0
    assert "super-resolution network written to" in capsys.readouterr().out
    assert load_sr(tmp_path / "sr").factor == 4
    assert main(base + ["--out", str(tmp_path / "sr2"), "--factor", "2"]) != 0
    assert "processed at 128 px" in capsys.readouterr().err
