"""Training never loses work: preemption, kill -9, damaged checkpoints, non-finite numbers."""

import json
import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import checkpoints, tasks, train
from tests.tiny import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = [
  "--config=configs/default.py:steps=400",
  "--config.data.max_length=8",
  "--config.data.batch_size=16",
  "--config.data.eval_examples=32",
  "--config.model.emb_dim=32",
  "--config.model.qkv_dim=32",
  "--config.model.mlp_dim=64",
  "--config.model.num_encoder_layers=1",
  "--config.model.num_decoder_layers=1",
  "--config.train.log_every_steps=5",
  "--config.train.eval_every_steps=200",
]


def _main(workdir, *extra):
  env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "true", "TF_CPP_MIN_LOG_LEVEL": "3"}
  cmd = [sys.executable, "main.py", *TINY_FLAGS, f"--workdir={workdir}", *extra]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(predicate, proc, timeout=300):
  start = time.time()
  while not predicate():
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    assert time.time() - start < timeout, "timed out"
    time.sleep(0.2)


def _results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def _steps(workdir):
  directory = os.path.join(workdir, "checkpoints", "latest")
  return (
    sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
  )


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path):
  proc = _main(tmp_path, "--config.train.checkpoint_every_steps=1000")
  _wait_for(lambda: os.path.exists(tmp_path / "metrics.jsonl"), proc)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=300)[0].decode()
  assert proc.returncode == 0, out[-3000:]
  assert "Run the same command to resume" in out
  stopped_at = _steps(tmp_path)[-1]
  assert 0 < stopped_at < 400  # saved where it stopped, not at a checkpoint interval
  proc = _main(tmp_path, "--config.train.checkpoint_every_steps=1000")
  out = proc.communicate(timeout=600)[0].decode()
  assert proc.returncode == 0, out[-3000:]
  assert f"resumed from step {stopped_at}" in out
  assert _results(tmp_path)["step"] == 400


@pytest.mark.slow
def test_kill_9_then_rerun_matches_uninterrupted_run(tmp_path):
  flags = ["--config.train.checkpoint_every_steps=50"]
  reference = _main(tmp_path / "reference", *flags)
  assert reference.wait(timeout=600) == 0
  proc = _main(tmp_path / "killed", *flags)
  _wait_for(lambda: len(_steps(tmp_path / "killed")) >= 2, proc)
  proc.kill()
  proc.wait()
  proc = _main(tmp_path / "killed", *flags)
  out = proc.communicate(timeout=600)[0].decode()
  assert proc.returncode == 0, out[-3000:]
  assert "resumed from step" in out
  expected, got = _results(tmp_path / "reference"), _results(tmp_path / "killed")
  for key, value in expected["metrics"].items():
    np.testing.assert_allclose(got["metrics"][key], value, rtol=1e-6, err_msg=key)


def _corrupt(step_dir):
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(1)


def test_damaged_latest_checkpoint_falls_back_then_refuses(tmp_path, caplog):
  config = tiny_config(steps=12)
  config.train.checkpoint_every_steps = 6
  train.train_and_evaluate(config, str(tmp_path))
  latest = tmp_path / "checkpoints" / "latest"
  assert _steps(tmp_path) == [6, 12]
  os.makedirs(latest / "18.orbax-checkpoint-tmp-1234" / "state")  # a save that never finished
  _corrupt(latest / "12")
  config.train.num_steps = 14
  results = train.train_and_evaluate(config, str(tmp_path))
  assert "checkpoint at step 12 is damaged" in caplog.text
  assert results["step"] == 14
  for step in _steps(tmp_path):
    _corrupt(latest / str(step))
  with pytest.raises(checkpoints.NoGoodCheckpointError, match="refusing to start from scratch"):
    train.train_and_evaluate(config, str(tmp_path))


def test_nonfinite_stop_keeps_last_good_checkpoint(tmp_path):
  config = tiny_config(steps=20)
  config.train.checkpoint_every_steps = 1
  config.optimizer.update(learning_rate=1e30, grad_clip_norm=0.0, warmup_steps=0)
  config.optimizer.schedule = "constant"
  with pytest.raises(train.NonFiniteError, match=r"non-finite loss or gradients at step (\d+)"):
    train.train_and_evaluate(config, str(tmp_path))
  good = _steps(tmp_path)
  assert good  # the last good checkpoint is intact and restores
  config.optimizer.learning_rate = 1e-3
  config.train.on_nonfinite = "skip"
  config.train.max_nonfinite = 1000
  assert train.train_and_evaluate(config, str(tmp_path))["step"] == 20


def test_nonfinite_skip_skips_bad_updates(tmp_path, monkeypatch):
  real = tasks.loss_and_metrics

  def poisoned(kind, logits, batch, label_smoothing=0.0):
    loss, metrics = real(kind, logits, batch, label_smoothing)
    bad = jnp.sum(batch["inputs"]) % 3 == 0  # some batches, deterministically
    return jnp.where(bad & ("valid" not in batch), jnp.nan, loss), metrics

  monkeypatch.setattr(tasks, "loss_and_metrics", poisoned)
  config = tiny_config(steps=12)
  config.train.on_nonfinite = "skip"
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 12
  assert np.isfinite(results["metrics"]["eval/loss"])
  config.train.max_nonfinite = 1
  config.train.num_steps = 40
  with pytest.raises(train.NonFiniteError, match="in a row"):
    train.train_and_evaluate(config, str(tmp_path / "strict"))


def test_failed_save_leaves_previous_checkpoint_usable(tmp_path, monkeypatch):
  config = tiny_config(steps=12)
  config.train.checkpoint_every_steps = 6
  real_save = checkpoints.Checkpoints.save

  def save(self, step, state, meta, force=False):
    if step == 12:
      raise OSError(28, "No space left on device")
    return real_save(self, step, state, meta, force)

  monkeypatch.setattr(checkpoints.Checkpoints, "save", save)
  with pytest.raises(OSError, match="No space left"):
    train.train_and_evaluate(config, str(tmp_path))
  monkeypatch.setattr(checkpoints.Checkpoints, "save", real_save)
  assert _steps(tmp_path) == [6]
  assert train.train_and_evaluate(config, str(tmp_path))["step"] == 12
