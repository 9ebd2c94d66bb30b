"""The one loop end to end: learning, outputs, resume, sharding equivalence."""

import dataclasses
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from jax._src import array as jax_array  # the emulated device -> host guard, see below
from jax._src import config as jax_config

import input_pipeline
from experiments.run import batches, build, preemption, sharding, train
from tests.helpers import parallel_text, tiny_config

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


def test_validation_selects_and_test_is_evaluated_once_at_the_selected_checkpoint(
  tmp_path, monkeypatch
):
  """A task whose test split disagrees with validation (its targets are scrambled): the best
  checkpoint is still the validation argmax, test is read once, after training, from it."""
  real = input_pipeline.get_datasets
  reads = []

  def get_datasets(*args, **kwargs):
    datasets = real(*args, **kwargs)

    def eval_dataset(split="validation"):
      reads.append(split)
      ds = datasets.eval_dataset(split)
      if split == "test":  # every target the last symbol: what the model learns scores ~0
        ds = ds.map(lambda b: {**b, "targets": tf.where(b["targets"] > 0, 15, 0)})
      return ds

    return dataclasses.replace(datasets, eval_dataset=eval_dataset)

  monkeypatch.setattr(input_pipeline, "get_datasets", get_datasets)
  config = tiny_config(steps=24)
  config.train.eval_every_steps = 6
  config.optimizer.learning_rate = 1e-2
  results = train.train_and_evaluate(config, str(tmp_path))
  assert reads == ["validation", "test"]  # read once each; test only after the last step
  evals = [r for r in _log(tmp_path) if "eval/sequence_accuracy" in r]
  assert not any(k.startswith("test/") for r in _log(tmp_path) for k in r)
  best = max(evals, key=lambda r: (r["eval/sequence_accuracy"], -r["step"]))  # first of the best
  assert results["best_step"] == best["step"]
  assert results["best"]["eval/accuracy"] == pytest.approx(best["eval/accuracy"])
  assert set(results["test"]) == {"test/loss", "test/accuracy", "test/sequence_accuracy"}
  assert results["test"]["test/accuracy"] < 0.5 * results["best"]["eval/accuracy"]
  assert set(results["splits"]) == {"train", "validation", "test"}


def test_on_eval_can_prune_a_run(tmp_path):
  seen = []

  def prune_at_second_eval(step, metrics):
    seen.append((step, sorted(metrics)))
    return len(seen) == 2

  config = tiny_config(steps=24)
  config.train.eval_every_steps = 6
  results = train.train_and_evaluate(config, str(tmp_path), on_eval=prune_at_second_eval)
  assert [s for s, _ in seen] == [6, 12]
  assert seen[0][1] == ["eval/accuracy", "eval/loss", "eval/sequence_accuracy"]
  assert results["status"] == "pruned" and results["step"] == 12 and results["test"] == {}
  assert json.loads((tmp_path / "results.json").read_text())["status"] == "pruned"
  assert "12" in os.listdir(tmp_path / "checkpoints" / "latest")


def test_runs_that_differ_only_in_seed_lower_to_the_same_program():
  """The seed is data in the state, not a constant in the step: one compilation serves all."""
  texts = []
  for seed in (0, 1):
    config = tiny_config(steps=4)
    config.seed = seed
    run = build.build(config)
    batch = next(run.datasets.train_dataset(0).as_numpy_iterator())
    with nn.logical_axis_rules(run.axis_rules):
      texts.append(run.steps.train.jitted.lower(run.state, batch).as_text())
    state = run.state
    assert int(jax.random.key_data(jax.random.key(seed))[1]) == int(state.rng[1])
  assert texts[0] == texts[1]


@pytest.fixture
def device_reads_guarded(monkeypatch):
  """On GPU/TPU an implicit device -> host read (float, bool, np.asarray, .item) under
  `jax.transfer_guard("disallow")` raises; CPU arrays already live on the host, so the guard
  cannot see them. Emulate the accelerator: such a read of a not yet fetched array raises."""
  original = jax_array.ArrayImpl._value

  def guarded(self):
    level = jax_config.transfer_guard_device_to_host.value
    if self._npy_value is None and level in ("disallow", "disallow_explicit"):
      raise RuntimeError("Disallowed device-to-host transfer (emulated on CPU)")
    return original.fget(self)

  monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(guarded))


def test_steps_between_periodic_actions_move_nothing_implicitly(tmp_path, device_reads_guarded):
  """The loop runs its steps under jax.transfer_guard("disallow"): a run with log, eval and
  checkpoint intervals of 4 passes, and a hook that reads a device value back (what a per-step
  `bool(finite)` did) fails the run at once, on the first step."""
  config = tiny_config(steps=8)
  config.train.update(log_every_steps=4, eval_every_steps=4, checkpoint_every_steps=4)
  calls, on_device = [], jnp.ones(())

  def hidden_read(step):
    calls.append(step)
    return float(on_device)  # an implicit device -> host transfer

  with pytest.raises(Exception, match="Disallowed device-to-host transfer"):
    train.train_and_evaluate(config, str(tmp_path / "bad"), hooks=[hidden_read])
  assert calls == [1]
  # the same loop without the hook runs every step under the guard
  assert train.train_and_evaluate(config, str(tmp_path / "good"))["step"] == 8


def test_prefetch_keeps_the_order_and_reads_ahead(tmp_path):
  mesh = sharding.make_mesh((1, 1, 1))
  read = []

  def stream_of_batches():
    for i in range(5):
      read.append(i)
      yield {"inputs": np.full((2, 3), i, np.int32)}

  stream = batches.prefetch(stream_of_batches(), mesh, size=2)
  first = next(stream)
  assert read == [0, 1]  # the second batch is already on its way while the first trains
  assert isinstance(first["inputs"], jax.Array)
  rest = [int(b["inputs"][0, 0]) for b in stream]
  assert [int(first["inputs"][0, 0]), *rest] == [0, 1, 2, 3, 4]


def test_profile_steps_write_a_trace(tmp_path):
  config = tiny_config(steps=8)
  config.train.profile_steps = (2, 3)
  train.train_and_evaluate(config, str(tmp_path))
  traces = [f for _, _, files in os.walk(tmp_path / "profile") for f in files]
  assert any(f.endswith(".xplane.pb") for f in traces), traces


@pytest.mark.parametrize("family", ["transformer", "rnn_seq2seq"])
def test_length_bucketed_batches_train(tmp_path, family):
  """data.bucket_by_length=True on local parallel text: batches of several lengths train."""
  config = tiny_config(steps=6, name=family)
  config.data = ml_collections.ConfigDict(dict(
    name="translation", dataset="files", **parallel_text(tmp_path), source_lang="en",
    target_lang="de", max_length=16, vocab_size=40, batch_size=8, seed=0, eval_examples=0,
    bucket_by_length=True,
  ))  # fmt: skip
  datasets = input_pipeline.get_datasets(config.data, workdir=str(tmp_path / "run"))
  lengths = {b["inputs"].shape[1] for b in datasets.train_dataset(0).take(6).as_numpy_iterator()}
  assert len(lengths) > 1, lengths  # the steps below see more than one batch shape
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["status"] == "finished" and results["step"] == 6
  assert np.isfinite(results["test"]["test/loss"])


SHARDED_RUN = """
import json, sys
sys.path.insert(0, {root!r})
import jax
jax.config.update("jax_disable_most_optimizations", True)
from experiments.run import train
from tests.helpers import tiny_config
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
