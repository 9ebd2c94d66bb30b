"""Run every point of an experiment file's sweep, each into its own workdir.

    python main.py --config=configs/compare_reverse.py --workdir=DIR --sweep [--sweep_parallel=N]
    python main.py --config=configs/compare_reverse.py --workdir=DIR --sweep_point=K   # one point

`get_sweep(arg)` in the experiment file returns override dicts (see configs/common.py). Point K
runs in DIR/<name of its overrides>/ (its overrides in overrides.json). A point whose results.json
exists is skipped, an interrupted one resumes from its checkpoints, and a failing one leaves its
error and traceback in error.txt without stopping the others. With `--sweep_parallel=N` the points
run as N processes of main.py with `--sweep_point=K` at a time, each logging to DIR/<point>/log.txt.
The command line writes the report (experiments/compare/report.py) at the end of a sweep; the
runner itself does not import plotting.

Seeds: `--seeds=N` repeats every point with `seed` = 0..N-1 (points that differ only in seed form
one *group*; the report aggregates groups). The points of a sweep share JAX's persistent
compilation cache in DIR/compile_cache, so the seeds of a group compile their steps once.
DIR/sweep.json lists the points in declared order (the report's default baseline is the first).
"""

import copy
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from absl import logging
from jax.experimental.compilation_cache import compilation_cache

from experiments.run import config_file, preemption, train, validate

FINISHED, SKIPPED, FAILED, PREEMPTED = "finished", "skipped", "failed", "preempted"
NOT_RUN = "not run"


def load_experiment(experiment: str) -> tuple[str, str, Any]:
  """`configs/x.py[:arg]` -> (path, arg, the experiment file as a module)."""
  path, _, arg = experiment.partition(":")
  spec = importlib.util.spec_from_file_location("experiment_file", path)
  if spec is None:
    raise validate.ConfigError(f"cannot load experiment file {path!r}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return path, arg, module


def load_sweep(experiment: str, seeds: int = 0) -> list[dict[str, Any]]:
  """`configs/x.py[:arg]` -> the override dicts of its `get_sweep(arg)`, each repeated with
  `seed` 0..seeds-1 when `seeds` > 0 (a file without get_sweep is then one point)."""
  if seeds < 0:
    raise validate.ConfigError(f"--seeds={seeds}; give a number of seeds >= 1 (0: as declared)")
  path, arg, module = load_experiment(experiment)
  if not hasattr(module, "get_sweep") and not seeds:
    raise validate.ConfigError(f"{path} defines no get_sweep(arg); add one or drop --sweep")
  try:
    points = module.get_sweep(arg or None) if hasattr(module, "get_sweep") else [{}]
  except ValueError as e:  # e.g. an unknown experiment argument
    raise validate.ConfigError(f"{path}: {e}") from None
  if not points:
    raise validate.ConfigError(f"{path}: get_sweep({arg!r}) returned no points")
  points = [dict(p) for p in points]
  if seeds:
    if any("seed" in p for p in points):
      raise validate.ConfigError(f"{path}: its sweep already sets `seed`; drop --seeds")
    points = [{**p, "seed": s} for p in points for s in range(seeds)]
  return points


def _value(v: Any) -> str:
  if isinstance(v, float):
    return f"{v:g}"
  if isinstance(v, dict):
    return "+".join(f"{k}={_value(x)}" for k, x in v.items())
  if isinstance(v, list | tuple):
    return "x".join(_value(x) for x in v)
  return str(v)


def short_key(key: str) -> str:
  """A dotted key without its top-level section, at most its last two components; a bare `name`
  keeps its section: model.attention.name -> attention.name, optimizer.learning_rate ->
  learning_rate, model.name -> model.name, seed -> seed."""
  parts = key.split(".")
  short = parts[max(1, len(parts) - 2) :] or parts
  return ".".join(parts[-2:] if short == ["name"] else short)


def point_name(overrides: dict[str, Any]) -> str:
  """Readable, stable, filesystem-safe: `short key=value` per override, in declared order; keys
  whose short forms clash within the point (data.seed, seed) are written in full.

  {"model.attention.name": "additive", "optimizer.learning_rate": 1e-3}
      -> "attention.name=additive,learning_rate=0.001"
  """
  shorts = [short_key(k) for k in overrides]
  keys = [s if shorts.count(s) == 1 else k for k, s in zip(overrides, shorts, strict=True)]
  parts = [f"{k}={_value(v)}" for k, v in zip(keys, overrides.values(), strict=True)]
  return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", ",".join(parts))[:200] or "base"


def point_names(points: Sequence[dict[str, Any]]) -> list[str]:
  """The directory name of every point; two points may not share one."""
  names = [point_name(p) for p in points]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise validate.ConfigError(f"sweep points with the same name (same overrides?): {twice}")
  return names


def apply_overrides(
  config: ml_collections.ConfigDict, overrides: dict[str, Any]
) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted-key overrides, type-checked like `--config.a.b=v`.

  A key that does not exist raises `validate.ConfigError` naming the valid keys of its section;
  `model.attention.<field>` may be any field of the point's attention type.
  A dict value replaces a whole section (e.g. `{"model.attention": {"name": "local", ...}}`).
  """
  config = copy.deepcopy(config)  # keeps field references (data.seed follows seed)
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node, where = config, "config"
    for part in parents:
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise validate.ConfigError(f"sweep key {key!r}: {where} has no {part!r}; valid: {valid}")
      node, where = node[part], f"{where}.{part}"
    own = where == f"config.{config_file.ATTENTION}" and leaf not in node
    name = overrides.get(f"{config_file.ATTENTION}.name", node.get("name") if own else None)
    if own and leaf in config_file.attention_fields(name):  # the point's type has the field
      with node.unlocked():
        node[leaf] = value
      continue
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise validate.ConfigError(f"sweep key {key!r}: {where} has no {leaf!r}; valid: {valid}")
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      raise validate.ConfigError(f"sweep key {key!r}={value!r}: {e}") from None
  return config


def _status_of(directory: str) -> str | None:
  """What a point's directory says: finished, failed, or None (not run or incomplete)."""
  if os.path.exists(os.path.join(directory, "results.json")):
    return FINISHED
  if os.path.exists(os.path.join(directory, "error.txt")):
    return FAILED
  return None


def _write_error(directory: str, error: BaseException) -> None:
  """error.txt: the error's one-line summary, a blank line, then the traceback."""
  summary = (f"{type(error).__name__}: {error}".strip().splitlines() or ["error"])[0]
  with open(os.path.join(directory, "error.txt"), "w") as f:
    f.write(f"{summary}\n\n{traceback.format_exc()}")


def _write_crash(directory: str, returncode: int) -> None:
  """error.txt for a point process that died (e.g. killed for memory): its log's last lines."""
  with open(os.path.join(directory, "log.txt"), errors="replace") as f:
    tail = f.readlines()[-40:]
  with open(os.path.join(directory, "error.txt"), "w") as f:
    f.write(f"the point's process exited with status {returncode}; end of log.txt:\n\n")
    f.writelines(tail)


def run_point(config: ml_collections.ConfigDict, overrides: dict[str, Any], workdir: str) -> str:
  """Runs one point in workdir/<its name>/: 'skipped', 'finished', 'preempted' or 'failed'."""
  directory = os.path.join(workdir, point_name(overrides))
  if os.path.exists(os.path.join(directory, "results.json")):
    return SKIPPED
  point_config = apply_overrides(config, overrides)
  os.makedirs(directory, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(directory, "overrides.json"), "w") as f:
      json.dump(overrides, f, indent=1, default=str)
    if os.path.exists(os.path.join(directory, "error.txt")):  # an earlier failure, retried now
      os.remove(os.path.join(directory, "error.txt"))
  logging.info("sweep point %s", point_name(overrides))
  try:
    results = train.train_and_evaluate(point_config, directory)
  except Exception as e:  # noqa: BLE001 - a failing point is recorded, the sweep goes on
    logging.exception("point %s failed; see %s/error.txt", point_name(overrides), directory)
    if jax.process_index() == 0:
      _write_error(directory, e)
    return FAILED
  finally:
    jax.clear_caches()  # compiled steps of this point are not needed by the next one
  return results.get("status", FINISHED)


def run(
  config: ml_collections.ConfigDict,
  experiment: str,
  workdir: str,
  parallel: int = 1,
  point: int | None = None,
  argv: Sequence[str] | None = None,
  seeds: int = 0,
) -> list[str]:
  """The whole sweep, or only `point`; returns each point's status.

  `experiment` is the `--config` file (`configs/x.py[:arg]`), `config` its config with command-line
  overrides applied; `argv` (default sys.argv) is the command line the parallel processes repeat;
  `seeds` > 0 repeats every point with seeds 0..seeds-1.
  """
  points = load_sweep(experiment, seeds)
  names = point_names(points)
  for overrides in points:  # every key checked before anything runs
    apply_overrides(config, overrides)
  cache = use_compile_cache(workdir)
  if point is None and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    _write_json(os.path.join(workdir, "sweep.json"), {
      "experiment": experiment, "seeds": seeds,
      "points": [{"name": n, "overrides": p} for n, p in zip(names, points, strict=True)],
    })  # fmt: skip
  if point is not None:
    if not 0 <= point < len(points):
      last = len(points) - 1
      raise validate.ConfigError(f"--sweep_point={point}; the sweep has points 0..{last}")
    return [run_point(config, points[point], workdir)]
  logging.info("sweep of %d points into %s", len(points), workdir)
  if parallel <= 1:
    statuses = []
    for overrides in points:  # a stop request ends the sweep, not only the running point
      stopped = PREEMPTED in statuses
      statuses.append(NOT_RUN if stopped else run_point(config, overrides, workdir))
  else:
    statuses = _run_parallel(names, workdir, parallel, list(argv or sys.argv), cache)
  for name, status in zip(names, statuses, strict=True):
    logging.info("%-70s %s", name, status)
  return statuses


def use_compile_cache(workdir: str) -> str:
  """Points of a sweep share compiled steps through JAX's persistent compilation cache, in
  DIR/compile_cache unless JAX_COMPILATION_CACHE_DIR is set: runs that differ only in seed (or
  data) lower to the same programs. Returns the directory (point processes are given it)."""
  directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
    os.path.abspath(workdir), "compile_cache"
  )
  if jax.config.jax_compilation_cache_dir != directory:
    compilation_cache.set_cache_dir(directory)
    compilation_cache.reset_cache()  # a cache opened earlier in this process is replaced
  return directory


def _write_json(path: str, obj: Any) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=1, default=str)
  os.replace(path + ".tmp", path)


def child_command(
  argv: Sequence[str], valued: Sequence[str], switches: Sequence[str], added: str
) -> list[str]:
  """`argv` (a main.py command line) for a child process: the flags named in `valued` (with their
  values, `--f=v` or `--f v`) and the boolean `switches` (and their `--no` forms) dropped,
  `added` appended."""
  dropped = {*switches, *(f"no{name}" for name in switches)}
  out, rest = [], iter(argv[1:])
  for arg in rest:
    name = arg.lstrip("-").split("=")[0] if arg.startswith("-") else ""
    if name in valued:
      if "=" not in arg:
        next(rest, None)  # `--sweep_parallel 4`
      continue
    if name not in dropped:
      out.append(arg)
  return [sys.executable, argv[0], *out, added]


def point_command(argv: Sequence[str], point: int) -> list[str]:
  """`argv` with its sweep flags replaced by `--sweep_point=K`."""
  return child_command(
    argv, ("sweep_parallel", "sweep_point"), ("sweep",), f"--sweep_point={point}"
  )


def _run_parallel(
  names: list[str], workdir: str, parallel: int, argv: list[str], cache: str
) -> list[str]:
  """Points as subprocesses, at most `parallel` at a time. SIGINT/SIGTERM stop them cleanly."""
  statuses = [""] * len(names)
  waiting = []
  for k, name in enumerate(names):
    if _status_of(os.path.join(workdir, name)) == FINISHED:
      statuses[k] = SKIPPED
    else:
      waiting.append(k)
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # several processes share a GPU
  env["JAX_COMPILATION_CACHE_DIR"] = cache
  stop = threading.Event()
  previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
  running: dict[int, tuple[subprocess.Popen, Any, float]] = {}
  done, signalled = 0, set()
  try:
    while (waiting and not stop.is_set()) or running:
      while waiting and len(running) < parallel and not stop.is_set():
        k = waiting.pop(0)
        directory = os.path.join(workdir, names[k])
        os.makedirs(directory, exist_ok=True)
        log = open(os.path.join(directory, "log.txt"), "ab")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
          point_command(argv, k), stdout=log, stderr=subprocess.STDOUT, env=env
        )
        running[k] = (proc, log, time.time())
        logging.info("point %d started: %s (log: %s/log.txt)", k, names[k], directory)
      for k, (proc, _, _) in running.items():
        if stop.is_set() and k not in signalled and proc.poll() is None:
          proc.send_signal(signal.SIGTERM)  # it saves a checkpoint and exits; rerun to resume
          signalled.add(k)
      for k, (proc, log, start) in list(running.items()):
        if proc.poll() is None:
          continue
        log.close()
        del running[k]
        directory = os.path.join(workdir, names[k])
        status = _status_of(directory)
        stopped = proc.returncode in (0, preemption.EXIT_PREEMPTED)
        if status is None and not stopped:  # died before it could record an error
          _write_crash(directory, proc.returncode)
          status = FAILED
        # no results, exit 0 or 75: the point was asked to stop (it saved a checkpoint)
        statuses[k] = status or PREEMPTED
        done += 1
        logging.info(
          "[%d/%d] %s: %s (%.0fs)", done, len(names), names[k], statuses[k], time.time() - start
        )
      time.sleep(0.2)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    for proc, log, _ in running.values():  # only on an unexpected error in this loop
      proc.terminate()
      proc.wait()
      log.close()
  return [s or NOT_RUN for s in statuses]
