"""The one step loop: progress bar, a log of the losses, the finite-loss check, callbacks and checkpoints."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from tqdm import tqdm

from ..errors import InputError
from .dist import Dist
from .run import RunFolder, TrainingError

log = logging.getLogger(__name__)

StepFn = Callable[[int], dict[str, torch.Tensor]]
"""Does training step ``i`` (forward, backward, optimizer step) and returns its losses (0-dim tensors; a
``grad_norm`` entry is checked like a loss)."""


@dataclass
class Callback:
    """``fn(step)`` after every ``every`` steps (counted from 0, as the step numbers passed to `Trainer.fit`),
    or every ``seconds`` of wall time; both 0: never."""

    fn: Callable[[int], None]
    every: int = 0
    seconds: float = 0.0
    _last: float = field(default_factory=time.perf_counter)

    def maybe(self, step: int) -> None:
        now = time.perf_counter()
        if (self.every and step % self.every == 0) or (self.seconds and now - self._last >= self.seconds):
            self._last = now
            self.fn(step)


class Trainer:
    """Runs steps for a model that owns its losses.

    Each `fit` call runs one stage (SyncNet, generator, head, ...): the losses are averaged over the ranks and
    checked every step (a non-finite one raises `TrainingError` and keeps the last good checkpoint), their
    means are logged every ``log_every`` steps to ``RUN/train_log.jsonl`` (and TensorBoard scalars when asked
    for and installed), callbacks run, and ``checkpoint(step)`` is called every ``save_every`` steps or
    ``save_seconds``, at the end, and when the user interrupts (Ctrl-C).
    """

    def __init__(self, run: RunFolder, dist: Dist | None = None, *, log_every: int = 10, tensorboard: bool = False,
                 progress: bool = True, lr_hint: str = "lower the learning rate (--lr)",
                 memory_hint: str = "use a smaller batch") -> None:
        self.run = run
        self.dist = dist or run.dist
        self.log_every = max(1, int(log_every))
        self.progress = progress and self.dist.main
        self.lr_hint = lr_hint
        self.memory_hint = memory_hint
        self.train_seconds = 0.0
        """Seconds spent inside training steps (callbacks and checkpoints excluded), over all stages."""
        self.writer = None
        if tensorboard and self.dist.main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("--tensorboard needs the tensorboard package (pip install tensorboard); logging to "
                            "train_log.jsonl only")
            else:
                self.writer = SummaryWriter(str(run.root / "tensorboard"))

    def fit(self, stage: str, start: int, total: int, step_fn: StepFn, *,
            checkpoint: Callable[[int], None] | None = None, save_every: int = 0, save_seconds: float = 0.0,
            callbacks: Sequence[Callback] = (), status: Callable[[dict[str, float]], str] | None = None,
            base: int = 0, save_at_end: bool = True) -> dict[str, float]:
        """Run steps ``start .. total - 1`` of ``stage`` (step numbers after a step are ``i + 1``; ``base`` is the
        stage's first step number, for the progress bar); returns the mean losses of the last log interval.
        ``save_at_end``: also checkpoint after the last step (the caller may save a state of its own there)."""
        if start >= total:
            return {}
        bar = tqdm(total=total - base, initial=start - base, desc=stage, unit="step", disable=not self.progress,
                   dynamic_ncols=True, leave=True)
        saves = [Callback(checkpoint, every=save_every, seconds=save_seconds)] if checkpoint is not None else []
        sums: dict[str, float] = {}
        count = 0
        mean: dict[str, float] = {}
        done = start
        try:
            for i in range(start, total):
                t0 = time.perf_counter()
                values = self._reduce(step_fn(i))
                self.train_seconds += time.perf_counter() - t0
                self._check_finite(values, stage, i)
                done = i + 1
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                bar.update(1)
                if done % self.log_every == 0 or done == total:
                    mean = {k: v / count for k, v in sums.items()}
                    self._log(stage, done, mean)
                    sums, count = {}, 0
                    bar.set_postfix_str(status(mean) if status else
                                        ", ".join(f"{k} {v:.4g}" for k, v in mean.items()), refresh=False)
                for cb in (*callbacks, *saves):
                    cb.maybe(done)
        except KeyboardInterrupt:
            if checkpoint is not None and done > start:
                checkpoint(done)
            raise
        except torch.cuda.OutOfMemoryError:
            raise InputError(f"out of memory on {self.dist.device.type} in {stage} training; "
                             f"{self.memory_hint}") from None
        except RuntimeError as e:
            if "can't allocate memory" in str(e) or "out of memory" in str(e):
                raise InputError(f"out of memory on {self.dist.device.type} in {stage} training; "
                                 f"{self.memory_hint}") from None
            raise
        finally:
            bar.close()
        if checkpoint is not None and save_at_end and not (save_every and total % save_every == 0):
            checkpoint(total)
        return mean

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # --- internals --------------------------------------------------------------------------------------
    def _reduce(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        keys = list(losses)
        if not keys:
            return {}
        values = self.dist.mean(torch.stack([losses[k].detach().float().reshape(()) for k in keys]))
        return dict(zip(keys, values.tolist()))

    def _check_finite(self, values: dict[str, float], stage: str, i: int) -> None:
        bad = [k.replace("_", " ") for k, v in values.items() if not math.isfinite(v)]
        if bad:
            saved = self.run.last_checkpoint()
            kept = (f"; the last good checkpoint ({saved}) is kept in {self.run.state_dir}" if saved else
                    "; no checkpoint was saved yet")
            hint = self.lr_hint[:1].upper() + self.lr_hint[1:]
            raise TrainingError(f"{stage} training diverged at step {i + 1}: {', '.join(bad)} not finite{kept}. "
                                f"{hint} and rerun to resume")

    def _log(self, stage: str, step: int, values: dict[str, float]) -> None:
        if not self.dist.main:
            return
        self.run.root.mkdir(parents=True, exist_ok=True)
        with open(self.run.root / "train_log.jsonl", "a") as f:
            f.write(json.dumps({"stage": stage, "step": step, **{k: round(v, 6) for k, v in values.items()}}) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{stage}/{k}", v, step)
