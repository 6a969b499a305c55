"""Benchmark `geneface process` and `geneface train all` on footage degraded as real footage is, and the lip
sync on voices in other languages.

    python benchmarks/robustness.py [--seconds 12] [--source-size 512] [--size 128] [--train clean,offset_p120,...]
                                    [--motion-steps 200] [--render-steps 400] [--languages de,fr,es,hi]
                                    [--voice-seconds 5] [--threads 2] [--work bench_out/robustness] [--out DIR]
                                    [--fresh] [--quick]

1. Variants of one synthetic person (`geneface.synth`, the bundled face and speech), each made from a clean
   clip by `geneface.synth.degrade` with the ground truth following the transform (the clean clip at 25 fps;
   the portrait and variable-rate ones from a 30 fps clip): A/V offsets (positive: the audio leads), H.264 at a
   low bit rate, Gaussian noise, a slow brightness drift, camera shake, the face filling the frame with the top
   of the head cut off, portrait 1080x1920 at 30 fps, a variable frame rate (frames dropped at random, so the
   time stamps are irregular), and a 224 px source. Separately, `glasses`: the same person wearing thick-rimmed
   glasses (`SynthConfig.glasses`, its own 25 fps clip; the truth is of the face behind them).
2. Each variant is processed at --size (cached). Measured: whether `process` succeeds (its error if not), the
   A/V offset it estimates (meta.json's ``av_offset``, where `process` writes one; null otherwise) and whether
   that is within 20 ms of the truth, head-pose RMS error against the generator's truth (degrees, each track's
   mean removed, mean of yaw, pitch, roll), and the landmark error of the 478-point mesh (% of the inter-ocular
   distance). The truth is sampled at the dataset's 25 fps times (`geneface.synth.degrade.truth_at`).
3. A subset (--train) gets a short `train all` (`train_person`, cached) and the mouth opening of the rendered
   video on an unseen voice (espeak-ng, a voice and sentences not in training) is correlated with the
   generator's true mouth opening for that audio (the rig's inner-lip gap for the generator's mouth controls
   of the same audio; phones where pocketsphinx runs, as in training); the mouth of the rendered frames is
   measured by tracking them with MediaPipe (as `geneface evaluate` measures rendered LMD); the predicted
   landmarks' own opening is reported beside it (as benchmarks/corpus.py measures).
4. Languages: one voice per language in --languages (espeak-ng) plus an English one, against the clean person
   (trained once on English) with `mel` features and with a `whisper` motion model trained on the same data.
   The truth here uses the generator's spectral rule (no phones: pocketsphinx knows only English) for every
   voice, English included, so the languages compare alike. The packaged whisper model (tiny.en) is English-only.

Cached steps are keyed on every argument and the package source (see benchmarks/common.py). Prints tables and
writes robustness.json (the README's figures are the fields of "summary"); variants.png is a contact sheet of
one frame of every variant with its true landmarks drawn in.
"""

from __future__ import annotations

import shutil
import time
import traceback
from dataclasses import replace
from pathlib import Path

import common
import cv2
import numpy as np
import torch

from geneface import face
from geneface.constants import AUDIO_RATE, FPS
from geneface.dataset import PersonDataset
from geneface.errors import InputError
from geneface.evaluate import metrics
from geneface.fileio import read_npz
from geneface.process.pipeline import ProcessConfig, process
from geneface.synth import SynthConfig, prepare, speak, synthesize
from geneface.synth.degrade import DegradeConfig, degrade, truth_at

OFFSETS_MS = (-200, -120, -40, 40, 120, 200)
GLASSES = "thick"
"""Frame style of the `glasses` variant's clip (`SynthConfig.glasses`)."""
WITHIN_MS = 20.0
UNSEEN_VOICE = "en-gb+m3"
UNSEEN_TEXT = ("Heavy snow closed the mountain pass for three long days. The young violinist practised her scales "
               "before breakfast. Purple lanterns floated gently down the dark canal.")
LANGUAGE_TEXT = {
    "en": ("en-gb+m3", UNSEEN_TEXT),
    "de": ("de", "Der Zug nach Hamburg fährt heute eine halbe Stunde später ab. Wir trinken einen Kaffee am Bahnhof."),
    "fr": ("fr", "Le train pour Marseille part avec une demi-heure de retard. Nous prenons un café à la gare."),
    "es": ("es", "El tren a Sevilla sale hoy con media hora de retraso. Tomamos un café en la estación."),
    "hi": ("hi", "मुंबई की गाड़ी आज आधा घंटा देर से चलेगी। हम स्टेशन पर चाय पीते हैं।"),
    "cmn": ("cmn", "去北京的火车今天晚半个小时。我们在车站喝一杯茶。"),
}
"""Language -> (espeak-ng voice, text)."""


def variants(truth25: dict, seconds: float) -> dict[str, tuple[str, DegradeConfig]]:
    """Variant name -> (source clip: clean25 or clean30, how to degrade it)."""
    out: dict[str, tuple[str, DegradeConfig]] = {"clean": ("clean25", DegradeConfig())}
    for ms in OFFSETS_MS:
        out[f"offset_{'p' if ms > 0 else 'm'}{abs(ms)}"] = ("clean25", DegradeConfig(av_offset_ms=float(ms)))
    out["h264_100kbps"] = ("clean25", DegradeConfig(bitrate_kbps=100.0))
    out["noise_12"] = ("clean25", DegradeConfig(noise=12.0))
    out["brightness_drift"] = ("clean25", DegradeConfig(brightness_drift=0.35, drift_seconds=max(seconds, 4.0)))
    out["shake"] = ("clean25", DegradeConfig(shake_shift=0.02, shake_deg=2.0, shake_hz=1.5))
    # The face fills the frame: a square from just below the top of the face mesh (the head's top is cut off) to
    # below the chin (neck and shoulders at the bottom).
    size = float(truth25["size"])
    oval = truth25["mesh"][:, face.FACE_OVAL, :2]
    top, chin, cx = float(oval[..., 1].min()), float(oval[..., 1].max()), float(oval[..., 0].mean())
    height = chin - top
    side = 1.45 * height
    out["head_cut"] = ("clean25", DegradeConfig(crop=((cx - side / 2) / size, (top + 0.06 * height) / size,
                                                      side / size, side / size), canvas=(int(size), int(size))))
    out["portrait_30fps"] = ("clean30", DegradeConfig(canvas=(1080, 1920)))
    out["vfr"] = ("clean30", DegradeConfig(drop_frames=0.25))
    out["source_224"] = ("clean25", DegradeConfig(canvas=(224, 224)))
    # Not a degradation: the generator draws glasses on the face (clip glasses25), else as clean.
    out["glasses"] = ("glasses25", DegradeConfig())
    return out


# --- measurements ---------------------------------------------------------------------------------------

def process_errors(data: Path, truth: dict) -> dict:
    """Pose and landmark errors of a processed dataset against the clip's truth, and its A/V offset."""
    ds = PersonDataset(data)
    n = ds.num_frames
    gt = truth_at(truth, np.arange(n) / FPS)
    est = ds.pose["euler"][:n]
    err = (est - est.mean(0)) - (gt["euler"] - gt["euler"].mean(0))
    pose_rms = np.sqrt((err ** 2).mean(0))
    x0, y0, side = ds.meta["crop"]
    gt_mesh = (gt["mesh"][:, :, :2] - [x0, y0]) * (ds.size / side)
    lm = np.linalg.norm(ds.landmarks["mesh"][:n, :, :2] - gt_mesh, axis=-1).mean(-1) / face.interocular(gt_mesh) * 100
    av = ds.meta.get("av_offset") or {}
    true_ms = float(truth.get("av_offset_ms", 0.0))
    est_ms = av.get("estimated_ms")
    return {"frames": n, "truth_frames_seconds": round(float(truth["times"][-1]) if "times" in truth else 0, 3),
            "pose_rms_deg": float(pose_rms.mean()), "pose_rms_yaw_pitch_roll_deg": pose_rms,
            "landmark_error_pct_iod": float(lm.mean()), "landmark_error_p95_pct_iod": float(np.percentile(lm, 95)),
            "av_offset_true_ms": true_ms, "av_offset_estimated_ms": est_ms,
            "av_offset_applied_ms": av.get("applied_ms"), "av_offset_confidence": av.get("confidence"),
            "av_offset_setting": av.get("setting"),
            "av_offset_within_20ms": None if est_ms is None else bool(abs(est_ms - true_ms) <= WITHIN_MS),
            "face_found_rate": ds.meta.get("face_found_rate", ds.meta.get("summary", {}).get("face_found_rate"))}


def true_mouth(audio: np.ndarray, use_phones: bool) -> np.ndarray:
    """The generator's mouth opening [T] (25 fps) for ``audio``: its mouth controls on the bundled face's rig."""
    clip = prepare(None, audio, SynthConfig(size=128, blink_interval=None, use_phones=use_phones, progress=False))
    rig = clip.animator.rig
    heads = np.stack([rig.expression(o, w, 0.0) for o, w in zip(clip.jaw_open, clip.lip_width)])
    return face.mouth_opening(heads)


def mouth_correlations(model, offsets: np.ndarray, truth: np.ndarray, render: bool) -> dict:
    """r of the predicted landmarks' and (``render``) the rendered video's mouth opening with ``truth`` [T]."""
    from geneface import InferConfig
    from geneface.motion import mouth_opening

    n = min(len(offsets), len(truth))
    out = {"frames": n, "mouth_corr_motion": metrics.pearson(mouth_opening(offsets[:n]), truth[:n])}
    if render:
        start = time.perf_counter()
        frames = np.stack(list(model.frames(offsets[:n], model.poses("loop", n), InferConfig(device="cpu"))))
        out["render_seconds"] = time.perf_counter() - start
        found = metrics.track_faces(frames, 256)
        keep = [i for i, m in enumerate(found) if m is not None]
        out["face_found"] = len(keep) / n
        out["mouth_corr_render"] = (metrics.pearson(face.mouth_opening(np.stack([found[i] for i in keep])),
                                                    truth[keep]) if len(keep) >= 3 else None)
    return out


def predict(model, motion, audio: np.ndarray) -> np.ndarray:
    """Stabilised offsets [T, 68, 3] of ``audio`` by ``motion`` for the person of ``model`` (as `geneface infer`,
    eyes held open)."""
    from geneface import InferConfig
    from geneface.infer.stabilise import stabilise

    cfg = InferConfig(device="cpu", blink="off")
    raw = motion.predict_audio(audio, num_frames=model.num_frames(audio), temperature=cfg.temperature, seed=cfg.seed)
    return stabilise(raw, model.person.stats, smoothing=cfg.smoothing, blink="off", fps=model.fps, seed=cfg.seed)


# --- the contact sheet ------------------------------------------------------------------------------------

def contact_sheet(path: Path, clips: dict[str, Path], at: float, height: int = 240) -> None:
    """One frame (at ``at`` s) of every clip, scaled to ``height``, true 68 landmarks in green, name below."""
    from geneface.media import read_video

    tiles = []
    for name, clip in clips.items():
        truth = read_npz(clip.with_suffix(".truth.npz"))
        k = int(at * FPS)
        frame = None
        for i, f in enumerate(read_video(clip, fps=FPS)):
            if i == k:
                frame = f.copy()
                break
        if frame is None:
            continue
        scale = height / frame.shape[0]
        frame = cv2.resize(frame, (max(2, int(round(frame.shape[1] * scale))), height), interpolation=cv2.INTER_AREA)
        mesh = truth_at(truth, np.array([k / FPS]))["mesh"][0, face.LANDMARKS_68, :2] * scale
        for x, y in mesh:
            cv2.circle(frame, (int(x), int(y)), 1, (0, 255, 0), -1, cv2.LINE_AA)
        label = np.full((22, frame.shape[1], 3), 255, np.uint8)
        cv2.putText(label, name, (3, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.vstack([frame, label]))
    rows, row, width = [], [], 0
    for tile in tiles:
        if row and width + tile.shape[1] > 1400:
            rows.append(row)
            row, width = [], 0
        row.append(tile)
        width += tile.shape[1]
    rows.append(row)
    full = max(sum(t.shape[1] for t in r) for r in rows)
    sheet = np.vstack([np.hstack(r + [np.full((r[0].shape[0], full - sum(t.shape[1] for t in r), 3), 255, np.uint8)])
                       for r in rows])
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


# --- the run ----------------------------------------------------------------------------------------------

def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--seconds", type=float, default=12.0, help="length of every clip")
    ap.add_argument("--source-size", type=int, default=512, help="frame side of the clean synthetic clips")
    ap.add_argument("--size", type=int, default=128, help="dataset (process) and renderer size")
    ap.add_argument("--train", default="clean,offset_p120,head_cut,portrait_30fps",
                    help="variants that get a short `train all` (comma separated; empty: none)")
    ap.add_argument("--motion-steps", type=int, default=200, help="audio2motion steps (SyncNet and generator each)")
    ap.add_argument("--render-steps", type=int, default=400, help="renderer steps")
    ap.add_argument("--languages", default="de,fr,es,hi", help="espeak-ng languages of the voice test (and English)")
    ap.add_argument("--voice-seconds", type=float, default=5.0, help="length of each unseen-voice clip (at most)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    common.add_common_args(ap, "robustness")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.source_size, args.size = 4.0, 256, 64
        args.motion_steps, args.render_steps, args.voice_seconds = 10, 10, 3.0
        args.train, args.languages = "clean,head_cut", "de"
    torch.set_num_threads(args.threads)
    machine = common.machine_info()
    cache = common.Cache(args)
    start_all = time.perf_counter()

    # 1. the clean clips and the variants
    def make_clean(fps: float, glasses: str = "none"):
        def build(folder: Path) -> dict:
            start = time.perf_counter()
            synthesize(folder / "clip.mp4", config=SynthConfig(size=args.source_size, seconds=args.seconds, fps=fps,
                                                               glasses=glasses, progress=False))
            return {"seconds": round(time.perf_counter() - start, 2)}
        return build

    print(f"== clean clips ({args.seconds:g} s, {args.source_size} px, 25 and 30 fps)", flush=True)
    clean = {"clean25": cache.step("clean25", make_clean(25.0))[0] / "clip.mp4",
             "clean30": cache.step("clean30", make_clean(30.0))[0] / "clip.mp4",
             "glasses25": cache.step("glasses25", make_clean(25.0, GLASSES))[0] / "clip.mp4"}
    plan = variants(read_npz(clean["clean25"].with_suffix(".truth.npz")), args.seconds)
    clips: dict[str, Path] = {}
    made: dict[str, dict] = {}
    for name, (source, cfg) in plan.items():
        def build(folder: Path, source=source, cfg=cfg) -> dict:
            start = time.perf_counter()
            degrade(clean[source], folder / "clip.mp4", cfg)
            return {"seconds": round(time.perf_counter() - start, 2)}
        folder, made[name] = cache.step(f"variant_{name}", build)
        clips[name] = folder / "clip.mp4"
    results_dir = common.results_dir(args)
    results_dir.mkdir(parents=True, exist_ok=True)
    contact_sheet(results_dir / "robustness_variants.png", clips, at=min(2.0, args.seconds / 2))

    # 2. process every variant
    train_names = [t for t in args.train.split(",") if t]
    unknown = set(train_names) - set(plan)
    if unknown:
        raise SystemExit(f"--train: unknown variants {sorted(unknown)}; known: {', '.join(plan)}")
    rows: dict[str, dict] = {}
    for name, clip in clips.items():
        features = ("mel", "whisper") if name == "clean" else ("mel",)

        def build(folder: Path, clip=clip, features=features) -> dict:
            start = time.perf_counter()
            try:
                summary = process(clip, folder / "data", ProcessConfig(size=args.size, features=features))
            except (InputError, RuntimeError, ValueError) as e:
                return {"ok": False, "error": f"{e.__class__.__name__}: {e}", "seconds": time.perf_counter() - start,
                        "traceback": traceback.format_exc()[-2000:]}
            return {"ok": True, "error": None, "seconds": time.perf_counter() - start,
                    "face_found_rate": summary.get("face_found_rate")}

        print(f"== process {name}", flush=True)
        folder, info = cache.step(f"process_{name}", build)
        row = {"process_ok": info["ok"], "process_error": info["error"], "process_seconds": info["seconds"],
               "data": str(folder / "data")}
        if info["ok"]:
            truth = read_npz(clip.with_suffix(".truth.npz"))
            row.update(process_errors(folder / "data", truth))
            row["face_found_rate"] = info.get("face_found_rate")
        rows[name] = row

    # 3. short training of a subset; the unseen English voice
    from geneface import PersonModel, TrainConfig, train_person

    unseen = speak(UNSEEN_TEXT, voice=UNSEEN_VOICE)[: int(args.voice_seconds * AUDIO_RATE)]
    unseen_truth = true_mouth(unseen, use_phones=True)
    persons: dict[str, Path] = {}
    for name in train_names:
        if not rows[name]["process_ok"]:
            rows[name]["train_error"] = "process failed"
            continue

        def build(folder: Path, name=name) -> dict:
            shutil.copytree(rows[name]["data"], folder / "data")
            start = time.perf_counter()
            train_person(clips[name], folder, TrainConfig(size=args.size, motion_steps=args.motion_steps,
                                                          render_steps=args.render_steps, device="cpu"),
                         progress=False)
            return {"seconds": time.perf_counter() - start}

        print(f"== train all {name} ({args.motion_steps} motion, {args.render_steps} render steps)", flush=True)
        try:
            folder, info = cache.step(f"train_{name}", build)
            model = PersonModel.load(folder, "cpu")
            corr = mouth_correlations(model, predict(model, model.motion, unseen), unseen_truth, render=True)
        except Exception as e:  # recorded, so that one failure does not lose the other figures
            rows[name]["train_error"] = f"{e.__class__.__name__}: {e}"
            traceback.print_exc()
            continue
        persons[name] = folder
        rows[name].update(train_seconds=info["seconds"], train_reused=cache.reused(f"train_{name}"),
                          unseen_mouth_corr_render=corr.get("mouth_corr_render"),
                          unseen_mouth_corr_motion=corr["mouth_corr_motion"],
                          unseen_face_found=corr.get("face_found"))

    # 4. languages, against the clean person: mel (its own motion model) and whisper (one more motion run)
    languages: dict[str, dict] = {}
    if "clean" in persons:
        from geneface.device import defaults_for
        from geneface.motion import MotionModel
        from geneface.motion.train import MotionTrainConfig, train_motion

        person = persons["clean"]

        def build_whisper(folder: Path) -> dict:
            start = time.perf_counter()
            cfg = replace(MotionTrainConfig(), steps=args.motion_steps, syncnet_steps=args.motion_steps)
            train_motion([person / "data"], folder / "motion", kind="whisper",
                         preset_name=defaults_for(torch.device("cpu")).motion_preset, config=cfg, device="cpu",
                         progress=False)
            return {"seconds": time.perf_counter() - start}

        print("== whisper motion model of the clean person", flush=True)
        model = PersonModel.load(person, "cpu")
        motions = {"mel": model.motion}
        try:
            wfolder, _ = cache.step("whisper_motion", build_whisper)
            motions["whisper"] = MotionModel.load(wfolder / "motion", torch.device("cpu"))
        except Exception as e:  # the whisper model package missing, for one
            languages["whisper_error"] = f"{e.__class__.__name__}: {e}"
        for lang in ["en"] + [x for x in args.languages.split(",") if x]:
            voice, text = LANGUAGE_TEXT[lang]
            try:
                audio = speak(text, voice=voice)[: int(args.voice_seconds * AUDIO_RATE)]
            except InputError as e:  # a voice espeak-ng lacks
                languages[lang] = {"voice": voice, "error": str(e)}
                continue
            truth = true_mouth(audio, use_phones=False)
            entry = {"voice": voice, "seconds": len(audio) / AUDIO_RATE}
            for kind, motion in motions.items():
                try:
                    entry[kind] = mouth_correlations(model, predict(model, motion, audio), truth, render=True)
                except Exception as e:  # recorded, so that one failure does not lose the other figures
                    entry[f"{kind}_error"] = f"{e.__class__.__name__}: {e}"
                    traceback.print_exc()
                    entry[kind] = {"mouth_corr_motion": None}
            languages[lang] = entry
            print(f"   {lang}: " + ", ".join(f"{k} r={entry[k].get('mouth_corr_render')}" for k in motions), flush=True)

    # 5. report
    summary: dict = {"variants": len(rows), "process_ok": sum(r["process_ok"] for r in rows.values())}
    for name, r in rows.items():
        summary[f"{name}_process_ok"] = r["process_ok"]
        if r["process_ok"]:
            summary[f"{name}_pose_rms_deg"] = round(r["pose_rms_deg"], 3)
            summary[f"{name}_landmark_error_pct_iod"] = round(r["landmark_error_pct_iod"], 3)
            summary[f"{name}_av_offset_estimated_ms"] = r["av_offset_estimated_ms"]
            summary[f"{name}_av_offset_within_20ms"] = r["av_offset_within_20ms"]
        if "unseen_mouth_corr_render" in r:
            summary[f"{name}_unseen_mouth_corr_render"] = r["unseen_mouth_corr_render"]
            summary[f"{name}_unseen_mouth_corr_motion"] = r["unseen_mouth_corr_motion"]
    for lang, entry in languages.items():
        if isinstance(entry, dict):
            for kind in ("mel", "whisper"):
                if kind in entry:
                    summary[f"lang_{lang}_{kind}_mouth_corr_render"] = entry[kind].get("mouth_corr_render")
                    summary[f"lang_{lang}_{kind}_mouth_corr_motion"] = entry[kind].get("mouth_corr_motion")
    summary["total_minutes"] = round((time.perf_counter() - start_all) / 60, 2)

    common.print_table(
        ["variant", "process", "A/V est ms", "true ms", "within 20", "pose rms deg", "landmarks %IOD", "unseen r (video)",
         "unseen r (landmarks)"],
        [(n, "ok" if r["process_ok"] else "FAILED", r.get("av_offset_estimated_ms"), r.get("av_offset_true_ms"),
          r.get("av_offset_within_20ms"), r.get("pose_rms_deg"), r.get("landmark_error_pct_iod"),
          r.get("unseen_mouth_corr_render"), r.get("unseen_mouth_corr_motion")) for n, r in rows.items()],
        title=f"robustness: {args.seconds:g} s clips, processed at {args.size} px; training {args.motion_steps}/"
              f"{args.render_steps} steps; {machine['cpu_count']} CPUs")
    for n, r in rows.items():
        if not r["process_ok"]:
            print(f"  {n}: {r['process_error']}")
    if languages:
        kinds = [k for k in ("mel", "whisper") if any(isinstance(e, dict) and k in e for e in languages.values())]
        common.print_table(["language", "voice"] + [f"{k} r (video)" for k in kinds] + [f"{k} r (landmarks)" for k in kinds],
                           [(lang, e["voice"]) + tuple(e.get(k, {}).get("mouth_corr_render") for k in kinds)
                            + tuple(e.get(k, {}).get("mouth_corr_motion") for k in kinds)
                            for lang, e in languages.items() if isinstance(e, dict) and "error" not in e],
                           title="unseen voices in other languages vs the clean person trained on English "
                                 "(truth: the generator's spectral rule)")
    common.print_summary(summary)
    common.write_result("robustness", args, machine, summary,
                        {"variants": {n: {"source": plan[n][0], "degrade": plan[n][1].__dict__, **made[n]}
                                      for n in plan},
                         "rows": rows, "languages": languages,
                         "notes": ["A/V offsets: positive = the audio leads the video",
                                   "the packaged whisper model (tiny.en) is English-only",
                                   "truth of the language test: the generator's spectral mouth rule (no phones)"]},
                        cache)


if __name__ == "__main__":
    main()
