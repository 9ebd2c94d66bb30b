"""Train and evaluate one experiment (or every point of its sweep).

    python main.py --config=configs/default.py --workdir=runs/default
    python main.py --config=configs/default.py:steps=500 --workdir=runs/quick \
        --config.model.attention.name=additive --config.optimizer.learning_rate=1e-3

Several processes (one per host or per GPU): experiments/run/distributed.py, docs/long_runs.md.

Exit status: 0 finished; 75 stopped on request (SIGTERM, Ctrl-C: checkpoint saved, rerun the
same command to resume; a launcher may requeue on it); 2 bad input (one line on stderr: config,
flags, a workdir in use or damaged, disk full); 130 a second Ctrl-C (at once, even inside a save:
one line names the last complete checkpoint; the unfinished one is deleted) or a Ctrl-C before
training started; 1 a failure.
The config is read and checked before TensorFlow is imported and before JAX starts, so a bad
field fails in about a second.
"""

import os
import sys

from absl import app, flags, logging

from experiments.run import config_file

FLAGS = flags.FLAGS
OVERRIDES: list[str] = []  # the --config.a.b=v arguments, applied by experiments.run.config_file
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_string(
  "config", None, "Experiment file, e.g. configs/default.py:arg; fields: --config.a.b=value."
)
flags.DEFINE_bool(
  "restart", False, "Train from step 0: what the workdir holds moves to workdir/previous.N/."
)
flags.DEFINE_bool("sweep", False, "Run every point of the experiment file's get_sweep(arg).")
flags.DEFINE_bool(
  "list", False, "With --sweep (or --seeds): print the number of points and their names; no run."
)
flags.DEFINE_integer("sweep_parallel", 1, "With --sweep: points run as this many local processes.")
flags.DEFINE_integer(
  "sweep_point", None, "Run only point K of the sweep (e.g. a SLURM array task)."
)
flags.DEFINE_bool("search", False, "Tune get_search(arg) with Optuna (with --sweep: per point).")
flags.DEFINE_integer("search_trials", None, "With --search: finished trials per study.")
flags.DEFINE_integer("search_workers", 1, "With --search: local worker processes per study.")
flags.DEFINE_string("search_storage", None, "Optuna storage URL; default: sqlite in the workdir.")
flags.DEFINE_string("search_sampler", "tpe", "tpe | random | grid | cmaes | gp")
flags.DEFINE_string("search_pruner", "median", "none | median | asha | hyperband")
flags.DEFINE_bool("search_worker", False, "One worker of a shared search: trials only.")
flags.DEFINE_integer("search_heartbeat", 20, "Seconds; a trial silent for twice this is retried.")
flags.DEFINE_integer(
  "seeds", 0, "Repeat every point (or the one run) with seed 0..N-1; the report groups them."
)
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flags, with the --config.a.b=v overrides set aside for `config_file.load`."""
  rest, OVERRIDES[:] = config_file.split_argv(argv)
  try:
    return FLAGS(rest)
  except flags.Error as e:
    config_file.fail(e)


def load_config():
  """The experiment file with its overrides, checked (fields, types, ranges) without the data
  or the devices; exits with one line and status 2 on a bad one."""
  try:
    config = config_file.load(FLAGS.config, OVERRIDES)
    from experiments.run import validate

    validate.check_fields(config)
  except config_file.ConfigError as e:
    config_file.fail(e)
  return config


def exit_now(code: int) -> None:
  """Exits at once, once output is flushed. By then the run has closed everything it wrote
  (checkpoints waited for, metrics and TensorBoard files closed, results.json replaced), so
  skipping interpreter teardown loses nothing; that teardown (tf.data iterator and autotune
  threads, TensorFlow's and XLA's destructors) held the process 1.5 s to a minute after the
  results."""
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def list_points() -> None:
  """`--sweep --list`: the point count (e.g. a SLURM array's size: --array=0-(N-1)), then one
  `K name` line per point."""
  from experiments.compare import sweep

  try:
    names = sweep.point_names(sweep.load_sweep(FLAGS.config, FLAGS.seeds))
  except config_file.ConfigError as e:
    config_file.fail(e)
  print(f"{len(names)} points")
  for k, name in enumerate(names):
    print(k, name)


def main(argv):
  if len(argv) > 1:
    config_file.fail(f"unexpected arguments: {argv[1:]}")
  config = load_config()
  if FLAGS.list:
    list_points()
    return
  logging.get_absl_handler().addFilter(lambda r: "orbax" not in r.pathname)  # quiet checkpointing
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")  # tf.data only; JAX owns the accelerators
  import jax

  from experiments.compare import report, search, sweep
  from experiments.run import checkpoints, distributed, preemption, train, validate, workdir

  launcher = (FLAGS.sweep or FLAGS.seeds) and FLAGS.sweep_parallel > 1 and FLAGS.sweep_point is None
  launcher = launcher or (FLAGS.search and FLAGS.search_workers > 1 and not FLAGS.search_worker)
  try:
    if not launcher:  # a parallel sweep's parent leaves the devices to its point processes
      distributed.initialize()
      logging.info(
        "JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices()
      )
    overridden = [key for key, _ in config_file.parse_overrides(OVERRIDES)]
    for warning in validate.ignored_fields(config, overridden):
      logging.warning("%s", warning)
    if FLAGS.search:
      search.run(config, FLAGS.config, FLAGS.workdir, search.options_from_flags(FLAGS))
    elif FLAGS.sweep or FLAGS.sweep_point is not None or FLAGS.seeds:
      statuses = sweep.run(
        config, FLAGS.config, FLAGS.workdir, FLAGS.sweep_parallel, FLAGS.sweep_point,
        seeds=FLAGS.seeds,
      )  # fmt: skip
      if FLAGS.sweep_point is not None and sweep.FAILED in statuses:
        sys.exit(1)  # e.g. a failed task of a job array
      if sweep.PREEMPTED in statuses:
        sys.exit(preemption.EXIT_PREEMPTED)
      if FLAGS.sweep_point is None and jax.process_index() == 0:
        report.print_summary(report.write_report(FLAGS.workdir))
    else:
      results = train.train_and_evaluate(config, FLAGS.workdir, restart=FLAGS.restart)
      stopped = results.get("status") == "preempted"
      if jax.process_count() == 1:  # everything is written and closed: leave tf.data's threads
        exit_now(preemption.EXIT_PREEMPTED if stopped else 0)
      if stopped:
        sys.exit(preemption.EXIT_PREEMPTED)
  except (
    validate.ConfigError,
    distributed.LaunchError,
    train.NonFiniteError,
    checkpoints.NoGoodCheckpointError,
    search.SearchError,
  ) as e:
    config_file.fail(e)
  except Exception as e:
    if not workdir.disk_full(e):
      raise
    config_file.fail(
      f"disk full under {FLAGS.workdir!r}: stopped; the last complete checkpoint "
      "is kept. Free space and run the same command to resume"
    )
  except KeyboardInterrupt:  # outside training (a second Ctrl-C inside it: preemption.py)
    config_file.fail(
      "interrupted: stopped (checkpoints already written are kept; run the same command to resume)",
      code=130,
    )


def run() -> None:
  """The console entry point (`attention-lab`, installed by `pip install .`)."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
