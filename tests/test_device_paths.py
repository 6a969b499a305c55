"""The code paths a GPU takes, exercised on the CPU: mixed precision (bf16 and fp16 autocast), the one-segment
ray march, the trainer's deferred loss checks, the motion batches' prefetch."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
import numpy as np
import pytest
import torch

from geneface.device import PRECISIONS, amp_dtype, autocast, resolve_device
from geneface.engine import Callback, Plateau, RunFolder, RunKind, Trainer
from geneface.engine.run import TrainingError
from geneface.errors import InputError
from geneface.render import ModelConfig, PersonRenderer, RenderTrainConfig, RenderTrainer
from geneface.render.data import RenderData
from geneface.render.fields import HeadField
from geneface.render.renderer import ADDED_SETTINGS, legacy_settings
from geneface.render.volume import psnr

SIZE = 48
MODEL = ModelConfig(resolutions=(16, 32, 48), torso_resolutions=(8, 16, 32, 48), train_samples=32, infer_samples=32,
                    grid_resolution=32)


def test_precision_is_chosen_in_one_place():
    assert amp_dtype("cpu") is None and amp_dtype("mps") is None  # auto: fp32 off CUDA
    assert amp_dtype("cpu", "bf16") is torch.bfloat16 and amp_dtype("cpu", "fp16") is torch.float16
    assert amp_dtype(torch.device("cpu"), "fp32") is None
    with pytest.raises(InputError, match="unknown precision 'fp8'"):
        amp_dtype("cpu", "fp8")
    assert set(PRECISIONS) == {"auto", "fp32", "bf16", "fp16"}
    with autocast("cpu", torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.bfloat16
    with autocast("cpu", None):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.float32
    # runs saved before the setting: amp on -> auto, off -> fp32
    assert legacy_settings({"amp": True, "lr": 1}) == {"lr": 1, "precision": "auto", **ADDED_SETTINGS}
    assert legacy_settings({"amp": False})["precision"] == "fp32"
    defaults = asdict(RenderTrainConfig())
    assert all(defaults[k] == v for k, v in ADDED_SETTINGS.items())  # what old runs did is today's default
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_renders_at_its_precision(precision, tiny_dataset, tmp_path, monkeypatch):
    """The autocast path (CUDA's default) on the CPU: the fields run in half precision, the losses stay finite
    and fall, and the finished model renders at the precision it was trained at, close to an fp32 render."""
    config = RenderTrainConfig(size=SIZE, prune_views=8, steps=24, torso_fraction=0.25, frames_per_step=4, rays_per_frame=256,
                               val_every=10_000, val_frames=2, perceptual_weight=0.0, precision=precision,
                               model=MODEL)
    trainer = RenderTrainer(tiny_dataset, tmp_path / "run", config, device="cpu", progress=False)
    assert trainer.amp_dtype is amp_dtype("cpu", precision)
    seen = set()
    density = HeadField.density

    def spy(self, *args, **kwargs):
        out = density(self, *args, **kwargs)
        seen.add(out[1].dtype)  # the geometry feature (the density leaves the exp in fp32)
        return out

    monkeypatch.setattr(HeadField, "density", spy)
    last = trainer.run()
    assert amp_dtype("cpu", precision) in seen, seen
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    rgb = [r["rgb"] for r in log if r["stage"] == "head"]
    assert all(np.isfinite(r["rgb"]) for r in log) and rgb[-1] < rgb[0]
    assert np.isfinite(last["psnr"])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["precision"] == precision
    half = PersonRenderer.load(tmp_path / "run", "cpu")
    assert half.model.amp_dtype is amp_dtype("cpu", precision)
    data = RenderData(tiny_dataset, SIZE)
    idx = data.val_idx[:2]
    a = half.render(data.c2w[idx], data.windows(idx)).rgb
    full = PersonRenderer(half.model, "fp32")
    assert full.model.amp_dtype is None
    b = full.render(data.c2w[idx], data.windows(idx)).rgb
    assert 30 < psnr(((a - b) ** 2).mean()) < float("inf")  # half precision differs from fp32, but slightly


def test_one_segment_march_matches_eight(tiny_dataset, tmp_path):
    """A GPU marches rays in one segment (`march_segments`), a CPU in eight: the same frames and losses."""
    config = RenderTrainConfig(size=SIZE, prune_views=8, steps=30, torso_fraction=0.0, frames_per_step=4, rays_per_frame=256,
                               val_every=10_000, val_frames=2, perceptual_weight=0.0, model=MODEL)
    trainer = RenderTrainer(tiny_dataset, tmp_path / "run", config, device="cpu", progress=False)
    trainer.run()
    model, data = trainer.model.eval(), trainer.data
    idx = data.val_idx[:2]
    from geneface.render.volume import image_rays

    o, d = image_rays(data.c2w[idx], model.K, SIZE, SIZE)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    cond = model.condition(data.windows(idx))
    frame = torch.arange(2).repeat_interleave(SIZE * SIZE)
    code = torch.zeros(2, model.config.code_dim)
    with torch.no_grad():
        one = model.render_head(o, d, cond, frame, code, 32, segments=1)
        eight = model.render_head(o, d, cond, frame, code, 32, segments=8)
    assert one["alpha"].max() > 0.5  # the head is there
    # a ray stops where its transmittance falls below 1e-4: at most that much weight differs, times the
    # colour (<= 1) or the depth (< 4 head units here)
    for k, atol in (("rgb", 1e-4), ("alpha", 1e-4), ("depth", 4e-4)):
        torch.testing.assert_close(one[k], eight[k], rtol=0, atol=atol)
    # training: the points sent to the network with gradients are the same, so are the losses and gradients
    batch = data.sample(2, 256, "head", generator=torch.Generator().manual_seed(1))
    grads = []
    for segments in (1, 8):
        model.zero_grad()
        torch.manual_seed(0)
        out = model.render_head(*_rays(batch, model.K), model.condition(batch.window), batch.ray_frame,
                                model.head_codes(batch.frames), 32, perturb=True, segments=segments)
        out["rgb"].sum().backward()
        grads.append((out["rgb"].detach(), model.head.encoding.planes[0].grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=2e-4)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-3, atol=1e-4)


def _rays(batch, K):
    from geneface.render.volume import pixel_rays

    return pixel_rays(batch.c2w[batch.ray_frame], K, batch.u, batch.v)


KIND = RunKind("test-run", 1, "test", "test")


def test_trainer_checks_losses_once_per_log_interval_and_before_each_checkpoint(tmp_path, monkeypatch):
    """Losses stay tensors between checks; a non-finite one is still reported at its own step, and no
    checkpoint is written after it."""
    run = RunFolder(tmp_path / "run", KIND)
    saved: list[int] = []
    synced: list[int] = []
    real_check = Trainer._check

    def spying_check(self, steps, stage, first):
        synced.append(first + len(steps))
        return real_check(self, steps, stage, first)

    def step(i: int) -> dict[str, torch.Tensor]:
        bad = float("nan") if i == 11 else 1.0
        return {"loss": torch.tensor(float(i) * bad), "grad_norm": torch.tensor(0.5)}

    monkeypatch.setattr(Trainer, "_check", spying_check)
    trainer = Trainer(run, log_every=5, progress=False)
    with pytest.raises(TrainingError, match="diverged at step 12: loss not finite"):
        trainer.fit("stage", 0, 20, step, checkpoint=saved.append, save_every=4)
    assert synced == [4, 5, 8, 10, 12]  # checkpoints at 4 and 8, logs at 5 and 10, then the check at 12
    assert saved == [4, 8]  # not 12: its weights came from a non-finite step
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in log] == [(5, 2.0), (10, 7.0)]  # means of steps 0-4 and 5-9


def test_trainer_stops_early_when_asked_and_checkpoints_there(tmp_path):
    run = RunFolder(tmp_path / "run", KIND)
    saved: list[int] = []
    seen: list[int] = []
    trainer = Trainer(run, log_every=5, progress=False)
    trainer.fit("stage", 0, 100, lambda i: {"loss": torch.tensor(1.0)}, checkpoint=saved.append, save_every=10,
                callbacks=[Callback(seen.append, every=4)], stop=lambda step: "enough" if step == 23 else None)
    assert trainer.stopped_at == 23 and saved == [10, 20, 23] and seen == [4, 8, 12, 16, 20]
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 15, 20]
    trainer.fit("stage", 0, 7, lambda i: {"loss": torch.tensor(1.0)}, stop=lambda step: None)
    assert trainer.stopped_at is None


def test_plateau_counts_checks_since_the_best_improvement():
    p = Plateau(patience=2, min_delta=0.1)
    assert not p.stalled and p.best is None
    assert p.add(10, 1.0) and p.add(20, 0.8)  # a 20 % improvement
    assert not p.add(30, 0.75) and not p.stalled  # under 10 % of 0.8: not an improvement
    assert not p.add(40, math.nan) and p.stalled  # two checks since the best (step 20)
    assert p.best == (20, 0.8)
    auc = Plateau(patience=1, min_delta=0.0, higher_is_better=True, history=[[5, 0.6]])
    assert auc.add(10, 0.61) and not auc.stalled and not auc.add(15, 0.61) and auc.stalled
    assert not Plateau(patience=0, history=[[1, 1.0], [2, 2.0], [3, 3.0]]).stalled


def test_prefetched_batches_keep_the_sampler_order():
    from geneface.motion.data import WindowSampler

    class Source:
        def sample(self, rng, window):
            n = int(rng.integers(4, window + 1))
            return (rng.standard_normal((2 * n, 3)).astype(np.float32), np.zeros(2 * n, np.float32),
                    rng.standard_normal((n, 68, 3)).astype(np.float32), n)

    a = WindowSampler(_Padded(Source()), 8, 3, seed=5)
    b = WindowSampler(_Padded(Source()), 8, 3, seed=5)
    it = a.batches(torch.device("cpu"))
    for _ in range(3):
        x, y = next(it), b.next()
        assert x.features.device.type == "cpu"
        for u, v in zip(x._tensors(), y._tensors()):
            assert torch.equal(u, v)


class _Padded:
    """A source whose windows are padded to the full length, as `WindowSampler` expects."""

    def __init__(self, source) -> None:
        self.source = source

    def sample(self, rng, window):
        f, p, o, n = self.source.sample(rng, window)
        return (np.pad(f, ((0, 2 * window - len(f)), (0, 0))), np.pad(p, (0, 2 * window - len(p))),
                np.pad(o, ((0, window - len(o)), (0, 0), (0, 0))), n)


def test_out_of_memory_while_rendering_names_the_batch(monkeypatch):
    from importlib import resources

    from geneface.infer.pipeline import PersonModel

    person = PersonModel.load(resources.files("geneface") / "assets" / "demo_person", "cpu")

    def exhausted(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")

    monkeypatch.setattr(person.renderer.model, "render_images", exhausted)
    c2w = np.repeat(person.person.c2w[:1], 4, 0)
    with pytest.raises(InputError, match="out of memory on cpu while rendering 4 frames at once; use a smaller "
                                         "--batch"):
        person.render(np.zeros((4, 5, 68, 3), np.float32), c2w)
