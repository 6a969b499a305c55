"""Benchmark corpus preparation past one process: local workers against the Ray engine on the same clips, and
a projection of preparing LRS3 (about 150 000 clips, 400+ hours) on N nodes.

    python benchmarks/scale.py [--speakers 12] [--clips 5] [--seconds 4] [--size 256] [--ray-cpus 2]
                               [--lrs3-clips 150000] [--lrs3-hours 400] [--cores-per-node 32]
                               [--nodes 1,4,16,64] [--work bench_out/scale] [--out DIR] [--fresh] [--quick]

1. A synthetic many-speaker corpus (`geneface.synth.corpus.make_corpus`, cached) is prepared from scratch by
   `prepare_corpus` with 1 and with 2 worker processes, and by `prepare_corpus_on_ray` on a local Ray cluster of
   --ray-cpus CPUs, each engine in a fresh process and always timed anew. The Ray process starts the cluster
   (timed), prepares the clips twice into two folders (the first run starts Ray's worker processes, the second
   finds them warm) and stops the cluster (timed). From each run's manifests: the work inside the clips (each
   record's ``prepare_seconds``; its median per second of video is the steady cost, free of the first clip's
   model loading) and each worker's or task's busy time (its pack's clips); the rest of the wall time is the
   engine's overhead (starting worker processes, handing out clips, reporting them).
2. Ray's overhead against plain workers on the same clips: wall times, the cluster's start and stop, its
   workers' start (first run less second run), and its cost per clip (second run less its busiest task's work,
   over that task's clips).
3. A projection for LRS3 from those measurements, for N nodes of --cores-per-node cores, with a Slurm array
   (one shard per node, local workers inside it) and with Ray (one task per core). The assumptions are printed
   with the table and kept in the JSON: a clip costs what a synthetic clip costs per second of video here with
   every core busy (LRS3 is 224 px video, these clips --size px); every core is as fast as one of this
   machine's; shared storage is never the bottleneck; clip lengths are all the mean length; shards are the
   real hash of LRS3-like clip names, so the fullest shard decides when a run ends.

Prints tables and writes scale.json (the README's figures are the fields of "summary").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
warm = time.perf_counter()
w = prepare_corpus_on_ray(root, out + "_warm", progress=False)
s["warm_wall"] = time.perf_counter() - warm
s["cluster_start"] = started - start
stop = time.perf_counter()
ray.shutdown()
s["cluster_stop"] = time.perf_counter() - stop
print("RESULT " + json.dumps(s))
"""


def corpus_facts(out: Path) -> dict:
    """From a prepared corpus's manifests: clips, video seconds, the work inside the clips (sum, and the median
    per video second) and the busiest pack's (worker's or task's) work and clips."""
    import numpy as np

    from geneface.corpus import Corpus

    corpus = Corpus(out)
    records = [r for r in corpus.records.values() if r["status"] == "ok"]
    corpus.close()
    busy: dict[str, list[float]] = {}
    for r in records:
        busy.setdefault(r["pack"], []).append(r["prepare_seconds"])
    pack = max(busy, key=lambda k: sum(busy[k]))
    return {"clips": len(records), "video_seconds": round(sum(r["seconds"] for r in records), 2),
            "inside_s": round(sum(r["prepare_seconds"] for r in records), 3),
            "cost_per_video_second": round(float(np.median([r["prepare_seconds"] / r["seconds"] for r in records])), 4),
            "packs": len(busy), "busiest_pack_s": round(sum(busy[pack]), 3), "busiest_pack_clips": len(busy[pack])}


def run_engine(name: str, clips: Path, out: Path, cpus: int) -> dict:
    """One preparation from scratch in a fresh process (Ray: two, the second on warm workers): wall times, what
    the manifests say, and the overhead (wall time less the busiest worker's or task's work)."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(f"{out}_warm", ignore_errors=True)
    script = RAY_SCRIPT if name == "ray" else LOCAL_SCRIPT
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(f"-- {name} ({cpus} {'CPUs' if name == 'ray' else 'workers'})", flush=True)
    result = subprocess.run([sys.executable, "-c", script, str(clips), str(out), str(cpus)], capture_output=True,
                            text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    s = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))[7:])
    facts = corpus_facts(out)
    wall = s["wall"]
    row = {"engine": name, "cpus": cpus, **facts, "frames": s["frames"], "wall_s": round(wall, 2),
           "clips_per_minute": round(60 * facts["clips"] / wall, 1),
           "clip_seconds_mean": round(facts["inside_s"] / facts["clips"], 4),
           "overhead_s": round(wall - facts["busiest_pack_s"], 2), "tasks": s.get("tasks")}
    if name == "ray":
        warm = corpus_facts(Path(f"{out}_warm"))
        row.update(warm_wall_s=round(s["warm_wall"], 2), warm_overhead_s=round(s["warm_wall"] - warm["busiest_pack_s"], 2),
                   warm_busiest_task_clips=warm["busiest_pack_clips"], cluster_start_s=round(s["cluster_start"], 2),
                   cluster_stop_s=round(s["cluster_stop"], 2))
    return row


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
    two, ray = runs["local_2"], runs["ray"]
    mean_clip_s = args.lrs3_hours * 3600 / args.lrs3_clips
    cost = two["cost_per_video_second"] * mean_clip_s  # CPU seconds of one LRS3 clip, every core busy
    node_start = max(0.0, two["overhead_s"])  # a node's worker processes starting, clips handed out
    ray_start = ray["cluster_start_s"] + max(0.0, ray["wall_s"] - ray["warm_wall_s"])  # cluster, then its workers
    ray_per_clip = max(0.0, ray["warm_overhead_s"] / ray["warm_busiest_task_clips"])
    c = args.cores_per_node
    rows = []
    for n in args.nodes:
        shard_slurm = largest_shard(args.lrs3_clips, n)
        shard_ray = largest_shard(args.lrs3_clips, n * c)
        rows.append({"nodes": n, "cores": n * c, "slurm_largest_shard_clips": shard_slurm,
                     "slurm_hours": round((shard_slurm * cost / c + node_start) / 3600, 2),
                     "ray_tasks": n * c, "ray_largest_task_clips": shard_ray,
                     "ray_hours": round((shard_ray * (cost + ray_per_clip) + ray_start) / 3600, 2),
                     "ideal_hours": round(args.lrs3_clips * cost / (n * c) / 3600, 2)})
    model = {"lrs3_clips": args.lrs3_clips, "lrs3_hours": args.lrs3_hours, "mean_clip_seconds": round(mean_clip_s, 2),
             "clip_cpu_seconds": round(cost, 3), "total_cpu_hours": round(args.lrs3_clips * cost / 3600, 1),
             "node_start_seconds": round(node_start, 2), "ray_start_seconds": round(ray_start, 2),
             "ray_seconds_per_clip": round(ray_per_clip, 4), "cores_per_node": c,
             "assumptions": [
                 "an LRS3 clip costs what a synthetic clip costs per second of video here with every core busy "
                 f"(median of the {args.ray_cpus}-worker run; {args.size} px video, mel features, track size 256)",
                 f"every clip is {mean_clip_s:.1f} s long ({args.lrs3_hours:g} h over {args.lrs3_clips} clips)",
                 "every core is as fast as one of this machine's, with all its neighbours busy",
                 "shared storage keeps up (reading the videos, appending the packs) and is not counted",
                 "Slurm array: one shard per node, its --workers one per core, clips handed out one at a time "
                 "inside the node; the node with the most clips decides; plus the workers' start measured here",
                 "Ray: one task per core, each a hash shard; the task with the most clips decides; plus Ray's cost "
                 "per clip (reports, scheduling) and its start (cluster, then workers) measured on a local cluster",
                 "nothing fails: a crashed clip or a lost node adds the work redone"]}
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

    machine = common.machine_info()
    cache = common.Cache(args)
    work = Path(args.work)
    clips, synth = common.synth_corpus(cache, args, workers=2)

    print("== preparation, each from scratch in a fresh process", flush=True)
    runs = {"local_1": run_engine("local", clips, work / "prepared_local_1", 1),
            "local_2": run_engine("local", clips, work / "prepared_local_2", args.ray_cpus),
            "ray": run_engine("ray", clips, work / "prepared_ray", args.ray_cpus)}
    one, two, ray = runs["local_1"], runs["local_2"], runs["ray"]
    ray_overhead = {"cold_extra_s": round(ray["wall_s"] - two["wall_s"], 2),
                    "cold_extra_percent": round(100 * (ray["wall_s"] / two["wall_s"] - 1), 1),
                    "warm_extra_s": round(ray["warm_wall_s"] - two["wall_s"], 2),
                    "warm_extra_percent": round(100 * (ray["warm_wall_s"] / two["wall_s"] - 1), 1),
                    "workers_start_s": round(ray["wall_s"] - ray["warm_wall_s"], 2),
                    "seconds_per_clip": round(ray["warm_overhead_s"] / ray["warm_busiest_task_clips"], 4),
                    "cluster_start_s": ray["cluster_start_s"], "cluster_stop_s": ray["cluster_stop_s"]}
    rows, model = project(runs, args)

    summary = {
        "local_1_worker_clips_per_minute": one["clips_per_minute"],
        "local_1_worker_cost_per_video_second": one["cost_per_video_second"],
        "local_2_workers_clips_per_minute": two["clips_per_minute"],
        "local_2_workers_cost_per_video_second": two["cost_per_video_second"],
        "local_2_workers_overhead_seconds": two["overhead_s"],
        "ray_clips_per_minute": ray["clips_per_minute"],
        "ray_cost_per_video_second": ray["cost_per_video_second"],
        "ray_cold_extra_percent_vs_2_workers": ray_overhead["cold_extra_percent"],
        "ray_warm_extra_percent_vs_2_workers": ray_overhead["warm_extra_percent"],
        "ray_seconds_per_clip": ray_overhead["seconds_per_clip"],
        "ray_workers_start_seconds": ray_overhead["workers_start_s"],
        "ray_cluster_start_seconds": ray_overhead["cluster_start_s"],
        "lrs3_clip_cpu_seconds": model["clip_cpu_seconds"],
        "lrs3_total_cpu_hours": model["total_cpu_hours"],
        **{f"lrs3_{r['nodes']}_nodes_slurm_hours": r["slurm_hours"] for r in rows},
        **{f"lrs3_{r['nodes']}_nodes_ray_hours": r["ray_hours"] for r in rows},
    }

    common.print_table(
        ["engine", "CPUs", "clips", "wall s", "clips/min", "s per video s", "busiest s", "overhead s"],
        [(r["engine"] + (f" ({r['tasks']} tasks)" if r["engine"] == "ray" else ""), r["cpus"], r["clips"], r["wall_s"],
          r["clips_per_minute"], r["cost_per_video_second"], r["busiest_pack_s"], r["overhead_s"])
         for r in runs.values()]
        + [("ray, warm workers", ray["cpus"], ray["clips"], ray["warm_wall_s"],
            round(60 * ray["clips"] / ray["warm_wall_s"], 1), None, None, ray["warm_overhead_s"])],
        title=f"corpus preparation: {args.speakers} speakers x {args.clips} clips x {args.seconds:g} s at {args.size} px "
              f"(synthesised in {synth['seconds']:.0f} s{', reused' if cache.reused('corpus_clips') else ''}); "
              f"{machine['cpu_count']} CPUs; s per video s: median work inside a clip; overhead: wall less the busiest "
              f"worker's or task's work", digits=2)
    print(f"Ray against {args.ray_cpus} local workers on the same clips: {ray_overhead['cold_extra_s']:+.1f} s "
          f"({ray_overhead['cold_extra_percent']:+.0f}%) with its workers starting, {ray_overhead['warm_extra_s']:+.1f} s "
          f"({ray_overhead['warm_extra_percent']:+.0f}%) on warm workers; {ray_overhead['seconds_per_clip']:.3f} s per "
          f"clip, {ray_overhead['workers_start_s']:.1f} s to start its workers, {ray_overhead['cluster_start_s']:.1f} s "
          f"to start a local cluster, {ray_overhead['cluster_stop_s']:.1f} s to stop it")
    common.print_table(
        ["nodes", "cores", "Slurm: largest shard", "Slurm h", "Ray: largest task", "Ray h", "ideal h"],
        [(r["nodes"], r["cores"], r["slurm_largest_shard_clips"], r["slurm_hours"], r["ray_largest_task_clips"],
          r["ray_hours"], r["ideal_hours"]) for r in rows],
        title=f"projection: LRS3 ({args.lrs3_clips} clips, {args.lrs3_hours:g} h, {model['mean_clip_seconds']} s per "
              f"clip; {model['clip_cpu_seconds']:.1f} CPU s per clip, {model['total_cpu_hours']:.0f} CPU hours) on "
              f"nodes of {args.cores_per_node} cores: hours until the last clip", digits=2)
    print("assumptions:\n" + "\n".join(f"  - {a}" for a in model["assumptions"]))
    common.print_summary(summary)
    common.write_result("scale", args, machine, summary, {
        "synth": {"seconds": synth["seconds"], "reused": cache.reused("corpus_clips")},
        "runs": runs, "ray_overhead": ray_overhead, "projection": {"model": model, "rows": rows}}, cache)


if __name__ == "__main__":
    main()
