"""What every benchmark script shares: where results go, which code produced them, caching, JSON, tables.

Every result file written by `write_result` has the same top level::

    benchmark       the script's name ("process", "features", "render", "motion", "corpus")
    schema          version of this layout (2)
    written         UTC time the file was written
    quick           true for a smoke run (--quick); such files never go to benchmarks/results by default
    code            commit (git HEAD), dirty (uncommitted changes in the tree), dirty_paths, source_sha256
                    (of src/geneface/**/*.py when the run started), source_changed_during_run (then the
                    figures mix two versions: rerun), script_sha256 (of the script and this file)
    args            every command-line argument, after --quick has applied its sizes
    machine         cpu_count, torch, torch_threads, python, platform, processor, cuda, load averages
    cache           one entry per cached step: key, reused (true: built by an earlier run), built (time),
                    built_commit
    summary         the headline figures, flat, one field per figure (units in the names); the README
                    quotes these fields and nothing else
    ...             the script's detailed measurements

A cached step (a synthetic clip, a processed dataset, a trained model) lives in ``WORK/NAME-KEY/`` and is
reused only when its key matches: a hash of the step's name, EVERY argument of the run (except where
results and scratch files go, and --fresh), the package source (`source_sha256`), the benchmark script
and this file, and the torch version. Its stamp (``cache.json``) is written last, so an interrupted build is
never reused; building a step removes its folders that were built from other package source.
``--fresh`` rebuilds every cached step. Timings are never taken from the cache unless the
result says so next to the figure (``"reused": true``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import geneface  # noqa: F401  (sets OMP_WAIT_POLICY=PASSIVE before torch is imported)
from geneface.fileio import read_json, write_json
from geneface.logs import setup_logging

setup_logging()  # the package's notes (steps, SyncNet decisions, ...) on stderr, as the command line shows them

SCHEMA = 2
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PACKAGE_SRC = REPO / "src" / "geneface"
RESULTS = BENCH_DIR / "results"
RESULTS_ENV = "GENEFACE_BENCH_RESULTS"
"""Environment variable: a folder for the result files instead of benchmarks/results (like --out)."""
NOT_KEYED = ("out", "work", "fresh")
"""Arguments that do not change what a cached step holds."""


# --- which code ----------------------------------------------------------------------------------------

def _sha256_files(paths: Iterable[Path], root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def _source_hash_now() -> str:
    return _sha256_files((p for p in PACKAGE_SRC.rglob("*.py") if "__pycache__" not in p.parts), REPO)


@lru_cache(maxsize=None)
def source_hash() -> str:
    """SHA-256 of the package source: every ``src/geneface/**/*.py`` (relative path and bytes), as it was when
    the benchmark started (this module is imported first, before the package's modules)."""
    return _source_hash_now()


source_hash()


@lru_cache(maxsize=None)
def script_hash() -> str:
    """SHA-256 of the running benchmark script and of this file."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    files = {Path(__file__).resolve()} | ({Path(main).resolve()} if main else set())
    return _sha256_files(files, REPO)


def _git(*cmd: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def code_info() -> dict:
    """The commit, whether the working tree differs from it (and where), and the source hashes."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain")
    dirty_paths = [line[3:] for line in (status or "").splitlines() if line.strip()]
    return {"commit": commit.strip() if commit else None,
            "dirty": None if status is None else bool(dirty_paths),
            "dirty_paths": dirty_paths[:50],
            "source_sha256": source_hash(),
            "source_changed_during_run": _source_hash_now() != source_hash(),
            "script_sha256": script_hash()}


def machine_info() -> dict:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "python": platform.python_version(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_average_start": [round(x, 2) for x in load] if load else None}


def speed_index(steps: int = 120) -> float:
    """This machine's speed now: steps/s of a fixed small conv-net training step (1-D convolutions, batch 256,
    as in the motion models; about 3 s for the default ``steps`` on 2 cores) with the current threads. Recorded
    beside timed runs so that a slower hour can be told from a slower change."""
    import torch

    net = torch.nn.Sequential(torch.nn.Conv1d(80, 128, 3, padding=1), torch.nn.GELU(),
                              torch.nn.Conv1d(128, 128, 3, padding=1), torch.nn.GELU(), torch.nn.Conv1d(128, 64, 1))
    x = torch.randn(256, 80, 16, generator=torch.Generator().manual_seed(0))

    def step() -> None:
        net.zero_grad()
        net(x).square().mean().backward()

    step()  # warm-up: the first call allocates
    return 1.0 / time_calls(step, steps)["mean_s"]


# --- command line ----------------------------------------------------------------------------------------

def parser(doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_common_args(ap: argparse.ArgumentParser, name: str) -> None:
    """--out, --work, --fresh and --quick, the same in every script."""
    ap.add_argument("--out", type=Path, default=None,
                    help=f"folder for {name}.json (default: ${RESULTS_ENV} if set, else benchmarks/results; "
                         f"with --quick: WORK/quick-results)")
    ap.add_argument("--work", type=Path, default=Path("bench_out") / name,
                    help="scratch folder for clips, datasets and runs (cached steps are kept here)")
    ap.add_argument("--fresh", action="store_true", help="rebuild every cached step instead of reusing it")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run with tiny sizes (overrides the size and step options)")


def results_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    if args.quick:
        return Path(args.work) / "quick-results"
    return Path(os.environ[RESULTS_ENV]) if os.environ.get(RESULTS_ENV) else RESULTS


def args_dict(args: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())}


# --- cache ---------------------------------------------------------------------------------------------

def cache_key(name: str, args: argparse.Namespace) -> str:
    import torch

    fields = {k: v for k, v in args_dict(args).items() if k not in NOT_KEYED}
    blob = json.dumps({"step": name, "args": fields, "source": source_hash(), "script": script_hash(),
                       "torch": torch.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Cache:
    """Cached steps of one benchmark run, and the record of which were reused (the result's ``cache``)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.work)
        self.record: dict[str, dict] = {}

    def step(self, name: str, build: Callable[[Path], dict | None]) -> tuple[Path, dict]:
        """The folder of step ``name`` and the values its build returned, building it unless a finished
        build with the same key is there. ``build(folder)`` fills the (new, empty) folder."""
        key = cache_key(name, self.args)
        folder = self.work / f"{name}-{key[:12]}"
        stamp = folder / "cache.json"
        if not self.args.fresh and stamp.exists():
            info = read_json(stamp)
            if info.get("key") == key:
                print(f"[cache] {name}: reusing {folder} (built {info['built']})", flush=True)
                self.record[name] = {"key": key, "reused": True, "built": info["built"],
                                     "built_commit": info["code"].get("commit"), "folder": str(folder)}
                return folder, info.get("values", {})
        print(f"[cache] {name}: building {folder}", flush=True)
        self._prune(name)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        values = build(folder) or {}
        built, code = utc_now(), code_info()
        write_json(stamp, {"key": key, "step": name, "args": args_dict(self.args), "built": built,
                           "code": code, "values": values})
        self.record[name] = {"key": key, "reused": False, "built": built, "built_commit": code["commit"],
                             "folder": str(folder)}
        return folder, values

    def _prune(self, name: str) -> None:
        """Remove this step's folders built from other package source (they can no longer be reused), and
        unfinished ones; folders of other arguments with the same source are kept."""
        for old in self.work.glob(f"{name}-*"):
            stamp = old / "cache.json"
            try:
                stale = read_json(stamp)["code"]["source_sha256"] != source_hash() if stamp.exists() else True
            except (OSError, ValueError, KeyError, TypeError):
                stale = True
            if stale and old.is_dir() and len(old.name) == len(name) + 13:
                shutil.rmtree(old, ignore_errors=True)

    def reused(self, name: str) -> bool:
        return bool(self.record.get(name, {}).get("reused"))


# --- timing --------------------------------------------------------------------------------------------

def synth_corpus(cache: "Cache", args: argparse.Namespace, workers: int) -> tuple[Path, dict]:
    """The synthetic many-speaker corpus of ``args.speakers`` x ``args.clips`` clips of ``args.seconds`` s at
    ``args.size`` px (seed 0), made once per cache key: (its clips folder, {"seconds": time to make it})."""
    from geneface.synth.corpus import make_corpus

    print(f"== synthetic corpus ({args.speakers} speakers x {args.clips} clips x {args.seconds:g} s, {args.size} px)",
          flush=True)

    def make(folder: Path) -> dict:
        start = time.perf_counter()
        make_corpus(folder / "clips", speakers=args.speakers, clips_per_speaker=args.clips, seconds=args.seconds,
                    size=args.size, seed=0, workers=workers)
        return {"seconds": round(time.perf_counter() - start, 1)}

    folder, made = cache.step("corpus_clips", make)
    return folder / "clips", made


def time_calls(fn: Callable[[], Any], repeats: int) -> dict:
    """Seconds of ``repeats`` calls: mean (the figure to quote), min and max."""
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"mean_s": sum(times) / len(times), "min_s": min(times), "max_s": max(times), "runs": len(times)}


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- results -------------------------------------------------------------------------------------------

def _clean(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays to Python, NaN/inf to None, floats rounded to 6 significant digits."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _clean(value.tolist())
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(f"{value:.6g}")
    return value


def write_result(name: str, args: argparse.Namespace, machine: dict, summary: dict, details: dict,
                 cache: Cache | None = None) -> Path:
    """Write ``name.json`` (atomically) with code, args, machine, cache, summary and details; returns its path."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    machine = {**machine, "load_average_end": [round(x, 2) for x in load] if load else None}
    result = {"benchmark": name, "schema": SCHEMA, "written": utc_now(), "quick": bool(args.quick),
              "code": code_info(), "args": args_dict(args), "machine": machine,
              "cache": cache.record if cache is not None else {}, "summary": summary, **details}
    path = results_dir(args) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, _clean(result))
    code = result["code"]
    print(f"wrote {path} (commit {str(code['commit'])[:10]}{', dirty tree' if code['dirty'] else ''}, "
          f"source {code['source_sha256'][:12]})")
    if code["source_changed_during_run"]:
        print("warning: src/geneface changed while the benchmark ran; its figures may mix two versions: rerun it")
    return path


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None,
                digits: int = 2) -> None:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    cells = [[fmt(v, digits) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    print(line(list(headers)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print(line(r))


def print_summary(summary: dict, title: str = "summary (the fields the README quotes)") -> None:
    print_table(["field", "value"], [(k, v) for k, v in summary.items()], title=title, digits=3)
