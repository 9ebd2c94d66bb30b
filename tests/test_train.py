"""The one loop end to end: learning, outputs, resume, sharding equivalence."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import preemption, train
from tests.tiny import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_KEYS = {
  "config", "step", "metrics", "best", "throughput", "params", "compile_seconds",
  "peak_memory_bytes",
}  # fmt: skip


def _log(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_trains_and_writes_outputs(tmp_path):
  config = tiny_config(steps=40)
  config.optimizer.learning_rate = 1e-2
  results = train.train_and_evaluate(config, str(tmp_path))
  assert set(results) >= RESULT_KEYS
  with open(tmp_path / "results.json") as f:
    assert json.load(f)["step"] == 40
  losses = [r["train/loss"] for r in _log(tmp_path) if "train/loss" in r]
  assert losses[-1] < 0.8 * losses[0]
  assert set(results["metrics"]) == {"eval/loss", "eval/accuracy", "eval/sequence_accuracy"}
  assert results["throughput"]["steps_per_sec"] > 0 and results["params"] > 0
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))
  assert os.listdir(tmp_path / "checkpoints" / "best")


def test_resume_after_stop_matches_uninterrupted_run(tmp_path):
  config = tiny_config(steps=24)
  full = train.train_and_evaluate(config, str(tmp_path / "full"))

  def stop_at_half(step):
    if step == 12:
      preemption.request_stop()

  part = train.train_and_evaluate(config, str(tmp_path / "split"), hooks=[stop_at_half])
  assert part == {"status": "preempted", "step": 12}
  resumed = train.train_and_evaluate(config, str(tmp_path / "split"))
  assert resumed["step"] == 24
  for key, value in full["metrics"].items():
    np.testing.assert_allclose(resumed["metrics"][key], value, rtol=1e-6)
  train_losses = [
    [r["train/loss"] for r in _log(tmp_path / d) if "train/loss" in r] for d in ("full", "split")
  ]
  np.testing.assert_allclose(train_losses[1][-3:], train_losses[0][-3:], rtol=1e-6)


SHARDED_RUN = """
import json, sys
sys.path.insert(0, {root!r})
import jax
jax.config.update("jax_disable_most_optimizations", True)
from experiments import train
from tests.tiny import tiny_config
out = {{}}
for shape in {meshes!r}:
  config = tiny_config(steps=6)
  config.mesh.shape = shape
  results = train.train_and_evaluate(config, {workdir!r} + "/" + "x".join(map(str, shape)))
  out["x".join(map(str, shape))] = results["metrics"]["eval/loss"]
print("RESULT" + json.dumps(out))
"""


def _run_sharded(workdir, meshes, devices):
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  code = SHARDED_RUN.format(root=ROOT, meshes=meshes, workdir=str(workdir))
  proc = subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
  return json.loads(line[len("RESULT") :])


@pytest.mark.slow
def test_sharded_runs_match_single_device(tmp_path):
  single = _run_sharded(tmp_path / "one", [(1, 1, 1)], devices=1)["1x1x1"]
  sharded = _run_sharded(tmp_path / "eight", [(8, 1, 1), (2, 4, 1), (2, 2, 2)], devices=8)
  for mesh, loss in sharded.items():
    np.testing.assert_allclose(loss, single, rtol=1e-5, err_msg=mesh)
