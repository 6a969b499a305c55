"""The background where no training frame showed it: its mask is kept in the dataset, and the renderer learns a
correction there (only there) in the torso phase; datasets and models from before it load and render as before."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import safetensors.torch
import torch

from geneface.dataset import PersonDataset
from geneface.fileio import read_json, write_json
from geneface.render.data import RenderData
from geneface.render.model import ModelConfig, RenderModel
from geneface.render.renderer import RUN_KIND, PersonRenderer, write_run

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

TINY = ModelConfig(resolutions=(8, 16), channels=2, embed_dim=4, hidden=16, torso_resolutions=(8, 16),
                   train_samples=8, infer_samples=8, grid_resolution=16, background_cell=4)


@pytest.fixture(scope="module")
def old_dataset(tmp_path_factory, tiny_dataset) -> Path:
    """``tiny_dataset`` as written before the never-seen mask existed."""
    root = tmp_path_factory.mktemp("old") / "person"
    shutil.copytree(tiny_dataset, root)
    (root / "background_unseen.png").unlink()
    return root


@pytest.fixture(scope="module")
def data(tiny_dataset) -> RenderData:
    return RenderData(tiny_dataset, 32)


def new_model(data: RenderData, config: ModelConfig = TINY) -> RenderModel:
    model = RenderModel(config, data.geometry())
    model.set_person(data.background, data.torso_region(), data.c2w[data.train_idx], data.offsets[data.train_idx],
                     data.unseen)
    return model


def test_mask_is_written_and_read(tiny_dataset, old_dataset, data):
    ds = PersonDataset(tiny_dataset)
    mask = ds.background_unseen()
    written = cv2.imread(str(tiny_dataset / "background_unseen.png"), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (ds.size, ds.size) and mask.dtype == bool
    np.testing.assert_array_equal(mask, written > 127)
    assert set(np.unique(written)) <= {0, 255}
    # the synthetic person covers some pixels in every frame (inpainted), not all
    assert 0 < mask.mean() < 0.95
    inpainted = read_json(tiny_dataset / "progress.json")["done"]["background"]["background_inpainted"]
    assert mask[ds.valid_mask()].mean() == pytest.approx(inpainted, abs=1e-4)
    # the pixels seen in some frame are the person-free median: no person label there in every frame
    labels = np.stack([ds.parsing(i) for i in ds.split("train")[::10]])
    assert not (labels > 0).all(0)[~mask].all()
    # at the training size: any pixel partly never seen counts; an old dataset has none
    assert data.unseen.shape == (32, 32) and data.unseen.any()
    assert not PersonDataset(old_dataset).background_unseen().any()
    old = RenderData(old_dataset, 32)
    assert not old.unseen.any()
    np.testing.assert_array_equal(old.torso_pixels.numpy(),
                                  (old.torso_region() & old.valid).reshape(-1).nonzero()[:, 0].numpy())


def test_correction_only_where_never_seen_and_learned_there(data):
    torch.manual_seed(0)
    model = new_model(data)
    unseen = data.unseen
    with torch.no_grad():
        model.background_residual.normal_(0, 0.2)
    corr = model.background_correction()
    assert (corr[~unseen] == 0).all() and (corr[unseen] != 0).any()
    with torch.no_grad():
        bg = model.background_at(32)
        assert model.background_at(32) is bg  # computed once per size
        plain = data.background.float() / 255
        assert torch.equal(bg[~unseen], plain[~unseen])
        model.background_residual.zero_()  # a change of the weights is seen
        assert torch.equal(model.background_at(32), plain)

    # the torso phase's colour loss reaches it (its pixels are sampled), and one step changes only unseen pixels
    batch = data.sample(4, 256, "torso", generator=torch.Generator().manual_seed(0))
    assert data.unseen[batch.v.long(), batch.u.long()].any()
    losses, _ = model.torso_loss_dict(batch)
    assert "background" in losses
    sum(losses.values()).backward()
    grad = model.background_residual.grad
    assert grad is not None and grad.abs().sum() > 0
    groups = model.torso_parameters()
    assert any(p is model.background_residual for g in groups for p in g["params"])
    before = model.background_at(32).detach().clone()
    with torch.no_grad():
        model.background_residual -= 0.5 * grad.sign()
    after = model.background_at(32).detach()
    changed = (after != before).any(-1)
    assert changed.any() and not changed[~unseen].any()


def test_correction_learns_only_from_pixels_labelled_background(data):
    model = new_model(data)
    model.unseen.fill_(True)
    batch = data.sample(2, 64, "torso", generator=torch.Generator().manual_seed(1))
    for label, learns in ((0, True), (2, False)):  # a person pixel is no evidence of what is behind it
        model.zero_grad()
        losses, _ = model.torso_loss_dict(replace(batch, label=torch.full_like(batch.label, label)),
                                          background_weight=0.0)
        sum(losses.values()).backward()
        assert (model.background_residual.grad.abs().sum() > 0) == learns


def test_model_saved_before_loads_and_renders_as_before(data, tmp_path):
    torch.manual_seed(0)
    model = new_model(data).eval()
    # a run written before the option: its config lacks the field, its weights the plane and the mask
    old_run = tmp_path / "old"
    old_run.mkdir()
    record = model.config_record()
    del record["model"]["background_cell"]
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if k not in ("background_residual", "unseen")}
    safetensors.torch.save_file(state, str(old_run / "model.safetensors"))
    write_json(old_run / "config.json", {"format": RUN_KIND.format, "version": RUN_KIND.version, **record})
    old = PersonRenderer.load(old_run)
    assert old.model.config.background_cell == 0 and old.model.background_residual is None
    c2w, window = data.c2w[:2], data.windows(torch.arange(2))
    with torch.no_grad():
        assert torch.equal(old.model.background_at(32), data.background.float() / 255)
        expected = model.render_images(c2w, window).rgb  # a zero correction changes nothing
        np.testing.assert_array_equal(old.render(c2w, window).rgb.numpy(), expected.numpy())
        # a new run saves and loads its correction and mask
        model.background_residual.normal_(0, 0.2)
        write_run(model, tmp_path / "new")
        new = PersonRenderer.load(tmp_path / "new")
        assert torch.equal(new.model.unseen, data.unseen)
        np.testing.assert_array_equal(new.render(c2w, window).rgb.numpy(), model.render_images(c2w, window).rgb.numpy())
