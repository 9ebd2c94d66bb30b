"""The training loop's own cost: its steps/s against a minimal flax script of the same model, and
the pause an (asynchronous) checkpoint save puts in it.

    python -m experiments.benchmarks.loop [--config=configs/default.py] [--steps=300] [--rounds=3]
                                         [--write]

* loop: `train.train_and_evaluate` on the experiment (evaluation and checkpoint only at the
  end); its steady-state rate is the median log window after the first.
* minimal: the same model, optimizer, loss and input pipeline in the few lines of a flax example
  (per step: the next batch, put on the devices, one jitted `grad` + `apply_gradients` that
  returns the step's metrics, kept in a list until the log step as flax examples/wmt does; no
  checks), timed over the same windows.
* The two alternate `--rounds` times in one process (the medians are reported), so a busy
  machine slows both alike.
* bare step: the loop's compiled train step called back to back on batches already on the
  devices (the loop's step time over this: its overhead, target <= 1.05x).
* idle gap: the device's pauses between steps inside the loop, from a profile.
* checkpoint pause: how long `Checkpoints.save` holds the loop (the device-to-host copy; orbax
  writes in the background) and how long the save takes to complete, median of 5 saves.

`--write` replaces the `## Training loop` section of docs/benchmarks.md (kept by `make bench`).
"""

import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from absl import app, flags, logging
from flax.training import train_state
from ml_collections import config_flags

import input_pipeline
import models
from experiments.run import build, checkpoints, optim, sharding, tasks, train
from experiments.run.device_info import machine
from experiments.run.state import RNG_STREAMS, TRANSIENT_COLLECTIONS

DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "benchmarks.md")
SECTION = "Training loop"

BARE_BATCHES = 20  # distinct batches the bare step cycles through
FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line (defined only when run as a program, so importing this module is free)."""
  config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment file.")
  flags.DEFINE_integer("steps", 300, "Steps per measurement (5 log windows).")
  flags.DEFINE_integer("rounds", 3, "Loop / minimal measurements, alternated.")
  flags.DEFINE_bool("write", False, "Replace the section in docs/benchmarks.md.")


def loop_rate(config: ml_collections.ConfigDict, steps: int) -> float:
  """Steady-state steps/s of the full loop (eval and checkpoint at the last step only)."""
  config = config.copy_and_resolve_references()
  config.train.update(num_steps=steps, log_every_steps=steps // 5, eval_every_steps=steps,
                      checkpoint_every_steps=steps)  # fmt: skip
  with tempfile.TemporaryDirectory() as workdir:
    results = train.train_and_evaluate(config, workdir)
  return results["throughput"]["steady_steps_per_sec"]


def minimal_rate(config: ml_collections.ConfigDict, steps: int) -> float:
  """Steady-state steps/s of a minimal flax training script of the same model and optimizer."""
  datasets = input_pipeline.get_datasets(config.data)
  kind = datasets.info.kind
  model = models.build(config.model, datasets.info)
  mesh = sharding.make_mesh(config.mesh.shape)
  batches = datasets.train_dataset(0).as_numpy_iterator()
  first = sharding.global_batch(next(batches), mesh)
  rules = tuple(tuple(r) for r in config.mesh.logical_axis_rules)
  with nn.logical_axis_rules(rules):
    variables = model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(1), "attention": jax.random.key(2)},
      first,
      train=False,
    )
  params = variables.pop("params")
  other = {k: v for k, v in variables.items() if k not in TRANSIENT_COLLECTIONS}
  state = train_state.TrainState.create(
    apply_fn=model.apply, params=params, tx=optim.create(config.optimizer, steps)
  )

  @jax.jit
  def step(state, batch):
    rngs = dict(zip(RNG_STREAMS, jax.random.split(jax.random.fold_in(
      jax.random.key(0), state.step), len(RNG_STREAMS)), strict=True))  # fmt: skip

    def loss_fn(params):
      logits = state.apply_fn({"params": params, **other}, batch, train=True, rngs=rngs)
      return tasks.loss_and_metrics(kind, logits, batch)

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), metrics

  with nn.logical_axis_rules(rules):
    state = jax.block_until_ready(step(state, first)[0])  # compile
    window, rates = steps // 5, []
    for _ in range(5):
      t, logged = time.perf_counter(), []
      for _ in range(window):  # as the flax examples: the next batch, put, step, keep metrics
        state, metrics = step(state, sharding.global_batch(next(batches), mesh))
        logged.append(metrics)
      jax.block_until_ready(state)
      rates.append(window / (time.perf_counter() - t))
  return statistics.median(rates[1:] or rates)


def bare_rate(config: ml_collections.ConfigDict, steps: int) -> float:
  """Steady-state steps/s of the loop's own compiled train step called back to back on batches
  already on the devices: the step without the loop around it."""
  run = build.build(config)
  stream = run.datasets.train_dataset(0).as_numpy_iterator()
  batches = [sharding.global_batch(next(stream), run.mesh) for _ in range(BARE_BATCHES)]
  state, _ = run.steps.train(run.state, batches[0])
  jax.block_until_ready(state)
  window, rates = steps // 5, []
  for _ in range(5):
    t = time.perf_counter()
    for i in range(window):
      state, _ = run.steps.train(state, batches[i % BARE_BATCHES])
    jax.block_until_ready(state)
    rates.append(window / (time.perf_counter() - t))
  return statistics.median(rates[1:])


def idle_gap(config: ml_collections.ConfigDict, steps: int, count: int = 20) -> dict[str, float]:
  """The time the device waits between train steps inside the loop, from a profile of `count`
  steps in its middle (`train.profile_steps`): the train step's ops sorted by start, the
  `count - 1` longest pauses between them are the gaps between steps."""
  config = config.copy_and_resolve_references()
  first = steps // 2
  config.train.update(num_steps=steps, log_every_steps=steps // 5, eval_every_steps=steps,
                      checkpoint_every_steps=steps, profile_steps=(first, count))  # fmt: skip
  with tempfile.TemporaryDirectory() as workdir:
    train.train_and_evaluate(config, workdir)
    (path,) = glob.glob(os.path.join(workdir, "profile", "**", "perfetto_trace.json.gz"),
                        recursive=True)  # fmt: skip
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  ops = sorted(
    (e for e in events if e.get("ph") == "X" and e.get("args", {}).get("hlo_module", "")
     == "jit_train_step"),
    key=lambda e: e["ts"],
  )  # fmt: skip
  gaps, end = [], ops[0]["ts"] + ops[0]["dur"]
  for e in ops[1:]:
    gaps.append(max(e["ts"] - end, 0.0))
    end = max(end, e["ts"] + e["dur"])
  between = sorted(gaps, reverse=True)[: count - 1]
  span_ms = (end - ops[0]["ts"]) / 1e3
  return {"gap_ms": statistics.median(between) / 1e3, "step_ms": span_ms / count,
          "idle_share": sum(between) / 1e3 / span_ms}  # fmt: skip


def checkpoint_pause(config: ml_collections.ConfigDict, saves: int = 5) -> dict[str, float]:
  """Median seconds `Checkpoints.save` blocks the loop, and until the save is complete."""
  state = build.build(config).state
  pauses, totals = [], []
  with (
    tempfile.TemporaryDirectory() as workdir,
    checkpoints.Checkpoints(workdir, 2, "accuracy", "max") as ckpt,
  ):
    for step in range(1, saves + 1):
      start = time.perf_counter()
      ckpt.save(step, state, {"next_batch": step}, force=True)
      pauses.append(time.perf_counter() - start)
      ckpt.wait()
      totals.append(time.perf_counter() - start)
  bytes_ = sum(x.nbytes for x in jax.tree.leaves(state))
  return {"pause_s": statistics.median(pauses), "complete_s": statistics.median(totals),
          "state_mib": bytes_ / 2**20}  # fmt: skip


def measure(config, steps: int, rounds: int) -> dict[str, Any]:
  loop, minimal, bare = [], [], []
  for r in range(rounds):
    loop.append(loop_rate(config, steps))
    minimal.append(minimal_rate(config, steps))
    bare.append(bare_rate(config, steps))
    print(f"round {r + 1}: loop {loop[-1]:.1f} steps/s, minimal {minimal[-1]:.1f}, "
          f"bare step {bare[-1]:.1f}", flush=True)  # fmt: skip
  return {
    "machine": machine(),
    "date": time.strftime("%Y-%m-%d"),
    "steps": steps,
    "loop": loop,
    "minimal": minimal,
    "bare": bare,
    "idle": idle_gap(config, steps),
    "checkpoint": checkpoint_pause(config),
    "command": " ".join(["python -m experiments.benchmarks.loop", *sys.argv[1:]]),
  }


def section(m: dict[str, Any]) -> str:
  loop, minimal = statistics.median(m["loop"]), statistics.median(m["minimal"])
  bare, idle, c = statistics.median(m["bare"]), m["idle"], m["checkpoint"]
  rounds = ", ".join(
    f"{a:.1f} / {b:.1f} / {s:.1f}"
    for a, b, s in zip(m["loop"], m["minimal"], m["bare"], strict=True)
  )
  table = "\n".join(
    f"| {name} | {rate:,.1f} | {rate / minimal:.2f}x | {bare / rate:.2f}x |"
    for name, rate in (
      ("the full loop (`train.train_and_evaluate`, steady state)", loop),
      ("a minimal flax script of the same model and input pipeline", minimal),
      ("the loop's compiled train step back to back, batches on the device", bare),
    )
  )
  return f"""## {SECTION}

{m["machine"]}, {m["date"]}; `{m["command"]}`: the default experiment, {m["steps"]} steps per
measurement, loop, minimal script and bare step alternated in one process (rounds, loop /
minimal / bare steps/s: {rounds}).

| | steps/s (median) | vs minimal | step time vs bare step |
|---|---:|---:|---:|
{table}

Idle gap between steps inside the loop, from a profile of 20 steps in its middle
(`train.profile_steps`; the pauses between the train step's ops): median
{idle["gap_ms"]:.2f} ms per step of {idle["step_ms"]:.2f} ms, {100 * idle["idle_share"]:.1f}% of
the profiled time.

Both step functions return the step's metrics; the loop's also computes the gradient norm and
its non-finite checks (the loss, the gradient norm and the updated parameters), and the loop
puts batches on the devices two steps ahead; it reads nothing back between its periodic
actions. On this CPU the input pipeline and the step share the same cores.
Checkpoint of the default state ({c["state_mib"]:.1f} MiB): `save` holds the loop
{c["pause_s"] * 1e3:,.0f} ms (median of 5), the asynchronous write completes after
{c["complete_s"] * 1e3:,.0f} ms.
"""


def write(m: dict[str, Any], path: str = DOC) -> None:
  """Replaces (or inserts before `## GPU`) the section in docs/benchmarks.md."""
  with open(path) as f:
    text = f.read()
  new = section(m)
  pattern = rf"^## {SECTION}\b.*?(?=^## |\Z)"
  if re.search(pattern, text, re.S | re.M):
    text = re.sub(pattern, lambda _: new + "\n", text, flags=re.S | re.M)
  else:
    text = text.replace("## GPU", new + "\n## GPU", 1)
  with open(path, "w") as f:
    f.write(text)
  print(f"wrote {path}")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax reports every save at INFO
  m = measure(FLAGS.config, FLAGS.steps, FLAGS.rounds)
  print(section(m))
  if FLAGS.write:
    write(m)


if __name__ == "__main__":
  define_flags()
  app.run(main)
