"""Everyday mistakes on main.py's command line end in one line naming the field, exit status 2,
nothing written, and (for the fields) in about a second: the config is read and checked before
TensorFlow is imported and before JAX starts.

Each bad input goes through what main.py runs (`config_file.load`, then `validate.check_fields`
and `validate.check_config`) in-process; a few go through main.py itself, one per kind of path.
"""

import os
import subprocess
import sys
import time

import pytest

from experiments.run import config_file, validate
from tests.helpers import ENV, ROOT

DEFAULT = "configs/default.py"
# (overrides, the field the one line must name)
BAD = [
  (["--config.model.atention.name=additive"], "model.attention.name"),
  (["--config.model.num_heads=0"], "model.num_heads"),
  (["--config.model.attention.top_k=-1"], "top_k"),
  (["--config.model.attention.top_k=0"], "top_k"),
  (["--config.model.attention.top_k=2.5"], "top_k"),
  (["--config.model.attention.temperature=0"], "temperature"),
  (["--config.model.attention.temperature=-1"], "temperature"),
  (["--config.model.num_heads=8", "--config.model.attention.num_kv_heads=3"], "num_kv_heads"),
  (["--config.model.dropout_rate=1.5"], "model.dropout_rate"),
  (["--config.model.attention_dropout_rate=-0.1"], "model.attention_dropout_rate"),
  (["--config.model.attention.name=local", "--config.model.attention.window=-1"], "window"),
  (["--config.model.attention.name=sliding_window", "--config.model.attention.window=0"], "window"),
  (["--config.model.attention.windw=3"], "windw"),
  (["--config.model.attention.name=additive", "--config.model.attention.window=3"], "window"),
  (["--config.model.attention.name=nope"], "model.attention"),
  (["--config.model.name=transformr"], "model.name"),
  (["--config.train.num_steps=ten"], "train.num_steps"),
  (["--config.data.vocab_size=2"], "data.vocab_size"),
  (["--config.data.min_length=9", "--config.data.max_length=5"], "data.min_length"),
  (["--config.data.eval_examples=0"], "data.eval_examples"),
  (["--config.data.name=revrse"], "data.name"),
]


def _check(experiment: str, overrides: list[str]) -> None:
  config = config_file.load(experiment, overrides)
  validate.check_fields(config)
  validate.check_config(config)


# batching (configs/translation.py: packed rows by default)
BAD_BATCHING = [
  (["--config.data.batch_tokens=4096"], "data.batch_tokens"),
  (["--config.data.bucket_by_length=True"], "data.pack"),
  (["--config.data.pack=False", "--config.data.bucket_by_length=True",
    "--config.data.batch_tokens=-1"], "data.batch_tokens"),
]  # fmt: skip


@pytest.mark.parametrize(
  ("experiment", "overrides", "field"),
  [(DEFAULT, o, f) for o, f in BAD] + [("configs/translation.py", o, f) for o, f in BAD_BATCHING],
  ids=[" ".join(o) for o, _ in BAD + BAD_BATCHING],
)
def test_bad_field_is_one_line_naming_it(experiment, overrides, field):
  with pytest.raises(config_file.ConfigError) as err:
    _check(experiment, overrides)
  message = str(err.value)
  assert "\n" not in message and field in message, message


def test_suggestions_and_the_fields_a_type_has():
  with pytest.raises(config_file.ConfigError, match=r"did you mean model\.attention\.name\?"):
    _check(DEFAULT, ["--config.model.atention.name=additive"])
  with pytest.raises(config_file.ConfigError, match=r"did you mean 'window'\?.*its fields: mode"):
    _check(DEFAULT, ["--config.model.attention.name=local", "--config.model.attention.windw=3"])
  with pytest.raises(config_file.ConfigError, match=r"'window' belongs to .*sliding_window"):
    _check(DEFAULT, ["--config.model.attention.window=3"])  # scaled_dot has no window


@pytest.mark.parametrize(
  "overrides",
  [
    ["--config.model.attention.num_kv_heads=1"],  # the README's example
    ["--config.model.attention.top_k=2", "--config.model.attention.temperature=0.5"],
    ["--config.model.attention.window=4", "--config.model.attention.name=local"],  # any order
    ["--config.model.attention.name=bigbird", "--config.model.attention.block_size=4"],
    ["--config.model.attention.name=recurrent", "--config.model.attention.hidden_size=none"],
  ],
)
def test_undeclared_fields_of_the_chosen_type_work(overrides):
  config = config_file.load(DEFAULT, overrides)
  validate.check_config(config)
  for key, text in config_file.parse_overrides(overrides):
    value = config.model.attention[key.rpartition(".")[2]]
    assert str(value).lower() == str(text).lower()


def test_none_fields_take_strings_and_literals():
  config = config_file.load("configs/lm.py", ["--config.data.data_dir=/data/tfds"])
  assert config.data.data_dir == "/data/tfds"
  config = config_file.load(DEFAULT, ["--config.train.profile_steps=(3, 2)"])
  assert config.train.profile_steps == (3, 2)
  config = config_file.load(
    DEFAULT, ["--config.model.bidirectional", "--noconfig.model.share_embeddings"]
  )
  assert config.model.bidirectional is True and config.model.share_embeddings is False


def test_sparse_pattern_covering_the_sequence_warns():
  config = config_file.load(DEFAULT, ["--config.model.attention.name=sliding_window"])
  (warning,) = validate.check_fields(config)  # window 128 >= max_len 32
  assert "model.attention.window=128 covers the whole sequence" in warning
  config = config_file.load(
    DEFAULT, ["--config.model.attention.name=sliding_window", "--config.model.attention.window=4"]
  )
  assert validate.check_fields(config) == []
  assert validate.ignored_fields(config, ["model.cell", "model.emb_dim"]) == [
    "model.cell is not read by model 'transformer': it has no effect"
  ]


def test_broken_experiment_files(tmp_path):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n")
  cases = [
    (str(tmp_path / "missing.py"), "no such file"),
    (str(broken), "broken.py:1: invalid syntax"),
    (f"{DEFAULT}:stepz=3", "unknown config arg 'stepz'"),
  ]
  for experiment, message in cases:
    with pytest.raises(config_file.ConfigError, match=message):
      config_file.load(experiment)


def _main(workdir, *flags: str) -> tuple[subprocess.CompletedProcess, float]:
  start = time.perf_counter()
  proc = subprocess.run(
    [sys.executable, "main.py", *flags, f"--workdir={workdir}"],
    cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  return proc, time.perf_counter() - start


def _one_error_line(proc, field: str) -> None:
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(errors) == 1 and field in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


def test_main_fails_fast_on_a_field(tmp_path):
  """The fast path: no TensorFlow, no JAX backend; the only output is the error line."""
  workdir = tmp_path / "run"
  proc, seconds = _main(
    workdir, f"--config={DEFAULT}", "--config.model.attention.name=local",
    "--config.model.attention.window=0",
  )  # fmt: skip
  _one_error_line(proc, "model.attention.window")
  assert proc.stderr.strip().count("\n") == 0, proc.stderr
  assert seconds < 3, f"{seconds:.1f} s"
  assert not workdir.exists()


def test_main_one_line_for_task_rules_and_files(tmp_path):
  """The task's rules need its module (TensorFlow): later, still one line and nothing written."""
  workdir = tmp_path / "run"
  proc, _ = _main(workdir, f"--config={DEFAULT}", "--config.data.eval_examples=0")
  _one_error_line(proc, "data.eval_examples")
  proc, _ = _main(workdir, f"--config={tmp_path / 'missing.py'}")
  _one_error_line(proc, "missing.py")
  assert not workdir.exists()
