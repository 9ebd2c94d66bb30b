"""orbax checkpoints: the last K for resuming plus the best by the main eval metric.

    DIR/checkpoints/latest/<step>/{state, meta}   every `checkpoint_every_steps` (and at exit)
    DIR/checkpoints/best/<step>/{state, meta}     the best eval so far

orbax writes each step into a temporary directory and renames it when complete, so a checkpoint
half-written when a process died is never listed, let alone loaded. A step that fails to restore
is renamed `damaged.<step>` and the next older one is used. `meta` holds the data
position (the next batch to read) and the best eval metrics seen so far.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class NoGoodCheckpointError(RuntimeError):
  pass


class Checkpoints:
  def __init__(self, workdir: str, keep: int, main_metric: str, mode: str):
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.latest = ocp.CheckpointManager(
      os.path.join(directory, "latest"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )
    self.best = ocp.CheckpointManager(
      os.path.join(directory, "best"),
      options=ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda m: m[main_metric], best_mode=mode, create=True
      ),
    )

  @staticmethod
  def _args(state, meta: dict[str, Any]) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

  def save(self, step: int, state, meta: dict[str, Any], force: bool = False) -> None:
    self.latest.save(step, args=self._args(state, meta), force=force)

  def save_best(self, step: int, state, meta: dict[str, Any], metrics: dict[str, float]) -> None:
    self.best.save(step, args=self._args(state, meta), metrics=metrics, force=True)

  def restore_best(self, abstract_state) -> Any | None:
    """The state of the best checkpoint, or None if there is none."""
    step = self.best.best_step()
    if step is None:
      return None
    restored = self.best.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
      ),
    )
    return restored["state"]

  def restore_latest(self, abstract_state) -> tuple[Any, dict[str, Any]] | None:
    """The newest checkpoint that restores; falls back past damaged ones with a warning.

    Returns None when there is no checkpoint at all; raises if there are some but none loads.
    """
    steps = sorted(self.latest.all_steps(), reverse=True)
    for step in steps:
      try:
        restored = self.latest.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
          ),
        )
        return restored["state"], restored["meta"]
      except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
        logging.warning("checkpoint at step %d is damaged (%s); trying an older one", step, e)
        self._set_aside(step)
    if steps:
      raise NoGoodCheckpointError(
        f"none of the checkpoints {steps} in {self.latest.directory} could be restored; "
        "refusing to start from scratch over them (use a new --workdir)"
      )
    return None

  def _set_aside(self, step: int) -> None:
    """Renames a damaged step to `damaged.<step>` (kept for inspection, never loaded again)."""
    if jax.process_index() == 0:
      directory = os.fspath(self.latest.directory)
      target, n = os.path.join(directory, f"damaged.{step}"), 1
      while os.path.exists(target):
        target, n = os.path.join(directory, f"damaged.{step}.{n}"), n + 1
      os.replace(os.path.join(directory, str(step)), target)
    multihost_utils.sync_global_devices(f"set aside damaged checkpoint {step}")
    self.latest.reload()

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    """Pending asynchronous saves complete even when training stops with an error."""
    self.wait()
    self.latest.close()
    self.best.close()
