"""Sweeps: declaring, naming, checking overrides, running, skipping, resuming, failures."""

import json
import os
import subprocess
import sys

import jax
import pytest

import input_pipeline
import models
from configs import (
  compare_reverse,
  compare_translation,
  image,
  listops,
  retrieval,
  text_classification,
)
from configs.common import LONG_RANGE_TYPES, axis, chain, product, zip_
from experiments.compare import attention_maps, comparison, report, sweep
from experiments.run import preemption, train, validate
from input_pipeline.base import TaskInfo
from tests.helpers import ENV, ROOT, tiny_config, write_experiment

# scaled_dot runs; 3 heads do not divide the width, so that point fails; dot is interrupted first.
FAILING_SWEEP = (
  'chain(axis("model.attention.name", ["scaled_dot"]), axis("model.num_heads", [3]), '
  'axis("model.attention.name", ["dot"]))'
)


def test_helpers_expand_as_declared():
  a, b = axis("x.a", [1, 2]), axis("x.b", ["u", "v"])
  assert product(a, b) == [
    {"x.a": 1, "x.b": "u"}, {"x.a": 1, "x.b": "v"}, {"x.a": 2, "x.b": "u"}, {"x.a": 2, "x.b": "v"}
  ]  # fmt: skip
  assert zip_(a, b) == [{"x.a": 1, "x.b": "u"}, {"x.a": 2, "x.b": "v"}]
  assert chain(a, b) == [*a, *b]
  assert product(chain(a, b), axis("x.c", [0])) == [{**p, "x.c": 0} for p in chain(a, b)]
  with pytest.raises(ValueError, match="one length"):
    zip_(a, axis("x.c", [1]))


def test_point_names_are_readable_stable_and_safe():
  point = {"model.attention.name": "additive", "optimizer.learning_rate": 1e-3}
  assert sweep.point_name(point) == "attention.name=additive,learning_rate=0.001"
  assert sweep.point_name(json.loads(json.dumps(point))) == sweep.point_name(point)  # from a file
  assert sweep.point_name({"mesh.shape": (2, 1, 1)}) == "shape=2x1x1"
  assert (
    sweep.point_name({"model.name": "rnn_seq2seq", "seed": 1}) == "model.name=rnn_seq2seq,seed=1"
  )
  assert sweep.point_name({"data.seed": 1, "seed": 2}) == "data.seed=1,seed=2"  # clash: full keys
  assert sweep.point_name({"model.attention": {"name": "local", "window": 4}}) == (
    "attention=name=local+window=4"
  )
  assert "/" not in sweep.point_name({"data.data_dir": "a/b c"})
  assert sweep.point_name({}) == "base"
  with pytest.raises(validate.ConfigError, match="same name"):
    sweep.point_names([{"a.x": 1.0}, {"b.x": 1}])


def test_overrides_are_type_checked_and_unknown_keys_named():
  config = sweep.apply_overrides(tiny_config(), {"model.attention.name": "dot", "seed": 7})
  assert config.model.attention.name == "dot"
  assert config.data.seed == 7  # field references follow, as with --config.seed=7
  assert tiny_config().seed == 0
  replaced = sweep.apply_overrides(tiny_config(), {"model.attention": {"name": "local"}})
  assert dict(replaced.model.attention) == {"name": "local"}
  with pytest.raises(validate.ConfigError, match=r"config.model has no 'widht'; valid: .*emb_dim"):
    sweep.apply_overrides(tiny_config(), {"model.widht": 3})
  with pytest.raises(validate.ConfigError, match=r"config has no 'modle'; valid: .*'model'"):
    sweep.apply_overrides(tiny_config(), {"modle.emb_dim": 3})
  with pytest.raises(validate.ConfigError, match="'model.num_heads'='four'"):
    sweep.apply_overrides(tiny_config(), {"model.num_heads": "four"})


def test_seeds_repeat_every_point_and_group_by_the_other_overrides(tmp_path):
  path = write_experiment(tmp_path / "experiment.py", 'axis("model.attention.name", ["a", "b"])')
  points = sweep.load_sweep(path, seeds=3)
  assert points == [{"model.attention.name": n, "seed": s} for n in ("a", "b") for s in range(3)]
  assert sweep.point_name(points[1]) == "attention.name=a,seed=1"
  assert comparison.group_overrides(points[4]) == {"model.attention.name": "b"}
  assert comparison.group_name(points[4]) == "b"
  assert sweep.load_sweep(path) == [{"model.attention.name": "a"}, {"model.attention.name": "b"}]
  plain = tmp_path / "plain.py"
  plain.write_text("def get_config(arg=None):\n  return None\n")
  assert sweep.load_sweep(str(plain), seeds=2) == [{"seed": 0}, {"seed": 1}]  # one point
  with pytest.raises(validate.ConfigError, match="defines no get_sweep"):
    sweep.load_sweep(str(plain))
  seeded = write_experiment(tmp_path / "seeded.py", 'axis("seed", [0, 1])')
  with pytest.raises(validate.ConfigError, match="already sets `seed`; drop --seeds"):
    sweep.load_sweep(seeded, seeds=2)
  with pytest.raises(validate.ConfigError, match="--seeds=-1; give a number of seeds >= 1"):
    sweep.load_sweep(path, seeds=-1)
  with pytest.raises(validate.ConfigError, match=r"types='bogus': unknown \['bogus'\]; valid: "):
    sweep.load_sweep("configs/compare_reverse.py:types=bogus")


@pytest.fixture
def cache_every_program():
  """JAX caches only programs that took >= 1 s to compile; the tiny ones here may take less."""
  key = "jax_persistent_cache_min_compile_time_secs"
  before = getattr(jax.config, key)
  jax.config.update(key, 0.0)
  yield
  jax.config.update(key, before)


def test_seeds_of_a_group_share_one_compilation(tmp_path, cache_every_program):
  """Three seeds: one cached train step in DIR/compile_cache; the seeds still train apart."""
  path = write_experiment(
    tmp_path / "experiment.py", 'axis("model.attention.name", ["scaled_dot"])', steps=4
  )
  runs = tmp_path / "runs"
  assert sweep.run(tiny_config(steps=4), path, str(runs), seeds=3) == ["finished"] * 3
  cached = os.listdir(runs / "compile_cache")
  assert len([f for f in cached if f.startswith("jit_train_step")]) == 1, cached
  assert len([f for f in cached if f.startswith("jit_init")]) == 1, cached
  results = [
    json.loads((runs / f"attention.name=scaled_dot,seed={s}" / "results.json").read_text())
    for s in range(3)
  ]
  assert len({r["metrics"]["eval/loss"] for r in results}) == 3  # different seeds, runs
  listed = json.loads((runs / "sweep.json").read_text())
  assert [p["name"] for p in listed["points"]] == [
    f"attention.name=scaled_dot,seed={s}" for s in range(3)
  ]


def test_point_command_repeats_the_command_line_for_one_point():
  argv = ["main.py", "--config=c.py:steps=5", "--workdir", "w", "--sweep", "--sweep_parallel", "3",
          "--config.model.emb_dim=8"]  # fmt: skip
  assert sweep.point_command(argv, 4)[1:] == [
    "main.py", "--config=c.py:steps=5", "--workdir", "w", "--config.model.emb_dim=8",
    "--sweep_point=4",
  ]  # fmt: skip


def test_parallel_statuses_of_processes_that_crash_or_stop(tmp_path):
  """A point process that dies leaves error.txt with its log's end; one that exits 0 without
  results was stopped."""
  script = tmp_path / "point.py"
  script.write_text(
    "import sys\nk = int(sys.argv[-1].split('=')[1])\nprint('boom', k)\nsys.exit(3 * (k == 0))\n"
  )
  statuses = sweep._run_parallel(["p0", "p1"], str(tmp_path), 2, [str(script)], str(tmp_path))
  assert statuses == ["failed", "preempted"]
  error = (tmp_path / "p0" / "error.txt").read_text()
  assert error.startswith("the point's process exited with status 3") and "boom 0" in error


def _task_shapes(module, config):
  """The task info a config's sweep needs to be checked, without the task's data."""
  if module is compare_reverse:
    return input_pipeline.get_datasets(config.data).info
  if module is compare_translation:
    return TaskInfo(
      kind="seq2seq", vocab_size=32000, target_vocab_size=32000, max_input_length=256,
      max_target_length=256, eos_id=2,
    )  # fmt: skip
  kind = "retrieval" if config.model.name == "dual_encoder" else "classification"
  return TaskInfo(kind, 256, max_input_length=config.model.max_len - 1, num_classes=10)


@pytest.mark.parametrize(
  "module", [compare_reverse, compare_translation, listops, text_classification, retrieval, image]
)
def test_shipped_sweeps_are_valid(module):
  """Every point's keys exist and its model fits the task (checked without data); the Long
  Range Arena files sweep the whole long-range family."""
  config = module.get_config()
  points = module.get_sweep()
  assert len(sweep.point_names(points)) >= 8
  if module not in (compare_reverse, compare_translation):
    assert [p["model.attention.name"] for p in points] == list(LONG_RANGE_TYPES)
  info = _task_shapes(module, config)
  for point in points:
    point_config = sweep.apply_overrides(config, point)
    validate.check_config(point_config)
    validate.check_config_for_task(point_config, info)
    assert models.build(point_config.model, info) is not None


def test_bad_key_stops_the_sweep_before_anything_runs(tmp_path):
  path = write_experiment(tmp_path / "experiment.py", 'axis("model.emb_dimm", [8])')
  with pytest.raises(validate.ConfigError, match="no 'emb_dimm'"):
    sweep.run(tiny_config(), path, str(tmp_path / "runs"))
  assert not (tmp_path / "runs").exists()


def test_a_stop_request_ends_a_sequential_sweep(tmp_path, monkeypatch):
  monkeypatch.setattr(train, "train_and_evaluate", lambda *_: {"status": "preempted"})
  path = write_experiment(tmp_path / "experiment.py", 'axis("model.emb_dim", [8, 16, 32])')
  assert sweep.run(tiny_config(), path, str(tmp_path / "runs")) == [
    "preempted", "not run", "not run"
  ]  # fmt: skip


def test_sweep_records_failures_resumes_interrupted_and_skips_finished_points(
  tmp_path, monkeypatch
):
  """3 points: the middle one fails; the last was interrupted at step 3 before the sweep."""
  monkeypatch.setattr(attention_maps, "draw", lambda *_, **__: None)  # tests/test_report.py
  path = write_experiment(tmp_path / "experiment.py", FAILING_SWEEP)
  workdir = tmp_path / "runs"

  def stop(step):
    if step == 3:
      preemption.request_stop()

  config = sweep.apply_overrides(tiny_config(steps=6), {"model.attention.name": "dot"})
  interrupted = workdir / "attention.name=dot"
  assert train.train_and_evaluate(config, str(interrupted), hooks=[stop])["status"] == "preempted"

  assert sweep.run(tiny_config(steps=6), path, str(workdir)) == ["finished", "failed", "finished"]
  error = (workdir / "num_heads=3" / "error.txt").read_text()
  assert error.splitlines()[0].startswith("ConfigError: model: num_heads=3 must divide")
  assert "Traceback" in error
  assert json.loads((workdir / "num_heads=3" / "overrides.json").read_text()) == {
    "model.num_heads": 3
  }
  assert report.write_report(str(workdir)).endswith("report.md")  # a failed point's dir is skipped
  log = (interrupted / "metrics.jsonl").read_text().splitlines()
  steps = [json.loads(ln)["step"] for ln in log]
  assert 3 in steps and steps[-1] == 6  # one run up to 3, then resumed to 6
  assert json.loads((interrupted / "results.json").read_text())["step"] == 6

  again = sweep.run(tiny_config(steps=6), path, str(workdir))
  assert again == ["skipped", "failed", "skipped"]  # failed points are retried
  assert sweep.run(tiny_config(steps=6), path, str(workdir), point=0) == ["skipped"]
  with pytest.raises(validate.ConfigError, match="points 0..2"):
    sweep.run(tiny_config(steps=6), path, str(workdir), point=3)


@pytest.mark.slow
def test_parallel_points_run_as_processes(tmp_path):
  """main.py --sweep --sweep_parallel=2: one process per point; its exit status is 0."""
  path = write_experiment(
    tmp_path / "experiment.py", 'axis("model.attention.name", ["scaled_dot", "dot"])', steps=4
  )
  workdir = tmp_path / "runs"
  command = [sys.executable, "main.py", f"--config={path}", f"--workdir={workdir}", "--sweep",
             "--sweep_parallel", "2"]  # fmt: skip
  env = {**os.environ, **ENV}
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "report: " in done.stdout
  for point in ("attention.name=scaled_dot", "attention.name=dot"):
    assert (workdir / point / "results.json").exists(), point
    assert "sweep point" in (workdir / point / "log.txt").read_text()
  # --sweep_point=K of a failing point exits non-zero (a failed job-array task)
  bad = write_experiment(tmp_path / "bad.py", 'axis("model.num_heads", [3])', steps=4)
  command = [*command[:2], f"--config={bad}", f"--workdir={workdir}", "--sweep_point=0"]
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 1 and (workdir / "num_heads=3" / "error.txt").exists()


def test_points_may_set_any_field_of_their_attention_type():
  config = sweep.apply_overrides(
    tiny_config(), {"model.attention.window": 3, "model.attention.name": "local"}
  )
  assert (config.model.attention.name, config.model.attention.window) == ("local", 3)
  with pytest.raises(validate.ConfigError, match="has no 'window'"):
    sweep.apply_overrides(tiny_config(), {"model.attention.window": 3})  # scaled_dot has none
