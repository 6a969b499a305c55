"""Benchmark `geneface train all` on the CPU: wall time stage by stage and the quality it buys, on synthetic
persons of 1, 2 and 3 minutes, for the code before a change (a pinned commit) and the checkout.

    python benchmarks/train_all.py [--minutes 3,2,1] [--size 256] [--before COMMIT] [--arms before,after]
                                   [--work bench_out/train_all] [--out DIR] [--fresh] [--quick]

Data: for each length, a synthetic person (the project's generator, ``--size`` px, seed 0) reading the
project's sentences in one espeak-ng voice; and a test clip of another voice saying sentences the person
never said (its generator truth is the mouth opening to match). Clips are cached in WORK, keyed on their
settings and the synthesiser's source.

Arms: ``before`` runs `geneface train all CLIP --size SIZE --device cpu` from a git worktree of ``--before``
(WORK/code-COMMIT, made with `git worktree add --detach`), ``after`` from this checkout, each in its own
process with the CPU defaults otherwise. A finished ``before`` training is kept in WORK keyed on the commit,
the clip's sha256 and the arguments, and reused by later runs (``"reused": true`` beside its times: a run of
both arms at once does not fit one session on 2 cores); ``after`` is trained anew on every run unless
``--reuse-after``. ``--before-from FILE`` takes the before rows from an earlier train_all.json instead (on a
machine whose WORK has lost them; each must match this run's before commit, size and clip sha256), marked
``"reused_from": FILE`` with the date they were measured. Stage times are wall-clock times between the stage's
files appearing (the dataset's meta.json, the motion, render and sr runs' config.json), so each includes the
command's own overhead.
Each training record also holds ``speed_index``: `common.speed_index` (steps/s of a fixed small conv-net step)
just before and just after it, about 40 on the project's 2-core machine when nothing else runs; the machine's
speed drifts by a fifth from hour to hour, and this tells a slower hour from a slower change.

Quality, measured for both arms by this checkout's code:
  motion_mouth_corr, motion_mouth_lmd   the motion run's validation split: Pearson r of predicted and real
                                        inner-lip opening and mouth landmark distance (inter-ocular distances),
                                        mean over 5 seeds at temperature 1 (the run's own figures, one seed,
                                        are kept beside them)
  render_val_psnr_db                    the renderer's last validation PSNR (its run's history.json)
  unheard_mouth_corr                    `PersonModel.speak` on the test voice, MediaPipe's mesh on every
                                        rendered frame, r of its mouth opening against the generator's truth
Targets (after): the 3-minute person in at most 20 minutes end to end; each quality figure within 2% of
before or better (correlations and PSNR at least 0.98x, LMD at most 1.02x).

Prints tables and writes train_all.json (see benchmarks/common.py for the layout; the README's figures are the
fields of "summary").
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import common
import numpy as np

from geneface import OMP_POLICY_GIVEN
from geneface.constants import AUDIO_RATE
from geneface.fileio import read_json, read_npz, write_json

BEFORE = "f0a8d7b"
"""The commit before issue 15's change (the default of --before)."""
TARGET_MINUTES = 20.0
TOLERANCE = 0.02
TRAIN_VOICE = ("en-us", 150)
TEST_VOICE = ("en-gb-x-rp+f3", 135)
TEST_SECONDS = 30.0
SEEDS = 5
QUICK_STEPS = ["--motion-steps", "20", "--render-steps", "20", "--sr-steps", "20"]
MARKS = (("process", "data/meta.json"), ("motion", "motion/config.json"), ("render", "render/config.json"),
         ("sr", "sr/config.json"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.py")):
        h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


# --- data ------------------------------------------------------------------------------------------------

def speech(texts: list[str], voice: tuple[str, int], seconds: float) -> np.ndarray:
    """``texts`` read in turn by ``voice`` with short pauses, cut to ``seconds``."""
    from geneface.synth import speak

    rng = np.random.default_rng(0)
    parts, total, i = [], 0, 0
    while total < seconds * AUDIO_RATE:
        parts += [speak(texts[i % len(texts)], voice=voice[0], speed=voice[1]),
                  np.zeros(int(AUDIO_RATE * rng.uniform(0.2, 0.6)), np.float32)]
        total += len(parts[-2]) + len(parts[-1])
        i += 1
    return np.concatenate(parts)[: int(seconds * AUDIO_RATE)]


def make_clip(work: Path, name: str, texts: list[str], voice: tuple[str, int], seconds: float, size: int) -> Path:
    """A synthetic talking head ``WORK/clip-NAME-KEY/clip.mp4`` (and its clip.truth.npz), made once."""
    from geneface.synth import SynthConfig, synthesize

    key = hashlib.sha256(repr((name, texts, voice, seconds, size, tree_hash(common.PACKAGE_SRC / "synth"))).encode())
    folder = work / f"clip-{name}-{key.hexdigest()[:12]}"
    clip = folder / "clip.mp4"
    if (folder / "done.json").exists():
        return clip
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    synthesize(clip, audio=speech(texts, voice, seconds), config=SynthConfig(size=size, seed=0, progress=False))
    write_json(folder / "done.json", {"seconds": round(time.perf_counter() - start, 1), "sha256": sha256(clip)})
    print(f"made {clip} ({seconds:g} s) in {time.perf_counter() - start:.0f} s", flush=True)
    return clip


# --- training --------------------------------------------------------------------------------------------

def code_root(work: Path, commit: str) -> tuple[Path, str]:
    """A detached git worktree of ``commit`` in WORK (made once), and the commit's full hash."""
    full = subprocess.run(["git", "rev-parse", commit], cwd=common.REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
    root = work / f"code-{full[:12]}"
    if not (root / "src" / "geneface").is_dir():
        subprocess.run(["git", "worktree", "prune"], cwd=common.REPO, check=True)
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(root.resolve()), full], cwd=common.REPO,
                       check=True, capture_output=True)
    return root, full


def train(root: Path, clip: Path, person: Path, size: int, log: Path, extra: list[str]) -> dict:
    """`geneface train all` with the package under ``root``/src in a new process; the stage times (minutes)."""
    env = {**os.environ, "PYTHONPATH": str((root / "src").resolve())}
    if not OMP_POLICY_GIVEN:  # as from a shell: not the policy `import geneface` set in this process
        env.pop("OMP_WAIT_POLICY", None)
    cmd = [sys.executable, "-c", "import sys; from geneface.cli import main; sys.exit(main())",
           "train", "all", str(clip), "--out", str(person), "--size", str(size), "--device", "cpu", *extra]
    load_start, speed_start = os.getloadavg(), common.speed_index()
    start = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    end = time.time()
    if rc != 0:
        raise SystemExit(f"`train all` failed (exit code {rc}); its output: {log}")
    times, prev = {}, start
    for stage, rel in MARKS:
        if (person / rel).exists():
            mark = (person / rel).stat().st_mtime
            times[f"{stage}_minutes"], prev = (mark - prev) / 60, mark
    times["total_minutes"] = (end - start) / 60
    return {**times, "started": start, "ended": end, "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "speed_index": [round(speed_start, 2), round(common.speed_index(), 2)], "command": cmd[3:]}


def trained(arm: str, args, clip: Path, root: Path, commit: str) -> tuple[Path, dict]:
    """The person folder of ``arm`` on ``clip`` and its training record, training it unless kept."""
    key = hashlib.sha256(repr((commit, sha256(clip), args.size)).encode()).hexdigest()[:12]
    folder = Path(args.work) / f"{arm}-{key}"
    stamp = folder / "trained.json"
    keep = arm == "before" or args.reuse_after
    if keep and not args.fresh and stamp.exists():
        record = read_json(stamp)
        print(f"[cache] {arm} on {clip.parent.name}: reusing {folder} (trained {record['built']})", flush=True)
        return folder, {**record, "reused": True}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"== {arm} ({commit[:10]}): train all on {clip.parent.name} -> {folder}", flush=True)
    record = {**train(root, clip, folder / "person", args.size, folder / "train.log", QUICK_STEPS if args.quick else []),
              "commit": commit,
              "built": common.utc_now(), "reused": False}
    write_json(stamp, record)
    return folder, record


def less_pauses(record: dict, person: Path, work: Path) -> dict:
    """``record``'s stage times less the time this benchmark was stopped meanwhile (SIGSTOP, to take a scratch
    measurement on a quiet machine; each pause a line {"start", "end", "why"} in WORK/pauses.jsonl), with the
    seconds taken off each stage in ``paused_seconds`` and the clock times as measured in ``wall_minutes``."""
    path = work / "pauses.jsonl"
    pauses = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    end = record.get("ended") or datetime.strptime(record["built"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=timezone.utc).timestamp()
    start = record.get("started") or end - 60 * record["total_minutes"]
    bounds, prev = {}, start
    for stage, rel in MARKS:
        if f"{stage}_minutes" in record and (person / rel).exists():
            bounds[stage] = (prev, (person / rel).stat().st_mtime)
            prev = bounds[stage][1]
    bounds["total"] = (start, end)
    paused = {k: sum(max(0.0, min(b, p["end"]) - max(a, p["start"])) for p in pauses) for k, (a, b) in bounds.items()}
    if not any(paused.values()):
        return record
    return {**record, **{f"{k}_minutes": record[f"{k}_minutes"] - v / 60 for k, v in paused.items()},
            "paused_seconds": {k: round(v, 1) for k, v in paused.items() if v},
            "wall_minutes": {k: record[f"{k}_minutes"] for k in paused}}


def earlier_befores(path: Path, commit: str, size: int) -> dict:
    """The before rows of the train_all.json at ``path``, checked to be of ``commit`` at ``size``."""
    try:
        earlier = read_json(path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--before-from {path}: cannot read it ({e})") from None
    if earlier.get("before_commit") != commit or earlier.get("args", {}).get("size") != size:
        raise SystemExit(f"--before-from {path}: measured at {str(earlier.get('before_commit'))[:10]}, size "
                         f"{earlier.get('args', {}).get('size')}; this run's before is {commit[:10]}, size {size}")
    return {k: {**r, "measured": earlier.get("written")} for k, r in earlier.get("rows", {}).items()
            if r.get("arm") == "before"}


def earlier_row(earlier: dict, minutes: float, clip_sha: str, path: Path) -> dict:
    """The earlier before row of the ``minutes`` person, which must have been trained on the same clip."""
    row = earlier.get(f"{minutes:g}min/before")
    if row is None:
        raise SystemExit(f"--before-from {path} has no {minutes:g}-minute before row")
    if row["clip_sha256"] != clip_sha:
        raise SystemExit(f"--before-from {path}: its {minutes:g}-minute clip differs from this run's")
    print(f"[earlier] before on the {minutes:g}-minute clip: from {path} (measured {row['measured']})", flush=True)
    return {**row, "training": {**row["training"], "reused": True, "reused_from": str(path)}}


# --- quality ---------------------------------------------------------------------------------------------

def measure(person: Path, test_clip: Path, out: Path) -> dict:
    """The quality figures of the module docstring for the person model ``person``."""
    from geneface import InferConfig, PersonModel
    from geneface.evaluate import metrics
    from geneface.face import mouth_opening as mesh_opening
    from geneface.media import read_audio, read_video
    from geneface.motion.data import load_clips
    from geneface.motion.measures import motion_metrics

    model = PersonModel.load(person, "cpu")
    motion_cfg = read_json(person / "motion" / "config.json")
    clips = load_clips([person / "data"], model.motion.feature_kind, ("val",))
    runs = [motion_metrics(model.motion, clips, temperature=1.0, seed=s) for s in range(SEEDS)]
    history = [h for h in read_json(person / "render" / "history.json") if h.get("split") == "val"]
    video = model.speak(read_audio(test_clip), out / "unheard.mp4", InferConfig(device="cpu"), progress=False)
    frames = np.stack(list(read_video(video)))
    found = metrics.track_faces(frames, frames.shape[1])
    truth = read_npz(test_clip.with_suffix(".truth.npz"))["mouth_open"]
    n = min(len(found), len(truth))
    keep = [i for i in range(n) if found[i] is not None]
    rendered = np.array([mesh_opening(found[i]) for i in keep])
    own = motion_cfg.get("metrics", {})
    return {
        "motion_mouth_corr": float(np.mean([r["mouth_corr"] for r in runs])),
        "motion_mouth_lmd": float(np.mean([r["mouth_lmd"] for r in runs])),
        "motion_mouth_corr_run": own.get("mouth_corr"), "motion_mouth_lmd_run": own.get("mouth_lmd"),
        "syncnet_auc": own.get("syncnet_auc"), "sync_loss_used": own.get("sync_loss_used"),
        "render_val_psnr_db": history[-1]["psnr"] if history else None,
        "unheard_mouth_corr": float(np.corrcoef(rendered, truth[keep])[0, 1]) if len(keep) > 2 else None,
        "unheard_face_found": len(keep) / max(1, n), "val_clips": len(clips),
    }


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--minutes", default="3,2,1", help="lengths of the synthetic persons, minutes (comma-separated)")
    ap.add_argument("--size", type=int, default=256, help="the clips' size and `train all --size`")
    ap.add_argument("--before", default=BEFORE, help="commit of the code before the change")
    ap.add_argument("--arms", default="before,after", help="which arms to run: before, after or both")
    ap.add_argument("--reuse-after", action="store_true", help="keep a finished after-arm training too (a rerun "
                                                                "of the measures only)")
    ap.add_argument("--before-from", type=Path, default=None,
                    help="take the before arm's rows (times and quality) from this earlier train_all.json instead "
                         "of training it (its commit, size and clips must match this run's)")
    common.add_common_args(ap, "train_all")
    args = ap.parse_args()
    if args.quick:
        args.minutes, args.size = "0.2", 128
    minutes = [float(m) for m in args.minutes.split(",")]
    arms = [a for a in args.arms.split(",") if a]
    if set(arms) - {"before", "after"} or not arms:
        raise SystemExit(f"--arms: before and/or after, not {args.arms!r}")
    machine = common.machine_info()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from geneface.synth.corpus import SENTENCES

    test_clip = make_clip(work, "test", list(SENTENCES[12:15]), TEST_VOICE, TEST_SECONDS, args.size)  # made first
    train_texts = list(SENTENCES[:12]) + list(SENTENCES[15:])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=common.REPO, capture_output=True, text=True).stdout.strip()
    roots = {"before": code_root(work, args.before), "after": (common.REPO, head)}
    earlier = earlier_befores(args.before_from, roots["before"][1], args.size) if args.before_from else {}
    rows: dict[str, dict] = {}
    for m in minutes:
        clip = make_clip(work, f"{m:g}min", train_texts, TRAIN_VOICE, 60 * m, args.size)
        for arm in arms:
            root, commit = roots[arm]
            if arm == "before" and earlier:
                rows[f"{m:g}min/before"] = earlier_row(earlier, m, sha256(clip), args.before_from)
                continue
            folder, record = trained(arm, args, clip, root, commit)
            record = less_pauses(record, folder / "person", work)
            key = common.script_hash()[:12] + common.source_hash()[:12]
            mfile = folder / f"measures-{key}.json"
            if mfile.exists():
                quality = read_json(mfile)
            else:
                print(f"== measuring {arm} on {clip.parent.name}", flush=True)
                quality = measure(folder / "person", test_clip, folder)
                write_json(mfile, quality)
            rows[f"{m:g}min/{arm}"] = {"minutes_of_video": m, "arm": arm, "clip_sha256": sha256(clip),
                                       "training": record, "quality": quality}

    figures = ["process_minutes", "motion_minutes", "render_minutes", "sr_minutes", "total_minutes"]
    quality = ["motion_mouth_corr", "motion_mouth_lmd", "render_val_psnr_db", "unheard_mouth_corr"]
    common.print_table(["person/arm", *[f.removesuffix("_minutes") for f in figures], *quality, "reused"],
                       [(k, *[r["training"].get(f) for f in figures], *[r["quality"].get(q) for q in quality],
                         r["training"]["reused"]) for k, r in rows.items()], title="train all, minutes and quality",
                       digits=3)
    summary: dict = {}
    for k, r in rows.items():
        tag = k.replace("/", "_")
        for f in figures:
            if f in r["training"]:
                summary[f"{tag}_{f}"] = r["training"][f]
        for q in quality:
            summary[f"{tag}_{q}"] = r["quality"][q]
    checks = []
    for m in minutes:
        b, a = rows.get(f"{m:g}min/before"), rows.get(f"{m:g}min/after")
        if a is None or b is None:
            continue
        for q in quality:
            bv, av = b["quality"][q], a["quality"][q]
            ok = None if bv is None or av is None else \
                (av <= bv + TOLERANCE * abs(bv) if q.endswith("lmd") else av >= bv - TOLERANCE * abs(bv))
            summary[f"{m:g}min_{q}_within_2pct"] = ok
            checks.append(ok)
        summary[f"{m:g}min_speedup"] = b["training"]["total_minutes"] / a["training"]["total_minutes"]
    longest = rows.get(f"{max(minutes):g}min/after")
    if longest is not None:
        summary["target_minutes_met"] = longest["training"]["total_minutes"] <= TARGET_MINUTES
    if checks:
        summary["target_quality_met"] = all(c is True for c in checks)
    common.print_summary(summary)
    common.write_result("train_all", args, machine, summary, {"rows": rows, "before_commit": roots["before"][1]})


if __name__ == "__main__":
    main()
