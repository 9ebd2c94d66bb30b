"""The report's figures (matplotlib, Agg): learning curves and the speed/quality trade-off."""

import json
import math
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402


def label(row: dict[str, Any]) -> str:
  """A short legend entry: the swept values (the point's name when nothing was swept)."""
  return " / ".join(str(v) for v in row["swept"].values()) or row["point"]


def eval_curve(run_dir: str, metric: str) -> tuple[list[int], list[float], list[float]]:
  """(steps, wall-clock seconds, values) of `metric` in a run's metrics.jsonl."""
  steps, walls, values = [], [], []
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return steps, walls, values
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # a line cut short by a crash
        continue
      if metric in record:
        steps.append(record["step"])
        walls.append(record["wall_seconds"])
        values.append(record[metric])
  return steps, walls, values


def _legend_outside(ax, **kwargs) -> Any:
  return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, **kwargs)


def curves(rows: list[dict[str, Any]], metric: str, path: str) -> str:
  """Eval `metric` against step and against wall-clock seconds, one line per run (runs that did
  not finish dashed)."""
  fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
  for r, (color, marker) in zip(rows, styles(len(rows)), strict=True):
    steps, walls, values = eval_curve(r["dir"], metric)
    if not steps:
      continue
    dashes = "-" if r["status"] == "finished" else "--"
    style = {"marker": marker, "markersize": 4, "color": color, "linestyle": dashes}
    by_step.plot(steps, values, label=label(r), **style)
    by_time.plot(walls, values, **style)
  by_step.set_xlabel("training step")
  by_time.set_xlabel("wall-clock time since the run started (s, incl. compilation)")
  by_step.set_ylabel(metric)
  by_step.set_title(f"{metric} by step", fontsize=10)
  by_time.set_title(f"{metric} by time", fontsize=10)
  for ax in (by_step, by_time):
    ax.grid(alpha=0.3)
  fig.legend(*by_step.get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(0.83, 0.93),
             fontsize=8, title="run (dashed: unfinished)", title_fontsize=8)  # fmt: skip
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


def tradeoff(rows: list[dict[str, Any]], metric: str, speed: str, path: str) -> str:
  """Best `metric` against training throughput (`speed`: steps_per_sec | tokens_per_sec), marker
  area proportional to peak memory, each point labelled (the Long Range Arena Figure 3 view)."""
  rows = [r for r in rows if r.get(speed) and r.get("best") is not None]
  fig, ax = plt.subplots(figsize=(10, 6))
  peak = max(r["peak_memory_mib"] for r in rows)
  area = lambda mib: 30 + 900 * mib / peak  # noqa: E731
  labelled = []
  for r, (color, marker) in zip(rows, styles(len(rows)), strict=True):
    size = area(r["peak_memory_mib"])
    ax.scatter(r[speed], r["best"], s=size, alpha=0.55, color=color, marker=marker,
               edgecolors="black", linewidths=0.5)  # fmt: skip
    labelled.append((r[speed], r["best"], size, label(r)))
  speeds = [r[speed] for r in rows]
  if min(speeds) > 0 and max(speeds) / min(speeds) > 20:
    ax.set_xscale("log")
  ax.margins(x=0.15, y=0.12)
  for mib in sorted({peak, min(r["peak_memory_mib"] for r in rows)}):
    ax.scatter([], [], s=area(mib), color="gray", alpha=0.4, label=f"{mib:,.1f} MiB")
  _legend_outside(ax, title="peak memory", title_fontsize=8, labelspacing=2.0, borderpad=1.2,
                  handletextpad=1.5)  # fmt: skip
  unit = "tokens/s" if speed == "tokens_per_sec" else "steps/s"
  ax.set_xlabel(f"training throughput ({unit})")
  ax.set_ylabel(f"best {metric}")
  ax.set_title(f"quality vs speed (marker area ∝ peak memory, largest {peak:,.1f} MiB)", size=10)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.canvas.draw()  # the final geometry: labels are placed in it
  _place_labels(fig, ax, labelled)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
