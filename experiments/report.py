"""One report comparing the points of a sweep (or any runs in the folders of a directory).

    python -m experiments.report DIR [--max_maps=N] [--speed=steps_per_sec] [--top=K]

writes DIR/report/: report.md and results.csv (one row per run, best first by the main metric,
the best value of each column in bold), curves.png (eval metric against step and wall-clock
time), tradeoff.png (metric against throughput, marker area = peak memory: the Long Range Arena
view) and attention_<point>.png (attention maps of one fixed eval example), then prints where the
report is and the top rows of its table.
"""

import argparse
import csv
import json
import os
import time
from collections.abc import Callable
from textwrap import shorten
from typing import Any

from absl import logging

from experiments import attention_maps, plots, tasks

# Whether higher or lower is better, per main metric (results.json names it).
MODES = {f"eval/{name}": mode for name, mode in tasks.MAIN_METRIC.values()} | {"eval/bleu": "max"}
RUNNING_SECONDS = 300  # an unfinished run that wrote a file this recently counts as running


def _f(spec: str) -> Callable[[Any], str]:
  return lambda v: format(v, spec)


# (key, header, better: "main" (the main metric's mode) | "max" | "min" | None, format)
COLUMNS = [
  ("final", "final", "main", _f(".4f")),
  ("best", "best", "main", _f(".4f")),
  ("eval_loss", "eval loss", "min", _f(".4f")),
  ("params", "params", None, _f(",")),
  ("steps_per_sec", "steps/s", "max", _f(",.1f")),
  ("tokens_per_sec", "tokens/s", "max", _f(",.0f")),
  ("peak_memory_mib", "peak memory (MiB)", "min", _f(",.1f")),
  ("compile_seconds", "compile (s)", "min", _f(",.1f")),
  ("wall_seconds", "wall (s)", "min", _f(",.1f")),
  ("status", "status", None, str),
]
CSV_COLUMNS = ["main_metric", "final", "best", "best_step", "eval_loss", "params",
               "steps_per_sec", "tokens_per_sec", "peak_memory_mib", "compile_seconds",
               "wall_seconds", "status"]  # fmt: skip


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
  if os.path.exists(os.path.join(run, "config.json")):
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
    if has("overrides.json"):
      row["swept"] = _read_json(os.path.join(run, "overrides.json"))
    if has("results.json"):
      r = _read_json(os.path.join(run, "results.json"))
      main = r["main_metric"]
      row |= {
        "status": r.get("status", "finished"),
        "main_metric": main,
        "final": r["metrics"].get(main),
        "best": (r.get("best") or r["metrics"]).get(main),
        "best_step": r.get("best_step"),
        "eval_loss": r["metrics"].get("eval/loss"),
        "params": r["params"],
        "steps_per_sec": r["throughput"]["steps_per_sec"],
        "tokens_per_sec": r["throughput"]["tokens_per_sec"],
        "peak_memory_mib": r["peak_memory_bytes"] / 2**20,
        "compile_seconds": r["compile_seconds"],
        "wall_seconds": r["wall_seconds"],
      }
    elif has("error.txt"):
      row["status"] = f"failed: {_error_line(os.path.join(run, 'error.txt'))}"
    elif time.time() - _newest_write(run) < RUNNING_SECONDS:
      row["status"] = f"running ({_progress(run)})"
    else:
      row["status"] = f"incomplete ({_progress(run)})"
    rows.append(row)
  return _sorted(rows)


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


def _maps(rows: list[dict[str, Any]], out: str, max_maps: int | None) -> tuple[list, list]:
  """Draws attention maps; returns ([(point, file)], [(point, why there is none)])."""
  drawn, missing = [], []
  for r in [r for r in rows if r["status"] == "finished"][:max_maps]:
    if not os.path.isdir(os.path.join(r["dir"], "checkpoints")):
      missing.append((r["point"], "no checkpoints"))
      continue
    try:
      path = attention_maps.draw(r["dir"], os.path.join(out, f"attention_{r['point']}.png"))
      why = "its attention forms no weights matrix"
    except Exception as e:  # noqa: BLE001 - a map that cannot be drawn must not sink the report
      logging.exception("no attention map for %s", r["point"])
      path, why = None, f"{type(e).__name__}: {e}".splitlines()[0][:160]
    if path:
      drawn.append((r["point"], os.path.basename(path)))
    else:
      missing.append((r["point"], why))
  return drawn, missing


def write_report(directory: str, max_maps: int | None = None, speed: str = "tokens_per_sec") -> str:
  """Writes DIR/report/ (maps for the first `max_maps` finished runs, all if None); returns the
  path of report.md."""
  out = os.path.join(directory, "report")
  os.makedirs(out, exist_ok=True)
  rows = collect(directory)
  write_csv(rows, os.path.join(out, "results.csv"))
  metric, mode = main_metric(rows)
  finished = [r for r in rows if r["status"] == "finished"]
  failed = [r for r in rows if r["status"].startswith("failed")]
  text = [
    f"# Report: {os.path.basename(os.path.abspath(directory))}\n",
    f"{len(rows)} runs: {len(finished)} finished, {len(failed)} failed, "
    f"{len(rows) - len(finished) - len(failed)} unfinished. Main metric `{metric}` "
    f"({'higher' if mode == 'max' else 'lower'} is better); best first, the best value of each "
    "column in **bold**.\n",
    markdown(rows) + "\n",
    "*final*: at the last step; *best*: the best evaluation (its checkpoint is kept). Throughput "
    "counts training steps only (no compilation or evaluation). Peak memory: the device's peak "
    "on GPU/TPU; on CPU the train step's compiled footprint (arguments + outputs + temporaries). "
    "*wall*: the whole run, compilation and evaluations included.\n",
  ]
  if finished:
    plots.curves(rows, metric, os.path.join(out, "curves.png"))
    plots.tradeoff(finished, metric, speed, os.path.join(out, "tradeoff.png"))
    text += [
      "## Learning curves\n",
      f"`{metric}` on the eval set by training step and by wall-clock time.\n",
      "![curves](curves.png)\n",
      "## Quality against speed\n",
      "![tradeoff](tradeoff.png)\n",
    ]
  drawn, missing = _maps(rows, out, max_maps)
  if drawn or missing:
    text.append("## Attention maps\n")
    text.append("One fixed eval example, every layer and head, from each run's best checkpoint.\n")
    text += [f"### {point}\n\n![{point}]({file})\n" for point, file in drawn]
    text += [f"* no map for {point}: {why}" for point, why in missing]
  if failed:
    text.append("\n## Failures\n")
    text += [f"* {r['point']}: {r['status'][8:]} (see `{r['point']}/error.txt`)" for r in failed]
  path = os.path.join(out, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(text) + "\n")
  return path


TERMINAL_SKIPS = ("eval loss", "params", "steps/s", "compile (s)")  # columns summary() leaves out


def summary(path: str, top: int = 5) -> str:
  """Where the report is and the top rows of its table, aligned for a terminal."""
  with open(path) as f:
    table = [ln.strip() for ln in f if ln.startswith("|")]
  cells = [[c.strip().replace("**", "") for c in ln.strip("|").split(" | ")] for ln in table]
  keep = [i for i, h in enumerate(cells[0]) if h not in TERMINAL_SKIPS]
  metric = next((h.rsplit(" (", 1)[0] for h in cells[0] if h.endswith(" (best)")), "")
  cells[0] = [h.rsplit(" (", 1)[1][:-1] if h.startswith(f"{metric} (") else h for h in cells[0]]
  cells = [[shorten(row[i], 70) for i in keep] for row in [cells[0], *cells[2 : top + 2]]]
  widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
  more = len(table) - 2 - top
  tail = [f"... and {more} more rows in the report"] if more > 0 else []
  return "\n".join([f"report: {path}", f"main metric: {metric}", *lines, *tail])


def print_summary(path: str, top: int = 5) -> None:
  print(summary(path, top), flush=True)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("directory", help="a sweep's --workdir (one folder per run)")
  parser.add_argument("--max_maps", type=int, default=None, help="attention maps of the best N")
  parser.add_argument(
    "--speed", default="tokens_per_sec", choices=["tokens_per_sec", "steps_per_sec"]
  )
  parser.add_argument("--top", type=int, default=5, help="table rows to print")
  args = parser.parse_args(argv)
  print_summary(write_report(args.directory, args.max_maps, args.speed), args.top)


if __name__ == "__main__":
  main()
