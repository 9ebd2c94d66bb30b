"""Groups of runs over seeds, compared with a baseline under one budget (the report's numbers).

A *group* is the runs whose sweep overrides differ only in `seed`. For each group a *view*
gives one number per seed, and every view is compared the same way: mean ± std, a 95% t
interval over seeds, and the paired difference to the baseline group over the seeds both have
(`stats.paired`), Holm-corrected over the groups compared (`stats.holm`), with a verdict.

Views (the budget every group gets, and the split each number is read on):
* `steps` (default): the run's full step budget; the checkpoint selected on validation, reported
  on the test split (evaluated once, at that checkpoint).
* `time`: equal training time. The budget is the shortest median training time of any group
  (steps / steady-state steps/s, compilation and evaluation excluded); each run contributes its
  last validation evaluation within it. No selection: the last evaluation, not the best.
* `flops`: equal training FLOPs (the matrix products of one traced train step, forward and
  backward, loops counted per iteration, x steps), likewise.
"""

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

from experiments.compare import stats

VIEWS = ("steps", "time", "flops")


@dataclasses.dataclass
class Group:
  """Runs of one sweep point over seeds; `runs[seed]` is a report row (see report.collect)."""

  name: str  # the shared overrides' values, e.g. "transformer / scaled_dot"
  overrides: dict[str, Any]
  runs: dict[int, dict[str, Any]]
  missing: list[str]  # runs of the group that did not finish, with their status


@dataclasses.dataclass
class Row:
  """One group in a view: its summary over seeds and its comparison with the baseline."""

  group: Group
  values: dict[int, float]  # seed -> value
  summary: stats.Summary | None
  difference: stats.Paired | None = None  # against the baseline; None for the baseline itself
  p_adjusted: float | None = None
  verdict: str = ""


@dataclasses.dataclass
class View:
  name: str
  metric: str  # e.g. test/sequence_accuracy
  description: str  # budget and split, for the table's caption
  rows: list[Row]  # best first
  baseline: Row | None


def group_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
  """A point's overrides without its seed: what the runs of one group share."""
  return {k: v for k, v in overrides.items() if k != "seed"}


def group_name(overrides: dict[str, Any]) -> str:
  return " / ".join(str(v) for v in group_overrides(overrides).values()) or "base"


def groups(rows: Sequence[dict[str, Any]], order: Sequence[str] = ()) -> list[Group]:
  """Groups of `rows` (report rows): those named in `order` in that order, then by name."""
  out: dict[str, Group] = {}
  for r in rows:
    shared = group_overrides(r["swept"])
    name = group_name(shared) if r["swept"] else r["point"]  # a run outside a sweep: alone
    group = out.setdefault(name, Group(name, shared, {}, []))
    if r.get("status") == "finished":
      group.runs[r["seed"]] = r
    else:
      group.missing.append(f"{r['point']}: {r.get('status', 'not run')}")
  rank = {name: i for i, name in enumerate(order)}
  return sorted(out.values(), key=lambda g: (rank.get(g.name, len(rank)), g.name))


def sweep_order(directory: str) -> list[str]:
  """Group names in the sweep's declared order (DIR/sweep.json), or [] without one."""
  path = os.path.join(directory, "sweep.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    points = json.load(f).get("points", [])
  return list(dict.fromkeys(group_name(p["overrides"]) for p in points))


def pick_baseline(groups_: Sequence[Group], wanted: str | None) -> Group | None:
  """The group named `wanted` (its name, or the one group having it among its values); default
  the first group. A name matching none or several raises ValueError listing the groups."""
  if not groups_:
    return None
  if wanted is None:
    return groups_[0]
  exact = [g for g in groups_ if g.name == wanted]
  by_value = [g for g in groups_ if wanted in {str(v) for v in g.overrides.values()}]
  found = exact or by_value
  if len(found) != 1:
    names = ", ".join(repr(g.name) for g in groups_)
    why = "matches several groups" if found else "matches no group"
    raise ValueError(f"--baseline={wanted!r} {why}; groups: {names}")
  return found[0]


def steady_seconds(run: dict[str, Any], steps: int) -> float | None:
  """Training seconds for `steps` at the run's steady-state rate (compilation excluded)."""
  rate = run.get("steady_steps_per_sec")
  return steps / rate if rate else None


def _budget_value(run: dict[str, Any], cost_of_step, budget: float) -> float | None:
  """The run's last validation value whose cumulative cost is within `budget`."""
  within = [v for s, v in run["curve"] if cost_of_step(run, s) <= budget * (1 + 1e-9)]
  return within[-1] if within else None


def view(
  name: str,
  groups_: Sequence[Group],
  baseline: Group | None,
  metric: str,
  mode: str,
  test: str = "t",
) -> View:
  """The groups under one budget (see the module docstring); rows best first by mean."""
  base_metric = metric.split("/", 1)[1]
  if name == "steps":
    key = f"test/{base_metric}"
    values = {g.name: {s: r["test_metrics"].get(key) for s, r in g.runs.items()} for g in groups_}
    steps = sorted({r["steps"] for g in groups_ for r in g.runs.values()})
    description = (
      f"`{key}` at {_list(steps)} steps: the checkpoint selected on validation (`{metric}`), "
      "evaluated once on the test split"
    )
  elif name in ("time", "flops"):
    if name == "time":
      cost, unit = steady_seconds, "s of training at the steady-state rate"
    else:
      cost, unit = (lambda r, s: s * r["flops_per_step"] if r.get("flops_per_step") else None,
                    "matrix-product FLOPs of training")  # fmt: skip
    totals = [
      stats.summarize([c for r in g.runs.values() if (c := cost(r, r["steps"]))], "median").center
      for g in groups_
      if any(cost(r, r["steps"]) for r in g.runs.values())
    ]
    budget = min(totals) if totals else 0.0
    values = {
      g.name: {s: _budget_value(r, cost, budget) for s, r in g.runs.items() if cost(r, 1)}
      for g in groups_
    }
    key = metric
    description = (
      f"`{metric}` (validation) at an equal budget of {budget:,.3g} {unit}, the shortest "
      "group's median: each run's last evaluation within it (no selection)"
    )
  else:
    raise ValueError(f"view {name!r}; valid: {', '.join(VIEWS)}")
  rows = []
  for g in groups_:
    clean = {s: v for s, v in values[g.name].items() if v is not None}
    rows.append(Row(g, clean, stats.summarize(list(clean.values())) if clean else None))
  base_row = next((r for r in rows if baseline is not None and r.group is baseline), None)
  others = [r for r in rows if r is not base_row]
  if base_row is not None:
    for r in others:
      r.difference = stats.paired(base_row.values, r.values, test) if r.values else None
    adjusted = stats.holm([r.difference.p if r.difference else None for r in others])
    for r, p in zip(others, adjusted, strict=True):
      r.p_adjusted = p
      r.verdict = stats.verdict(r.difference, p, mode)
    base_row.verdict = "baseline"
  sign = -1.0 if mode == "max" else 1.0
  rows.sort(key=lambda r: (r.summary is None, sign * (r.summary.center if r.summary else 0.0)))
  return View(name, key, description, rows, base_row)


def _list(values: Sequence[Any]) -> str:
  return ", ".join(f"{v:,}" for v in values)
