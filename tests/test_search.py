"""Hyperparameter search (experiments/compare/search.py): the space helpers, pruning from the loop,
workers sharing a study (SQLite and a real PostgreSQL server), a killed worker's trial, resuming."""

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import optuna
import pytest

from configs import common, compare_reverse, default, listops
from experiments.compare import search, sweep
from experiments.run import validate
from tests.helpers import ENV, ROOT, TINY_MODEL_FLAGS, tiny_config

DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def _main(workdir, steps: int, *flags: str) -> subprocess.Popen:
  """`python main.py --config=configs/default.py:steps=N --search FLAGS` in a subprocess."""
  log = open(os.path.join(os.path.dirname(workdir), "main.log"), "ab")  # noqa: SIM115
  command = [sys.executable, "main.py", f"--config=configs/default.py:steps={steps}",
             f"--workdir={workdir}", "--search", *TINY_MODEL_FLAGS, *flags]  # fmt: skip
  return subprocess.Popen(
    command, cwd=ROOT, env={**os.environ, **ENV}, stdout=log, stderr=subprocess.STDOUT
  )


def _finish(proc: subprocess.Popen, workdir, timeout: float = 600) -> None:
  code = proc.wait(timeout=timeout)
  if code != 0:
    with open(os.path.join(os.path.dirname(workdir), "main.log"), errors="replace") as f:
      pytest.fail(f"main.py exited {code}:\n{f.read()[-4000:]}")


def _sqlite(workdir) -> str:
  return f"sqlite:///{os.path.join(workdir, search.STORE)}"


def _space(*params, trials=1, **budget) -> search.Space:
  budget = {f"train.{k}": v for k, v in budget.items()}
  return search.Space(params=list(params), trials=trials, budget=budget)


# -- the space ----------------------------------------------------------------------------------


def test_helpers_are_plain_data_and_become_suggestions_within_bounds():
  lr = common.loguniform("optimizer.learning_rate", 1e-4, 3e-2)
  assert lr == {"key": "optimizer.learning_rate", "kind": "float", "low": 1e-4, "high": 3e-2,
                "log": True}  # fmt: skip
  params = [
    lr,
    common.uniform("model.dropout_rate", 0.0, 0.2),
    common.integer("optimizer.warmup_steps", 10, 100, step=10),
    common.choice("model.attention.name", ["scaled_dot", "linear"]),
  ]
  spec = common.search(*params, trials=7, budget={"train.num_steps": 5})
  assert spec["trials"] == 7 and spec["budget"] == {"train.num_steps": 5}
  assert json.loads(json.dumps(spec)) == spec  # plain data
  study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
  drawn = []
  for _ in range(200):
    trial = study.ask()
    drawn.append(search.suggest(trial, params))
    study.tell(trial, 0.0)
  lrs = np.array([d["optimizer.learning_rate"] for d in drawn])
  assert lrs.min() >= 1e-4 and lrs.max() <= 3e-2
  # log-uniform: about half the draws below the geometric middle (the arithmetic one is 0.015)
  assert 0.35 < np.mean(lrs < math.sqrt(1e-4 * 3e-2)) < 0.65
  assert all(0.0 <= d["model.dropout_rate"] <= 0.2 for d in drawn)
  assert {d["optimizer.warmup_steps"] for d in drawn} == set(range(10, 101, 10))
  assert {d["model.attention.name"] for d in drawn} == {"scaled_dot", "linear"}
  grid = search.grid_space(params)
  np.testing.assert_allclose(grid["optimizer.learning_rate"], [1e-4, math.sqrt(3e-6), 3e-2])
  assert grid["optimizer.warmup_steps"] == list(range(10, 101, 10))
  assert grid["model.dropout_rate"] == [0.0, 0.1, 0.2]


@pytest.mark.parametrize(
  ("params", "message"),
  [
    ([common.loguniform("a.b", 0.0, 1.0)], "log scale needs low > 0"),
    ([common.uniform("a.b", 1.0, 1.0)], "low 1.0 >= high 1.0"),
    ([common.choice("a.b", [])], "choice of no values"),
    ([common.uniform("a.b", 0, 1), common.integer("a.b", 0, 3)], r"given twice: \['a.b'\]"),
    ([{"key": "a.b", "kind": "normal"}], "kind 'normal'; valid"),
    ([], "no parameters"),
  ],
)
def test_bad_spaces_fail_with_one_line(params, message):
  with pytest.raises(validate.ConfigError, match=message):
    search.check_space(_space(*params))


def test_unknown_sampler_or_pruner_lists_the_valid_names():
  with pytest.raises(
    validate.ConfigError, match="unknown sampler 'bohb'; valid: tpe, random, grid"
  ):
    search.make_sampler("bohb", [])
  with pytest.raises(validate.ConfigError, match="unknown pruner 'x'; valid: none, median, asha"):
    search.make_pruner("x", 10, 2)
  for name in search.SAMPLERS:
    if name != "gp":  # needs torch, which is not a dependency: a clear error says so
      assert isinstance(search.make_sampler(name, [common.uniform("a", 0, 1)]),
                        optuna.samplers.BaseSampler)  # fmt: skip
  for name in search.PRUNERS:
    assert isinstance(search.make_pruner(name, 10, 2), optuna.pruners.BasePruner)


@pytest.mark.parametrize("module", [default, compare_reverse, listops])
def test_shipped_search_spaces_name_real_fields(module):
  space = search.load_search(f"configs/{module.__name__.split('.')[-1]}.py")
  config = module.get_config()
  for p in space.params:  # every key exists and takes the lowest value of its range
    sweep.apply_overrides(config, {**space.budget, p["key"]: search._sample_value(p)})
  assert space.trials >= 6 and space.budget["train.num_steps"] <= config.train.num_steps


# -- the loop reports to the trial --------------------------------------------------------------


def test_pruning_stops_a_run_cleanly_and_keeps_its_checkpoint(tmp_path):
  """A pruner that prunes at the first report: the run stops at step 2 of 8, saves a checkpoint,
  writes results.json with status pruned, and the trial is PRUNED."""
  config = tiny_config(steps=8)
  space = _space(common.loguniform("optimizer.learning_rate", 1e-3, 1e-2), eval_every_steps=2)
  study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2))
  objective = search.make_objective(config, space, {}, str(tmp_path), "eval/sequence_accuracy", 1)
  study.optimize(objective, n_trials=1)
  (trial,) = study.trials
  assert trial.state == optuna.trial.TrialState.PRUNED
  assert list(trial.intermediate_values) == [2]
  directory = tmp_path / "trials" / "0000"
  results = json.loads((directory / "results.json").read_text())
  assert results["status"] == "pruned" and results["step"] == 2
  assert trial.intermediate_values[2] == results["metrics"]["eval/sequence_accuracy"]
  assert "2" in os.listdir(directory / "checkpoints" / "latest")
  overrides = json.loads((directory / "overrides.json").read_text())
  assert overrides == trial.params


def test_rerun_continues_to_the_requested_trials_without_repeating(tmp_path):
  """One finished trial, then a study of two: one more trial; the first is not re-run."""
  config = tiny_config(steps=4)
  space = _space(common.loguniform("optimizer.learning_rate", 1e-3, 1e-2), eval_every_steps=2)
  storage = search.open_storage(_sqlite(tmp_path), heartbeat=5)

  def study_of(n):
    study = optuna.create_study(storage=storage, study_name="s", direction="minimize",
                                load_if_exists=True)  # fmt: skip
    objective = search.make_objective(config, space, {}, str(tmp_path), "eval/loss", n)
    return search.work(study, objective, n), study

  counts, study = study_of(1)
  assert counts["finished"] == 1
  first = tmp_path / "trials" / "0000" / "results.json"
  mtime = os.path.getmtime(first)
  counts, study = study_of(2)
  assert counts == {"finished": 2, "running": 0, "waiting": 0, "errors": 0}
  assert [t.number for t in study.trials] == [0, 1] and os.path.getmtime(first) == mtime
  for t in study.trials:  # the objective is the validation value of the run's best evaluation
    results = json.loads((tmp_path / "trials" / f"{t.number:04d}" / "results.json").read_text())
    assert t.value == results["best"]["eval/loss"] and "test/loss" in t.user_attrs["test"]
  counts, _ = study_of(2)  # nothing left to do
  assert counts["finished"] == 2 and len(study.trials) == 2


SWEPT_SEARCH = """
from configs.common import axis, loguniform, search
from tests.helpers import tiny_config

def get_config(arg=None):
  return tiny_config(steps=4)

def get_sweep(arg=None):
  return axis("model.attention.name", ["scaled_dot", "dot"])

def get_search(arg=None):
  return search(loguniform("optimizer.learning_rate", 1e-3, 1e-2), trials=1,
                budget={"train.num_steps": 4, "train.eval_every_steps": 2})
"""


def test_search_per_point_then_the_tuned_points_with_seeds(tmp_path):
  """--search --sweep: a study per point with the same trials and budget, then each point's best
  trial with seeds 0 and 1 in DIR/tuned/, whose report compares the tuned points on test."""
  path = tmp_path / "experiment.py"
  path.write_text(SWEPT_SEARCH)
  workdir = tmp_path / "runs"
  options = search.Options(sweep=True, seeds=2, pruner="none")
  counts = search.run(tiny_config(steps=4), str(path), str(workdir), options)
  names = ["attention.name=scaled_dot", "attention.name=dot"]
  assert list(counts) == names and all(c["finished"] == 1 for c in counts.values())
  for name in names:
    study = optuna.load_study(study_name=name, storage=_sqlite(workdir))
    assert study.user_attrs["budget"] == {"train.num_steps": 4, "train.eval_every_steps": 2}
    best = study.best_trial
    assert (workdir / name / "trials" / "0000" / "results.json").exists()
    for seed in (0, 1):
      overrides = {"model.attention.name": name.split("=")[1], **best.params, "seed": seed}
      run = workdir / "tuned" / sweep.point_name(overrides)
      results = json.loads((run / "results.json").read_text())
      assert results["config"]["seed"] == seed and results["test"]
      lr = results["config"]["optimizer"]["learning_rate"]
      assert lr == best.params["optimizer.learning_rate"] and results["step"] == 4
  assert (workdir / "tuned" / "report" / "report.md").exists()
  text = (workdir / "report" / "search.md").read_text()
  for name in names:
    assert f"| {name} | 1 | 1 | 0 | 0 | 0 |" in text  # trials, complete, pruned, failed, unfinished
  assert "../tuned/report/report.md" in text


# -- processes ----------------------------------------------------------------------------------


def _check_shared(study: optuna.Study, n: int) -> None:
  trials = study.get_trials()
  assert sum(t.state in DONE for t in trials) == n, [t.state for t in trials]
  assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
  assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials


@pytest.mark.slow
def test_two_workers_share_one_study_and_the_report_shows_it(tmp_path):
  workdir = tmp_path / "search"
  _finish(_main(workdir, 30, "--search_trials=4", "--search_workers=2"), workdir)
  study = optuna.load_study(study_name=None, storage=_sqlite(workdir))
  _check_shared(study, 4)
  assert sorted(os.listdir(workdir / "trials")) == ["0000", "0001", "0002", "0003", "report"]
  assert sorted(os.listdir(workdir / "logs")) == ["worker_0.txt", "worker_1.txt"]
  text = (workdir / "report" / "search.md").read_text()
  assert "| search | 4 |" in text and "## Best configuration per point" in text
  for png in ("search_history_search.png", "search_importance_search.png"):
    assert (workdir / "report" / png).stat().st_size > 10_000, png


@pytest.mark.slow
def test_a_killed_workers_trial_is_retried_not_left_running(tmp_path):
  """kill -9 during trial 0; the rerun fails it (stale heartbeat), runs its retry in trial 0's
  folder, then one more trial; a third run with more trials adds only the new one."""
  workdir = tmp_path / "search"
  flags = ("--search_trials=2", "--search_heartbeat=1")
  proc = _main(workdir, 150, *flags)
  metrics = workdir / "trials" / "0000" / "metrics.jsonl"
  start = time.time()
  while not metrics.exists():
    assert proc.poll() is None and time.time() - start < 300, "trial 0 never started training"
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  study = optuna.load_study(study_name="search", storage=_sqlite(workdir))
  assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.RUNNING]
  _finish(_main(workdir, 150, *flags), workdir)
  trials = study.get_trials()
  states = [t.state.name for t in trials]
  assert states == ["FAIL", "COMPLETE", "COMPLETE"] or states == ["FAIL", "COMPLETE", "PRUNED"]
  assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].params == trials[0].params
  assert trials[1].user_attrs["dir"].endswith(os.path.join("trials", "0000"))
  assert trials[2].user_attrs["dir"].endswith(os.path.join("trials", "0002"))
  before = {p: os.path.getmtime(p) for p in workdir.glob("trials/*/results.json")}
  _finish(_main(workdir, 150, "--search_trials=3", "--search_heartbeat=1"), workdir)
  trials = study.get_trials()
  assert len(trials) == 4 and sum(t.state in DONE for t in trials) == 3
  assert all(os.path.getmtime(p) == m for p, m in before.items())


@pytest.mark.slow
def test_two_workers_share_a_study_in_postgresql(tmp_path, postgresql_url):
  """A real PostgreSQL server as the storage, as on a cluster (a fresh database per test)."""
  import sqlalchemy

  database = f"search_{uuid.uuid4().hex[:12]}"
  server = search.storage_url("", postgresql_url)  # with the psycopg2 driver
  engine = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
  with engine.connect() as connection:
    connection.execute(sqlalchemy.text(f"CREATE DATABASE {database}"))
  url = sqlalchemy.engine.make_url(postgresql_url).set(database=database).render_as_string(False)
  assert url.startswith("postgresql://")  # as a user writes it
  workdir = tmp_path / "search"
  proc = _main(workdir, 30, "--search_trials=3", "--search_workers=2", f"--search_storage={url}")
  _finish(proc, workdir)
  study = optuna.load_study(study_name="search", storage=search.storage_url("", url))
  _check_shared(study, 3)
  manifest = json.loads((workdir / search.MANIFEST).read_text())
  assert manifest["storage"].startswith("postgresql+psycopg2://postgres@127.0.0.1:")
  assert not (workdir / search.STORE).exists()
  assert "| search | 3 |" in (workdir / "report" / "search.md").read_text()
  engine.dispose()


def test_worker_command_repeats_the_command_line_as_one_worker():
  argv = ["main.py", "--config=c.py", "--workdir", "w", "--search", "--search_workers", "3",
          "--search_trials=5"]  # fmt: skip
  assert search.worker_command(argv) == [
    sys.executable, "main.py", "--config=c.py", "--workdir", "w", "--search", "--search_trials=5",
    "--search_worker",
  ]  # fmt: skip


def test_unreachable_storage_is_one_line(tmp_path):
  with pytest.raises(search.SearchError, match="cannot open the study storage"):
    search.open_storage(f"sqlite:///{tmp_path}/no/such/folder/study.db")
