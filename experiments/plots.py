"""The report's figures (matplotlib, Agg): learning curves and the speed/accuracy trade-off."""

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label(row: dict) -> str:
  """A short legend entry: the swept values (the point's name when nothing was swept)."""
  return " / ".join(str(v) for v in row["swept"].values()) or row["point"]


def _eval_curve(run_dir: str, metric: str) -> tuple[list, list, list]:
  steps, walls, values = [], [], []
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if metric in record:
        steps.append(record["step"])
        walls.append(record["wall_seconds"])
        values.append(record[metric])
  return steps, walls, values


def curves(rows: list[dict], path: str) -> str:
  """Eval main metric against step and against wall-clock seconds, one line per run."""
  metric = rows[0]["main_metric"]
  fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  for r in rows:
    steps, walls, values = _eval_curve(r["dir"], metric)
    by_step.plot(steps, values, marker=".", label=label(r))
    by_time.plot(walls, values, marker=".", label=label(r))
  by_step.set_xlabel("training step")
  by_time.set_xlabel("wall-clock time (s)")
  by_step.set_ylabel(metric)
  for ax in (by_step, by_time):
    ax.grid(alpha=0.3)
  by_time.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def tradeoff(rows: list[dict], path: str) -> str:
  """Best metric against training throughput; marker area proportional to peak memory."""
  metric = rows[0]["main_metric"]
  fig, ax = plt.subplots(figsize=(10, 5.5))
  peak = max(r["peak_memory_mib"] for r in rows)
  for r in rows:
    size = 40 + 800 * r["peak_memory_mib"] / peak
    ax.scatter(r["tokens_per_sec"], r["best"], s=size, alpha=0.6, label=label(r))
  legend = ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, markerscale=0.5)
  for handle in legend.legend_handles:
    handle.set_sizes([40])
  ax.set_xlabel("training throughput (tokens/s)")
  ax.set_ylabel(f"best {metric}")
  ax.set_title(f"speed vs quality (marker area ∝ peak memory, max {peak:,.0f} MiB)")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
