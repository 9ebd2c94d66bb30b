"""Train and evaluate one experiment (or every point of its sweep).

    python main.py --config=configs/default.py --workdir=runs/default
    python main.py --config=configs/default.py:steps=500 --workdir=runs/quick \
        --config.model.attention.name=additive --config.optimizer.learning_rate=1e-3

Several processes (one per host or per GPU): experiments/run/distributed.py, docs/long_runs.md.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
config_flags.DEFINE_config_file("config", None, "Experiment file, e.g. configs/default.py:arg.")
flags.DEFINE_bool("sweep", False, "Run every point of the experiment file's get_sweep(arg).")
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(lambda r: "orbax" not in r.pathname)  # quiet checkpointing
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")  # tf.data only; JAX owns the accelerators
  import jax

  from experiments.compare import report, search, sweep
  from experiments.run import checkpoints, distributed, train, validate

  launcher = (FLAGS.sweep or FLAGS.seeds) and FLAGS.sweep_parallel > 1 and FLAGS.sweep_point is None
  launcher = launcher or (FLAGS.search and FLAGS.search_workers > 1 and not FLAGS.search_worker)
  try:
    if not launcher:  # a parallel sweep's parent leaves the devices to its point processes
      distributed.initialize()
      logging.info(
        "JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices()
      )
    if FLAGS.search:
      experiment = config_flags.get_config_filename(FLAGS["config"])
      search.run(FLAGS.config, experiment, FLAGS.workdir, search.options_from_flags(FLAGS))
    elif FLAGS.sweep or FLAGS.sweep_point is not None or FLAGS.seeds:
      experiment = config_flags.get_config_filename(FLAGS["config"])  # "configs/x.py[:arg]"
      statuses = sweep.run(
        FLAGS.config, experiment, FLAGS.workdir, FLAGS.sweep_parallel, FLAGS.sweep_point,
        seeds=FLAGS.seeds,
      )  # fmt: skip
      if FLAGS.sweep_point is not None and sweep.FAILED in statuses:
        sys.exit(1)  # e.g. a failed task of a job array
      if FLAGS.sweep_point is None and jax.process_index() == 0:
        report.print_summary(report.write_report(FLAGS.workdir))
    else:
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (
    validate.ConfigError,
    distributed.LaunchError,
    train.NonFiniteError,
    checkpoints.NoGoodCheckpointError,
    search.SearchError,
  ) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
