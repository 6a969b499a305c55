"""Framing: a crop centred on the face may reach past the frame's edges; its padding is recorded in a validity
mask and never enters a loss, the carving, the validation PSNR or the evaluation metrics."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from geneface import media
from geneface.dataset import PersonDataset
from geneface.evaluate import metrics
from geneface.process import ProcessConfig, process
from geneface.process.pipeline import crop_frame, valid_box
from geneface.render.model import ModelConfig, replicate_edges, valid_pixels
from geneface.render.occupancy import OccupancyGrid
from geneface.render.train import RenderTrainConfig, RenderTrainer

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

TOP, LEFT = 70, 30
"""The synthetic 256 px clip cut to its rows TOP: and columns LEFT: (186 x 226): the face sits near the top-left
corner and the frame cuts the top of the head."""


@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory, synthetic_clip) -> Path:
    """One second of the synthetic clip, cut so that the face is off-centre and its top is outside the frame."""
    frames = [f[TOP:, LEFT:] for _, f in zip(range(25), media.read_video(synthetic_clip[0]))]
    path = tmp_path_factory.mktemp("cut") / "cut.mp4"
    media.write_video(path, frames, fps=25.0, audio=media.read_audio(synthetic_clip[0])[:16000])
    return path


@pytest.fixture(scope="module")
def cut_dataset(tmp_path_factory, cut_clip) -> Path:
    out = tmp_path_factory.mktemp("cutdata") / "person"
    process(cut_clip, out, ProcessConfig(size=64))
    return out


def test_crop_frame_pads_by_replicating_edges():
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    out = crop_frame(rgb, np.array([-2, -1, 6]))
    assert out.shape == (6, 6, 3)
    np.testing.assert_array_equal(out[1:5, 2:6], rgb[:, :4])  # the real part
    np.testing.assert_array_equal(out[0, 2:], rgb[0, :4])  # the top row replicated
    np.testing.assert_array_equal(out[1:5, 0], rgb[:, 0])  # the left column replicated
    assert valid_box(np.array([-2, -1, 6]), (4, 5), 6) == (2, 1, 6, 5)
    assert valid_box(np.array([-2, -1, 6]), (4, 5), 3) == (1, 1, 3, 2)  # pixels wholly inside only
    with pytest.raises(Exception, match="misses"):
        crop_frame(rgb, np.array([10, 10, 4]))


def test_off_centre_face_gets_a_centred_crop_and_a_validity_mask(cut_dataset, synthetic_clip):
    ds = PersonDataset(cut_dataset)
    x0, y0, side = ds.meta["crop"]
    assert x0 < 0 and y0 < 0, "the crop reaches past the top-left edges to keep the face centred"
    # the face is centred in the crop: the truth's nose, moved into the cut frame and then into the crop
    nose = synthetic_clip[1]["mesh"][:ds.num_frames, 1, :2] - [LEFT, TOP]
    centre = ((nose - [x0, y0]) * (ds.size / side)).mean(0)
    assert np.abs(centre - ds.size / 2).max() < 0.12 * ds.size, centre
    assert ds.landmarks["found"].mean() > 0.9  # MediaPipe tracks the face on the padded crop
    # the mask: the rectangle of output pixels whose source footprint lies inside the 226 x 186 frame
    mask = ds.valid_mask()
    f = ds.size / side
    cols = (x0 + np.arange(ds.size) / f >= -1e-6) & (x0 + (np.arange(ds.size) + 1) / f <= 226 + 1e-6)
    rows = (y0 + np.arange(ds.size) / f >= -1e-6) & (y0 + (np.arange(ds.size) + 1) / f <= 186 + 1e-6)
    np.testing.assert_array_equal(mask, rows[:, None] & cols[None, :])
    bx0, by0, bx1, by1 = ds.valid_box
    assert bx0 > 0 and by0 > 0 and mask[by0:by1, bx0:bx1].all() and mask.sum() == (bx1 - bx0) * (by1 - by0)
    assert ds.meta["valid_fraction"] == pytest.approx(mask.mean(), abs=1e-3) and ds.meta["valid_fraction"] < 0.95
    # padding is never head or torso, and the frames' padding replicates their edges
    for i in (0, ds.num_frames - 1):
        assert (ds.parsing(i)[~mask] == 0).all() and (ds.parsing(i)[mask] == 1).any()
        frame = ds.frame(i).astype(int)
        assert np.abs(frame[0, bx0 + 2:bx1 - 2] - frame[by0 - 1, bx0 + 2:bx1 - 2]).mean() < 6  # constant in y
    # the background's padding too (no inpainting smears into it)
    bg = ds.background().astype(int)
    assert np.abs(bg[:by0, bx0:bx1] - bg[by0:by0 + 1, bx0:bx1]).max() <= 2


def test_centred_face_in_a_square_frame_has_no_padding(tiny_dataset):
    ds = PersonDataset(tiny_dataset)
    assert ds.valid_box == (0, 0, ds.size, ds.size) and ds.valid_mask().all() and ds.meta["valid_fraction"] == 1.0


def test_old_datasets_are_all_valid(tiny_dataset, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_dataset, old)
    (old / "valid.png").unlink()
    meta = json.loads((old / "meta.json").read_text())
    del meta["valid_box"], meta["valid_fraction"]
    (old / "meta.json").write_text(json.dumps(meta))
    ds = PersonDataset(old)
    assert ds.valid_box == (0, 0, ds.size, ds.size) and ds.valid_mask().all()


def _trainer(data: Path, run: Path) -> RenderTrainer:
    model = ModelConfig(resolutions=(16, 32, 64), torso_resolutions=(8, 16, 32, 64), train_samples=16,
                        infer_samples=16, grid_resolution=16)
    config = replace(RenderTrainConfig(), size=64, steps=6, prune_views=8, frames_per_step=2, rays_per_frame=96, val_frames=2,
                     perceptual_weight=0.0, model=model)
    return RenderTrainer(data, run, config, progress=False)


def _noisy_padding(trainer: RenderTrainer, seed: int) -> None:
    """Fill the padding of every frame and of the background with noise (in memory)."""
    d = trainer.data
    g = torch.Generator().manual_seed(seed)
    pad = ~d.valid
    noise = torch.randint(0, 256, d.frames.shape, generator=g, dtype=torch.uint8)
    d.frames = torch.where(pad[None, :, :, None], noise, d.frames)
    d.background = torch.where(pad[:, :, None], noise[0], d.background)


def test_padding_never_enters_a_loss(cut_dataset, tmp_path):
    runs = []
    for k, noise in enumerate((None, 1, 2)):
        trainer = _trainer(cut_dataset, tmp_path / f"run{k}")
        assert (~trainer.data.valid).float().mean() > 0.05
        if noise is not None:
            _noisy_padding(trainer, noise)
        torch.manual_seed(0)
        trainer.model = trainer._new_model()
        gen = torch.Generator().manual_seed(0)
        record = []
        for phase in ("head", "torso"):
            opt = trainer.optimizer(phase)
            scaler = trainer.grad_scaler()
            for _ in range(3):
                losses = trainer.train_step(phase, opt, scaler, gen)
                record.append({name: float(v.detach()) for name, v in losses.items()})
        occupied = trainer.model.grid.occupied.clone()
        val = trainer.validate("torso")
        runs.append((record, occupied, val["psnr"], val["psnr_head"],
                     {n: p.detach().clone() for n, p in trainer.model.named_parameters()}))
    base = runs[0]
    for other in runs[1:]:
        assert other[0] == base[0]  # every loss of every step, to the bit
        assert torch.equal(other[1], base[1])
        assert other[2:4] == base[2:4]  # the validation PSNRs ignore the padding
        for name, p in base[4].items():
            assert torch.equal(other[4][name], p), name


def test_carving_keeps_the_head_in_the_padding():
    # a camera looking down +z; the head label covers the bottom-left quarter, the top half is padding
    c2w = torch.eye(4)[None]
    c2w[0, 2, 3] = -4
    K = torch.tensor([[40.0, 0, 32], [0, 40.0, 32], [0, 0, 1]])
    head = torch.zeros(1, 64, 64, dtype=torch.bool)
    head[:, 32:, :32] = True
    valid = torch.zeros(64, 64, dtype=torch.bool)
    valid[32:] = True
    points = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [-0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])  # TL TR BL BR
    grid = OccupancyGrid((-1, -1, -1), (1, 1, 1), resolution=8)
    grid.carve(c2w, K, head, dilate=0)
    assert grid.query(points).tolist() == [False, False, True, False]  # padding taken for empty
    grid = OccupancyGrid((-1, -1, -1), (1, 1, 1), resolution=8)
    grid.carve(c2w, K, head, dilate=0, valid=valid)
    assert grid.query(points).tolist() == [True, True, True, False]  # padding is unknown: kept


def test_trainer_carves_with_the_validity_mask(cut_dataset, tmp_path):
    trainer = _trainer(cut_dataset, tmp_path / "run")
    d = trainer.data
    model = trainer._new_model()
    # every allowed cell that projects into the padding of some view is kept where the head label is not
    # there: compare with carving that takes padding for empty
    grid = copy.deepcopy(model.grid)
    views = d.train_idx[torch.linspace(0, len(d.train_idx) - 1, min(32, len(d.train_idx))).round().long()]
    grid.carve(d.c2w[views], d.K, d.head_masks(views), dilate=max(1, d.size // 64))
    assert model.grid.allowed.sum() > grid.allowed.sum()
    assert (model.grid.allowed | ~grid.allowed).all()  # nothing the old carving kept is lost
    # the head box holds only what some real pixel saw
    assert model.geometry.valid_box == pytest.approx([v / PersonDataset(cut_dataset).size
                                                      for v in PersonDataset(cut_dataset).valid_box])


def test_rendered_padding_replicates_the_real_edges(cut_dataset, tmp_path):
    trainer = _trainer(cut_dataset, tmp_path / "run")
    d = trainer.data
    model = trainer._new_model().eval()
    frames = d.val_idx[:1]
    with torch.no_grad():
        out = model.render_images(d.c2w[frames], d.windows(frames))
    x0, y0, x1, y1 = d.valid_box
    assert (x0, y0, x1, y1) == valid_pixels(model.geometry.valid_box, 64) and y0 > 0
    torch.testing.assert_close(out.rgb, replicate_edges(out.rgb, d.valid_box))
    torch.testing.assert_close(out.rgb[0, 0, x0:x1], out.rgb[0, y0, x0:x1])


def test_evaluate_metrics_ignore_padding():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[8:, 4:] = True
    b = np.where(mask[None, :, :, None], a, rng.integers(0, 256, a.shape, dtype=np.uint8))
    assert (metrics.psnr(a, b, mask) == metrics.MAX_PSNR).all() and (metrics.psnr(a, b) < 20).all()
    np.testing.assert_allclose(metrics.ssim(a, b, mask), 1.0)
    assert (metrics.ssim(a, b) < 0.9).all()
    c = a.copy()
    c[:, 20, 20] = 255 - c[:, 20, 20]  # a real pixel counts
    assert (metrics.psnr(a, c, mask) < metrics.MAX_PSNR).all()
