"""The benchmark command line: attention cost per type and length, a train step's MFU, and the
CPU tables of docs/.

Attention cost (time, compiled memory, FLOP rate) per type and length, and a train-step MFU.

    python -m experiments.benchmarks --attention=scaled_dot,memory_efficient,linear \
        --lengths=512,1024,2048 --batch=8 --heads=8 --head_dim=64 --mode=fwd_bwd --json=out.json
    python -m experiments.benchmarks --attention=all --lengths=256 --mode=fwd
    python -m experiments.benchmarks --attention=scaled_dot --lengths=1024 --profile  # op times
    python -m experiments.benchmarks --train          # Transformer LM train step, MFU
    python -m experiments.benchmarks --cpu_targets    # docs/benchmarks.md (make bench)
    python -m experiments.benchmarks --cpu_all_types  # docs/benchmarks_all_types.md
"""

import dataclasses
import json
import math
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from experiments.benchmarks import report, train_step
from experiments.benchmarks.attention_cost import (
  Shape,
  plot,
  profile_case,
  profile_table,
  resolve_names,
  run,
  table,
)
from experiments.run.device_info import machine, matmul_rate

config_flags.DEFINE_config_file(
  "config", "configs/default.py", "Experiment whose optimizer and mesh --train uses."
)
FLAGS = flags.FLAGS


flags.DEFINE_list("attention", ["scaled_dot", "memory_efficient"], "Types, or 'all'.")
flags.DEFINE_list("lengths", ["512", "1024"], "Sequence lengths to time.")
flags.DEFINE_list("memory_lengths", [], "Lengths only compiled (memory analysis, no timing).")
flags.DEFINE_integer("batch", 8, "Batch size.")
flags.DEFINE_integer("heads", 8, "Heads.")
flags.DEFINE_integer("head_dim", 64, "Width per head.")
flags.DEFINE_enum("mode", "fwd_bwd", ["fwd", "fwd_bwd"], "Forward only, or forward + backward.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_bool("causal", False, "Causal self-attention.")
flags.DEFINE_integer("repeats", 10, "Timed calls per row (median reported).")
flags.DEFINE_integer("warmup", 1, "Untimed calls per row before timing.")
flags.DEFINE_float("max_temp_gib", 16.0, "Rows whose compiled temp memory exceeds this: not run.")
flags.DEFINE_float("max_gflop", math.inf, "Rows whose analytic FLOPs exceed this: not run.")
flags.DEFINE_float("max_call_s", math.inf, "Rows whose first call takes longer: not timed.")
flags.DEFINE_string("json", None, "Write the rows here.")
flags.DEFINE_string("plot_prefix", None, "Write <prefix>_time.png and <prefix>_memory.png.")
flags.DEFINE_bool("profile", False, "Also print where the time goes (op categories, top ops).")
flags.DEFINE_bool("train", False, "Benchmark a Transformer LM train step instead.")
flags.DEFINE_integer("train_batch", 8, "--train: batch size (sequences of 512 tokens).")
flags.DEFINE_bool("cpu_targets", False, "Measure the targets; rewrite docs/benchmarks.md.")
flags.DEFINE_bool(
  "cpu_all_types", False, "Measure every type; rewrite docs/benchmarks_all_types.md."
)


def main(argv: Sequence[str]) -> None:
  del argv
  if FLAGS.cpu_targets or FLAGS.cpu_all_types:
    if FLAGS.cpu_targets:
      report.write_targets(FLAGS.config)
    if FLAGS.cpu_all_types:
      report.write_all_types()
    return
  if FLAGS.train:
    result = train_step.run(
      FLAGS.config, batch=FLAGS.train_batch, dtype=FLAGS.dtype, profile=FLAGS.profile
    )
    print(json.dumps(result, indent=1))
    return
  shape = Shape(FLAGS.batch, 0, FLAGS.heads, FLAGS.head_dim, FLAGS.mode, FLAGS.dtype, FLAGS.causal)
  peak = matmul_rate(FLAGS.dtype)
  print(f"{machine()}; matmul rate {peak:,.1f} GFLOP/s ({FLAGS.dtype})", flush=True)
  try:
    names = resolve_names(FLAGS.attention, FLAGS.dtype)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  rows = run(
    names,
    [int(t) for t in FLAGS.lengths],
    shape,
    FLAGS.repeats,
    FLAGS.max_temp_gib,
    warmup=FLAGS.warmup,
    max_gflop=FLAGS.max_gflop,
    max_call_s=FLAGS.max_call_s,
    memory_lengths=[int(t) for t in FLAGS.memory_lengths],
    peak_gflops=peak,
    log=lambda line: print(line, flush=True),
  )
  print(table(rows))
  if FLAGS.profile:
    for name in names:
      for t in FLAGS.lengths:
        print(f"\n{name} T={t}\n")
        print(profile_table(profile_case(name, dataclasses.replace(shape, length=int(t)))))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(rows, f, indent=1)
  if FLAGS.plot_prefix:
    plot(rows, FLAGS.plot_prefix)


if __name__ == "__main__":
  app.run(main)
