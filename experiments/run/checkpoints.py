"""orbax checkpoints: the last K for resuming plus the best by the main eval metric.

    DIR/checkpoints/latest/<step>/{state, meta}   every `checkpoint_every_steps` (and at exit)
    DIR/checkpoints/best/<step>/{state, meta}     the best eval so far

`meta` holds the data position (the next batch to read), the best eval metrics seen so far and a
fingerprint of every array of the state (a position-weighted sum of its bits), checked on restore.

What can go wrong, and what happens:
* The process dies mid-save (kill -9, node failure, disk full): orbax writes each step into
  `<step>.orbax-checkpoint-tmp` and renames it when complete, so a half-written step is never
  listed, let alone loaded; closing the checkpoints and the next start delete leftovers (orbax's
  own `cleanup_tmp_directories` does that in a thread that `close()` does not wait for), and so
  does a second Ctrl-C before it exits (`preemption.on_abort`).
* A complete step was damaged later (truncated, bytes flipped, files lost): restoring it fails or
  its fingerprint differs. `restore_latest` warns naming the step, moves it to `damaged.<step>`
  (kept for inspection, never loaded again) and uses the next older one, then the best one.
* Nothing restores: `NoGoodCheckpointError`, and nothing is renamed; a workdir that holds
  checkpoints (or damaged ones) is never silently trained from scratch.
"""

import collections
import contextlib
import os
import shutil
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from experiments.run import preemption

DAMAGED_PREFIX = "damaged."
TMP_MARK = ocp.path.step.TMP_DIR_SUFFIX  # ".orbax-checkpoint-tmp": a step not finished yet


class NoGoodCheckpointError(RuntimeError):
  pass


def _late_write_callback(unraisable) -> bool:
  """A save that failed (disk full) leaves tensorstore writes running after orbax closed their
  event loop: each one's completion callback then fails with "Event loop is closed"."""
  error, tb = unraisable.exc_value, unraisable.exc_traceback
  if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
    return False
  while tb is not None and tb.tb_frame.f_code.co_name != "call_soon_threadsafe":
    tb = tb.tb_next
  return tb is not None


def _quiet_late_write_callbacks() -> None:
  """Drops those (printed as one traceback each, dozens after a disk-full save) for the rest of
  the process: they may come after the checkpoints are closed; the error itself is raised."""
  previous = sys.unraisablehook
  if getattr(previous, "quiets_late_write_callbacks", False):
    return

  def hook(unraisable):
    if not _late_write_callback(unraisable):
      previous(unraisable)

  hook.quiets_late_write_callbacks = True
  sys.unraisablehook = hook


def _leaf_fingerprint(x, xp=jnp):
  """uint32 sum of the array's bits, each element weighted by an odd number from its position:
  any change of one element changes it; independent of sharding (integer sums wrap exactly).
  `xp` is jax.numpy (jitted, for arrays spread over processes) or numpy (host arrays)."""
  if x.dtype == np.bool_:
    x = x.astype(np.uint8)
  unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]
  bits = x.view(unsigned).astype(np.uint32).reshape(-1)
  weights = xp.arange(bits.size, dtype=np.uint32) * np.uint32(0x9E3779B9) | np.uint32(1)
  return xp.sum(bits * weights, dtype=np.uint32)


@jax.jit
def _fingerprints(leaves) -> list[jax.Array]:
  return [_leaf_fingerprint(x) for x in leaves]


def _bits_array(x) -> jax.Array:
  x = jnp.asarray(x)
  return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def _on_host(x: jax.Array) -> bool:
  return x.is_fully_addressable and all(d.platform == "cpu" for d in x.devices())


def fingerprint(tree) -> list[int]:
  """One uint32 per array of `tree`. Arrays in this process's CPU memory are summed by numpy
  (nothing to compile); otherwise every process must call it: it runs a jitted reduction."""
  leaves = [_bits_array(x) for x in jax.tree.leaves(tree)]
  if all(_on_host(x) for x in leaves):
    return [int(_leaf_fingerprint(np.asarray(x), np)) for x in leaves]
  return [int(v) for v in jax.device_get(_fingerprints(leaves))]


def _short(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.max(multihost_utils.process_allgather(np.array(flag))))


class Checkpoints:
  def __init__(self, workdir: str, keep: int, main_metric: str, mode: str):
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.directories = [os.path.join(directory, name) for name in ("latest", "best")]
    self.primary = jax.process_index() == 0
    self._remove_unfinished()  # left by a process that died mid-save
    _quiet_late_write_callbacks()

    def barriers(name):  # distinct cross-process barrier names for the two managers
      return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)

    self.latest = ocp.CheckpointManager(
      os.path.join(directory, "latest"),
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, multiprocessing_options=barriers("latest")
      ),
    )
    self.best = ocp.CheckpointManager(
      os.path.join(directory, "best"),
      options=ocp.CheckpointManagerOptions(
        max_to_keep=1,
        best_fn=lambda m: m[main_metric],
        best_mode=mode,
        create=True,
        multiprocessing_options=barriers("best"),
      ),
    )

  @staticmethod
  def _args(state, meta: dict[str, Any]) -> ocp.args.Composite:
    meta = {**meta, "fingerprint": fingerprint(state)}
    return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

  def save(self, step: int, state, meta: dict[str, Any], force: bool = False) -> None:
    """Starts an asynchronous save; an error in it (e.g. disk full) is raised by the next save
    or on closing, and leaves only a temporary directory behind."""
    self.best.wait_until_finished()  # one manager's background work at a time
    self.latest.save(step, args=self._args(state, meta), force=force)

  def save_best(self, step: int, state, meta: dict[str, Any], metrics: dict[str, float]) -> None:
    self.latest.wait_until_finished()
    self.best.save(step, args=self._args(state, meta), metrics=metrics, force=True)

  def _restore(self, manager: ocp.CheckpointManager, step: int, abstract_state):
    """(state, meta) of one step; raises if it cannot be read or fails its fingerprint."""
    error, restored = None, None
    try:
      restored = manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        ),
      )
    except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
      error = e
    if _any_process(error is not None):  # all processes agree before the next collective
      raise error or RuntimeError("it failed to restore on another process")
    state, meta = restored["state"], dict(restored["meta"])
    expected = meta.pop("fingerprint", None)
    if expected is not None:  # compared as multisets: a restore without target orders leaves apart
      got = fingerprint(state)
      unexpected = collections.Counter(got) - collections.Counter(expected)
      if unexpected or len(got) != len(expected):
        leaves = jax.tree_util.tree_flatten_with_path(state)[0]
        bad = [
          jax.tree_util.keystr(p) for (p, _), v in zip(leaves, got, strict=True) if v in unexpected
        ]
        raise ValueError(
          f"its contents differ from the fingerprint saved with it ({len(bad)} of {len(got)} "
          f"arrays{', e.g. ' + bad[0] if bad else ''})"
        )
    return state, meta

  def restore_best(self, abstract_state) -> Any | None:
    """The state of the best checkpoint, or None if there is none."""
    step = self.best.best_step()
    if step is None:
      return None
    return self._restore(self.best, step, abstract_state)[0]

  def restore_latest(self, abstract_state) -> tuple[Any, dict[str, Any]] | None:
    """(state, meta) of the newest complete checkpoint that restores intact, latest or best (a
    kill between the two saves can leave the best one newer), falling back past damaged ones
    (with a warning naming each, set aside as `damaged.<step>`) to older ones.

    Nothing newer than the step resumed from is deleted. Returns None when the workdir has no
    checkpoint at all; raises NoGoodCheckpointError if it has some (or damaged ones) but none
    restores.
    """
    candidates = [(s, 1, self.latest) for s in self.latest.all_steps()]
    candidates += [(s, 0, self.best) for s in self.best.all_steps()]
    candidates = [(m, s) for s, _, m in sorted(candidates, key=lambda c: c[:2], reverse=True)]
    failed = []
    for manager, step in candidates:
      try:
        state, meta = self._restore(manager, step, abstract_state)
      except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
        logging.warning(
          "checkpoint at step %d in %s is damaged (%s); trying an older one",
          step, manager.directory, _short(e),
        )  # fmt: skip
        failed.append((manager, step, _short(e)))
        continue
      for bad_manager, bad_step, _ in failed:
        self._set_aside(bad_manager, bad_step)
      if failed:
        logging.warning(
          "resuming from step %d; damaged steps %s were renamed %s<step>",
          step, [s for _, s, _ in failed], DAMAGED_PREFIX,
        )  # fmt: skip
      return state, meta
    directory = os.fspath(self.latest.directory)
    damaged = sorted(d for d in os.listdir(directory) if d.startswith(DAMAGED_PREFIX))
    if failed or damaged:
      details = (
        "; ".join(f"{'best ' if m is self.best else ''}step {s}: {e}" for m, s, e in failed)
        or f"set aside: {damaged}"
      )
      raise NoGoodCheckpointError(
        f"no checkpoint in {os.path.dirname(directory)} could be restored ({details}); refusing "
        "to start from scratch over them. Use a new --workdir, or move the checkpoints away"
      )
    return None

  @staticmethod
  def _set_aside(manager: ocp.CheckpointManager, step: int) -> None:
    """Renames a damaged step to `damaged.<step>` (kept for inspection, never loaded again)."""
    if jax.process_index() == 0:
      directory = os.fspath(manager.directory)
      target, n = os.path.join(directory, f"{DAMAGED_PREFIX}{step}"), 1
      while os.path.exists(target):
        target, n = os.path.join(directory, f"{DAMAGED_PREFIX}{step}.{n}"), n + 1
      os.replace(os.path.join(directory, str(step)), target)
    multihost_utils.sync_global_devices(f"set aside damaged checkpoint {step}")
    manager.reload()

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def _entries(self) -> list[tuple[str, str]]:
    """(directory, name) of everything in the step directories, read from the file system."""
    return [
      (directory, name)
      for directory in self.directories
      for name in (os.listdir(directory) if os.path.isdir(directory) else ())
    ]

  def _remove_unfinished(self) -> None:
    """Deletes the steps orbax has not finished writing (process 0 only). Each is renamed out of
    the writers' way, then deleted, until none is left: a second Ctrl-C deletes them while
    orbax's threads may still be writing (and creating directories) there."""
    if not self.primary:
      return
    for _ in range(100):
      unfinished = [os.path.join(d, name) for d, name in self._entries() if TMP_MARK in name]
      if not unfinished:
        return
      for path in unfinished:
        trash = path if path.endswith(".deleting") else path + ".deleting"
        with contextlib.suppress(OSError):
          os.rename(path, trash)
          path = trash
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path, ignore_errors=True)
        else:
          with contextlib.suppress(OSError):
            os.remove(path)

  def _abandon(self) -> str:
    """What a second Ctrl-C does before exiting (in another thread, the main one anywhere, so
    through the file system only): deletes unfinished saves, names the newest complete step."""
    self._remove_unfinished()
    steps = [int(name) for _, name in self._entries() if name.isdigit()]
    return f"the last complete checkpoint is step {max(steps)}" if steps else "no checkpoint yet"

  def __enter__(self):
    self._abort_hook = preemption.on_abort(self._abandon)
    self._abort_hook.__enter__()
    return self

  def __exit__(self, *exc) -> None:
    """Pending asynchronous saves complete even when training stops with an error; what a save
    cut short left behind (a failed write) is removed."""
    try:
      self.wait()
    finally:
      for manager in (self.latest, self.best):
        try:
          manager.close()
        except Exception as e:  # noqa: BLE001 - a failed save was already raised by wait()
          logging.warning("closing %s: %s", manager.directory, _short(e))
      self._remove_unfinished()
      self._abort_hook.__exit__(None, None, None)
