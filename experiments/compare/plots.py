"""The report's figures (matplotlib, Agg): learning curves and the speed/quality trade-off."""

import json
import math
import os
from typing import Any

import matplotlib
import numpy as np

from experiments.compare import stats

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402


def eval_curve(run_dir: str, metric: str) -> tuple[list[int], list[float], list[float]]:
  """(steps, wall-clock seconds, values) of `metric` in a run's metrics.jsonl."""
  steps, walls, values = [], [], []
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return steps, walls, values
  with open(path, errors="replace") as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:  # a line cut short by a crash, or garbled
        continue
      if isinstance(record, dict) and metric in record and "step" in record:
        steps.append(record["step"])
        walls.append(record.get("wall_seconds"))
        values.append(record[metric])
  return steps, walls, values


def _legend_outside(ax, **kwargs) -> Any:
  return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, **kwargs)


def _mean_curve(runs: list[dict[str, Any]], x_of) -> tuple[np.ndarray, ...]:
  """(x, mean, std) over `runs` at the evaluation steps all of them have; x averaged."""
  curves = [dict(r["curve"]) for r in runs]
  steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
  values = np.asarray([[c[s] for s in steps] for c in curves], float)
  xs = np.asarray([[x_of(r, s) for s in steps] for r in runs], float)
  std = values.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(steps))
  return xs.mean(0), values.mean(0), std


def curves(groups: list[Any], metric: str, path: str) -> str:
  """Validation `metric` against step and against training time (steps at each run's
  steady-state rate), one line per group: the mean over its seeds, a band of ± one std."""
  fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
  groups = [g for g in groups if g.runs]
  for g, (color, marker) in zip(groups, styles(len(groups)), strict=True):
    runs = [r for r in g.runs.values() if r["curve"]]
    if not runs:
      continue
    style = {"marker": marker, "markersize": 4, "color": color}
    x, mean, std = _mean_curve(runs, lambda r, s: s)
    by_step.plot(x, mean, label=f"{g.name} (n={len(runs)})", **style)
    by_step.fill_between(x, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
    timed = [r for r in runs if r.get("steady_steps_per_sec")]
    if timed:
      x, mean, std = _mean_curve(timed, lambda r, s: s / r["steady_steps_per_sec"])
      by_time.plot(x, mean, **style)
      by_time.fill_between(x, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
  by_step.set_xlabel("training step")
  by_time.set_xlabel("training time at the steady-state rate (s; no compilation, no eval)")
  by_step.set_ylabel(f"{metric} (validation)")
  by_step.set_title(f"{metric} by step (mean ± std over seeds)", fontsize=10)
  by_time.set_title(f"{metric} by training time", fontsize=10)
  for ax in (by_step, by_time):
    ax.grid(alpha=0.3)
  fig.legend(*by_step.get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(0.83, 0.93),
             fontsize=8, title="group (seeds)", title_fontsize=8)  # fmt: skip
  fig.tight_layout(rect=(0, 0, 0.82, 1))
  fig.savefig(path, dpi=110, bbox_inches="tight")  # the legend may reach past the figure
  plt.close(fig)
  return path


def styles(n: int) -> list[tuple[Any, str]]:
  """n distinguishable (colour, marker) pairs: the tab10 colours, then again with other markers."""
  cmap = plt.get_cmap("tab10")
  return [(cmap(i % 10), "osD^v<>"[(i // 10) % 7]) for i in range(n)]


def _place_labels(fig, ax, points: list[tuple[float, float, float, str]]) -> None:
  """Writes each label (x, y, marker area in pt², text) beside its marker, on the side where it
  overlaps the fewest earlier labels and other markers and stays inside the axes."""
  renderer = fig.canvas.get_renderer()
  px = fig.dpi / 72.0
  frame = ax.get_window_extent(renderer)
  markers = []
  for x, y, area, _ in points:
    cx, cy = ax.transData.transform((x, y))
    r = 0.5 * area**0.5 * px
    markers.append(Bbox.from_extents(cx - r, cy - r, cx + r, cy + r))
  placed = []
  for i, (x, y, area, text) in enumerate(points):
    r = 0.5 * area**0.5 + 2  # points
    best = None
    # Beside the marker first; in a crowd further out (16 directions), with a thin leader line.
    for reach in (0.0, 12.0, 24.0, 36.0, 52.0, 72.0):
      leader = {"arrowprops": {"arrowstyle": "-", "color": "0.5", "lw": 0.6}} if reach else {}
      for k in range(16):
        angle = 2 * math.pi * k / 16
        dx, dy = math.cos(angle), math.sin(angle)
        ha = "left" if dx > 0.3 else "right" if dx < -0.3 else "center"
        va = "bottom" if dy > 0.3 else "top" if dy < -0.3 else "center"
        offset = ((r + reach) * dx, (r + reach) * dy)
        note = ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", ha=ha,
                           va=va, fontsize=8, **leader)  # fmt: skip
        note.update_positions(renderer)
        box = Text.get_window_extent(note, renderer)  # the text alone, not its leader line
        others = (m for j, m in enumerate(markers) if j != i)
        cost = sum(box.overlaps(b) for b in placed) + 0.5 * sum(box.overlaps(m) for m in others)
        inside = (
          frame.x0 <= box.x0 <= box.x1 <= frame.x1 and frame.y0 <= box.y0 <= box.y1 <= frame.y1
        )
        cost += (0 if inside else 10) + 0.004 * reach  # nearer wins a tie
        if best is None or cost < best[0]:
          if best is not None:
            best[1].remove()
          best = (cost, note, box)
        else:
          note.remove()
      if best[0] < 0.5:  # no overlap at this reach
        break
    placed.append(best[2])


def tradeoff(view: Any, groups: list[Any], speed: str, path: str) -> str:
  """A view's metric (mean, 95% CI over seeds) against training throughput (`speed`:
  steps_per_sec | tokens_per_sec; steady-state median over seeds, bootstrap 95% interval), marker
  area proportional to peak memory, each group labelled (the Long Range Arena Figure 3 view)."""
  points = []
  for r in view.rows:
    rates = [x[f"steady_{speed}"] for x in r.group.runs.values() if x.get(f"steady_{speed}")]
    if r.summary is None or not rates:
      continue
    rate = stats.summarize(rates, "median")
    memory = max(x["peak_memory_mib"] for x in r.group.runs.values())
    points.append((r, rate, memory))
  fig, ax = plt.subplots(figsize=(10, 6))
  peak = max((m for _, _, m in points), default=1.0)
  area = lambda mib: 30 + 900 * mib / peak  # noqa: E731
  labelled = []
  named = [g.name for g in groups if g.runs]
  style = dict(zip(named, styles(len(named)), strict=True))  # the colours of curves()
  for r, rate, memory in points:
    color, marker = style[r.group.name]
    y, x = r.summary.center, rate.center
    yerr = [[y - r.summary.low], [r.summary.high - y]] if r.summary.low is not None else None
    xerr = [[x - rate.low], [rate.high - x]] if rate.low is not None else None
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="none", ecolor=color, elinewidth=1, capsize=3)
    ax.scatter(x, y, s=area(memory), alpha=0.55, color=color, marker=marker,
               edgecolors="black", linewidths=0.5, zorder=3)  # fmt: skip
    labelled.append((x, y, area(memory), f"{r.group.name} (n={r.summary.n})"))
  speeds = [rate.center for _, rate, _ in points]
  if speeds and min(speeds) > 0 and max(speeds) / min(speeds) > 20:
    ax.set_xscale("log")
  ax.margins(x=0.15, y=0.12)
  for mib in sorted({peak, min((m for _, _, m in points), default=peak)}):
    ax.scatter([], [], s=area(mib), color="gray", alpha=0.4, label=f"{mib:,.1f} MiB")
  _legend_outside(ax, title="peak memory", title_fontsize=8, labelspacing=2.0, borderpad=1.2,
                  handletextpad=1.5)  # fmt: skip
  unit = "tokens/s" if speed == "tokens_per_sec" else "steps/s"
  ax.set_xlabel(f"training throughput ({unit}, steady state, median over seeds)")
  ax.set_ylabel(f"{view.metric} (mean over seeds, 95% CI)")
  ax.set_title(f"quality vs speed (marker area ∝ peak memory, largest {peak:,.1f} MiB)", size=10)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.canvas.draw()  # the final geometry: labels are placed in it
  _place_labels(fig, ax, labelled)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
