"""Run every point of an experiment file's sweep, each into its own workdir.

    python main.py --config=configs/compare_reverse.py --workdir=DIR --sweep [--sweep_parallel=N]
    python main.py --config=configs/compare_reverse.py --workdir=DIR --sweep_point=K   # one point

`get_sweep(arg)` in the experiment file returns override dicts (see configs/common.py). Point K
runs in DIR/<name of its overrides>/ (with its overrides in overrides.json); a point whose
results.json exists is skipped, an interrupted one resumes from its checkpoints, and a failing
one leaves its traceback in error.txt without stopping the others. The report runs at the end.
"""

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import traceback
from typing import Any

import ml_collections
from absl import logging

from experiments import report, train


def load_sweep(config_path: str) -> list[dict[str, Any]]:
  """`configs/x.py[:arg]` -> the list of override dicts of its `get_sweep(arg)`."""
  path, _, arg = config_path.partition(":")
  spec = importlib.util.spec_from_file_location("experiment_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} defines no get_sweep(arg); add one or drop --sweep")
  return module.get_sweep(arg or None)


def _value(v: Any) -> str:
  return f"{v:g}" if isinstance(v, float) else str(v)


def point_name(overrides: dict[str, Any]) -> str:
  """Readable, stable, filesystem-safe: the last two parts of each key, `=`, the value."""
  parts = [f"{'.'.join(k.split('.')[-2:])}={_value(v)}" for k, v in overrides.items()]
  return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", ",".join(parts)) or "base"


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]):
  """A copy of `config` with dotted-key overrides (type-checked like `--config.a.b=v`)."""
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      if part not in node:
        raise ValueError(f"sweep key {key!r}: no section {part!r}; valid: {sorted(node.keys())}")
      node = node[part]
    if leaf not in node:
      section = ".".join(parents) or "config"
      raise ValueError(
        f"sweep key {key!r}: {section} has no {leaf!r}; valid: {sorted(node.keys())}"
      )
    node[leaf] = value
  return config


def run_point(config, overrides: dict[str, Any], workdir: str) -> str:
  """Runs one point; returns its status ('skipped', 'finished', 'preempted' or 'failed')."""
  directory = os.path.join(workdir, point_name(overrides))
  if os.path.exists(os.path.join(directory, "results.json")):
    return "skipped"
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "overrides.json"), "w") as f:
    json.dump(overrides, f, indent=1)
  try:
    results = train.train_and_evaluate(apply_overrides(config, overrides), directory)
  except Exception:  # noqa: BLE001 - a failing point is recorded, the sweep goes on
    with open(os.path.join(directory, "error.txt"), "w") as f:
      f.write(traceback.format_exc())
    logging.error("point %s failed; see %s/error.txt", point_name(overrides), directory)
    return "failed"
  error = os.path.join(directory, "error.txt")
  if os.path.exists(error):
    os.remove(error)
  return results.get("status", "finished")


def _subprocess_args(point: int) -> list[str]:
  """This command line with --sweep/--sweep_parallel replaced by --sweep_point=K."""
  keep = [a for a in sys.argv[1:] if not a.startswith(("--sweep", "--nosweep"))]
  return [sys.executable, sys.argv[0], *keep, f"--sweep_point={point}"]


def run(config, config_path: str, workdir: str, parallel: int = 1, point: int | None = None):
  """The whole sweep (or one point of it), then the report."""
  points = load_sweep(config_path)
  if point is not None:
    if not 0 <= point < len(points):
      raise ValueError(f"--sweep_point={point}; the sweep has points 0..{len(points) - 1}")
    return run_point(config, points[point], workdir)
  names = [point_name(p) for p in points]
  if len(set(names)) != len(names):
    raise ValueError(f"sweep points with the same name: {names}")
  if parallel <= 1:
    statuses = [run_point(config, p, workdir) for p in points]
  else:
    statuses = _run_parallel(len(points), parallel)
  for name, status in zip(names, statuses, strict=True):
    logging.info("%-60s %s", name, status)
  report.print_summary(report.write_report(workdir))
  return statuses


def _run_parallel(n: int, parallel: int) -> list[str]:
  waiting, running, statuses = list(range(n)), {}, [""] * n
  while waiting or running:
    while waiting and len(running) < parallel:
      k = waiting.pop(0)
      running[k] = subprocess.Popen(_subprocess_args(k))
    for k, proc in list(running.items()):
      if proc.poll() is not None:
        statuses[k] = "finished" if proc.returncode == 0 else f"exit {proc.returncode}"
        del running[k]
    time.sleep(0.5)
  return statuses
