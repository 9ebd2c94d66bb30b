"""One report comparing the points of a sweep (or any runs under a directory).

    python -m experiments.report DIR

writes DIR/report/: report.md and results.csv (one row per point, sorted by the main metric,
the best of each column in bold), curves.png (eval metric against step and wall-clock time),
tradeoff.png (metric against throughput, marker area = peak memory: the Long Range Arena view)
and attention_<point>.png (attention maps of one fixed eval example).
"""

import csv
import json
import os
import sys
from typing import Any

from absl import logging

from experiments import attention_maps, plots

COLUMNS = [  # (key, header, better: max | min | None)
  ("final", "final", "max"),
  ("best", "best", "max"),
  ("eval_loss", "eval loss", "min"),
  ("params", "params", None),
  ("steps_per_sec", "steps/s", "max"),
  ("tokens_per_sec", "tokens/s", "max"),
  ("peak_memory_mib", "peak MiB", "min"),
  ("compile_seconds", "compile s", "min"),
  ("wall_seconds", "wall s", "min"),
  ("status", "status", None),
]


def _read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def collect(directory: str) -> list[dict[str, Any]]:
  """A row per run directory below `directory` (one holding config.json or overrides.json)."""
  rows = []
  for name in sorted(os.listdir(directory)):
    run = os.path.join(directory, name)
    if name == "report" or not os.path.isdir(run):
      continue
    has = lambda f, run=run: os.path.exists(os.path.join(run, f))  # noqa: E731
    if not (has("config.json") or has("overrides.json")):
      continue
    row: dict[str, Any] = {"point": name, "dir": run, "swept": {}}
    if has("overrides.json"):
      row["swept"] = _read_json(os.path.join(run, "overrides.json"))
    if has("results.json"):
      r = _read_json(os.path.join(run, "results.json"))
      main = r["main_metric"]
      row |= {
        "status": r.get("status", "finished"),
        "main_metric": main,
        "final": r["metrics"].get(main),
        "best": r["best"].get(main),
        "eval_loss": r["metrics"].get("eval/loss"),
        "params": r["params"],
        "steps_per_sec": r["throughput"]["steps_per_sec"],
        "tokens_per_sec": r["throughput"]["tokens_per_sec"],
        "peak_memory_mib": r["peak_memory_bytes"] / 2**20,
        "compile_seconds": r["compile_seconds"],
        "wall_seconds": r["wall_seconds"],
      }
    elif has("error.txt"):
      with open(os.path.join(run, "error.txt")) as f:
        last = [ln for ln in f.read().strip().splitlines() if ln.strip()][-1]
      row["status"] = f"failed: {last[:120]}"
    else:
      row["status"] = "incomplete"
    rows.append(row)
  return sorted(rows, key=lambda r: -(r.get("best") if r.get("best") is not None else -1e30))


def _fmt(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:,.4f}" if abs(value) < 10 else f"{value:,.1f}"
  return str(value)


def _best(rows: list[dict], key: str, better: str | None) -> Any:
  values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
  if not better or not values:
    return None
  return max(values) if better == "max" else min(values)


def markdown(rows: list[dict]) -> str:
  swept = list(dict.fromkeys(k for r in rows for k in r["swept"]))
  metric = next((r["main_metric"] for r in rows if "main_metric" in r), "main metric")
  headers = [
    "point",
    *swept,
    *(h if k not in ("final", "best") else f"{metric} ({h})" for k, h, _ in COLUMNS),
  ]
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  best = {k: _best(rows, k, b) for k, _, b in COLUMNS}
  for r in rows:
    cells = [r["point"], *(_fmt(r["swept"].get(k)) for k in swept)]
    for key, _, _ in COLUMNS:
      text = _fmt(r.get(key))
      cells.append(f"**{text}**" if best[key] is not None and r.get(key) == best[key] else text)
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_csv(rows: list[dict], path: str) -> None:
  swept = list(dict.fromkeys(k for r in rows for k in r["swept"]))
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["point", *swept, "main_metric", *(k for k, _, _ in COLUMNS)])
    for r in rows:
      writer.writerow(
        [r["point"], *(r["swept"].get(k, "") for k in swept), r.get("main_metric", "")]
        + [r.get(k, "") for k, _, _ in COLUMNS]
      )


def write_report(directory: str, max_maps: int = 4) -> str:
  """Writes DIR/report/ and returns the path of report.md."""
  out = os.path.join(directory, "report")
  os.makedirs(out, exist_ok=True)
  rows = collect(directory)
  write_csv(rows, os.path.join(out, "results.csv"))
  finished = [r for r in rows if "final" in r]
  figures = []
  if finished:
    figures.append(plots.curves(finished, os.path.join(out, "curves.png")))
    figures.append(plots.tradeoff(finished, os.path.join(out, "tradeoff.png")))
  for r in finished[:max_maps]:
    try:
      path = attention_maps.draw(r["dir"], os.path.join(out, f"attention_{r['point']}.png"))
    except Exception as e:  # noqa: BLE001 - a map that cannot be drawn must not sink the report
      logging.warning("no attention map for %s: %s", r["point"], e)
      path = None
    if path:
      figures.append(path)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(f"# Report: {os.path.abspath(directory)}\n\n{len(rows)} runs, best first.\n\n")
    f.write(markdown(rows) + "\n\n")
    f.writelines(f"![{os.path.basename(p)}]({os.path.basename(p)})\n\n" for p in figures)
  return os.path.join(out, "report.md")


def print_summary(path: str, rows: int = 5) -> None:
  """Where the report is and the top rows of its table."""
  with open(path) as f:
    table = [ln for ln in f if ln.startswith("|")]
  print(f"report: {path}")
  print("".join(table[: rows + 2]), end="")


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    sys.exit("usage: python -m experiments.report DIR")
  print_summary(write_report(argv[1]))


if __name__ == "__main__":
  main(sys.argv)
