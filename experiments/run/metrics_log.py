"""What a run writes as it trains: metrics.jsonl, TensorBoard (clu) and a progress line per log
interval, with the throughput of each interval (evaluation time left out)."""

import contextlib
import functools
import json
import os
import time

import jax
import numpy as np
from absl import logging
from clu import metric_writers


class MetricsLog:
  def __init__(self, workdir: str, num_steps: int, start_step: int, wall_before: float):
    self.primary = jax.process_index() == 0
    # TensorBoard only: the progress and eval lines are the loop's own (one line per interval)
    writers = [metric_writers.SummaryWriter(workdir)] if self.primary else []
    self.writer = metric_writers.MultiWriter(writers)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.num_steps = num_steps
    self.wall_start, self.wall_before = time.time(), wall_before
    self.train_metrics = []
    self.window_start, self.window_steps, self.window_paused = time.perf_counter(), 0, 0.0
    self.window_tokens = 0
    self.train_seconds, self.steps_timed, self.tokens_timed = 0.0, 0, 0
    self.window_rates: list[float] = []  # steps/s of each log interval
    if self.primary and os.path.exists(self.path):
      self._drop_after(start_step)

  def wall_seconds(self) -> float:
    """Training wall time of the run, across its restarts."""
    return self.wall_before + time.time() - self.wall_start

  def _drop_after(self, step: int) -> None:
    """Forgets records past the step a run resumes from (written before a crash; redone now)."""
    with open(self.path, errors="replace") as f:
      lines = f.readlines()
    kept, unreadable = [], 0
    for line in lines:
      try:
        if json.loads(line)["step"] <= step:
          kept.append(line)
      except (ValueError, KeyError, TypeError, IndexError):  # cut short by a crash, or garbled
        unreadable += 1
    if unreadable:
      logging.warning("%s: %d unreadable line(s) dropped", self.path, unreadable)
    if len(kept) != len(lines):
      with open(self.path + ".tmp", "w") as f:
        f.writelines(kept)
      os.replace(self.path + ".tmp", self.path)

  def add(self, metrics, tokens: int) -> None:
    """A train step's metrics, kept on the device as they are (merging them would dispatch
    small programs every step): merged and read at the next log step; `tokens` in its batch
    (padding included; batches of length buckets differ)."""
    self.train_metrics.append(metrics)
    self.window_steps += 1
    self.window_tokens += tokens

  def write(self, step: int, scalars: dict[str, float]) -> None:
    self.writer.write_scalars(step, scalars)
    if self.primary:
      with open(self.path, "a") as f:
        f.write(
          json.dumps({"step": step, "wall_seconds": round(self.wall_seconds(), 3), **scalars})
        )
        f.write("\n")

  def write_train(self, step: int, state, extra: dict[str, float] | None = None) -> None:
    """Ends a log interval: its mean train metrics, steps/s and tokens/s (and `extra` scalars,
    e.g. the learning rate), and a progress line."""
    jax.block_until_ready(state)
    elapsed = self.window_paused + time.perf_counter() - self.window_start
    self.train_seconds += elapsed
    self.steps_timed += self.window_steps
    self.tokens_timed += self.window_tokens
    rate = self.window_steps / elapsed
    self.window_rates.append(rate)
    merged = functools.reduce(lambda a, b: a.merge(b), self.train_metrics)
    scalars = {f"train/{k}": float(v) for k, v in merged.compute().items()}
    scalars |= {"train/steps_per_sec": rate, "train/tokens_per_sec": self.window_tokens / elapsed}
    scalars |= extra or {}
    self.write(step, scalars)
    eta = (self.num_steps - step) / max(rate, 1e-9)
    logging.info(
      "step %d/%d  loss %.4f  %.1f steps/s  %.0f tokens/s  ETA %dm%02ds",
      step, self.num_steps, scalars["train/loss"], rate, scalars["train/tokens_per_sec"],
      eta // 60, eta % 60,
    )  # fmt: skip
    self.train_metrics = []
    self.window_start, self.window_steps, self.window_paused = time.perf_counter(), 0, 0.0
    self.window_tokens = 0

  @contextlib.contextmanager
  def clock_stopped(self):
    """Time spent inside (evaluation, checkpoints of the best) is not training time."""
    self.window_paused += time.perf_counter() - self.window_start
    try:
      yield
    finally:
      self.window_start = time.perf_counter()

  def throughput(self) -> dict[str, float | None]:
    seconds = self.train_seconds
    return {
      "steps_per_sec": self.steps_timed / seconds if seconds else None,
      "tokens_per_sec": self.tokens_timed / seconds if seconds else None,
      # the median log interval after the first: timings that do not include warm-up
      "steady_steps_per_sec": float(np.median(self.window_rates[1:] or self.window_rates))
      if self.window_rates
      else None,
    }

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.writer.flush()
    self.writer.close()
