"""Evaluate a person model (DESIGN.md step 9) and write ``report.json``, ``report.md`` and plots.

On the first ``frames`` frames of the person's validation split (PERSON/data), the model is measured twice:
*reconstruction* renders the frames with their ground-truth landmarks (renderer quality alone) and
*audio-driven* renders them with landmarks predicted from the frames' own audio features (the whole
pipeline: audio2motion, postnet, and the stabilisation of `geneface infer` with the eyes held open, no
blinks); both use the frames' true head poses. Audio the model never saw (``--audio``) gets the sync measures only.

``report.json`` (format ``geneface-eval``, version 1). A metric that was not computed is absent from its
section and named in ``skipped`` (``"section.metric": reason``); every number present is finite::

    format, version, created, person (path), device, config {frames, temperature, seed, smoothing, batch}
    validation:
      frames        {first, count, available}: dataset frame numbers [first, first + count) of the val split
      fps, seconds  video frame rate, length of the evaluated clip (s)
      image_size    side of the rendered and compared frames (the person model's size, after any super-resolution,
                    px)
      dataset_size  side of the dataset frames (px; the unit of the lmd_*_px metrics)
      reconstruction, audio_driven:       rendered against the dataset frames, on their real pixels (never the
                                          padding of a crop past the source frame: `PersonDataset.valid_box`)
        psnr (dB), ssim (-1..1], lpips (0 = identical), fid (from 50 frames on; biased below ~2048: see notes),
        lmd_mouth_px, lmd_face_px         MediaPipe mesh of the render vs the dataset mesh, 68-point layout,
                                          mean 2-D distance in dataset pixels
        lmd_mouth_iod, lmd_face_iod       the same in percent of the inter-ocular distance
        face_found                        fraction of rendered frames where a face was found (LMD's frames)
      background    psnr, ssim of the static background alone (a floor any render should beat)
      motion:       predicted landmark offsets vs the dataset's (no rendering)
        landmark_error_mouth, landmark_error_face   mean 3-D distance, percent of inter-ocular distance
        mouth_opening_corr                Pearson r of predicted and true mouth opening
        mouth_loudness_corr_pred, mouth_loudness_corr_true   r of mouth opening and frame loudness
        sync_confidence_pred, sync_confidence_true   mean landmark-SyncNet in-sync probability (0..1)
        sync_margin_pred, sync_margin_true           similarity at zero shift minus median over shifts
        sync_offset_pred, sync_offset_true           best audio shift (frames; 0 = in sync)
      speed:
        render_fps                        rendered frames per second (after a warm-up frame; no loading)
        motion_realtime_factor            clip seconds / seconds to predict and stabilise the landmarks
                                          from the dataset's audio features
      per_frame:    frame [N], psnr_reconstruction [N], psnr_audio_driven [N], ssim_* [N], lpips_* [N]
                    (when computed), mouth_opening_pred [N], mouth_opening_true [N],
                    sync_confidence_pred [N-4], sync_confidence_true [N-4] (5-frame windows, when computed)
    audio: one entry per --audio file:
      path, seconds, frames (video frames of the audio), rendered_frames,
      sync_confidence, sync_margin, sync_offset, mouth_loudness_corr,
      motion_realtime_factor (from the audio, features included), render_fps
      (a failed metric is named in ``skipped`` as ``audio[i].metric``)
    skipped: {name: reason}
    notes: [text]
    plots: {psnr, mouth, sync}: file names beside report.json
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .. import media
from ..cliopts import MAX_SEED, check_config, opt
from ..constants import MOUTH_68
from ..dataset import PersonDataset
from ..device import DEVICES, resolve_device
from ..errors import InputError
from ..fileio import atomic_path, folder_lock, write_json
from ..infer.person import Person
from ..infer.pipeline import PersonModel
from ..infer.stabilise import pose_track, stabilise
from ..lpips import load_lpips
from ..motion import mouth_opening
from ..motion.data import load_dataset_clips
from ..motion.model import check_audio
from ..render import PersonRenderer
from ..render.model import valid_pixels
from . import metrics, plots
from .fid import load_inception

FORMAT = "geneface-eval"
VERSION = 1
SYNC_WINDOW = 5
"""Video frames per SyncNet window: fewer evaluated frames than this and lip sync is not scored."""
MIN_FID_FRAMES = 50
"""FID is skipped on fewer evaluated frames."""
FEW_FID_FRAMES = 2048
"""Below this many frames FID is strongly biased (the Inception feature covariance is rank-deficient)."""
NO_SYNCNET = ("no pretrained SyncNet exists in any registry package; lip sync is measured with the person's "
              "own landmark SyncNet (sync_confidence, sync_margin, sync_offset) and with landmark distances")


@dataclass
class EvalConfig:
    """Options of `geneface evaluate`."""

    frames: int | None = opt(None, min=1, max=10_000_000)
    """Evaluate at most this many validation frames (the first ones; all by default)."""
    temperature: float = opt(0.5, min=0.0, max=10.0)
    """Motion sampling temperature (as `geneface infer`)."""
    seed: int = opt(0, min=0, max=MAX_SEED)
    """Random seed of the motion sample."""
    smoothing: float = opt(1.0, min=0.0, max=100.0)
    """Temporal smoothing of the predicted landmarks (Gaussian sigma in frames; as `geneface infer`)."""
    batch: int = opt(4, min=1, max=1024)
    """Frames rendered at once."""
    device: str = opt("auto", choices=DEVICES)
    """Compute device."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        check_config(self)


@dataclass
class _Report:
    """The report under construction: sections of metrics, and the names of those skipped."""

    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def put(self, section: dict, name: str, key: str, value: Any, why_not: str = "not computed") -> None:
        """Set ``section[key]`` to ``value`` when it is a finite number, else record ``name`` as skipped."""
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            self.skipped[name] = why_not if value is None else f"came out non-finite ({value})"
        else:
            section[key] = round(float(value), 5) if isinstance(value, float) else value

    def skip(self, names: list[str], reason: str) -> None:
        for name in names:
            self.skipped[name] = reason


def _check_inputs(person_dir, audio_paths, out) -> tuple[Any, Any, Path, list[tuple[Path, np.ndarray]]]:
    person = Person(person_dir)
    if person.data_dir is None:
        raise InputError(f"{person.root} has no data/ folder: evaluate needs PERSON/data, which "
                         f"`geneface train all` writes")
    out = Path(out) if out is not None else person.root / "eval"
    if not out.parent.is_dir():
        raise InputError(f"output folder's parent does not exist: {out.parent}")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder")
    data = PersonDataset(person.data_dir)
    if len(data.split("val")) == 0:
        raise InputError(f"{person.data_dir} has no validation frames; process the video again")
    clips = []
    for path in audio_paths:
        path = Path(path)
        clips.append((path, check_audio(media.read_audio(path), what=str(path))))
    return person, data, out, clips


def _render(model: PersonModel, c2w: np.ndarray, offsets: np.ndarray, batch: int, desc: str, progress: bool
            ) -> tuple[np.ndarray, float]:
    """Frames [N, S, S, 3] uint8 of poses c2w [N, 4, 4] and landmark windows offsets [N, 5, 68, 3] at the person's
    size (through its super-resolution network where it has one), and the seconds spent."""
    frames = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(c2w), batch), desc=desc, unit="batch", disable=not progress, leave=False):
        frames.append(model.render(offsets[i:i + batch], c2w[i:i + batch]))
    device = model.renderer.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return np.concatenate(frames), time.perf_counter() - start


def _windows(offsets: np.ndarray) -> np.ndarray:
    """Renderer condition windows [T, 5, 68, 3] of offsets [T, 68, 3]."""
    return PersonRenderer.windows(torch.from_numpy(np.ascontiguousarray(offsets)).float()).numpy()


def _timed_predict(model, person, features, pitch, config: EvalConfig) -> tuple[np.ndarray, float]:
    """Stabilised offsets [T, 68, 3] of features [2T, D] (as `geneface infer`, without blinks) and the seconds
    a second, identical run took (the first warms up)."""

    def once():
        raw = model.predict(features, pitch, temperature=config.temperature, seed=config.seed)
        return stabilise(raw, person.stats, smoothing=config.smoothing, blink="off", fps=person.fps,
                         seed=config.seed)

    once()
    start = time.perf_counter()
    offsets = once()
    return offsets, time.perf_counter() - start


def _sync(report: _Report, section: dict, prefix: str, suffix: str, model, features, offsets) -> np.ndarray | None:
    """Put sync_confidence/margin/offset{suffix} of offsets [T, 68, 3] into ``section``; per-window [T-4]."""
    names = [f"{prefix}.sync_{k}{suffix}" for k in ("confidence", "margin", "offset")]
    if len(offsets) < SYNC_WINDOW:
        report.skip(names, f"needs at least {SYNC_WINDOW} frames, got {len(offsets)}")
        return None
    score = model.score(features, offsets)
    report.put(section, names[0], f"sync_confidence{suffix}", score.mean_confidence)
    report.put(section, names[1], f"sync_margin{suffix}", score.margin)
    section[f"sync_offset{suffix}"] = int(score.offset)
    return score.confidence


def _image_metrics(report: _Report, name: str, renders: np.ndarray, truth: np.ndarray, true_mesh: np.ndarray,
                   dataset_size: int, lpips_net, device, progress: bool, valid: np.ndarray) -> tuple[dict, dict]:
    """psnr, ssim, lpips and LMD of renders against truth [N, S, S, 3] on the real pixels ``valid`` [S, S]
    (the padding of the dataset's crop is never scored: LPIPS sees the truth there); (section, per-frame
    arrays)."""
    section: dict[str, Any] = {}
    per_frame: dict[str, np.ndarray] = {"psnr": metrics.psnr(renders, truth, valid),
                                        "ssim": metrics.ssim(renders, truth, valid)}
    renders = np.where(valid[None, :, :, None], renders, truth)
    report.put(section, f"validation.{name}.psnr", "psnr", float(per_frame["psnr"].mean()))
    report.put(section, f"validation.{name}.ssim", "ssim", float(per_frame["ssim"].mean()))
    if lpips_net is not None:
        per_frame["lpips"] = metrics.lpips_distance(lpips_net, renders, truth, device)
        report.put(section, f"validation.{name}.lpips", "lpips", float(per_frame["lpips"].mean()))
    found = metrics.track_faces(renders, dataset_size,
                                progress=lambda x: tqdm(x, desc=f"track {name}", unit="frame", disable=not progress,
                                                        leave=False))
    lmd = metrics.image_lmd(found, true_mesh)
    keys = ["lmd_mouth_px", "lmd_mouth_iod", "lmd_face_px", "lmd_face_iod"]
    if lmd is None:
        report.skip([f"validation.{name}.{k}" for k in keys],
                    f"MediaPipe found no face in any of the {len(renders)} rendered frames (an undertrained or "
                    f"very small renderer)")
        section["face_found"] = 0.0
    else:
        for key in keys + ["face_found"]:
            report.put(section, f"validation.{name}.{key}", key, lmd[key])
    return section, per_frame


def evaluate(person_dir: str | os.PathLike, audio_paths: list[str | os.PathLike] = (),
             out: str | os.PathLike | None = None, config: EvalConfig = EvalConfig()) -> dict:
    """Evaluate the person model ``person_dir``; write the report into ``out`` (default PERSON/eval) and
    return it (the ``report.json`` content; schema in the module docstring)."""
    # 1. check the inputs (all of them, before any work)
    if config.frames is not None and config.frames < 1:
        raise InputError(f"--frames must be at least 1, got {config.frames}")
    if config.batch < 1:
        raise InputError(f"--batch must be at least 1, got {config.batch}")
    person, data, out, clips = _check_inputs(person_dir, audio_paths, out)
    with folder_lock(out):  # one writer per report folder
        device = resolve_device(config.device)
        val = data.split("val")
        count = len(val) if config.frames is None else min(config.frames, len(val))
        idx = val[:count]
        fps = person.fps
        report = _Report()

        # 2. load the models
        loaded = PersonModel.load(person.root, device)
        model = loaded.motion
        size = loaded.size
        lpips_net, why_lpips = metrics.load_optional(load_lpips, device)
        inception, why_fid = (None, None)
        if count >= MIN_FID_FRAMES:
            inception, why_fid = metrics.load_optional(load_inception, device)
        else:
            why_fid = (f"needs at least {MIN_FID_FRAMES} validation frames, got {count} (on fewer frames the "
                       f"estimate of 2048-d feature statistics is too noisy to compare)")

        # 3. motion on the validation audio
        (clip,) = load_dataset_clips(data.root, person.feature_kind, splits=("val",), min_frames=1)  # as in training
        features, pitch, truth = clip.features[: 2 * count], clip.pitch[: 2 * count], clip.offsets[:count]
        predicted, motion_seconds = _timed_predict(model, person, features, pitch, config)
        motion: dict[str, Any] = {}
        dist = np.linalg.norm(predicted - truth, axis=-1)  # [N, 68], in inter-ocular distances
        report.put(motion, "validation.motion.landmark_error_mouth", "landmark_error_mouth",
                   float(dist[:, MOUTH_68].mean() * 100))
        report.put(motion, "validation.motion.landmark_error_face", "landmark_error_face", float(dist.mean() * 100))
        open_pred, open_true = mouth_opening(predicted), mouth_opening(truth)
        report.put(motion, "validation.motion.mouth_opening_corr", "mouth_opening_corr",
                   metrics.pearson(open_pred, open_true), "needs 3 or more frames with a moving mouth")
        audio = data.audio()
        loud = metrics.frame_loudness(audio, data.num_frames, fps)[idx]
        for tag, series in (("pred", open_pred), ("true", open_true)):
            report.put(motion, f"validation.motion.mouth_loudness_corr_{tag}", f"mouth_loudness_corr_{tag}",
                       metrics.pearson(series, loud), "needs 3 or more frames with varying loudness and mouth")
        conf_pred = _sync(report, motion, "validation.motion", "_pred", model, features, predicted)
        conf_true = _sync(report, motion, "validation.motion", "_true", model, features, truth)

        # 4. render: reconstruction (true landmarks) and audio-driven (predicted), both with the true poses
        c2w = data.pose["c2w"][idx]
        recon_windows = _windows(data.motion["offsets"])[idx]  # neighbours from the whole clip, as in training
        _render(loaded, c2w[:1], recon_windows[:1], 1, "warm-up", False)
        recon, t_recon = _render(loaded, c2w, recon_windows, config.batch, "render reconstruction", config.progress)
        driven, t_driven = _render(loaded, c2w, _windows(predicted), config.batch, "render audio-driven",
                                   config.progress)
        gt = np.stack([cv2.resize(data.frame(int(i)), (size, size), interpolation=cv2.INTER_AREA)
                       if data.size != size else data.frame(int(i)) for i in idx])
        background = data.background()
        if data.size != size:
            background = cv2.resize(background, (size, size), interpolation=cv2.INTER_AREA)

        # 5. image metrics, on the real pixels (not the padding of a crop past the source frame)
        x0, y0, x1, y1 = valid_pixels([v / data.size for v in data.valid_box], size)
        valid = np.zeros((size, size), bool)
        valid[y0:y1, x0:x1] = True
        true_mesh = data.landmarks["mesh"][idx]
        sections, per_frame = {}, {}
        for name, frames in (("reconstruction", recon), ("audio_driven", driven)):
            sections[name], per_frame[name] = _image_metrics(report, name, frames, gt, true_mesh, data.size, lpips_net,
                                                             device, config.progress, valid)
            if lpips_net is None:
                report.skipped[f"validation.{name}.lpips"] = why_lpips
        bg_stack = np.broadcast_to(background, gt.shape)
        bg_section: dict[str, Any] = {}
        report.put(bg_section, "validation.background.psnr", "psnr", float(metrics.psnr(bg_stack, gt, valid).mean()))
        report.put(bg_section, "validation.background.ssim", "ssim", float(metrics.ssim(bg_stack, gt, valid).mean()))
        if inception is not None:
            feats_gt = metrics.inception_features(inception, gt, device)
            for name, frames in (("reconstruction", recon), ("audio_driven", driven)):
                try:
                    real = np.where(valid[None, :, :, None], frames, gt)  # the truth on the padding
                    value = metrics.fid_score(metrics.inception_features(inception, real, device), feats_gt)
                except ValueError as e:  # e.g. covariances too singular on few frames
                    report.skipped[f"validation.{name}.fid"] = f"cannot be computed on {count} frames ({e})"
                    continue
                report.put(sections[name], f"validation.{name}.fid", "fid", value)
            if count < FEW_FID_FRAMES and any("fid" in sections[n] for n in sections):
                report.notes.append(f"FID is computed on only {count} frames; it is strongly biased below about "
                                    f"{FEW_FID_FRAMES} (compare it only between runs on the same frames)")
        else:
            report.skip([f"validation.{n}.fid" for n in ("reconstruction", "audio_driven")], why_fid)
        report.skipped["syncnet LSE-C/LSE-D"] = NO_SYNCNET

        speed: dict[str, Any] = {}
        report.put(speed, "validation.speed.render_fps", "render_fps", 2 * count / max(t_recon + t_driven, 1e-9))
        report.put(speed, "validation.speed.motion_realtime_factor", "motion_realtime_factor",
                   count / fps / max(motion_seconds, 1e-9))

        pf: dict[str, Any] = {"frame": [int(i) for i in idx]}
        for name in ("reconstruction", "audio_driven"):
            for key, values in per_frame[name].items():
                pf[f"{key}_{name}"] = [round(float(v), 5) for v in values]
        pf["mouth_opening_pred"] = [round(float(v), 5) for v in open_pred]
        pf["mouth_opening_true"] = [round(float(v), 5) for v in open_true]
        if conf_pred is not None:
            pf["sync_confidence_pred"] = [round(float(v), 5) for v in conf_pred]
            pf["sync_confidence_true"] = [round(float(v), 5) for v in conf_true]

        validation = {"frames": {"first": int(idx[0]), "count": count, "available": len(val)}, "fps": fps,
                      "seconds": round(count / fps, 3), "image_size": size, "dataset_size": data.size,
                      "reconstruction": sections["reconstruction"], "audio_driven": sections["audio_driven"],
                      "background": bg_section, "motion": motion, "speed": speed, "per_frame": pf}
        if count < len(val):
            report.notes.append(f"evaluated the first {count} of {len(val)} validation frames (--frames)")

        # 6. audio the model never saw: sync measures and speed
        sync_panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        if conf_pred is not None:
            centres = (idx[0] + np.arange(len(conf_pred)) + SYNC_WINDOW // 2) / fps  # time in the training clip
            sync_panels["validation clip (time in the training clip)"] = {
                "predicted landmarks": (centres, conf_pred), "ground-truth landmarks": (centres, conf_true)}
        entries = _unseen_audio(report, loaded, clips, count, config, sync_panels)

        result = {"format": FORMAT, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "person": str(person.root), "device": str(device),
                  "config": {k: v for k, v in asdict(config).items() if k not in ("device", "progress")},
                  "validation": validation, "audio": entries, "skipped": report.skipped, "notes": report.notes,
                  "plots": dict(plots.PLOTS)}

        # 7. write: plots, report.md, then report.json (last: its presence marks a finished report)
        out.mkdir(exist_ok=True)
        (out / "report.json").unlink(missing_ok=True)  # an older report must not pass for this one meanwhile
        seconds = idx / fps  # time in the training clip
        psnr_series = {"reconstruction (true landmarks)": per_frame["reconstruction"]["psnr"],
                       "audio-driven (predicted landmarks)": per_frame["audio_driven"]["psnr"]}
        plots.plot_psnr(out / plots.PLOTS["psnr"], idx, psnr_series, bg_section.get("psnr"))
        plots.plot_mouth(out / plots.PLOTS["mouth"], seconds, open_pred, open_true)
        plots.plot_sync(out / plots.PLOTS["sync"], sync_panels)
        with atomic_path(out / "report.md") as tmp:
            tmp.write_text(markdown(result))
        write_json(out / "report.json", result)
        return result


def _unseen_audio(report: _Report, loaded: PersonModel, clips: list[tuple[Path, np.ndarray]], count: int,
                  config: EvalConfig, sync_panels: dict) -> list[dict]:
    """Sync measures and speeds of each --audio clip (the ``audio`` entries of the report); adds each clip's
    SyncNet confidence curve to ``sync_panels``."""
    model, person, fps = loaded.motion, loaded.person, loaded.fps
    entries = []
    for k, (path, speech) in enumerate(tqdm(clips, desc="audio", unit="file", disable=not (config.progress and clips))):
        start = time.perf_counter()
        feats, speech_pitch = model.features_for_audio(speech, model_path=person.feature_model_for(None))
        t_feat = time.perf_counter() - start
        offsets, t_pred = _timed_predict(model, person, feats, speech_pitch, config)
        frames_n = len(offsets)
        entry: dict[str, Any] = {"path": str(path), "seconds": round(len(speech) / media.AUDIO_RATE, 3),
                                 "frames": frames_n}
        conf = _sync(report, entry, f"audio[{k}]", "", model, feats, offsets)
        if conf is not None:
            sync_panels[f"{path.name} (unseen audio {k + 1})"] = {
                "predicted landmarks": ((np.arange(len(conf)) + SYNC_WINDOW // 2) / fps, conf)}
        report.put(entry, f"audio[{k}].mouth_loudness_corr", "mouth_loudness_corr",
                   metrics.pearson(mouth_opening(offsets), metrics.frame_loudness(speech, frames_n, fps)),
                   "needs 3 or more frames with varying loudness and mouth")
        report.put(entry, f"audio[{k}].motion_realtime_factor", "motion_realtime_factor",
                   len(speech) / media.AUDIO_RATE / max(t_feat + t_pred, 1e-9))
        n = min(frames_n, count)
        _, t_render = _render(loaded, pose_track(person.c2w, n, "loop"), _windows(offsets)[:n], config.batch,
                              f"render {path.name}", config.progress)
        entry["rendered_frames"] = n
        report.put(entry, f"audio[{k}].render_fps", "render_fps", n / max(t_render, 1e-9))
        entries.append(entry)
    if clips:
        report.notes.append(f"for --audio files, render_fps is timed on their first {count} frames or fewer "
                            f"(as many as the validation frames evaluated)")
    return entries


# --- Markdown ----------------------------------------------------------------------------------

_LABELS = {
    "psnr": ("PSNR", "dB", "higher is better"), "ssim": ("SSIM", "", "1 = identical"),
    "lpips": ("LPIPS", "", "0 = identical"), "fid": ("FID", "", "lower is better"),
    "lmd_mouth_px": ("mouth LMD", "px", "rendered face mesh vs dataset"),
    "lmd_mouth_iod": ("mouth LMD", "% IOD", ""), "lmd_face_px": ("face LMD", "px", ""),
    "lmd_face_iod": ("face LMD", "% IOD", ""), "face_found": ("face found", "fraction", "frames used for LMD"),
    "landmark_error_mouth": ("mouth landmark error", "% IOD", "predicted vs true offsets, 3-D"),
    "landmark_error_face": ("face landmark error", "% IOD", "predicted vs true offsets, 3-D"),
    "mouth_opening_corr": ("mouth opening correlation", "r", "predicted vs true"),
    "mouth_loudness_corr_pred": ("mouth/loudness correlation, predicted", "r", ""),
    "mouth_loudness_corr_true": ("mouth/loudness correlation, ground truth", "r", ""),
    "mouth_loudness_corr": ("mouth/loudness correlation", "r", ""),
    "sync_confidence_pred": ("SyncNet confidence, predicted", "0..1", "landmark SyncNet"),
    "sync_confidence_true": ("SyncNet confidence, ground truth", "0..1", "landmark SyncNet"),
    "sync_confidence": ("SyncNet confidence", "0..1", "landmark SyncNet"),
    "sync_margin_pred": ("SyncNet margin, predicted", "", "zero shift minus median"),
    "sync_margin_true": ("SyncNet margin, ground truth", "", "zero shift minus median"),
    "sync_margin": ("SyncNet margin", "", "zero shift minus median"),
    "sync_offset_pred": ("SyncNet best offset, predicted", "frames", "0 = in sync"),
    "sync_offset_true": ("SyncNet best offset, ground truth", "frames", "0 = in sync"),
    "sync_offset": ("SyncNet best offset", "frames", "0 = in sync"),
    "render_fps": ("render speed", "frames/s", "excluding model load"),
    "motion_realtime_factor": ("motion speed", "x real time", ""),
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    lines = ["| metric | value | unit | note |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return lines


def _rows(section: dict, keys: list[str] | None = None) -> list[tuple[str, str, str, str]]:
    rows = []
    for key in keys or list(section):
        if key in section and key in _LABELS:
            label, unit, note = _LABELS[key]
            rows.append((label, _fmt(section[key]), unit, note))
    return rows


def markdown(report: dict) -> str:
    """The readable ``report.md`` of a report dict."""
    v = report["validation"]
    f = v["frames"]
    lines = [f"# Evaluation of `{report['person']}`", "",
             f"{report['created']}, device {report['device']}, temperature {report['config']['temperature']}, "
             f"seed {report['config']['seed']}.", "",
             f"## Validation clip: frames {f['first']}-{f['first'] + f['count'] - 1} "
             f"({f['count']} of {f['available']}, {v['seconds']} s), compared at {v['image_size']} px", ""]
    image_keys = ["psnr", "ssim", "lpips", "fid", "lmd_mouth_px", "lmd_mouth_iod", "lmd_face_px", "lmd_face_iod",
                  "face_found"]
    lines += ["| metric | reconstruction (true landmarks) | audio-driven (predicted) | background only |",
              "|---|---|---|---|"]
    for key in image_keys:
        cells = [v[s].get(key) for s in ("reconstruction", "audio_driven", "background")]
        if all(c is None for c in cells):
            continue
        label, unit, _ = _LABELS[key]
        lines.append(f"| {label}{f' ({unit})' if unit else ''} | "
                     + " | ".join("-" if c is None else _fmt(c) for c in cells) + " |")
    lines += ["", "### Motion (predicted from the clip's audio vs ground truth)", ""]
    lines += _table(_rows(v["motion"]))
    lines += ["", "### Speed", ""] + _table(_rows(v["speed"]))
    if report["audio"]:
        lines += ["", "## Unseen audio", "",
                  "| file | seconds | SyncNet confidence | margin | offset | mouth/loudness r | motion x real time "
                  "| render frames/s |", "|---|---|---|---|---|---|---|---|"]
        for e in report["audio"]:
            cells = [e.get(k) for k in ("sync_confidence", "sync_margin", "sync_offset", "mouth_loudness_corr",
                                        "motion_realtime_factor", "render_fps")]
            lines.append(f"| `{Path(e['path']).name}` | {e['seconds']} | "
                         + " | ".join("-" if c is None else _fmt(c) for c in cells) + " |")
    lines += ["", "## Skipped", "", "| metric | why |", "|---|---|"]
    by_reason: dict[str, list[str]] = {}
    for name, why in report["skipped"].items():
        by_reason.setdefault(why, []).append(name)
    lines += [f"| {', '.join(names)} | {why} |" for why, names in by_reason.items()]
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    lines += ["", "## Plots", ""] + [f"![{k}]({p})" for k, p in report["plots"].items()]
    return "\n".join(lines) + "\n"
