"""Training never loses work: preemption, kill -9, failed saves, damaged checkpoints, non-finite
numbers, refused workdirs. The `slow` tests run `main.py` in subprocesses, as a user would."""

import dataclasses
import glob
import os
import random
import re
import shutil
import signal
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from absl import logging
from orbax.checkpoint._src.handlers import json_checkpoint_handler

import input_pipeline
from configs import default
from experiments.run import checkpoints, preemption, train, validate, workdir
from tests.helpers import TINY_FLAGS, Main, checkpoint_steps, read_json, records, tiny_config

KILL_DELAYS = random.Random(20)  # when after a checkpoint a run is killed: fixed by the seed


def _wait_until(condition, timeout: float = 10.0) -> None:
  """Poll `condition` until it holds; fail after `timeout` seconds."""
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, f"timed out after {timeout}s"
    time.sleep(0.001)


def _truncate(step_dir) -> None:
  for path in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "r+b") as f:
        f.truncate(1)


def _flip_bytes(step_dir) -> None:
  """Same sizes, some bytes inverted in the array data (undetected by orbax/tensorstore itself)."""
  files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_*", "d", "*"))
  assert files, os.listdir(os.path.join(step_dir, "state"))
  for path in files:
    with open(path, "r+b") as f:
      data = bytearray(f.read())
      for i in range(len(data) // 3, min(len(data), len(data) // 3 + 16)):
        data[i] ^= 0xFF
      f.seek(0)
      f.write(data)


def _assert_all_finite(tree) -> None:
  for leaf in tf.nest.flatten(tree):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64)))


@pytest.mark.slow
def test_sigterm_then_kill_9_then_rerun_matches_uninterrupted_run(tmp_path):
  """One run: SIGTERM (clean stop, exit 75), the same command (resumes), kill -9 right after a
  checkpoint, a planted half-written checkpoint, the same command again: it resumes from the last
  complete checkpoint and ends exactly like an uninterrupted run."""
  flags = [
    *TINY_FLAGS,
    "--config.train.num_steps=150",
    "--config.train.checkpoint_every_steps=25",
    "--config.train.eval_every_steps=50",
  ]
  reference = Main(tmp_path / "reference", *flags)  # meanwhile
  work, cache = tmp_path / "run", tmp_path / "jax_cache"
  latest = work / "checkpoints" / "latest"

  run = Main(work, *flags, cache=cache)
  run.wait_for(lambda: (work / "metrics.jsonl").exists())  # a few steps logged
  run.proc.send_signal(signal.SIGTERM)
  assert run.wait() == preemption.EXIT_PREEMPTED, run.output()[-3000:]
  out = run.output()
  stopped = checkpoint_steps(work)[-1]
  assert 0 < stopped < 150 and not (work / "results.json").exists()
  assert "SIGTERM: finishing the current step and saving a checkpoint" in out
  assert f"stopped at step {stopped} on request; checkpoint saved. Run the same command" in out

  run = Main(work, *flags, cache=cache)
  run.wait_for(lambda: checkpoint_steps(work)[-1] > stopped)  # a new checkpoint is complete
  time.sleep(KILL_DELAYS.uniform(0.0, 0.3))  # somewhere in the next steps (seeded)
  run.proc.kill()
  assert run.wait() == -signal.SIGKILL, run.output()[-3000:]
  assert f"resumed from step {stopped} " in run.output()

  newest_latest = checkpoint_steps(work)[-1]
  half = latest / f"{newest_latest + 25}.orbax-checkpoint-tmp"  # what a save cut short leaves
  if not half.exists():
    shutil.copytree(latest / str(newest_latest), half)
    _truncate(half)
  # a kill between the best save and the latest save of one step leaves the best one newer
  best_steps = [int(d) for d in os.listdir(work / "checkpoints" / "best") if d.isdigit()]
  last = max([newest_latest, *best_steps])

  run = Main(work, *flags, cache=cache)
  assert run.wait() == 0, run.output()[-3000:]
  out = run.output()
  assert f"resumed from step {last} " in out and "damaged" not in out
  assert reference.wait() == 0, reference.output()[-3000:]
  expected, got = (
    read_json(tmp_path / "reference" / "results.json"),
    read_json(work / "results.json"),
  )
  assert got["step"] == 150
  assert got["metrics"] == expected["metrics"]  # bit-identical on CPU
  assert (got["best"], got["best_step"]) == (expected["best"], expected["best_step"])
  # metrics.jsonl: records written before the kill and redone after it appear once.
  ours, theirs = records(work), records(tmp_path / "reference")
  assert [r["step"] for r in ours] == [r["step"] for r in theirs]
  for a, b in zip(ours, theirs, strict=True):
    if a["step"] > last or "eval/loss" in a:
      assert {k: v for k, v in a.items() if "loss" in k} == {
        k: v for k, v in b.items() if "loss" in k
      }, a["step"]
  assert not glob.glob(str(latest / "*tmp*"))  # the leftover was deleted at the start


def _fail_latest_save_at(step: int):
  """orbax's own writer fails (disk full) while writing one step: a real mid-save failure."""
  real = json_checkpoint_handler.JsonCheckpointHandler._save_fn

  async def save_fn(self, x, directory):
    name = os.path.basename(os.path.dirname(os.fspath(directory)))
    if f"{os.sep}latest{os.sep}" in os.fspath(directory) and name.startswith(f"{step}."):
      raise OSError(28, "No space left on device")
    return await real(self, x, directory)

  return save_fn


def test_failed_save_and_damaged_checkpoints_are_never_loaded(tmp_path, monkeypatch, caplog):
  """Disk full mid-save -> the error surfaces, only a tmp dir is left; bytes flipped in the
  newest good step -> warned and set aside, the older step is used; all latest steps damaged ->
  the best checkpoint; nothing good -> NoGoodCheckpointError, every time (never a fresh start)."""
  caplog.set_level(logging.INFO)
  config = tiny_config(steps=12)
  config.train.checkpoint_every_steps = 4
  latest = tmp_path / "checkpoints" / "latest"
  with monkeypatch.context() as patch:
    patch.setattr(
      json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", _fail_latest_save_at(12)
    )
    with pytest.raises(OSError, match="No space left on device") as failure:
      train.train_and_evaluate(config, str(tmp_path))
  assert checkpoint_steps(tmp_path) == [4, 8]
  # the unfinished save is removed at exit, though orbax's failing threads may write a little
  # of it again afterwards: either way it is never listed, and the next start deletes it
  assert workdir.disk_full(failure.value)  # main.py: one line, exit status 2

  _flip_bytes(latest / "8")
  best_steps = [int(d) for d in os.listdir(tmp_path / "checkpoints" / "best") if d.isdigit()]
  newest_good = max([4, *best_steps])  # latest 4, or a newer best
  caplog.clear()
  assert train.train_and_evaluate(config, str(tmp_path))["step"] == 12
  # Depending on the bytes hit, reading fails or the contents differ from the fingerprint.
  assert re.search(r"checkpoint at step 8 in \S+ is damaged \(", caplog.text)
  assert f"resumed from step {newest_good} " in caplog.text
  assert checkpoint_steps(tmp_path) == [8, 12] and (latest / "damaged.8").is_dir()
  assert not glob.glob(str(latest / "*tmp*"))

  best = tmp_path / "checkpoints" / "best"
  (best_step,) = (int(d) for d in os.listdir(best))
  for step in checkpoint_steps(tmp_path):
    _truncate(latest / str(step))
  caplog.clear()
  assert train.train_and_evaluate(config, str(tmp_path))["step"] == 12
  assert "checkpoint at step 12 in" in caplog.text and "checkpoint at step 8 in" in caplog.text
  assert f"resumed from step {best_step} " in caplog.text

  for step_dir in [*glob.glob(str(latest / "[0-9]*")), *glob.glob(str(best / "[0-9]*"))]:
    _truncate(step_dir)
  before = sorted(os.listdir(latest))
  for _ in range(2):  # nothing is renamed, so a second attempt refuses too
    with pytest.raises(checkpoints.NoGoodCheckpointError, match="refusing to start from scratch"):
      train.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(latest)) == before


def _poison_steps(monkeypatch, steps: set[int]) -> None:
  """Real NaNs through the real loop: the batches of `steps` carry a token id past the vocabulary
  (the embedding lookup of an out-of-range id gives NaN)."""
  real = input_pipeline.get_datasets

  def get_datasets(*args, **kwargs):
    datasets = real(*args, **kwargs)

    def train_dataset(start_batch: int):
      bad = tf.constant(sorted(steps), tf.int64)

      def poison(step, batch):
        hit = tf.reduce_any(tf.equal(step, bad))
        return {**batch, "inputs": tf.where(hit, 10**6, batch["inputs"])}

      # batch b is the one step b + 1 trains on
      return datasets.train_dataset(start_batch).enumerate(start_batch + 1).map(poison)

    return dataclasses.replace(datasets, train_dataset=train_dataset)

  monkeypatch.setattr(input_pipeline, "get_datasets", get_datasets)


def test_nonfinite_skip_discards_updates_and_stops_after_max_in_a_row(
  tmp_path, monkeypatch, caplog
):
  _poison_steps(monkeypatch, {3, 6, 7, 8})
  config = tiny_config(steps=12)
  config.train.update(on_nonfinite="skip", max_nonfinite=3, checkpoint_every_steps=1)
  with pytest.raises(train.NonFiniteError, match="3 non-finite steps in a row up to step 8"):
    train.train_and_evaluate(config, str(tmp_path))
  skipped = re.findall(
    r"non-finite loss/gradients/parameters at step (\d+): update skipped", caplog.text
  )
  assert skipped == ["3", "6", "7", "8"]  # counted, and the count restarted after step 3
  assert checkpoint_steps(tmp_path) == [6, 7]  # step 8 was not saved
  ckpt = checkpoints.Checkpoints(str(tmp_path), 2, "accuracy", "max")
  with ckpt:
    (s6, _), (s7, _) = (ckpt._restore(ckpt.latest, step, None) for step in (6, 7))
  assert (int(s6["step"]), int(s7["step"])) == (6, 7)
  assert (int(s6["nonfinite_in_a_row"]), int(s7["nonfinite_in_a_row"])) == (1, 2)
  for a, b in zip(
    tf.nest.flatten([s6["params"], s6["opt_state"]]),
    tf.nest.flatten([s7["params"], s7["opt_state"]]),
    strict=True,
  ):
    np.testing.assert_array_equal(a, b)  # step 7's update was discarded
  _assert_all_finite(s7["params"])


@pytest.mark.slow
def test_nonfinite_stop_exits_2_and_keeps_last_good_checkpoint(tmp_path):
  run = Main(
    str(tmp_path),
    *TINY_FLAGS,
    "--config.train.num_steps=50",
    "--config.train.checkpoint_every_steps=1",
    "--config.optimizer.learning_rate=1e30",
    "--config.optimizer.schedule=constant",
    "--config.optimizer.warmup_steps=0",
    "--config.optimizer.grad_clip_norm=0",
  )
  assert run.wait() == 2, run.output()[-3000:]
  out = run.output()
  found = re.search(
    r"error: non-finite loss, gradients or parameters at step (\d+); the update was not applied "
    r"and the last good checkpoint is step (\d+)\.",
    out,
  )
  assert found, out[-3000:]
  step, good = int(found[1]), int(found[2])
  assert good == step - 1 == checkpoint_steps(tmp_path)[-1]
  with checkpoints.Checkpoints(str(tmp_path), 2, "accuracy", "max") as ckpt:
    state, meta = ckpt.restore_latest(None)  # intact: reads back, fingerprint matches
  assert meta["next_batch"] == good and int(state["step"]) == good
  _assert_all_finite(state["params"])


@pytest.mark.slow
def test_main_refuses_changed_shapes_unwritable_workdir_and_half_a_launch(tmp_path):
  """All fail before any training, with exit status 2 and one line saying what to do."""
  validate.write_config(str(tmp_path / "old"), default.get_config())  # an earlier run's config
  (tmp_path / "file").write_text("")
  changed = Main(tmp_path / "old", *TINY_FLAGS, "--config.train.num_steps=5")
  blocked = Main(tmp_path / "file" / "run", *TINY_FLAGS, "--config.train.num_steps=5")
  half = Main(tmp_path / "new", *TINY_FLAGS, env={"JAX_COORDINATOR_ADDRESS": "localhost:12345"})
  assert changed.wait() == 2, changed.output()[-3000:]
  keys = (
    "data.batch_size, data.eval_examples, data.max_length, model.emb_dim, model.mlp_dim, "
    "model.num_decoder_layers, model.num_encoder_layers, model.qkv_dim"
  )
  assert f"holds a run whose config differs in {keys}; use a new --workdir" in changed.output()
  assert blocked.wait() == 2, blocked.output()[-3000:]
  assert "is not writable (Not a directory); pick another --workdir" in blocked.output()
  assert half.wait() == 2, half.output()[-3000:]
  assert "error: JAX_COORDINATOR_ADDRESS set but not JAX_NUM_PROCESSES, JAX_PROCESS_ID" in (
    half.output()
  )
  assert "compiled in" not in changed.output() + blocked.output() + half.output()


def test_too_little_disk_space_is_refused_before_training(tmp_path, monkeypatch):
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(validate.shutil, "disk_usage", lambda _: usage._replace(free=2**20))
  with pytest.raises(validate.ConfigError, match="has only 1 MiB free"):
    train.train_and_evaluate(tiny_config(), str(tmp_path))


@pytest.mark.skipif(
  threading.current_thread() is not threading.main_thread(), reason="signals need the main thread"
)
def test_signal_handlers_request_a_stop_and_are_restored(monkeypatch, capfd):
  exits = []
  monkeypatch.setattr(preemption, "_exit", exits.append)  # instead of os._exit(130)
  before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
  wakeup_before = signal.set_wakeup_fd(-1)
  signal.set_wakeup_fd(wakeup_before)
  with preemption.handlers(), preemption.on_abort(lambda: "the last complete checkpoint is 7"):
    assert not preemption.stop_requested()
    os.kill(os.getpid(), signal.SIGTERM)
    _wait_until(preemption.stop_requested)  # set by the watcher thread
    os.kill(os.getpid(), signal.SIGTERM)  # repeated (e.g. by a scheduler): still just a stop
    time.sleep(0.2)
    assert not exits
    os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: exits from the watcher thread
    _wait_until(lambda: exits)
  assert exits == [preemption.EXIT_INTERRUPTED] == [130]
  lines = [line for line in capfd.readouterr().err.splitlines() if "second interrupt" in line]
  assert lines == [
    "second interrupt: stopped without a final checkpoint; the last complete checkpoint is 7 "
    "(run the same command to resume)"
  ]
  assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before
  assert signal.set_wakeup_fd(wakeup_before) == wakeup_before  # restored
  assert not any(t.name == "stop-requests" for t in threading.enumerate())
  with preemption.handlers():
    assert not preemption.stop_requested()  # a new run starts without the old request
    with preemption.handlers():  # nested (a search running trials): one signal, one request
      os.kill(os.getpid(), signal.SIGINT)
      _wait_until(preemption.stop_requested)
      time.sleep(0.2)
    assert len(exits) == 1


def test_fingerprint_is_the_same_on_the_host_and_jitted_and_sees_one_changed_bit():
  import jax
  import jax.numpy as jnp

  rng = np.random.default_rng(0)
  tree = {
    "w": jnp.asarray(rng.normal(size=(30, 7)), jnp.float32),
    "h": jnp.asarray(rng.normal(size=(5,)), jnp.bfloat16),
    "mask": jnp.array([True, False, True]),
    "count": jnp.int32(5),
    "python_int": 7,
    "key": jax.random.key(3),
  }
  host = checkpoints.fingerprint(tree)  # CPU arrays of this process: numpy, nothing compiled
  leaves = [checkpoints._bits_array(x) for x in jax.tree.leaves(tree)]
  assert host == [int(v) for v in checkpoints._fingerprints(leaves)]  # the multi-process path
  flipped = np.asarray(tree["w"]).view(np.uint32).copy()
  flipped[12, 3] ^= 1  # one bit of one element
  changed = checkpoints.fingerprint({**tree, "w": jnp.asarray(flipped.view(np.float32))})
  assert [a != b for a, b in zip(host, changed, strict=True)].count(True) == 1
