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

from ..device import memory_errors
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

    def due(self, step: int) -> bool:
        return bool((self.every and step % self.every == 0) or
                    (self.seconds and time.perf_counter() - self._last >= self.seconds))

    def maybe(self, step: int) -> None:
        if self.due(step):
            self._last = time.perf_counter()
            self.fn(step)


@dataclass
class Plateau:
    """Watches a stage's validation score and says when it stopped improving (early stopping).

    A check improves on the best so far when it beats it by more than ``min_delta`` times its size; after
    ``patience`` checks in a row without one, `stalled` is true. ``history`` ([step, score] pairs) is what a
    checkpoint keeps, so that a resumed run decides as the uninterrupted one would.
    """

    patience: int
    """Checks without an improvement before the stage stops (0: never)."""
    min_delta: float = 0.0
    """Smallest relative improvement that counts."""
    higher_is_better: bool = False
    """Whether larger scores are better (AUC) rather than smaller (a distance)."""
    history: list[list[float]] = field(default_factory=list)
    """``[step, score]`` of every check so far."""

    def add(self, step: int, score: float) -> bool:
        """Record a check; whether it is the new best."""
        best = self.best
        self.history.append([int(step), float(score)])
        return best is None or self._better(score, best[1])

    @property
    def best(self) -> tuple[int, float] | None:
        """(step, score) of the best check so far (the earliest of equals), None before any."""
        best = None
        for step, score in self.history:
            if best is None or self._better(score, best[1]):
                best = (int(step), score)
        return best

    @property
    def stalled(self) -> bool:
        if not self.patience or not self.history:
            return False
        best_step = self.best[0]
        return sum(step > best_step for step, _ in self.history) >= self.patience

    def _better(self, score: float, best: float) -> bool:
        if not math.isfinite(score):
            return False
        margin = self.min_delta * abs(best)
        return score > best + margin if self.higher_is_better else score < best - margin


class Trainer:
    """Runs steps for a model that owns its losses.

    Each `fit` call runs one stage (SyncNet, generator, head, ...). The losses stay on the device until the
    end of each ``log_every`` steps and before every checkpoint, so a GPU never waits for the host between
    steps; then they are averaged over the ranks in one exchange and checked step by step (a non-finite one
    raises `TrainingError` naming its step, and the last good checkpoint, saved only after a check, is kept).
    Their means are logged every ``log_every`` steps to ``RUN/train_log.jsonl`` (and TensorBoard scalars when asked
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
        self.stopped_at: int | None = None
        """The step at which the last `fit` was stopped early (its ``stop``), or None."""
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
            base: int = 0, save_at_end: bool = True, stop: Callable[[int], str | None] | None = None
            ) -> dict[str, float]:
        """Run steps ``start .. total - 1`` of ``stage`` (step numbers after a step are ``i + 1``; ``base`` is the
        stage's first step number, for the progress bar); returns the mean losses of the last log interval.
        ``save_at_end``: also checkpoint after the last step (the caller may save a state of its own there).
        ``stop(step)``, asked after each step's callbacks, ends the stage early when it returns a reason (logged;
        `stopped_at` is then that step, else None)."""
        self.stopped_at = None
        if start >= total:
            return {}
        bar = tqdm(total=total - base, initial=start - base, desc=stage, unit="step", disable=not self.progress,
                   dynamic_ncols=True, leave=True)
        saves = [Callback(checkpoint, every=save_every, seconds=save_seconds)] if checkpoint is not None else []
        pending: list[dict[str, torch.Tensor]] = []  # losses of the steps not yet checked, on the device
        checked: list[dict[str, float]] = []  # losses of the log interval's steps checked so far
        mean: dict[str, float] = {}
        done = start

        def check() -> None:
            if pending:
                t0 = time.perf_counter()
                checked.extend(self._check(pending, stage, done - len(pending)))
                self.train_seconds += time.perf_counter() - t0
                pending.clear()

        try:
            with memory_errors(self.dist.device, f"in {stage} training", self.memory_hint):
                for i in range(start, total):
                    t0 = time.perf_counter()
                    losses = step_fn(i)
                    self.train_seconds += time.perf_counter() - t0
                    if pending and losses.keys() != pending[0].keys():  # the stage's losses changed
                        check()
                    pending.append({k: v.detach() for k, v in losses.items()})
                    done = i + 1
                    bar.update(1)
                    due = [cb for cb in saves if cb.due(done)]
                    if due:
                        check()
                    if done % self.log_every == 0 or done == total:
                        check()
                        keys = checked[-1].keys()  # those of the latest steps, when they changed in the interval
                        rows = [r for r in checked if r.keys() == keys]
                        mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
                        checked.clear()
                        self._log(stage, done, mean)
                        bar.set_postfix_str(status(mean) if status else
                                            ", ".join(f"{k} {v:.4g}" for k, v in mean.items()), refresh=False)
                    for cb in callbacks:
                        cb.maybe(done)
                    for cb in due:
                        cb.maybe(done)
                    reason = stop(done) if stop is not None and done < total else None
                    if reason:
                        check()
                        self.stopped_at = done
                        if self.dist.main:
                            log.info(f"{stage}: stopped at step {done} of {total}: {reason}")
                        break
        except KeyboardInterrupt:
            check()  # never save weights that diverged
            if checkpoint is not None and done > start:
                checkpoint(done)
            raise
        finally:
            bar.close()
        if checkpoint is not None and save_at_end and not (save_every and done % save_every == 0):
            checkpoint(done)
        return mean

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # --- internals --------------------------------------------------------------------------------------
    def _check(self, steps: list[dict[str, torch.Tensor]], stage: str, first: int) -> list[dict[str, float]]:
        """The losses of consecutive steps (``first`` is the number of steps done before them), averaged over
        the ranks in one exchange, as floats; `TrainingError` at the first step with a non-finite one."""
        keys = list(steps[0])
        if not keys:
            return [{} for _ in steps]
        table = torch.stack([torch.stack([s[k].float().reshape(()) for k in keys]) for s in steps])  # [n, K]
        rows = [dict(zip(keys, r)) for r in self.dist.mean(table).tolist()]
        for n, values in enumerate(rows):
            bad = [k.replace("_", " ") for k, v in values.items() if not math.isfinite(v)]
            if bad:
                saved = self.run.last_checkpoint()
                kept = (f"; the last good checkpoint ({saved}) is kept in {self.run.state_dir}" if saved else
                        "; no checkpoint was saved yet")
                hint = self.lr_hint[:1].upper() + self.lr_hint[1:]
                raise TrainingError(f"{stage} training diverged at step {first + n + 1}: {', '.join(bad)} not "
                                    f"finite{kept}. {hint} and rerun to resume")
        return rows

    def _log(self, stage: str, step: int, values: dict[str, float]) -> None:
        if not self.dist.main:
            return
        self.run.root.mkdir(parents=True, exist_ok=True)
        with open(self.run.root / "train_log.jsonl", "a") as f:
            f.write(json.dumps({"stage": stage, "step": step, **{k: round(v, 6) for k, v in values.items()}}) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{stage}/{k}", v, step)
