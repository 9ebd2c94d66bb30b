"""Bad configs fail before compiling, with one line that says what to change."""

import os
import subprocess
import sys

import pytest

import input_pipeline
from experiments.run import validate
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _set(path, value):
  def apply(config):
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
      node = node[p]
    with node.ignore_type():
      node[leaf] = value

  return apply


BAD = [
  ("data.name", "nope", r"data.name: unknown task 'nope'; valid: .*reverse"),
  ("model.name", "nope", r"model.name: unknown model 'nope'; valid: .*transformer"),
  ("model.attention.name", "nope", r"unknown attention 'nope'; valid: .*scaled_dot"),
  ("model.attention.windw", 3, r"no field\(s\) \['windw'\]"),
  ("optimizer.name", "lamb2", r"unknown optimizer.name 'lamb2'; valid: adamw"),
  ("optimizer.schedule", "exp", r"unknown optimizer.schedule 'exp'; valid: constant"),
  ("model.dtype", "float16", r"model.dtype='float16'; valid: float32, bfloat16"),
  ("train.on_nonfinite", "ignore", r"train.on_nonfinite='ignore'; valid: stop, skip"),
  ("optimizer.learning_rate", 0.0, r"optimizer.learning_rate=0.0 must be > 0"),
  ("optimizer.warmup_steps", -1, r"warmup_steps must be >= 0"),
  ("train.sync_every_steps", -1, r"train.sync_every_steps=-1 must be >= 0"),
  ("train.profile_steps", (5,), r"train.profile_steps=\(5,\); give START,COUNT"),
  ("train.profile_steps", (5, -1), r"train.profile_steps=\(5, -1\); give START,COUNT"),
  ("optimizer.grad_accum_steps", 0, r"grad_accum_steps=0 must be > 0"),
  ("train.num_steps", 0, r"train.num_steps=0 must be > 0"),
  ("train.keep_checkpoints", 0, r"keep_checkpoints=0 must be > 0"),
  ("data.batch_size", 0, r"data.batch_size=0 must be > 0"),
  ("mesh.shape", (3, 1, 1), r"has 3 devices but 1 are available"),
  ("mesh.shape", (-1, -1, 1), r"at most one -1"),
  ("mesh.shape", (1, 1), r"needs 3 entries"),
  ("model.num_heads", 3, r"divisible by num_heads=3|num_heads=3 must divide"),
  ("model.max_len", 4, r"max_len=4"),
  (
    "model.attention",
    {"name": "synthesizer", "max_length": 8},
    r"'synthesizer' has max_length=8 < model.max_len=16; set --config.model.attention.max_length",
  ),
  ("model.name", "encoder_classifier", r"fits task kinds \['classification'\], not 'seq2seq'"),
]


def _check(config):
  validate.check_config(config)
  info = input_pipeline.get_datasets(config.data).info
  validate.check_config_for_task(config, info)


def test_good_config_passes():
  _check(tiny_config())


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[f"{p}={v}" for p, v, _ in BAD])
def test_bad_config_names_the_fix(path, value, message):
  config = tiny_config()
  _set(path, value)(config)
  with pytest.raises(validate.ConfigError, match=message) as err:
    _check(config)
  assert "\n" not in str(err.value)


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(validate.ConfigError, match="not writable"):
    validate.prepare_workdir(str(blocker / "run"), tiny_config())


def test_shape_changing_config_refused_on_resume(tmp_path):
  validate.prepare_workdir(str(tmp_path), tiny_config())
  assert not (tmp_path / "config.json").exists()  # written once the run has started
  validate.write_config(str(tmp_path), tiny_config())
  changed = tiny_config()
  changed.model.emb_dim = 64
  with pytest.raises(validate.ConfigError, match=r"differs in model.emb_dim"):
    validate.prepare_workdir(str(tmp_path), changed)
  validate.prepare_workdir(str(tmp_path), tiny_config(steps=48))  # more steps is fine
  moved = tiny_config()
  with moved.data.unlocked(), moved.data.ignore_type():
    moved.data.data_dir, moved.data.train_path = "/elsewhere", "/elsewhere/train.txt"
  validate.prepare_workdir(str(tmp_path), moved)  # the same data read from another place


def test_damaged_config_json_is_one_line(tmp_path):
  (tmp_path / "config.json").write_text('{"model": {"emb_')
  with pytest.raises(validate.ConfigError, match=r"config.json is unreadable .*delete it") as err:
    validate.prepare_workdir(str(tmp_path), tiny_config())
  assert "\n" not in str(err.value)


def test_main_exits_with_one_line(tmp_path):
  proc = subprocess.run(
    [
      sys.executable, "main.py", "--config=configs/default.py", f"--workdir={tmp_path}",
      "--config.optimizer.name=lamb2",
    ],
    cwd=ROOT, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown optimizer.name 'lamb2'")
