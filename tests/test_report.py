"""The comparison report: rows, columns, order, statuses, figures and attention maps."""

import csv
import json
import os
import time

from experiments import report, sweep
from tests.test_sweep import write_experiment
from tests.tiny import tiny_config

PNG = b"\x89PNG\r\n\x1a\n"


def _write(path, obj) -> None:
  path.write_text(json.dumps(obj))


def read_csv(path) -> list[dict[str, str]]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def fake_run(directory, name: str, best: float, final: float, metric: str = "eval/loss") -> None:
  """A finished run's files as the loop writes them (no checkpoints)."""
  run = directory / name
  run.mkdir(parents=True)
  _write(run / "overrides.json", {"model.attention.name": name})
  _write(run / "results.json", {
    "config": {}, "step": 20, "status": "finished", "main_metric": metric,
    "metrics": {metric: final, "eval/loss": final}, "best": {metric: best}, "best_step": 10,
    "throughput": {"steps_per_sec": 10.0 * best, "tokens_per_sec": 1000.0 * best},
    "params": 1234, "compile_seconds": 1.5, "peak_memory_bytes": int(best * 2**20),
    "wall_seconds": 30.0,
  })  # fmt: skip
  lines = [{"step": s, "wall_seconds": 2.0 * s, metric: final + 1 / s} for s in (5, 10, 20)]
  (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_rows_statuses_order_and_bold_for_a_lower_is_better_metric(tmp_path, capsys):
  for name, best in (("b", 2.0), ("a", 3.0), ("c", 1.0)):
    fake_run(tmp_path, name, best=best, final=best + 0.5)
  failed = tmp_path / "failed"
  failed.mkdir()
  _write(failed / "overrides.json", {"model.attention.name": "failed"})
  (failed / "error.txt").write_text("ValueError: bad width\n\nTraceback (most recent call last):\n")
  for name, age in (("stale", 3600), ("busy", 0)):
    run = tmp_path / name
    run.mkdir()
    _write(run / "config.json", {"train": {"num_steps": 50}})
    (run / "metrics.jsonl").write_text('{"step": 10, "wall_seconds": 1.0, "train/loss": 1.0}\n')
    for f in run.iterdir():
      os.utime(f, (time.time() - age,) * 2)
  (tmp_path / "not_a_run").mkdir()

  path = report.write_report(str(tmp_path))
  rows = read_csv(tmp_path / "report" / "results.csv")
  assert [r["point"] for r in rows] == ["c", "b", "a", "busy", "failed", "stale"]  # lower first
  assert rows[0]["best"] == "1.0" and rows[0]["main_metric"] == "eval/loss"
  statuses = {r["point"]: r["status"] for r in rows}
  assert statuses["failed"] == "failed: ValueError: bad width"
  assert statuses["stale"] == "incomplete (step 10/50)"
  assert statuses["busy"] == "running (step 10/50)"
  with open(path) as f:
    text = f.read()
  assert "| c | **1.5000** | **1.0000** |" in text  # the lowest loss is the best
  assert "| a | 3.5000 | 3.0000 |" in text and "**3,000**" in text  # a: the fastest
  assert "lower is better" in text and "no map for c" in text
  report.print_summary(path, top=2)
  out = capsys.readouterr().out
  assert out.startswith(f"report: {path}") and "... and 4 more rows" in out
  for figure in ("curves.png", "tradeoff.png"):
    assert (tmp_path / "report" / figure).read_bytes().startswith(PNG)


def test_report_of_a_real_sweep_has_every_file_row_and_column(tmp_path, capsys):
  """A real 2-point sweep of the tiny config (a few steps each), then its report."""
  path = write_experiment(
    tmp_path / "experiment.py", 'axis("model.attention.name", ["scaled_dot", "additive"])', steps=6
  )
  runs = tmp_path / "runs"
  assert sweep.run(tiny_config(steps=6), path, str(runs)) == ["finished", "finished"]
  assert "report: " in capsys.readouterr().out
  out = runs / "report"
  rows = read_csv(out / "results.csv")
  assert len(rows) == 2
  assert list(rows[0]) == ["point", "model.attention.name", *report.CSV_COLUMNS]
  assert {r["model.attention.name"] for r in rows} == {"scaled_dot", "additive"}
  assert {(r["status"], r["main_metric"]) for r in rows} == {("finished", "eval/sequence_accuracy")}
  assert float(rows[0]["best"]) >= float(rows[1]["best"])  # higher is better here
  assert all(0 <= float(r["final"]) <= float(r["best"]) <= 1 for r in rows)
  for key in ("eval_loss", "params", "steps_per_sec", "tokens_per_sec", "peak_memory_mib",
              "compile_seconds", "wall_seconds"):  # fmt: skip
    assert all(float(r[key]) > 0 for r in rows), key
  text = (out / "report.md").read_text()
  table = [ln for ln in text.splitlines() if ln.startswith("|")]
  assert len(table) == 4 and "eval/sequence_accuracy (best)" in table[0] and "**" in text
  for name in ("curves.png", "tradeoff.png", "attention_attention.name=scaled_dot.png",
               "attention_attention.name=additive.png"):  # fmt: skip
    data = (out / name).read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000, name
    assert f"({name})" in text, name

  report.main([str(runs), "--max_maps=0", "--speed=steps_per_sec", "--top=1"])
  out = capsys.readouterr().out
  assert "report: " in out and "... and 1 more rows" in out
