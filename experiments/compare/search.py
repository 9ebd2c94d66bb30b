"""Hyperparameter search with Optuna: every trial an ordinary run in its own workdir.

    python main.py --config=configs/default.py --workdir=DIR --search [--search_trials=N]
        [--search_workers=K] [--search_storage=URL] [--search_sampler=tpe|random|grid|cmaes|gp]
        [--search_pruner=none|median|asha|hyperband]
    python main.py --config=configs/compare_reverse.py --workdir=DIR --search --sweep  # per point

The experiment file's `get_search(arg)` returns `configs.common.search(...)`: parameters over
config fields (`loguniform`, `uniform`, `integer`, `choice`), the finished trials per study, the
per-trial budget (overrides every trial gets, e.g. `train.num_steps`) and optionally the objective
(default: the task's main metric on the validation split, `results["best"]`; never test).

Trial k of a study runs in DIR/trials/kkkk/ (with --sweep: DIR/<point>/trials/kkkk/), so
checkpoints, resume and results.json work as for any run. The loop reports the objective at every
evaluation (`train_and_evaluate(..., on_eval=...)`); a pruned trial stops with its checkpoint and
is PRUNED in the study. A study is done when N of its trials are COMPLETE or PRUNED; a trial starts
only while fewer than N lower-numbered trials are complete, pruned, running or waiting, so the
count is exact with any number of workers. `--search_workers=K` starts K local processes of this
command (logs in DIR/logs/), each one worker of every study; processes on other machines (e.g.
SLURM array tasks with `--search_worker`) join the same studies through `--search_storage`.

Storage: the default is SQLite in DIR/study.db (`optuna.load_study(storage="sqlite:///DIR/
study.db", study_name=None)`), an RDB storage because Optuna's heartbeats need one: its journal
file storage has none, so a trial of a killed worker would stay RUNNING there. Every worker
records a heartbeat every `--search_heartbeat` seconds; a trial without one for twice that is
failed and retried (`RetryHeartbeatStaleTrialCallback`): the retry is WAITING, the next worker
takes it and resumes in the original trial's folder from its checkpoints. A worker stopped by
SIGTERM/SIGINT saves its trial's checkpoint and re-queues it the same way. Rerunning the command
continues every study to N finished trials; finished trials are never repeated.

With --sweep, each point gets its own study (same N, same budget, same sampler and pruner); then
each point's best trial is re-run with seeds 0..S-1 (S = max(3, --seeds)) in DIR/tuned/ and
`experiments.compare.report` compares those tuned points with test numbers. The search report
(experiments/compare/search_report.py) is written at the end.
"""

import dataclasses
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import optuna
from absl import logging

from experiments.compare import report, sweep
from experiments.run import build, preemption, train, validate

SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp")
PRUNERS = ("none", "median", "asha", "hyperband")
STORE = "study.db"  # the default storage, in the workdir
MANIFEST = "search.json"  # what the report needs: studies, storage, budget
SINGLE = "search"  # the study's name without --sweep
TUNED = "tuned"  # DIR/tuned/: the best trial of each point, re-run with several seeds
TUNED_SEEDS = 3
GRID_POINTS = 3  # values of a float parameter under the grid sampler (geometric if log)
FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
KINDS = ("float", "int", "choice")


class SearchError(RuntimeError):
  """A search that cannot go on (e.g. every trial fails); the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Space:
  """An experiment file's `get_search(arg)`: parameters (dicts of configs/common.py), finished
  trials per study, per-trial budget overrides, and the objective (None: the task's)."""

  params: list[dict[str, Any]]
  trials: int
  budget: dict[str, Any]
  metric: str | None = None
  direction: str | None = None


@dataclasses.dataclass(frozen=True)
class Options:
  """The command line's --search* flags."""

  trials: int | None = None  # None: the experiment file's
  workers: int = 1
  storage: str | None = None  # None: sqlite in the workdir
  sampler: str = "tpe"
  pruner: str = "median"
  worker: bool = False  # one worker of a shared search: trials only, no tuned runs or report
  heartbeat: int = 20  # seconds; a trial without a heartbeat for twice this is failed
  sweep: bool = False  # one study per point of get_sweep
  seeds: int = TUNED_SEEDS  # seeds of each tuned point (at least 3)


def options_from_flags(flags_) -> Options:
  """Options from main.py's absl FLAGS."""
  seeds = flags_["seeds"].value if "seeds" in flags_ else 0
  return Options(
    trials=flags_.search_trials,
    workers=flags_.search_workers,
    storage=flags_.search_storage,
    sampler=flags_.search_sampler,
    pruner=flags_.search_pruner,
    worker=flags_.search_worker,
    heartbeat=flags_.search_heartbeat,
    sweep=flags_.sweep,
    seeds=max(TUNED_SEEDS, seeds or 0),
  )


# -- the search space ---------------------------------------------------------------------------


def check_space(space: Space) -> None:
  """Raises validate.ConfigError (one line) for a malformed space."""
  if not space.params:
    raise validate.ConfigError("get_search returned no parameters")
  keys = [p.get("key") for p in space.params]
  twice = sorted({k for k in keys if keys.count(k) > 1})
  if twice:
    raise validate.ConfigError(f"search parameters given twice: {twice}")
  for p in space.params:
    key, kind = p.get("key"), p.get("kind")
    if kind not in KINDS:
      raise validate.ConfigError(f"search parameter {key!r}: kind {kind!r}; valid: {KINDS}")
    if kind == "choice":
      if not p["values"]:
        raise validate.ConfigError(f"search parameter {key!r}: choice of no values")
      continue
    if not p["low"] < p["high"]:
      raise validate.ConfigError(f"search parameter {key!r}: low {p['low']} >= high {p['high']}")
    if p.get("log") and p["low"] <= 0:
      raise validate.ConfigError(f"search parameter {key!r}: a log scale needs low > 0")
    if p.get("log") and p.get("step", 1) != 1:
      raise validate.ConfigError(f"search parameter {key!r}: a log scale takes no step")
  if space.trials < 1:
    raise validate.ConfigError(f"search trials must be >= 1, got {space.trials}")
  if space.direction not in (None, "max", "min"):
    raise validate.ConfigError(f"search direction {space.direction!r}; valid: max, min")


def load_search(experiment: str) -> Space:
  """`configs/x.py[:arg]` -> its `get_search(arg)` as a checked Space."""
  path, arg, module = sweep.load_experiment(experiment)
  if not hasattr(module, "get_search"):
    raise validate.ConfigError(f"{path} defines no get_search(arg); add one or drop --search")
  raw = module.get_search(arg or None)
  space = Space(
    params=[dict(p) for p in raw["params"]],
    trials=int(raw["trials"]),
    budget=dict(raw.get("budget") or {}),
    metric=raw.get("metric"),
    direction=raw.get("direction"),
  )
  check_space(space)
  return space


def suggest(trial: optuna.trial.BaseTrial, params: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """One value per parameter from the trial (Optuna's suggest_*), as config overrides."""
  out = {}
  for p in params:
    key = p["key"]
    if p["kind"] == "float":
      step = None if p.get("log") else p.get("step")
      out[key] = trial.suggest_float(key, p["low"], p["high"], log=p["log"], step=step)
    elif p["kind"] == "int":
      step = 1 if p.get("log") else p.get("step", 1)
      out[key] = trial.suggest_int(key, p["low"], p["high"], step=step, log=p.get("log", False))
    else:
      out[key] = trial.suggest_categorical(key, p["values"])
  return out


def grid_space(params: Sequence[dict[str, Any]]) -> dict[str, list]:
  """The grid sampler's values: every choice, every int (by step), `GRID_POINTS` floats from low
  to high (geometric on a log scale, by step where one is given)."""
  out = {}
  for p in params:
    if p["kind"] == "choice":
      out[p["key"]] = list(p["values"])
    elif p["kind"] == "int":
      if p.get("log"):
        values = np.unique(np.round(np.geomspace(p["low"], p["high"], GRID_POINTS)).astype(int))
        out[p["key"]] = [int(v) for v in values]
      else:
        out[p["key"]] = list(range(p["low"], p["high"] + 1, p.get("step", 1)))
    elif p.get("log"):
      out[p["key"]] = [float(v) for v in np.geomspace(p["low"], p["high"], GRID_POINTS)]
    elif p.get("step"):
      out[p["key"]] = [float(v) for v in np.arange(p["low"], p["high"] + 1e-12, p["step"])]
    else:
      out[p["key"]] = [float(v) for v in np.linspace(p["low"], p["high"], GRID_POINTS)]
  return out


def make_sampler(name: str, params: Sequence[dict[str, Any]]) -> optuna.samplers.BaseSampler:
  """tpe (Bergstra et al., 2011) | random | grid | cmaes (Hansen, 2016) | gp (Bayesian
  optimisation with a Gaussian process). Each worker draws its own seed."""
  if name == "tpe":
    return optuna.samplers.TPESampler()
  if name == "random":
    return optuna.samplers.RandomSampler()
  if name == "grid":
    return optuna.samplers.GridSampler(grid_space(params))
  if name == "cmaes":
    _require_module("cmaes", "the cmaes sampler needs the cmaes package: pip install cmaes")
    return optuna.samplers.CmaEsSampler()
  if name == "gp":
    _require_module("torch", "the gp sampler needs PyTorch: pip install torch (the CPU build)")
    return optuna.samplers.GPSampler()
  raise validate.ConfigError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")


def _require_module(module: str, message: str) -> None:
  if importlib.util.find_spec(module) is None:
    raise validate.ConfigError(message)


def make_pruner(name: str, num_steps: int, eval_every: int) -> optuna.pruners.BasePruner:
  """none | median (below the median of earlier trials at the same step) | asha (asynchronous
  successive halving, Li et al., 2020) | hyperband (Li et al., 2018). Resources are steps."""
  if name == "none":
    return optuna.pruners.NopPruner()
  if name == "median":
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
  if name == "asha":
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=eval_every, reduction_factor=3)
  if name == "hyperband":
    return optuna.pruners.HyperbandPruner(
      min_resource=eval_every, max_resource=max(num_steps, eval_every), reduction_factor=3
    )
  raise validate.ConfigError(f"unknown pruner {name!r}; valid: {', '.join(PRUNERS)}")


# -- storage and studies ------------------------------------------------------------------------


def storage_url(workdir: str, url: str | None) -> str:
  """`url`, or the SQLite file in the workdir. A bare `postgresql://` gets the psycopg2 driver
  (pinned in requirements.txt; SQLAlchemy 2.1's default for it is psycopg 3)."""
  if url and url.startswith("postgresql://"):
    return "postgresql+psycopg2://" + url[len("postgresql://") :]
  return url or f"sqlite:///{os.path.join(os.path.abspath(workdir), STORE)}"


def open_storage(url: str, heartbeat: int | None = 20) -> optuna.storages.RDBStorage:
  """An RDB storage (SQLite file, PostgreSQL, MySQL) with heartbeats: a trial whose worker died
  is failed after 2 x `heartbeat` seconds and queued again."""
  url = storage_url("", url)
  kwargs: dict[str, Any] = {"pool_pre_ping": True}
  if url.startswith("sqlite"):
    kwargs = {"connect_args": {"timeout": 120}}  # several local workers wait for the file lock
  elif url.startswith("postgresql"):
    _require_module("psycopg2", "a postgresql:// storage needs psycopg2: pip install -r "
                    "requirements.txt")  # fmt: skip
  try:
    with _quiet_experimental():
      return optuna.storages.RDBStorage(
        url,
        engine_kwargs=kwargs,
        heartbeat_interval=heartbeat,
        grace_period=2 * heartbeat if heartbeat else None,
        heartbeat_stale_trial_callback=_retry() if heartbeat else None,
      )
  except Exception as e:  # noqa: BLE001 - an unreachable database is one line, not a traceback
    raise SearchError(f"cannot open the study storage {_safe_url(url)}: {_first_line(e)}") from e


def _retry() -> Callable:
  with _quiet_experimental():
    return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)


class _quiet_experimental:  # noqa: N801 - used as a context manager
  def __enter__(self):
    import warnings

    self._catch = warnings.catch_warnings()
    self._catch.__enter__()
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)

  def __exit__(self, *exc):
    self._catch.__exit__(*exc)


def _safe_url(url: str) -> str:
  """The URL without its password (passwords belong in ~/.pgpass or PGPASSWORD)."""
  try:
    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(url)
    return parsed.set(password=None).render_as_string(hide_password=False)
  except Exception:  # noqa: BLE001
    return url.split("@")[-1]


def _first_line(e: BaseException) -> str:
  return (f"{type(e).__name__}: {e}".strip().splitlines() or ["error"])[0]


def study_name(point: dict[str, Any]) -> str:
  return sweep.point_name(point) if point else SINGLE


def point_dir(workdir: str, point: dict[str, Any]) -> str:
  return os.path.join(workdir, sweep.point_name(point)) if point else workdir


def objective_metric(
  config: ml_collections.ConfigDict, space: Space, workdir: str | None = None
) -> tuple[str, str]:
  """('eval/<metric>', 'max' | 'min'): the space's, else the task's main metric (validation),
  read from the task's info (building its datasets once, with caches in `workdir`; a space that
  names both metric and direction skips that)."""
  import input_pipeline

  if space.metric and space.direction:
    name, mode = space.metric, space.direction
  else:
    info = input_pipeline.get_datasets(config.data, workdir=workdir).info
    name, mode = build.main_metric(config, info)
    name, mode = space.metric or name, space.direction or mode
  return (name if name.startswith("eval/") else f"eval/{name}"), mode


# -- the objective and the worker loop ----------------------------------------------------------


class _Surplus(Exception):
  """A trial started while N others were already finished or under way; it does not run."""


class _Stopped(Exception):
  """The trial's run was asked to stop (SIGTERM/SIGINT); its checkpoint is saved."""


def _trial_dir(study: optuna.Study, trial: optuna.Trial, base: str) -> str:
  """DIR/trials/kkkk, k the trial's number, or for a retried trial its original's number (so a
  retry resumes from the original's checkpoints)."""
  frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
  number = frozen.system_attrs.get("failed_trial", trial.number)
  return os.path.join(base, "trials", f"{number:04d}")


def _ahead(study: optuna.Study, number: int) -> int:
  """Lower-numbered trials that are finished, running or waiting: those counted before `number`."""
  live = (*FINISHED_STATES, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
  return sum(t.number < number and t.state in live for t in study.get_trials(deepcopy=False))


def make_objective(
  config: ml_collections.ConfigDict,
  space: Space,
  point: dict[str, Any],
  base: str,
  metric: str,
  n_trials: int,
) -> Callable[[optuna.Trial], float]:
  """The objective of one study: suggest, run the trial in `base`/trials/kkkk, return the best
  validation value of `metric` (reported at every evaluation, so the pruner can stop it)."""

  def objective(trial: optuna.Trial) -> float:
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    if trial.user_attrs.get("stopped"):  # a retry inherits its original's attributes
      trial.set_user_attr("stopped", False)
    try:
      return _objective(trial)
    except (optuna.TrialPruned, _Surplus, _Stopped):
      raise
    except Exception as e:
      if "error" not in trial.user_attrs:  # an error outside the run itself
        trial.set_user_attr("error", _first_line(e))
      raise

  def _objective(trial: optuna.Trial) -> float:
    study = trial.study
    if _ahead(study, trial.number) >= n_trials:
      trial.set_user_attr("surplus", True)
      raise _Surplus(f"trial {trial.number}: {n_trials} trials already finished or running")
    params = suggest(trial, space.params)
    directory = _trial_dir(study, trial, base)
    trial.set_user_attr("dir", directory)
    results = _read_results(directory)  # the run finished, but its worker died before telling
    if results is None or results.get("status") == "preempted":
      results = _run_trial(config, space, point, params, directory, trial, metric)
    if results.get("status") == "preempted":
      trial.set_user_attr("stopped", True)
      raise _Stopped(f"trial {trial.number} stopped at step {results.get('step')}")
    trial.set_user_attr("best_step", results.get("best_step"))
    if results.get("test"):
      trial.set_user_attr("test", results["test"])
    if results.get("status") == "pruned":
      raise optuna.TrialPruned(f"pruned at step {results.get('step')}")
    return float(results["best"][metric])

  return objective


def _read_results(directory: str) -> dict[str, Any] | None:
  path = os.path.join(directory, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _run_trial(config, space, point, params, directory, trial, metric) -> dict[str, Any]:
  trial_config = sweep.apply_overrides(config, {**point, **space.budget, **params})
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "overrides.json"), "w") as f:
    json.dump({**point, **params}, f, indent=1, default=str)

  def on_eval(step: int, metrics: dict[str, float]) -> bool:
    value = metrics[metric]
    if not np.isfinite(value):
      return True
    trial.report(value, step)
    return trial.should_prune()

  logging.info("trial %d in %s: %s", trial.number, directory, params)
  try:
    return train.train_and_evaluate(trial_config, directory, on_eval=on_eval)
  except Exception as e:
    summary = _first_line(e)
    trial.set_user_attr("error", summary)
    with open(os.path.join(directory, "error.txt"), "w") as f:
      f.write(f"{summary}\n\n{traceback.format_exc()}")
    raise
  finally:
    jax.clear_caches()  # the next trial compiles its own steps


def _counts(study: optuna.Study) -> dict[str, int]:
  trials = study.get_trials(deepcopy=False)
  states = [t.state for t in trials]
  return {
    "finished": sum(s in FINISHED_STATES for s in states),
    "running": states.count(optuna.trial.TrialState.RUNNING),
    "waiting": states.count(optuna.trial.TrialState.WAITING),
    "errors": sum(
      t.state == optuna.trial.TrialState.FAIL and "error" in t.user_attrs for t in trials
    ),  # fmt: skip
  }


def work(
  study: optuna.Study, objective: Callable, n_trials: int, poll: float = 1.0, wait: bool = True
) -> dict[str, int]:
  """One worker: runs trials of `study` until `n_trials` are complete or pruned, waiting while
  the last ones run elsewhere (a dead worker's trial comes back as a retry) or, with `wait` off,
  returning then. Returns the counts; stops early on a stop request (its trial re-queued) and
  raises SearchError once `n_trials` trials have failed."""
  while True:
    with _quiet_experimental():
      optuna.storages.fail_stale_trials(study)
    counts = _counts(study)
    if counts["finished"] >= n_trials:
      return counts
    if counts["errors"] >= n_trials:
      raise SearchError(
        f"study {study.study_name!r}: {counts['errors']} trials failed (see error.txt in their "
        "folders); fix the cause, then rerun to continue"
      )
    if preemption.stop_requested():
      return counts
    if counts["finished"] + counts["running"] >= n_trials:  # the last trials run elsewhere
      if not wait:
        return counts
      time.sleep(poll)
      continue
    study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
    last = _last_own_trial(study)
    stopped = last is not None and last.state == optuna.trial.TrialState.FAIL
    if stopped and last.user_attrs.get("stopped"):
      _retry()(study, last)  # stopped on request: queued again, resumes from its checkpoint
      return _counts(study)


def work_all(studies: Sequence[tuple[optuna.Study, Callable]], n_trials: int, poll: float = 1.0):
  """One worker of several studies (the points of a sweep), in order: it moves on from a study
  whose last trials run in other workers and sleeps only while every unfinished study is so."""
  pending = list(studies)
  while pending and not preemption.stop_requested():
    for study, objective in list(pending):
      counts = work(study, objective, n_trials, poll, wait=False)
      if counts["finished"] >= n_trials:
        logging.info("study %s: %s", study.study_name, counts)
        pending.remove((study, objective))
      if preemption.stop_requested():
        return
    if pending:
      time.sleep(poll)


def _last_own_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
  me = f"{socket.gethostname()}:{os.getpid()}"
  own = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == me]
  return max(own, key=lambda t: t.number) if own else None


# -- the whole search ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Study:
  name: str
  point: dict[str, Any]
  base: str  # the point's folder (trials/ below it)
  metric: str
  direction: str  # max | min


def _plan(config, experiment: str, workdir: str, options: Options) -> tuple[Space, list[_Study]]:
  """Checks everything before any trial runs; one _Study per point (one without --sweep)."""
  space = load_search(experiment)
  if options.workers < 1:
    raise validate.ConfigError(f"--search_workers={options.workers}; must be >= 1")
  if options.heartbeat < 1:
    raise validate.ConfigError(f"--search_heartbeat={options.heartbeat}; must be >= 1 second")
  if options.sampler not in SAMPLERS:
    raise validate.ConfigError(f"unknown sampler {options.sampler!r}; valid: {', '.join(SAMPLERS)}")
  if options.pruner not in PRUNERS:
    raise validate.ConfigError(f"unknown pruner {options.pruner!r}; valid: {', '.join(PRUNERS)}")
  points = sweep.load_sweep(experiment) if options.sweep else [{}]
  sweep.point_names(points)
  studies, metrics = [], {}
  for point in points:
    sample = {p["key"]: _sample_value(p) for p in space.params}
    point_config = sweep.apply_overrides(config, {**point, **space.budget, **sample})
    key = json.dumps(point_config.data.to_dict(), sort_keys=True, default=str) + str(
      point_config.get("decode", None)
    )
    if key not in metrics:
      metrics[key] = objective_metric(point_config, space, workdir)
    metric, mode = metrics[key]
    studies.append(_Study(study_name(point), point, point_dir(workdir, point), metric, mode))
  return space, studies


def _sample_value(p: dict[str, Any]) -> Any:
  return p["values"][0] if p["kind"] == "choice" else p["low"]


def _n_trials(space: Space, options: Options) -> int:
  n = options.trials if options.trials is not None else space.trials
  if n < 1:
    raise validate.ConfigError(f"--search_trials={n}; must be >= 1")
  if options.sampler == "grid":
    size = int(np.prod([len(v) for v in grid_space(space.params).values()]))
    if n > size:
      logging.info("the grid has %d points: %d trials per study, not %d", size, size, n)
    n = min(n, size)
  return n


def _open_study(storage, s: _Study, options: Options, space: Space, n: int) -> optuna.Study:
  num_steps = int(space.budget.get("train.num_steps", 0)) or 1
  eval_every = int(space.budget.get("train.eval_every_steps", 0)) or num_steps
  study = optuna.create_study(
    storage=storage,
    study_name=s.name,
    direction="maximize" if s.direction == "max" else "minimize",
    sampler=make_sampler(options.sampler, space.params),
    pruner=make_pruner(options.pruner, num_steps, eval_every),
    load_if_exists=True,
  )
  if study.direction != (
    optuna.study.StudyDirection.MAXIMIZE
    if s.direction == "max"
    else optuna.study.StudyDirection.MINIMIZE
  ):
    raise validate.ConfigError(f"study {s.name!r} in the storage optimises the other direction")
  for key, value in {"metric": s.metric, "point": s.point, "trials": n, "budget": space.budget,
                     "sampler": options.sampler, "pruner": options.pruner}.items():  # fmt: skip
    if study.user_attrs.get(key) != json.loads(json.dumps(value, default=str)):
      study.set_user_attr(key, json.loads(json.dumps(value, default=str)))
  return study


def _write_manifest(workdir: str, experiment: str, options: Options, space, studies, n) -> None:
  manifest = {
    "experiment": experiment,
    "storage": _safe_url(storage_url(workdir, options.storage)) if options.storage else None,
    "trials": n,
    "budget": space.budget,
    "params": space.params,
    "sampler": options.sampler,
    "pruner": options.pruner,
    "sweep": options.sweep,
    "studies": [
      {
        "name": s.name,
        "point": s.point,
        "dir": os.path.relpath(s.base, workdir),
        "metric": s.metric,
        "direction": s.direction,
      }
      for s in studies
    ],  # fmt: skip
    "tuned": TUNED if options.sweep else None,
  }
  path = os.path.join(workdir, MANIFEST)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=1, default=str)
  os.replace(tmp, path)


def run(
  config: ml_collections.ConfigDict,
  experiment: str,
  workdir: str,
  options: Options,
  argv: Sequence[str] | None = None,
) -> dict[str, dict[str, int]]:
  """The search of `experiment` (`configs/x.py[:arg]`; `config` its config with command-line
  overrides) into `workdir`; returns each study's trial counts. `argv` (default sys.argv) is the
  command line that local worker processes repeat."""
  os.makedirs(workdir, exist_ok=True)
  space, studies = _plan(config, experiment, workdir, options)
  n = _n_trials(space, options)
  url = storage_url(workdir, options.storage)
  storage = open_storage(url, options.heartbeat)
  opened = {s.name: _open_study(storage, s, options, space, n) for s in studies}
  _write_manifest(workdir, experiment, options, space, studies, n)
  logging.info(
    "search: %d stud%s of %d trials (%s sampler, %s pruner) in %s",
    len(studies), "y" if len(studies) == 1 else "ies", n, options.sampler, options.pruner,
    _safe_url(url),
  )  # fmt: skip
  if options.workers > 1 and not options.worker:
    _run_workers(options.workers, workdir, list(argv or sys.argv))
  else:
    with preemption.handlers():
      objectives = [make_objective(config, space, s.point, s.base, s.metric, n) for s in studies]
      work_all([(opened[s.name], o) for s, o in zip(studies, objectives, strict=True)], n)
      if preemption.stop_requested():
        logging.warning("search stopped on request; run the same command to continue")
        return {s.name: _counts(opened[s.name]) for s in studies}
  counts = {s.name: _counts(opened[s.name]) for s in studies}
  if options.worker:
    return counts
  short = {name: c for name, c in counts.items() if c["finished"] < n}
  if short:
    raise SearchError(
      f"studies short of {n} finished trials: "
      + ", ".join(f"{k} ({c['finished']})" for k, c in short.items())
      + f"; see {os.path.join(workdir, 'logs')} and rerun the same command to continue"
    )
  if options.sweep:
    run_tuned(config, workdir, space, studies, opened, options.seeds)
  from experiments.compare import search_report

  print(f"search report: {search_report.write_report(workdir)}", flush=True)
  return counts


def run_tuned(config, workdir, space, studies, opened, seeds: int) -> list[str]:
  """Each point's best trial again with seeds 0..seeds-1 (the same budget) in DIR/tuned/, then
  the comparison report of those runs (validation-selected checkpoints, evaluated on test)."""
  tuned_dir = os.path.join(workdir, TUNED)
  budget_config = sweep.apply_overrides(config, space.budget)
  sweep.use_compile_cache(tuned_dir)  # the seeds of a point lower to the same programs
  points = []
  for s in studies:
    try:
      best = opened[s.name].best_trial
    except ValueError:
      logging.warning("study %s has no complete trial; no tuned runs for it", s.name)
      continue
    points += [{**s.point, **best.params, "seed": seed} for seed in range(seeds)]
  os.makedirs(tuned_dir, exist_ok=True)
  listing = [{"name": sweep.point_name(p), "overrides": p} for p in points]
  with open(os.path.join(tuned_dir, "sweep.json"), "w") as f:  # the report's order and baseline
    json.dump({"experiment": "tuned", "seeds": seeds, "points": listing}, f, indent=1, default=str)
  statuses = [sweep.run_point(budget_config, p, tuned_dir) for p in points]
  if jax.process_index() == 0 and statuses:
    report.print_summary(report.write_report(tuned_dir))
  return statuses


def worker_command(argv: Sequence[str]) -> list[str]:
  """`argv` (a main.py command line) as one worker: --search_workers dropped, --search_worker."""
  return sweep.child_command(argv, ("search_workers",), ("search_worker",), "--search_worker")


def _run_workers(k: int, workdir: str, argv: list[str]) -> None:
  """K worker processes of this command line (logs: DIR/logs/worker_K.txt); SIGINT/SIGTERM are
  passed on (each saves its trial's checkpoint and re-queues it)."""
  logs = os.path.join(workdir, "logs")
  os.makedirs(logs, exist_ok=True)
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # several processes share a GPU
  stop = threading.Event()
  previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
  procs = []
  try:
    for i in range(k):
      log = open(os.path.join(logs, f"worker_{i}.txt"), "ab")  # noqa: SIM115 - closed below
      procs.append((subprocess.Popen(worker_command(argv), stdout=log, stderr=subprocess.STDOUT,
                                     env=env), log))  # fmt: skip
      logging.info("worker %d started (log: %s/worker_%d.txt)", i, logs, i)
    signalled = False
    while any(p.poll() is None for p, _ in procs):
      if stop.is_set() and not signalled:
        for p, _ in procs:
          if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        signalled = True
      time.sleep(0.2)
    for i, (p, _) in enumerate(procs):
      if p.returncode != 0:
        logging.error("worker %d exited with status %d; see %s/worker_%d.txt", i, p.returncode,
                      logs, i)  # fmt: skip
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    for p, log in procs:
      if p.poll() is None:  # only on an unexpected error above
        p.terminate()
        p.wait()
      log.close()
  if stop.is_set():
    raise SearchError("search stopped on request; run the same command to continue")
