"""`geneface infer --full-frame`: the rendered crop pasted back into the source video's own frames, at their
size, on a clip whose frame is not square and whose face is off-centre."""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from geneface import media
from geneface.cli import main
from geneface.errors import InputError
from geneface.fileio import read_json, write_json
from geneface.infer import composite as comp
from geneface.infer.person import Person
from geneface.infer.pipeline import InferConfig, PersonModel

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

W, H, SHIFT = 320, 240, 64
"""The wide clip: W x H frames, the synthetic 256 px head's rows 8:248 placed at columns SHIFT: (face right of
centre); the columns left of it hold a stripe whose brightness counts the frames (`_stripe`)."""


def _stripe(i: int) -> int:
    return 40 + (i * 7) % 180


@pytest.fixture(scope="module")
def wide_clip(tmp_path_factory) -> Path:
    from geneface.synth import SynthConfig, synthesize

    tmp = tmp_path_factory.mktemp("wide")
    synthesize(tmp / "square.mp4", config=SynthConfig(size=256, seconds=2.4, seed=1, face_fraction=0.25))
    frames = []
    for i, f in enumerate(media.read_video(tmp / "square.mp4")):
        canvas = np.empty((H, W, 3), np.uint8)
        canvas[:, SHIFT:] = f[8:248]
        canvas[:, :SHIFT] = np.linspace(30, 90, SHIFT, dtype=np.uint8)[None, :, None]
        canvas[H // 2 - 20:H // 2 + 20, 8:40] = _stripe(i)
        frames.append(canvas)
    path = tmp / "wide.mp4"
    media.write_video(path, frames, fps=25.0, audio=media.read_audio(tmp / "square.mp4"))
    return path


@pytest.fixture(scope="module")
def wide_person(tmp_path_factory, wide_clip) -> Path:
    """A person model trained in seconds on the wide clip (64 px, the tiny motion preset, few steps)."""
    from geneface import TrainConfig, train_person
    from geneface.motion.train import MotionTrainConfig
    from geneface.render.model import ModelConfig
    from geneface.render.train import RenderTrainConfig

    root = tmp_path_factory.mktemp("person") / "person"
    model = ModelConfig(resolutions=(16, 32, 64), torso_resolutions=(8, 16, 32, 64), train_samples=32,
                        infer_samples=32, grid_resolution=32)
    config = TrainConfig(
        size=64, motion_preset="tiny", device="cpu",
        motion=MotionTrainConfig(syncnet_steps=8, steps=8, batch_size=4, window=16, warmup=2, save_every=10_000,
                                 log_every=10),
        render=replace(RenderTrainConfig(), size=64, steps=30, prune_views=8, torso_fraction=0.5, frames_per_step=4,
                       rays_per_frame=128, val_every=10_000, val_frames=2, model=model))
    train_person(wide_clip, root, config, progress=False)
    return root


@pytest.fixture(scope="module")
def speech(tmp_path_factory, wide_clip) -> Path:
    """3 s of the clip's speech: longer than its 55 training frames, so the pose loop turns back."""
    audio = media.read_audio(wide_clip)
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    media.write_audio(path, np.concatenate([audio, audio])[: 3 * media.AUDIO_RATE])
    return path


def test_process_and_train_all_record_the_source(wide_clip, wide_person):
    meta = read_json(wide_person / "data" / "meta.json")
    source = Person(wide_person).meta["source"]
    assert source["path"] == str(wide_clip.resolve()) and Path(source["path"]).is_absolute()
    assert source["bytes"] == wide_clip.stat().st_size and source["sha256"] == meta["source"]["sha256"]
    assert (source["width"], source["height"]) == (W, H) and source["size"] == 64
    assert source["crop"] == meta["crop"] and source["frames"] == meta["split"]["train"]
    assert source["frames"][1] - source["frames"][0] == len(Person(wide_person).c2w)
    x0, _, side = source["crop"]
    assert x0 > 40 and x0 + side < W, "the face is right of centre and small: the crop leaves columns either side"


def test_a_rerun_records_the_source_of_an_older_dataset(wide_clip, wide_person, tmp_path):
    from geneface.dataset import PersonDataset
    from geneface.process import ProcessConfig, process

    data = tmp_path / "data"
    shutil.copytree(wide_person / "data", data)
    meta = read_json(data / "meta.json")
    old = {"path": "wide.mp4", **{k: meta["source"][k] for k in ("sha256", "width", "height", "fps")}}
    write_json(data / "meta.json", {**meta, "source": old})  # as earlier versions wrote it
    Person.write(tmp_path, PersonDataset(data), feature_kind="mel")
    assert read_json(tmp_path / "person.json")["source"] is None
    process(wide_clip, data, ProcessConfig(size=64))  # finished: only the record is updated
    assert read_json(data / "meta.json")["source"] == meta["source"]
    assert {k: v for k, v in read_json(data / "meta.json").items() if k != "source"} == \
        {k: v for k, v in meta.items() if k != "source"}
    Person.write(tmp_path, PersonDataset(data), feature_kind="mel")
    assert read_json(tmp_path / "person.json")["source"] == Person(wide_person).meta["source"]


def test_composite_keeps_the_source_outside_the_crop_and_the_render_inside():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    render = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    crop = (-20, 100, 180)  # past the left edge and the bottom
    out = comp.composite(render, None, source, crop)
    inside = np.zeros((H, W), bool)
    inside[100:, :160] = True
    np.testing.assert_array_equal(out[~inside], source[~inside])
    # inside, away from the feathered top and right edges, the render (resized, colour-shifted)
    big = cv2.resize(render, (180, 180), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    band = comp._border_band(180, comp.COLOUR_BAND, (False, True, True, False))
    vis = big[:140, 20:]
    shift = comp.colour_shift(vis, source[100:, :160].astype(np.float32), band[:140, 20:])
    expect = np.clip(vis + shift, 0, 255)
    np.testing.assert_allclose(out[120:, :130].astype(np.float32), np.rint(expect[20:, :130]), atol=1)
    # no person anywhere: the source everywhere; a render brighter than the source: the shift is clamped
    np.testing.assert_array_equal(comp.composite(render, np.zeros((32, 32)), source, crop), source)
    flat = np.full((H, W, 3), 100, np.uint8)
    bright = comp.composite(np.full((32, 32, 3), 160, np.uint8), None, flat, (50, 20, 100))
    assert bright[70, 100, 0] == 160 - comp.MAX_COLOUR_SHIFT
    assert comp.even_frame(np.zeros((5, 7, 3), np.uint8)).shape == (6, 8, 3)


def test_source_frames_are_read_once_in_loop_order(wide_clip):
    frames = list(media.read_video(wide_clip))
    order = np.r_[10:20, 19:5:-1, 6:12]  # forward, back, forward again
    for raw, memory in ((comp.RAW_BUDGET, 0), (0, comp.MEMORY_BUDGET), (0, 300_000)):  # raw, PNG, PNG + files
        source = comp.SourceFrames(wide_clip, order, raw_budget=raw, memory_budget=memory)
        got = list(source)
        assert len(got) == len(order) and source.kept_max <= len(set(order))
        assert (source.on_disk > 0) == (memory == 300_000)
        for i, f in zip(order, got):
            np.testing.assert_array_equal(f, frames[i])
    with pytest.raises(InputError, match="frame 500 is needed"):
        list(comp.SourceFrames(wide_clip, [3, 500]))


def test_full_frames_composite_the_render_into_the_looped_source(wide_clip, wide_person, speech):
    model = PersonModel.load(wide_person, "cpu")
    config = InferConfig(full_frame=True, device="cpu", batch=16, blink="off")
    record = comp.SourceRecord.of(model.person)
    audio = media.read_audio(speech)
    offsets = model.landmarks(audio, config)
    c2w = model.poses("loop", len(offsets))
    idx = comp.source_indices(record, len(offsets), "loop")
    start, stop = record.frames
    assert idx[0] == start and idx[stop - start - 1] == stop - 1 and idx[stop - start] == stop - 2  # turns back
    assert (comp.source_indices(record, 7, "still") == start).all()  # the first training frame
    source = list(media.read_video(wide_clip))
    out = list(comp.full_frames(model, offsets, c2w, config, comp.check_source(model.person)))
    assert len(out) == len(offsets) > stop - start
    x0, y0, side = record.crop
    box = np.zeros((H, W), bool)
    box[max(y0, 0):y0 + side, max(x0, 0):x0 + side] = True
    for k in range(len(out)):
        assert out[k].shape == (H, W, 3)
        np.testing.assert_array_equal(out[k][~box], source[idx[k]][~box])  # exactly the source frame out there
        assert abs(float(out[k][H // 2 - 15:H // 2 + 15, 12:36].mean()) - _stripe(idx[k])) < 6
    # inside: the render, where the person is and away from the crop's border
    from geneface.render import PersonRenderer
    import torch

    for k in (3, len(out) - 1):
        windows = PersonRenderer.windows(torch.from_numpy(offsets), torch.tensor([k]))
        rgb, alpha = model.render_layers(windows, c2w[[k]])
        plain = model.render(windows, c2w[[k]])
        assert np.abs(rgb.astype(int) - plain).max() <= 2  # the layers' RGB is `render`'s
        weight = comp.blend_weight(cv2.resize(alpha[0], (side, side)), side,
                                   (x0 > 0, y0 > 0, x0 + side < W, y0 + side < H))
        big = cv2.resize(rgb[0], (side, side), interpolation=cv2.INTER_CUBIC).astype(int)
        sure = np.zeros((H, W), bool)
        sy, sx = slice(max(y0, 0), min(y0 + side, H)), slice(max(x0, 0), min(x0 + side, W))
        sure[sy, sx] = weight[sy.start - y0:sy.stop - y0, sx.start - x0:sx.stop - x0] > 0.99
        assert sure.sum() > 500, sure.sum()
        np.testing.assert_array_equal(out[k], comp.composite(rgb[0], alpha[0], source[idx[k]], record.crop))
        diff = out[k].astype(int)[sure] - big[sy.start - y0:sy.stop - y0, sx.start - x0:sx.stop - x0][
            sure[sy, sx]]
        assert np.abs(diff).max() <= comp.MAX_COLOUR_SHIFT + 2


def test_moved_or_changed_source_video(wide_clip, wide_person, tmp_path):
    person = tmp_path / "person"
    shutil.copytree(wide_person, person, ignore=shutil.ignore_patterns("data", "render", "motion"))
    video = tmp_path / "where it was.mp4"
    shutil.copy(wide_clip, video)
    meta = read_json(person / "person.json")
    write_json(person / "person.json", {**meta, "source": {**meta["source"], "path": str(video)}})
    assert comp.check_source(Person(person)) == video
    moved = video.rename(tmp_path / "moved.mp4")
    with pytest.raises(InputError, match=re.escape(f"source video {video} is not there") + ".*--source"):
        comp.check_source(Person(person))
    assert comp.check_source(Person(person), moved) == moved  # --source
    shutil.copy(moved, video)
    with video.open("r+b") as f:  # the same size, other bytes
        f.seek(video.stat().st_size // 2)
        f.write(b"\x00\x01\x02")
    with pytest.raises(InputError, match=re.escape(f"source video {video} has moved or changed") + ".*checksum differs"):
        comp.check_source(Person(person))
    with pytest.raises(InputError, match=re.escape(f"--source {video} is not the person's source video")):
        comp.check_source(Person(person), video)
    write_json(person / "person.json", {k: v for k, v in meta.items() if k != "source"})
    with pytest.raises(InputError, match="process the video again"):
        comp.check_source(Person(person))


def test_infer_full_frame_cli(wide_person, speech, tmp_path, capsys):
    short = tmp_path / "short.wav"
    media.write_audio(short, media.read_audio(speech)[: media.AUDIO_RATE])
    base = ["infer", "--person", str(wide_person), "--audio", str(short), "--device", "cpu", "--full-frame"]
    start = time.perf_counter()
    assert main([*base, "--out", str(tmp_path / "full.mp4")]) == 0
    info = media.probe(tmp_path / "full.mp4")
    assert (info.width, info.height) == (W, H) and info.has_audio, time.perf_counter() - start
    for extra, message in ((["--side-by-side"], "cannot be combined"), (["--pose", str(short)], "loop or still")):
        assert main([*base, *extra, "--out", str(tmp_path / "x.mp4")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()
    with pytest.raises(InputError, match="add --full-frame"):
        InferConfig(source="video.mp4")
