"""The comparison report: rows, columns, order, statuses, figures and attention maps."""

import csv
import json
import os
import time
from pathlib import Path

import pytest

from experiments.compare import __main__ as compare_cli
from experiments.compare import report, stats, sweep
from tests.helpers import tiny_config, write_experiment

PNG = b"\x89PNG\r\n\x1a\n"


def _write(path, obj) -> None:
  path.write_text(json.dumps(obj))


def read_csv(path) -> list[dict[str, str]]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def fake_run(
  directory,
  name: str,
  best: float,
  final: float,
  metric: str = "eval/loss",
  seed=None,
  test: float | None = None,
) -> None:
  """A finished run's files as the loop writes them (no checkpoints)."""
  run = directory / (name if seed is None else f"{name},seed={seed}")
  run.mkdir(parents=True)
  overrides = {"model.attention.name": name} | ({} if seed is None else {"seed": seed})
  _write(run / "overrides.json", overrides)
  test = best if test is None else test
  _write(run / "results.json", {
    "config": {"seed": 0}, "step": 20, "status": "finished", "main_metric": metric,
    "metrics": {metric: final, "eval/loss": final}, "best": {metric: best}, "best_step": 10,
    "test": {metric.replace("eval/", "test/"): test}, "splits": {"test": "held out"},
    "throughput": {"steps_per_sec": 10.0 * best, "tokens_per_sec": 1000.0 * best,
                   "steady_steps_per_sec": 20.0 * best},
    "flops_per_step": 1e6, "params": 1234, "compile_seconds": 1.5,
    "peak_memory_bytes": int(best * 2**20), "wall_seconds": 30.0,
  })  # fmt: skip
  lines = [{"step": s, "wall_seconds": 2.0 * s, metric: final + 1 / s} for s in (5, 10, 20)]
  (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def _table(text: str, heading: str) -> list[list[str]]:
  """The cells of the first table after `heading` in a report."""
  block = text.split(heading, 1)[1]
  lines = [ln for ln in block.split("\n\n##")[0].splitlines() if ln.startswith("|")]
  return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[2:]]


def test_groups_over_seeds_intervals_paired_tests_and_holm(tmp_path):
  """Three groups of accuracy runs over seeds 0-2 (one seed of `c` missing): every number in the
  comparison table equals the statistics module's on the same values."""
  metric = "eval/accuracy"
  tests = {"a": [0.80, 0.82, 0.84], "b": [0.60, 0.61, 0.66], "c": [0.81, 0.86]}
  for name, values in tests.items():
    for seed, value in enumerate(values):
      fake_run(tmp_path, name, best=value + 0.01, final=value, metric=metric, seed=seed, test=value)
  broken = tmp_path / "c,seed=2"
  broken.mkdir()
  _write(broken / "overrides.json", {"model.attention.name": "c", "seed": 2})
  (broken / "error.txt").write_text("RuntimeError: out of memory\n")

  text = Path(report.write_report(str(tmp_path), baseline="a")).read_text()
  assert "**Protocol.**" in text and "selected on the validation split" in text
  assert "reported on the test split" in text and "Holm-corrected over the 2 comparisons" in text
  rows = _table(text, "## Comparison at equal steps (test split)")
  assert [r[0] for r in rows] == ["c", "**a**", "b"]  # by test mean, higher first
  by_name = {r[0].strip("*"): r for r in rows}
  base = {s: v for s, v in enumerate(tests["a"])}
  p_b = stats.paired(base, dict(enumerate(tests["b"]))).p
  p_c = stats.paired(base, dict(enumerate(tests["c"]))).p
  holm_b, holm_c = stats.holm([p_b, p_c])
  for name, p in (("b", holm_b), ("c", holm_c)):
    s = stats.summarize(tests[name])
    row = by_name[name]
    assert row[1] == str(len(tests[name]))
    assert row[3] == f"{s.center:.4f} ± {s.std:.4f}"
    assert row[4] == f"[{s.low:.4f}, {s.high:.4f}]"
    assert row[6] == f"{p:.4f}"
  assert by_name["c"][2] == "0, 1 (1 missing)"
  assert by_name["a"][7] == "baseline"
  assert holm_b < 0.05 and by_name["b"][7] == "worse"
  assert by_name["c"][7] == "no detectable difference"
  power = {r[0]: r for r in _table(text, "### How many seeds")}
  d = [b - a for a, b in zip(tests["a"], tests["b"], strict=True)]
  sd, scale = stats.summarize(d).std, stats.summarize(tests["a"]).center
  assert power["b"][1] == f"{sd:.4f}"
  assert power["b"][2:] == [str(stats.seeds_needed(f * scale, sd)) for f in (0.01, 0.02, 0.05, 0.1)]
  assert "## Comparison at equal training time (validation split)" in text
  assert "## Comparison at equal training FLOPs (validation split)" in text
  with pytest.raises(ValueError, match="matches no group; groups: 'a', 'b', 'c'"):
    report.write_report(str(tmp_path), baseline="zzz")
  for figure in ("curves.png", "tradeoff.png"):
    assert (tmp_path / "report" / figure).read_bytes().startswith(PNG)


def test_one_seed_per_group_says_there_is_no_interval(tmp_path):
  for name, value in (("a", 0.5), ("b", 0.7)):
    fake_run(tmp_path, name, best=value, final=value, metric="eval/accuracy", seed=0)
  text = Path(report.write_report(str(tmp_path))).read_text()
  rows = _table(text, "## Comparison at equal steps (test split)")
  assert [r[0] for r in rows] == ["b", "**a**"]  # the first group is the default baseline
  assert rows[0][4] == "n = 1: no interval" and rows[0][7] == "n = 1: no test"
  assert rows[0][5].startswith("+0.2000 (one shared seed)")


def test_equal_time_view_takes_the_last_evaluation_within_the_shortest_budget(tmp_path):
  """A run twice as fast gets the evaluation it reached in the slower group's training time."""
  from experiments.compare import comparison

  for name, rate in (("slow", 1.0), ("fast", 2.0)):
    fake_run(tmp_path, name, best=0.5, final=0.5, metric="eval/accuracy", seed=0)
    results = json.loads((tmp_path / f"{name},seed=0" / "results.json").read_text())
    results["throughput"]["steady_steps_per_sec"] = rate
    _write(tmp_path / f"{name},seed=0" / "results.json", results)
    curve = [{"step": s, "wall_seconds": 1.0, "eval/accuracy": s / 100} for s in (5, 10, 20)]
    (tmp_path / f"{name},seed=0" / "metrics.jsonl").write_text(
      "".join(json.dumps(x) + "\n" for x in curve)
    )
  rows = report.collect(str(tmp_path))
  groups = comparison.groups(rows)
  view = comparison.view("time", groups, groups[0], "eval/accuracy", "max")
  values = {r.group.name: r.values[0] for r in view.rows}
  # slow: 20 steps in 20 s; fast: 20 steps in 10 s. Budget: the shorter total, 10 s: slow reaches
  # step 10 (0.10) within it, fast its last step 20 (0.20).
  assert values == {"fast": pytest.approx(0.20), "slow": pytest.approx(0.10)}
  flops = comparison.view("flops", groups, groups[0], "eval/accuracy", "max")
  assert {r.group.name: r.values[0] for r in flops.rows} == {"fast": 0.2, "slow": 0.2}


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
  assert "| c | **1.5000** | **1.0000** | **1.0000** |" in text  # the lowest loss is the best
  assert "| a | 3.5000 | 3.0000 | 3.0000 |" in text and "**3,000**" in text  # a: the fastest
  assert "lower is better" in text and "no map for c (seed 0)" in text
  report.print_summary(path, top=2)
  out = capsys.readouterr().out
  assert out.startswith(f"report: {path}") and "... and 4 more rows" in out  # 6 groups
  assert "verdict" in out and "95% CI" in out


def test_report_of_a_real_sweep_has_every_file_row_and_column(tmp_path, capsys):
  """A real 2-point sweep of the tiny config (a few steps each), then its report."""
  path = write_experiment(
    tmp_path / "experiment.py", 'axis("model.attention.name", ["scaled_dot", "additive"])', steps=6
  )
  runs = tmp_path / "runs"
  assert sweep.run(tiny_config(steps=6), path, str(runs)) == ["finished", "finished"]
  report.print_summary(report.write_report(str(runs)))
  assert "report: " in capsys.readouterr().out
  out = runs / "report"
  rows = read_csv(out / "results.csv")
  assert len(rows) == 2
  assert list(rows[0]) == ["point", "model.attention.name", *report.CSV_COLUMNS]
  assert {r["model.attention.name"] for r in rows} == {"scaled_dot", "additive"}
  assert {(r["status"], r["main_metric"]) for r in rows} == {("finished", "eval/sequence_accuracy")}
  assert float(rows[0]["best"]) >= float(rows[1]["best"])  # higher is better here
  assert all(0 <= float(r["final"]) <= float(r["best"]) <= 1 for r in rows)
  assert all(0 <= float(r["test"]) <= 1 for r in rows)
  for key in ("eval_loss", "params", "steps_per_sec", "steady_steps_per_sec", "tokens_per_sec",
              "flops_per_step", "peak_memory_mib", "compile_seconds", "wall_seconds"):  # fmt: skip
    assert all(float(r[key]) > 0 for r in rows), key
  text = (out / "report.md").read_text()
  assert "Baseline: **scaled_dot**" in text  # the sweep's first point (sweep.json)
  table = _table(text, "## Every run")
  assert len(table) == 2 and "**" in text
  for name in ("curves.png", "tradeoff.png", "attention_attention.name=scaled_dot.png",
               "attention_attention.name=additive.png"):  # fmt: skip
    data = (out / name).read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000, name
    assert f"({name})" in text, name

  compare_cli.main([str(runs), "--max_maps=0", "--speed=steps_per_sec", "--top=1"])
  out = capsys.readouterr().out
  assert "report: " in out and "... and 1 more rows" in out
  with pytest.raises(SystemExit) as stopped:
    compare_cli.main([str(runs), "--baseline=nope"])
  assert stopped.value.code == 2
  assert "--baseline='nope' matches no group" in capsys.readouterr().err


def test_damaged_results_and_metrics_are_left_out_with_a_warning(tmp_path, caplog):
  for name, best in (("a", 2.0), ("b", 1.0)):
    fake_run(tmp_path, name, best=best, final=best)
  (tmp_path / "a" / "results.json").write_text('{"config": {"se')  # cut short
  (tmp_path / "b" / "metrics.jsonl").write_bytes(b'\xff\xfe[1, 2]\n"x"\n{"step": 5, "eval/l\n')
  report.write_report(str(tmp_path))
  statuses = {r["point"]: r["status"] for r in read_csv(tmp_path / "report" / "results.csv")}
  assert statuses == {"a": "unreadable results.json (JSONDecodeError)", "b": "finished"}
  assert "unreadable run files" in caplog.text and str(tmp_path / "a") in caplog.text
