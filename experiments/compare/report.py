"""One report comparing the points of a sweep (or any runs in the folders of a directory).

    python -m experiments.compare DIR [--baseline=NAME] [--test=t|wilcoxon] [--max_maps=N]
                                     [--speed=steps_per_sec] [--top=K]

writes DIR/report/: report.md, with the protocol first (seeds, the split that selects, the split
that reports), then the groups (runs that differ only in seed) compared under equal steps (test
split), equal training time and equal FLOPs (`experiments.compare.comparison`): mean ± std, 95%
intervals, paired differences to the baseline with Holm-corrected p-values and a verdict; then
results.csv (one row per run), curves.png (validation metric by step and by training time, a band
across seeds), tradeoff.png (test metric against throughput with intervals, marker area = peak
memory: the Long Range Arena view), attention_<point>.png (one fixed validation example, one run
per group) and a table of every run. Prints where the report is and the top rows of its table.
"""

import contextlib
import csv
import json
import os
import time
from collections.abc import Callable
from textwrap import shorten
from typing import Any

from absl import logging

from experiments.compare import attention_maps, comparison, plots, stats
from experiments.run import tasks

# Whether higher or lower is better, per main metric (results.json names it).
MODES = {f"eval/{name}": mode for name, mode in tasks.MAIN_METRIC.values()} | {"eval/bleu": "max"}
RUNNING_SECONDS = 300  # an unfinished run that wrote a file this recently counts as running


def _f(spec: str) -> Callable[[Any], str]:
  return lambda v: format(v, spec)


# (key, header, better: "main" (the main metric's mode) | "max" | "min" | None, format)
COLUMNS = [
  ("final", "final", "main", _f(".4f")),
  ("best", "best", "main", _f(".4f")),
  ("test", "test", "main", _f(".4f")),
  ("eval_loss", "eval loss", "min", _f(".4f")),
  ("params", "params", None, _f(",")),
  ("steps_per_sec", "steps/s", "max", _f(",.1f")),
  ("tokens_per_sec", "tokens/s", "max", _f(",.0f")),
  ("peak_memory_mib", "peak memory (MiB)", "min", _f(",.1f")),
  ("compile_seconds", "compile (s)", "min", _f(",.1f")),
  ("wall_seconds", "wall (s)", "min", _f(",.1f")),
  ("status", "status", None, str),
]
CSV_COLUMNS = ["seed", "main_metric", "final", "best", "best_step", "test", "eval_loss",
               "params", "steps_per_sec", "steady_steps_per_sec", "tokens_per_sec",
               "flops_per_step", "peak_memory_mib", "compile_seconds", "wall_seconds",
               "status"]  # fmt: skip


def _read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def _error_line(path: str) -> str:
  """The first line of error.txt (the error itself), or a traceback's last line."""
  with open(path) as f:
    lines = [ln.strip() for ln in f if ln.strip()]
  if not lines:
    return "unknown error"
  return (lines[-1] if lines[0].startswith("Traceback") else lines[0])[:160]


def _progress(run: str) -> str:
  """'step N/M' of an unfinished run, from its metrics.jsonl and config.json."""
  steps = plots.eval_curve(run, "step")[0]  # every record has a step
  total = None
  with contextlib.suppress(OSError, ValueError, AttributeError):  # none yet, or damaged
    total = _read_json(os.path.join(run, "config.json")).get("train", {}).get("num_steps")
  return f"step {steps[-1] if steps else 0}/{total or '?'}"


def _newest_write(run: str) -> float:
  return max((e.stat().st_mtime for e in os.scandir(run)), default=0.0)


def collect(directory: str) -> list[dict[str, Any]]:
  """A row per run folder of `directory` (one holding config.json or overrides.json)."""
  rows = []
  for name in sorted(os.listdir(directory)):
    run = os.path.join(directory, name)
    has = lambda f, run=run: os.path.exists(os.path.join(run, f))  # noqa: E731
    if name == "report" or not os.path.isdir(run):
      continue
    if not (has("config.json") or has("overrides.json")):
      continue
    row: dict[str, Any] = {"point": name, "dir": run, "swept": {}}
    try:
      if has("overrides.json"):
        row["swept"] = _read_json(os.path.join(run, "overrides.json"))
      if has("results.json"):
        row |= _results_row(run, row)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
      logging.warning("%s: unreadable run files (%s: %s); left out", run, type(e).__name__, e)
      row["status"] = f"unreadable results.json ({type(e).__name__})"
    if "status" not in row:
      row["status"] = _unfinished_status(run, has("error.txt"))
    rows.append(row)
  return _sorted(rows)


def _unfinished_status(run: str, failed: bool) -> str:
  if failed:
    return f"failed: {_error_line(os.path.join(run, 'error.txt'))}"
  if time.time() - _newest_write(run) < RUNNING_SECONDS:
    return f"running ({_progress(run)})"
  return f"incomplete ({_progress(run)})"


def _results_row(run: str, row: dict[str, Any]) -> dict[str, Any]:
  """The report's fields from a run's results.json (raises if it is damaged)."""
  r = _read_json(os.path.join(run, "results.json"))
  row = dict(row)
  main = r["main_metric"]
  test = r.get("test") or {}
  row |= {
    "status": r.get("status", "finished"),
    "seed": row["swept"].get("seed", r["config"].get("seed")),
    "steps": r["step"],
    "main_metric": main,
    "final": r["metrics"].get(main),
    "best": (r.get("best") or r["metrics"]).get(main),
    "best_step": r.get("best_step"),
    "test": test.get(main.replace("eval/", "test/", 1)),
    "test_metrics": test,
    "splits": r.get("splits", {}),
    "eval_loss": r["metrics"].get("eval/loss"),
    "params": r["params"],
    "steps_per_sec": r["throughput"]["steps_per_sec"],
    "steady_steps_per_sec": r["throughput"].get("steady_steps_per_sec"),
    "tokens_per_sec": r["throughput"]["tokens_per_sec"],
    "flops_per_step": r.get("flops_per_step"),
    "peak_memory_mib": r["peak_memory_bytes"] / 2**20,
    "compile_seconds": r["compile_seconds"],
    "wall_seconds": r["wall_seconds"],
    "curve": list(zip(*plots.eval_curve(run, main)[::2], strict=True)),
  }
  steady = row["steady_steps_per_sec"]
  per_step = row["tokens_per_sec"] / row["steps_per_sec"] if row["steps_per_sec"] else None
  row["steady_tokens_per_sec"] = steady * per_step if steady and per_step else None
  return row


def main_metric(rows: list[dict[str, Any]]) -> tuple[str, str]:
  """(main metric, 'max' | 'min') of the finished runs."""
  metric = next((r["main_metric"] for r in rows if r.get("main_metric")), "eval/main metric")
  return metric, MODES.get(metric, "max")


def _sorted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Finished runs best first, then the others (in name order)."""
  sign = -1.0 if main_metric(rows)[1] == "max" else 1.0
  return sorted(rows, key=lambda r: (r.get("best") is None, sign * (r.get("best") or 0.0)))


def _swept_keys(rows: list[dict[str, Any]]) -> list[str]:
  return list(dict.fromkeys(k for r in rows for k in r["swept"]))


def _cell(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:g}"
  return "" if value is None else str(value)


def _plain(value: Any) -> Any:
  """A CSV cell: numbers at full precision, None empty, containers as JSON."""
  if value is None:
    return ""
  return json.dumps(value) if isinstance(value, dict | list | tuple) else value


def markdown(rows: list[dict[str, Any]]) -> str:
  """The results table; the best value of each column in bold (ties all bold)."""
  metric, mode = main_metric(rows)
  swept = _swept_keys(rows)
  first = swept or ["point"]
  headers = [*first, *(f"{metric} ({h})" if b == "main" else h for _, h, b, _ in COLUMNS)]
  best = {}
  for key, _, better, _ in COLUMNS:
    values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
    better = mode if better == "main" else better
    if better and values:
      best[key] = max(values) if better == "max" else min(values)
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  for r in rows:
    cells = [_cell(r["swept"].get(k)) for k in swept] if swept else [r["point"]]
    for key, _, _, fmt in COLUMNS:
      value = r.get(key)
      text = "" if value is None else fmt(value)
      cells.append(f"**{text}**" if key in best and value == best[key] else text)
    lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
  return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
  swept = _swept_keys(rows)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["point", *swept, *CSV_COLUMNS])
    for r in rows:
      writer.writerow(
        [r["point"], *(_plain(r["swept"].get(k)) for k in swept)]
        + [_plain(r.get(k)) for k in CSV_COLUMNS]
      )


def _maps(groups: list[comparison.Group], out: str, max_maps: int | None) -> tuple[list, list]:
  """Draws one attention map per group (its lowest seed); returns ([(group, file)],
  [(group, why there is none)])."""
  drawn, missing = [], []
  for g in [g for g in groups if g.runs][:max_maps]:
    r = g.runs[min(g.runs)]
    label = f"{g.name} (seed {r['seed']})"
    if not os.path.isdir(os.path.join(r["dir"], "checkpoints")):
      missing.append((label, "no checkpoints"))
      continue
    try:
      path = attention_maps.draw(r["dir"], os.path.join(out, f"attention_{r['point']}.png"))
      why = "its attention forms no weights matrix"
    except Exception as e:  # noqa: BLE001 - a map that cannot be drawn must not sink the report
      logging.exception("no attention map for %s", r["point"])
      path, why = None, f"{type(e).__name__}: {e}".splitlines()[0][:160]
    if path:
      drawn.append((label, os.path.basename(path)))
    else:
      missing.append((label, why))
  return drawn, missing


def _pm(summary: stats.Summary | None, fmt: str = ".4f") -> str:
  if summary is None:
    return ""
  if summary.std is None:
    return format(summary.center, fmt)
  return f"{summary.center:{fmt}} ± {summary.std:{fmt}}"


def _interval(low: float | None, high: float | None, n: int, fmt: str = ".4f") -> str:
  if low is None:
    return f"n = {n}: no interval"
  return f"[{low:{fmt}}, {high:{fmt}}]"


def _p(p: float | None) -> str:
  if p is None:
    return ""
  return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def _seeds(group: comparison.Group) -> str:
  text = ", ".join(str(s) for s in sorted(group.runs)) or "none"
  return text + (f" ({len(group.missing)} missing)" if group.missing else "")


def view_table(view: comparison.View, extra: dict[str, dict[str, str]] | None = None) -> str:
  """A view's rows: group, seeds, mean ± std, interval, paired difference to the baseline with
  its interval, Holm-adjusted p-value and verdict (+ `extra[column][group name]` columns)."""
  extra = extra or {}
  headers = ["group", "n", "seeds", f"{view.metric} mean ± std", "95% CI",
             "Δ vs baseline [95% CI]", "p (Holm)", "verdict", *extra]  # fmt: skip
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  for r in view.rows:
    n = r.summary.n if r.summary else 0
    ci = _interval(r.summary.low, r.summary.high, n) if r.summary else "no finished run"
    d = r.difference
    delta = (
      ""
      if d is None
      else f"{d.mean:+.4f} "
      + (_interval(d.low, d.high, d.n, "+.4f") if d.low is not None else "(one shared seed)")
    )
    cells = [f"**{r.group.name}**" if r is view.baseline else r.group.name, str(n),
             _seeds(r.group), _pm(r.summary), ci, delta, _p(r.p_adjusted), r.verdict,
             *(column.get(r.group.name, "") for column in extra.values())]  # fmt: skip
    lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
  return "\n".join(lines)


def _group_extras(groups: list[comparison.Group], speed: str) -> dict[str, dict[str, str]]:
  """Validation, speed and memory columns of the main table (median over seeds for timings)."""
  out: dict[str, dict[str, str]] = {"validation (best) mean ± std": {}, f"{speed} (median)": {},
                                    "peak memory (MiB)": {}}  # fmt: skip
  for g in groups:
    runs = list(g.runs.values())
    if not runs:
      continue
    out["validation (best) mean ± std"][g.name] = _pm(stats.summarize([r["best"] for r in runs]))
    rates = [r[f"steady_{speed}"] for r in runs if r.get(f"steady_{speed}")]
    if rates:
      out[f"{speed} (median)"][g.name] = f"{stats.summarize(rates, 'median').center:,.1f}"
    out["peak memory (MiB)"][g.name] = f"{max(r['peak_memory_mib'] for r in runs):,.1f}"
  return out


POWER_EFFECTS = (0.01, 0.02, 0.05, 0.1)  # differences as fractions of the baseline's mean


def power_table(view: comparison.View) -> str | None:
  """Seeds a paired t-test needs (power 0.8, α = 0.05) to detect differences of 1-10% of the
  baseline's mean, given each group's measured spread of paired differences (None without one)."""
  base = view.baseline
  rows = [r for r in view.rows if r.difference is not None and r.difference.n > 1]
  if base is None or base.summary is None or not rows or not base.summary.center:
    return None
  scale = abs(base.summary.center)
  headers = ["group", "std of paired differences",
             *(f"Δ = {f:.0%} ({f * scale:.3g})" for f in POWER_EFFECTS)]  # fmt: skip
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  for r in rows:
    d = [r.values[s] - base.values[s] for s in sorted(set(r.values) & set(base.values))]
    sd = stats.summarize(d).std
    if not sd:
      cells = ["—"] * len(POWER_EFFECTS)  # identical on every seed: any difference is visible
    else:
      needed = [stats.seeds_needed(f * scale, sd) for f in POWER_EFFECTS]
      cells = [f"{n}" if n else "> 1000" for n in needed]
    lines.append("| " + " | ".join([r.group.name, f"{sd:.4f}", *cells]) + " |")
  return "\n".join(lines)


def protocol(
  rows: list[dict[str, Any]], groups: list[comparison.Group], baseline, metric: str, test: str
) -> str:
  """The report's first paragraph: how every number below was obtained."""
  finished = [r for r in rows if r["status"] == "finished"]
  seeds = sorted({r["seed"] for r in finished if r.get("seed") is not None})
  steps = sorted({r["steps"] for r in finished})
  splits = next((r["splits"] for r in finished if r.get("splits")), {})
  where = "; ".join(f"{k}: {v}" for k, v in splits.items())
  with_test = sum(r.get("test") is not None for r in finished)
  test_name = {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}[test]
  return (
    f"**Protocol.** {len(groups)} groups (runs that differ only in seed) × seeds "
    f"{', '.join(map(str, seeds)) or 'none'}; {len(finished)} finished runs of "
    f"{', '.join(f'{s:,}' for s in steps)} steps. The checkpoint is **selected on the validation "
    f"split** (best `{metric}`) and **reported on the test split**, evaluated once at that "
    f"checkpoint ({with_test} of {len(finished)} runs have a test evaluation); nothing is "
    f"selected on test. Splits: {where or 'not recorded'}. Intervals: 95%, Student's t over "
    f"seeds (n = 1: none). Baseline: **{baseline.name if baseline else 'none'}**; every other "
    f"group is compared with it by a {test_name} over the seeds both have, p-values "
    f"Holm-corrected over the {max(len(groups) - 1, 0)} comparisons, verdict at α = "
    f"{stats.ALPHA}.\n"
  )


def write_report(
  directory: str,
  max_maps: int | None = None,
  speed: str = "tokens_per_sec",
  baseline: str | None = None,
  test: str = "t",
) -> str:
  """Writes DIR/report/ (maps for the first `max_maps` groups, all if None); returns the path of
  report.md. `baseline`: the group the others are compared with (default: the sweep's first)."""
  out = os.path.join(directory, "report")
  os.makedirs(out, exist_ok=True)
  rows = collect(directory)
  write_csv(rows, os.path.join(out, "results.csv"))
  metric, mode = main_metric(rows)
  finished = [r for r in rows if r["status"] == "finished"]
  failed = [r for r in rows if r["status"].startswith("failed")]
  groups = comparison.groups(rows, comparison.sweep_order(directory))
  base = comparison.pick_baseline([g for g in groups if g.runs], baseline)
  better = "higher" if mode == "max" else "lower"
  text = [
    f"# Report: {os.path.basename(os.path.abspath(directory))}\n",
    f"{len(rows)} runs: {len(finished)} finished, {len(failed)} failed, "
    f"{len(rows) - len(finished) - len(failed)} unfinished. Main metric `{metric}` ({better} is "
    "better).\n",
    protocol(rows, groups, base, metric, test),
  ]
  views = {}
  if finished:
    views = {v: comparison.view(v, groups, base, metric, mode, test) for v in comparison.VIEWS}
    steps = views["steps"]
    text += [
      "## Comparison at equal steps (test split)\n",
      f"{steps.description}. Sorted by the test mean, best first; the baseline in **bold**; "
      f"timings are the median over seeds of each run's steady-state rate.\n",
      view_table(steps, _group_extras(groups, speed)) + "\n",
      "Reading it: the 95% CI is the range of the group's mean consistent with its seeds; "
      "Δ is the mean paired difference to the baseline (same seeds, same data order) with its "
      "interval; *better*/*worse* need a Holm-adjusted p < "
      f"{stats.ALPHA}, else *no detectable difference* (more seeds may find one: see "
      "docs/experiments.md for how many).\n",
    ]
    power = power_table(steps)
    if power:
      text += [
        "### How many seeds\n",
        "Seeds a paired t-test needs to detect a difference of the given size from the "
        "baseline with power 0.8 at α = 0.05, from each group's measured spread of paired "
        "differences (the Holm correction asks somewhat more).\n",
        power + "\n",
      ]
    for name, title in (("time", "equal training time"), ("flops", "equal training FLOPs")):
      v = views[name]
      if any(r.summary for r in v.rows):
        text += [f"## Comparison at {title} (validation split)\n", f"{v.description}.\n",
                 view_table(v) + "\n"]  # fmt: skip
    plots.curves(groups, metric, os.path.join(out, "curves.png"))
    plots.tradeoff(steps, groups, speed, os.path.join(out, "tradeoff.png"))
    text += [
      "## Learning curves\n",
      f"`{metric}` on the validation split by training step and by training time (steps at the "
      "run's steady-state rate); the line is the mean over seeds, the band ± one std.\n",
      "![curves](curves.png)\n",
      "## Quality against speed\n",
      f"`{steps.metric}` (mean, 95% CI) against training throughput (median over seeds, 95% "
      "bootstrap interval); marker area ∝ peak memory.\n",
      "![tradeoff](tradeoff.png)\n",
    ]
  drawn, missing = _maps(groups, out, max_maps)
  if drawn or missing:
    text.append("## Attention maps\n")
    text.append("One fixed validation example, every layer and head, from the best checkpoint "
                "of each group's lowest seed.\n")  # fmt: skip
    text += [f"### {label}\n\n![{label}]({file})\n" for label, file in drawn]
    text += [f"* no map for {label}: {why}" for label, why in missing]
  text += [
    "\n## Every run\n",
    "Best first by the validation metric; the best value of each column in **bold**.\n",
    markdown(rows) + "\n",
    "*final*: validation at the last step; *best*: the best validation evaluation (its "
    "checkpoint is kept); *test*: that checkpoint on the test split. Throughput counts training "
    "steps only (no compilation or evaluation). Peak memory: the device's peak on GPU/TPU; on "
    "CPU the train step's compiled footprint (arguments + outputs + temporaries). *wall*: the "
    "whole run, compilation and evaluations included.\n",
  ]
  if failed:
    text.append("\n## Failures\n")
    text += [f"* {r['point']}: {r['status'][8:]} (see `{r['point']}/error.txt`)" for r in failed]
  path = os.path.join(out, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(text) + "\n")
  return path


TERMINAL_COLUMNS = ("group", "n", "95% CI", "p (Holm)", "verdict")  # + the mean ± std column


def summary(path: str, top: int = 5) -> str:
  """Where the report is and the top rows of its first table, aligned for a terminal."""
  table = []
  with open(path) as f:
    for line in f:
      if line.startswith("|"):
        table.append(line.strip())
      elif table:
        break
  if not table:
    return f"report: {path}\n(no runs)"
  cells = [[c.strip().replace("**", "") for c in ln.strip("|").split(" | ")] for ln in table]
  keep = [i for i, h in enumerate(cells[0]) if h in TERMINAL_COLUMNS or h.endswith("mean ± std")]
  keep = keep[:6] or list(range(min(4, len(cells[0]))))
  cells = [[shorten(row[i], 60) for i in keep] for row in [cells[0], *cells[2 : top + 2]]]
  widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
  more = len(table) - 2 - top
  tail = [f"... and {more} more rows in the report"] if more > 0 else []
  return "\n".join([f"report: {path}", *lines, *tail])


def print_summary(path: str, top: int = 5) -> None:
  print(summary(path, top), flush=True)
