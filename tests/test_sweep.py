"""Sweeps: declaring, naming, running, skipping, resuming, recording failures; the report."""

import csv
import os

import pytest

from configs.common import axis, chain, product, zip_
from experiments import preemption, sweep, train
from tests.tiny import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = """
import sys
sys.path.insert(0, {root!r})
from configs.common import axis
from tests.tiny import tiny_config

def get_config(arg=None):
  return tiny_config(steps=6)

def get_sweep(arg=None):
  return axis("model.attention.name", ["scaled_dot", "linformer", "dot"])
"""


def test_helpers_expand_as_declared():
  a, b = axis("x.a", [1, 2]), axis("x.b", ["u", "v"])
  assert product(a, b) == [
    {"x.a": 1, "x.b": "u"}, {"x.a": 1, "x.b": "v"}, {"x.a": 2, "x.b": "u"}, {"x.a": 2, "x.b": "v"}
  ]  # fmt: skip
  assert zip_(a, b) == [{"x.a": 1, "x.b": "u"}, {"x.a": 2, "x.b": "v"}]
  assert chain(a, b) == [*a, *b]
  with pytest.raises(ValueError, match="one length"):
    zip_(a, axis("x.c", [1]))


def test_point_names_are_readable_stable_and_safe():
  point = {"model.attention.name": "additive", "optimizer.learning_rate": 1e-3}
  assert sweep.point_name(point) == "attention.name=additive,optimizer.learning_rate=0.001"
  assert sweep.point_name(dict(point)) == sweep.point_name(point)
  assert "/" not in sweep.point_name({"data.data_dir": "a/b c"})


def test_overrides_are_checked():
  config = sweep.apply_overrides(tiny_config(), {"model.attention.name": "dot"})
  assert config.model.attention.name == "dot"
  with pytest.raises(ValueError, match=r"model has no 'widht'; valid: .*emb_dim"):
    sweep.apply_overrides(tiny_config(), {"model.widht": 3})


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  """A 3-point sweep (one point fails) whose middle point was interrupted before it ran."""
  base = tmp_path_factory.mktemp("sweep")
  path = base / "experiment.py"
  path.write_text(EXPERIMENT.format(root=ROOT))
  workdir = base / "runs"
  interrupted = workdir / sweep.point_name({"model.attention.name": "dot"})

  def stop(step):
    if step == 3:
      preemption.request_stop()

  config = sweep.apply_overrides(tiny_config(steps=6), {"model.attention.name": "dot"})
  assert train.train_and_evaluate(config, str(interrupted), hooks=[stop])["status"] == "preempted"
  statuses = sweep.run(tiny_config(steps=6), str(path), str(workdir))
  return path, workdir, statuses


def test_failing_point_is_recorded_and_the_rest_run(swept):
  _, workdir, statuses = swept
  assert statuses == ["finished", "failed", "finished"]
  failed = workdir / "attention.name=linformer"
  assert "linformer" in (failed / "error.txt").read_text()
  assert (workdir / "attention.name=scaled_dot" / "results.json").exists()


def test_interrupted_point_resumed_and_finished_points_skipped(swept):
  path, workdir, _ = swept
  log = (workdir / "attention.name=dot" / "metrics.jsonl").read_text()
  assert '"step": 3' in log and '"step": 6' in log  # one run up to 3, then resumed to 6
  again = sweep.run(tiny_config(steps=6), str(path), str(workdir))
  assert again == ["skipped", "failed", "skipped"]
  assert sweep.run(tiny_config(steps=6), str(path), str(workdir), point=0) == "skipped"


def test_report_has_every_file_row_and_column(swept):
  _, workdir, _ = swept
  report = workdir / "report"
  with open(report / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 3
  assert {"point", "model.attention.name", "final", "best", "tokens_per_sec", "status"} <= set(
    rows[0]
  )
  assert rows[-1]["status"].startswith("failed")
  text = (report / "report.md").read_text()
  assert text.count("\n| attention.name=") == 3 and "**" in text
  for name in ("curves.png", "tradeoff.png", "attention_attention.name=scaled_dot.png"):
    assert (report / name).stat().st_size > 10_000, name
