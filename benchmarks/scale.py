"""Benchmark corpus preparation past one process: local workers against the Ray engine on the same clips, and
a projection of preparing LRS3 (about 150 000 clips, 400+ hours) on N nodes.

    python benchmarks/scale.py [--speakers 12] [--clips 5] [--seconds 4] [--size 256] [--ray-cpus 2]
                               [--lrs3-clips 150000] [--lrs3-hours 400] [--cores-per-node 32]
                               [--nodes 1,4,16,64] [--work bench_out/scale] [--out DIR] [--fresh] [--quick]

1. A synthetic many-speaker corpus (`geneface.synth.corpus.make_corpus`, cached) is prepared from scratch three
   times, each run in a fresh process and always timed anew: `prepare_corpus` with 1 and with 2 worker
   processes, and `prepare_corpus_on_ray` on a local Ray cluster of --ray-cpus CPUs (its start and stop timed
   apart from the preparation). Each run gives its wall time and, from its manifests, the work inside the clips
   (each record's ``prepare_seconds``); the rest of the wall time is the engine's overhead (starting worker
   processes and importing geneface in them, handing out clips, waiting on the last one).
2. Ray's overhead against plain workers: the Ray preparation's wall time less the 2-worker run's, per clip, and
   the cluster's start and stop.
3. A projection for LRS3 from those measurements, for N nodes of --cores-per-node cores, with a Slurm array
   (one shard per node, local workers inside it) and with Ray (one task per core). The assumptions are printed
   with the table and kept in the JSON: a clip costs what a synthetic clip of the same length costs per second
   of video here (LRS3 is 224 px video, these clips --size px); every core of every node is as fast as one of
   this machine's and keeps the parallel efficiency measured here with 2 workers; shared storage is never the
   bottleneck; clip lengths are all the mean length; shards are the real hash of LRS3-like clip names, so the
   slowest shard (most clips) decides when a run ends.

Prints tables and writes scale.json (the README's figures are the fields of "summary").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common

LOCAL_SCRIPT = """
import json, sys, time
from geneface.corpus import prepare_corpus
root, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
s = prepare_corpus(root, out, workers=workers, progress=False)
s["wall"] = time.perf_counter() - start
print("RESULT " + json.dumps(s))
"""

RAY_SCRIPT = """
import json, sys, time
import ray
from geneface.corpus import prepare_corpus_on_ray
root, out, cpus = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
started = time.perf_counter()
s = prepare_corpus_on_ray(root, out, progress=False)
s["wall"] = time.perf_counter() - started
s["cluster_start"] = started - start
stop = time.perf_counter()
ray.shutdown()
s["cluster_stop"] = time.perf_counter() - stop
print("RESULT " + json.dumps(s))
"""


def run_engine(name: str, clips: Path, out: Path, cpus: int) -> dict:
    """One preparation from scratch in a fresh process; its wall time and the work inside its clips."""
    from geneface.corpus import Corpus

    shutil.rmtree(out, ignore_errors=True)
    script = RAY_SCRIPT if name == "ray" else LOCAL_SCRIPT
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(f"-- {name} ({cpus} {'CPUs' if name == 'ray' else 'workers'})", flush=True)
    result = subprocess.run([sys.executable, "-c", script, str(clips), str(out), str(cpus)], capture_output=True,
                            text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    s = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))[7:])
    corpus = Corpus(out)
    records = list(corpus.records.values())
    corpus.close()
    n = len(records)
    inside = sum(r.get("prepare_seconds", 0.0) for r in records)
    video = sum(r.get("seconds", 0.0) for r in records)
    wall = s["wall"]
    return {"engine": name, "cpus": cpus, "clips": n, "ok": s["prepared"]["ok"], "frames": s["frames"],
            "video_seconds": round(video, 2), "wall_s": round(wall, 2), "clips_per_minute": round(60 * n / wall, 1),
            "clip_seconds_mean": round(inside / n, 4), "clip_cost_per_video_second": round(inside / video, 4),
            "overhead_s": round(wall - inside / cpus, 2), "tasks": s.get("tasks"),
            "cluster_start_s": round(s["cluster_start"], 2) if "cluster_start" in s else None,
            "cluster_stop_s": round(s["cluster_stop"], 2) if "cluster_stop" in s else None}


def largest_shard(clips: int, shards: int) -> int:
    """Clips in the fullest of ``shards`` hash shards of ``clips`` LRS3-like names (speaker folder/clip id)."""
    from geneface.corpus import shard_of

    if shards <= 1:
        return clips
    sizes = [0] * shards
    for i in range(clips):
        sizes[shard_of(f"spk{i // 30:05d}/{i % 30:05d}.mp4", shards)] += 1  # ~30 clips per speaker, as in LRS3
    return max(sizes)


def project(runs: dict[str, dict], args) -> tuple[list[dict], dict]:
    """Hours to prepare LRS3 on each of ``args.nodes`` node counts, by Slurm array and by Ray."""
    one, two, ray = runs["local_1"], runs["local_2"], runs["ray"]
    mean_clip_s = args.lrs3_hours * 3600 / args.lrs3_clips
    cost = one["clip_cost_per_video_second"] * mean_clip_s  # CPU seconds of one LRS3 clip on one core
    efficiency = min(1.0, one["wall_s"] / two["wall_s"] / 2)  # of 2 workers on this machine's 2 cores
    ray_per_clip = max(0.0, (ray["wall_s"] - two["wall_s"]) / ray["clips"])  # Ray's cost per clip beyond workers'
    local_start = max(0.0, two["overhead_s"])  # starting the worker processes of one node, handing out clips
    ray_start = (ray["cluster_start_s"] or 0.0) + max(0.0, ray["overhead_s"])
    c = args.cores_per_node
    rows = []
    for n in args.nodes:
        shard_slurm = largest_shard(args.lrs3_clips, n)
        shard_ray = largest_shard(args.lrs3_clips, n * c)
        slurm_h = (shard_slurm * cost / (c * efficiency) + local_start) / 3600
        ray_h = (shard_ray * (cost / efficiency + ray_per_clip) + ray_start) / 3600
        rows.append({"nodes": n, "cores": n * c, "slurm_largest_shard_clips": shard_slurm,
                     "slurm_hours": round(slurm_h, 2), "ray_tasks": n * c, "ray_largest_task_clips": shard_ray,
                     "ray_hours": round(ray_h, 2), "ideal_hours": round(args.lrs3_clips * cost / (n * c) / 3600, 2)})
    model = {"lrs3_clips": args.lrs3_clips, "lrs3_hours": args.lrs3_hours, "mean_clip_seconds": round(mean_clip_s, 2),
             "clip_cpu_seconds": round(cost, 3), "total_cpu_hours": round(args.lrs3_clips * cost / 3600, 1),
             "parallel_efficiency": round(efficiency, 3), "ray_seconds_per_clip": round(ray_per_clip, 4),
             "node_start_seconds": round(local_start, 2), "ray_start_seconds": round(ray_start, 2),
             "cores_per_node": c,
             "assumptions": [
                 "an LRS3 clip costs what a synthetic clip costs per second of video here (one core, "
                 f"{args.size} px video, mel features, track size 256)",
                 f"every clip is {mean_clip_s:.1f} s long ({args.lrs3_hours} h over {args.lrs3_clips} clips)",
                 f"every core is as fast as one of this machine's and keeps the efficiency of 2 workers on 2 cores "
                 f"here ({efficiency:.2f})",
                 "shared storage keeps up (reading the videos, appending the packs) and is not counted",
                 "Slurm array: one shard per node, its --workers one per core, clips handed out one at a time "
                 "inside the node; the node with the most clips decides",
                 "Ray: one task per core, each a hash shard; the task with the most clips decides; Ray's cost per "
                 "clip beyond plain workers and its start (cluster and workers) as measured here on a local cluster",
                 "nobody fails: a crashed clip or a lost node adds its redone work"]}
    return rows, model


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--speakers", type=int, default=12, help="speakers in the synthetic corpus")
    ap.add_argument("--clips", type=int, default=5, help="clips per speaker")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of a clip")
    ap.add_argument("--size", type=int, default=256, help="frame side of the synthetic clips")
    ap.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray cluster (and workers of the "
                                                             "local run it is compared with)")
    ap.add_argument("--lrs3-clips", type=int, default=150_000, help="clips of the projected corpus")
    ap.add_argument("--lrs3-hours", type=float, default=400.0, help="hours of video of the projected corpus")
    ap.add_argument("--cores-per-node", type=int, default=32, help="cores of a node in the projection")
    ap.add_argument("--nodes", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4, 16, 64],
                    help="node counts of the projection, comma separated")
    common.add_common_args(ap, "scale")
    args = ap.parse_args()
    if args.quick:
        args.speakers, args.clips, args.seconds = 2, 2, 1.6

    from geneface.synth.corpus import make_corpus

    machine = common.machine_info()
    cache = common.Cache(args)
    work = Path(args.work)
    print(f"== synthetic corpus ({args.speakers} speakers x {args.clips} clips x {args.seconds:g} s, {args.size} px)",
          flush=True)

    def synth_corpus(folder: Path) -> dict:
        start = time.perf_counter()
        make_corpus(folder / "clips", speakers=args.speakers, clips_per_speaker=args.clips, seconds=args.seconds,
                    size=args.size, seed=0, workers=2)
        return {"seconds": round(time.perf_counter() - start, 1)}

    corpus_dir, synth = cache.step("corpus_clips", synth_corpus)
    clips = corpus_dir / "clips"

    print("== preparation, each from scratch in a fresh process", flush=True)
    runs = {"local_1": run_engine("local", clips, work / "prepared_local_1", 1),
            "local_2": run_engine("local", clips, work / "prepared_local_2", args.ray_cpus),
            "ray": run_engine("ray", clips, work / "prepared_ray", args.ray_cpus)}
    one, two, ray = runs["local_1"], runs["local_2"], runs["ray"]
    ray_overhead = {"extra_wall_s": round(ray["wall_s"] - two["wall_s"], 2),
                    "extra_seconds_per_clip": round((ray["wall_s"] - two["wall_s"]) / ray["clips"], 4),
                    "extra_percent": round(100 * (ray["wall_s"] / two["wall_s"] - 1), 1),
                    "cluster_start_s": ray["cluster_start_s"], "cluster_stop_s": ray["cluster_stop_s"]}
    rows, model = project(runs, args)

    summary = {
        "local_1_worker_clips_per_minute": one["clips_per_minute"],
        "local_1_worker_clip_seconds": one["clip_seconds_mean"],
        "local_1_worker_cost_per_video_second": one["clip_cost_per_video_second"],
        "local_2_workers_clips_per_minute": two["clips_per_minute"],
        "local_2_workers_clip_seconds": two["clip_seconds_mean"],
        "ray_clips_per_minute": ray["clips_per_minute"],
        "ray_clip_seconds": ray["clip_seconds_mean"],
        "ray_extra_percent_vs_2_workers": ray_overhead["extra_percent"],
        "ray_extra_seconds_per_clip": ray_overhead["extra_seconds_per_clip"],
        "ray_cluster_start_seconds": ray_overhead["cluster_start_s"],
        "lrs3_total_cpu_hours": model["total_cpu_hours"],
        **{f"lrs3_{r['nodes']}_nodes_slurm_hours": r["slurm_hours"] for r in rows},
        **{f"lrs3_{r['nodes']}_nodes_ray_hours": r["ray_hours"] for r in rows},
    }

    common.print_table(
        ["engine", "CPUs", "clips", "wall s", "clips/min", "s/clip inside", "s per video s", "overhead s"],
        [(f"{r['engine']}" + (f" ({r['tasks']} tasks)" if r["engine"] == "ray" else ""), r["cpus"], r["clips"],
          r["wall_s"], r["clips_per_minute"], r["clip_seconds_mean"], r["clip_cost_per_video_second"],
          r["overhead_s"]) for r in runs.values()],
        title=f"corpus preparation: {args.speakers} speakers x {args.clips} clips x {args.seconds:g} s at {args.size} px "
              f"(synthesised in {synth['seconds']:.0f} s{', reused' if cache.reused('corpus_clips') else ''}); "
              f"{machine['cpu_count']} CPUs", digits=2)
    print(f"Ray against {args.ray_cpus} local workers on the same clips: {ray_overhead['extra_wall_s']:+.1f} s "
          f"({ray_overhead['extra_percent']:+.0f}%, {ray_overhead['extra_seconds_per_clip']:+.3f} s per clip), plus "
          f"{ray_overhead['cluster_start_s']:.1f} s to start a local cluster and {ray_overhead['cluster_stop_s']:.1f} s "
          f"to stop it")
    common.print_table(
        ["nodes", "cores", "Slurm: largest shard", "Slurm h", "Ray: largest task", "Ray h", "ideal h"],
        [(r["nodes"], r["cores"], r["slurm_largest_shard_clips"], r["slurm_hours"], r["ray_largest_task_clips"],
          r["ray_hours"], r["ideal_hours"]) for r in rows],
        title=f"projection: LRS3 ({args.lrs3_clips} clips, {args.lrs3_hours:g} h, {model['mean_clip_seconds']} s per "
              f"clip; {model['clip_cpu_seconds']:.1f} CPU s per clip, {model['total_cpu_hours']:.0f} CPU hours) on "
              f"nodes of {args.cores_per_node} cores", digits=2)
    print("assumptions:\n" + "\n".join(f"  - {a}" for a in model["assumptions"]))
    common.print_summary(summary)
    common.write_result("scale", args, machine, summary, {
        "synth": {"seconds": synth["seconds"], "reused": cache.reused("corpus_clips")},
        "runs": runs, "ray_overhead": ray_overhead, "projection": {"model": model, "rows": rows}}, cache)


if __name__ == "__main__":
    main()
