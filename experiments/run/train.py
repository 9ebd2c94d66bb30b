"""The one train/eval loop, for every task and model.

    train_and_evaluate(config, workdir) -> results (also written to workdir/results.json)

The run (data, model, mesh, state, compiled steps) is built by `experiments.run.build`; the loop
is the same for every task. The state is sharded over a ('data', 'fsdp', 'tensor') mesh by the
logical axis names of its parameters; batches are split over ('data', 'fsdp'). A run resumes
from the newest checkpoint in `workdir`, at the very batch it would have read next.

Between periodic actions (log, eval, checkpoint, stop agreement, profile) nothing moves between
host and device except the explicit, prefetched batch puts: the steps run under
`jax.transfer_guard("disallow")`, and non-finite steps are counted in the state and read at the
next periodic action (a step that went bad halts the state on the device until then).
"""

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from absl import logging

from experiments.run import (
  batches,
  build,
  checkpoints,
  decode_eval,
  optim,
  preemption,
  provenance,
  sharding,
  tasks,
  validate,
)
from experiments.run.metrics_log import MetricsLog
from experiments.run.profile import Profile
from experiments.run.workdir import exclusive


class NonFiniteError(RuntimeError):
  pass


class _Every:
  """Which periodic actions fall on a step; the last step has them all."""

  def __init__(self, train_config, num_steps: int):
    self.num_steps = num_steps
    self.intervals = {
      "log": train_config.log_every_steps,
      "eval": train_config.eval_every_steps,
      "save": train_config.checkpoint_every_steps,
    }
    # stop requests are a collective across processes: agreed every `sync_every_steps`
    self.sync = 1 if jax.process_count() == 1 else (
      train_config.get("sync_every_steps", 0) or train_config.log_every_steps
    )  # fmt: skip

  def due(self, step: int) -> set[str]:
    last = step == self.num_steps
    return {name for name, every in self.intervals.items() if last or step % every == 0}

  def stop_requested(self, step: int) -> bool:
    return (step % self.sync == 0 or step == self.num_steps) and preemption.stop_requested()


class _Selection:
  """Evaluation on validation, the best checkpoint picked by its main metric, and the pruner."""

  def __init__(self, run: build.Run, ckpt, meta, on_eval, local_batch_size: int, workdir: str):
    self.run, self.ckpt, self.meta, self.on_eval = run, ckpt, meta, on_eval
    self.workdir = workdir  # hypotheses-<split>-<step>.txt of BLEU evaluations
    self.metric, self.mode = run.main_metric
    self.local_batch_size = local_batch_size
    self.validation = batches.eval_split(run.datasets, local_batch_size, "validation")
    self.last: dict[str, float] = {}
    self.stopped_early = False

  def evaluate(self, state, split_batches=None, prefix="eval") -> dict[str, float]:
    run = self.run
    split_batches = self.validation if split_batches is None else split_batches
    computed = tasks.with_derived(run.info.kind, run.steps.evaluate(state, split_batches, run.mesh))
    out = {f"{prefix}/{k}": v for k, v in computed.items()}
    if decode_eval.enabled(run.config, run.info):
      split = "validation" if prefix == "eval" else prefix
      out[f"{prefix}/bleu"] = decode_eval.bleu_score(
        run.model, state, split_batches, run.config, run.info, run.mesh,
        references=run.datasets.references.get(split), workdir=self.workdir, split=split,
      )  # fmt: skip
    return out

  def __call__(self, step: int, state, log: MetricsLog) -> bool:
    """Evaluates, keeps the best checkpoint; returns whether the pruner stops the run."""
    self.last = self.evaluate(state)
    log.write(step, self.last)
    logging.info("eval at step %d: %s", step, _fmt(self.last))
    value, best = self.last[f"eval/{self.metric}"], self.meta["best"]
    if best is None or _better(value, best[f"eval/{self.metric}"], self.mode):
      self.meta |= {"best": self.last, "best_step": step}
      self.ckpt.save_best(step, state, _meta(self.meta, step, log), {self.metric: value})
    # early stopping: `train.early_stopping_evals` evaluations in a row without a better one
    patience = self.run.config.train.get("early_stopping_evals", 0) or 0
    behind = step - self.meta["best_step"]
    self.stopped_early = (
      patience > 0 and behind >= patience * self.run.config.train.eval_every_steps
    )
    return self.stopped_early or (self.on_eval is not None and bool(self.on_eval(step, self.last)))

  def test(self, state) -> dict[str, float]:
    """The checkpoint picked on validation, evaluated once on the test split."""
    self.ckpt.wait()
    best = self.ckpt.restore_best(state) if self.meta["best_step"] is not None else None
    split = batches.eval_split(self.run.datasets, self.local_batch_size, "test")
    test = self.evaluate(state if best is None else best, split, "test")
    logging.info("test at step %s (best on validation): %s", self.meta["best_step"], _fmt(test))
    return test


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  hooks: Sequence[Callable[[int], None]] = (),
  on_eval: Callable[[int, dict[str, float]], bool] | None = None,
  restart: bool = False,
) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns results.json's dict.

  The validation split picks the best checkpoint; after the last step that checkpoint, and only
  it, is evaluated once on the test split (`results["test"]`). `hooks` are called with the step
  number after every step (e.g. to request a stop). `on_eval(step, {"eval/<metric>": value})` is
  called after every validation evaluation; if it returns True the run stops there (checkpoint
  saved, status "pruned": a hyperparameter search's pruner). `restart`: train from step 0, the
  workdir's earlier files moved to `workdir/previous.N/`.
  """
  validate.check_config(config)
  with contextlib.ExitStack() as stack:  # closes checkpoints and writers on any exit
    if jax.process_index() == 0:
      stack.enter_context(exclusive(workdir))  # a second run on this workdir exits here
    validate.prepare_workdir(workdir, config, restart=restart)
    stack.enter_context(preemption.handlers())  # a signal from here on: save and stop
    run = build.build(config, workdir=workdir)
    config, num_steps = run.config, run.config.train.num_steps  # epochs converted to steps
    stack.enter_context(nn.logical_axis_rules(run.axis_rules))
    ckpt = stack.enter_context(run.checkpoints(workdir))
    state, run.state = run.state, None  # the loop owns the state (the steps donate its buffers)
    meta = {"next_batch": 0, "best": None, "best_step": None, "wall_seconds": 0.0}
    restored = ckpt.restore_latest(state)
    if restored is not None:
      state, meta = restored
      logging.info("resumed from step %d in %s", int(state.step), workdir)
    start_step = step = int(state.step)
    train_batches = batches.prefetch(
      run.datasets.train_dataset(meta["next_batch"]).as_numpy_iterator(), run.mesh
    )
    stack.callback(train_batches.close)  # tf.data's threads end here, not at some later gc
    local_batch_size = config.data.batch_size // jax.process_count()
    selection = _Selection(run, ckpt, meta, on_eval, local_batch_size, workdir)
    batch = next(train_batches)
    run.steps.train.compile(state, batch)
    run.steps.eval.compile(state, sharding.global_batch(selection.validation[0], run.mesh))
    logging.info("%d parameters; compiled in %.1fs", run.num_params, run.steps.compile_seconds)
    validate.write_config(workdir, config)  # only once the run has started
    log = stack.enter_context(MetricsLog(workdir, num_steps, start_step, meta["wall_seconds"]))
    origin = provenance.collect()  # code, libraries, devices: results.json and TensorBoard
    log.writer.write_hparams(provenance.hparams(config.to_dict(), origin))
    learning_rate = optim.schedule(config.optimizer, num_steps // config.optimizer.grad_accum_steps)
    profile = stack.enter_context(Profile(workdir, *config.train.get("profile_steps", (0, 0))))
    every = _Every(config.train, num_steps)
    nonfinite_seen, pruned = int(state.nonfinite_total), False
    while step < num_steps:
      profile.before(step)
      with jax.transfer_guard("disallow"), jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = run.steps.train(state, batch)
        log.add(metrics, tasks.batch_tokens(batch))
        step += 1
        for hook in hooks:
          hook(step)
        if step < num_steps:
          batch = next(train_batches)
      due, stop = every.due(step), every.stop_requested(step)
      profile.after(step, state)
      if not (due or stop):
        continue
      nonfinite_seen = _check_nonfinite(config, state, nonfinite_seen, ckpt)
      if "log" in due:
        update = (step - 1) // config.optimizer.grad_accum_steps  # the last step's update
        log.write_train(step, state, {"train/learning_rate": float(learning_rate(update))})
      if "eval" in due:
        with log.clock_stopped():
          pruned = selection(step, state, log)
      if "save" in due or stop or pruned:
        ckpt.save(step, state, _meta(meta, step, log), force=True)
      if stop and step < num_steps:
        logging.warning(
          "stopped at step %d on request; checkpoint saved. Run the same command to resume.", step
        )
        return {"status": "preempted", "step": step}
      if pruned and step < num_steps:
        why = "no better validation for a while" if selection.stopped_early else "pruned"
        logging.info("%s at step %d; checkpoint saved", why, step)
        break
    if not selection.last:  # the run had already finished: report its final state again
      selection.last = selection.evaluate(state)
    pruned = pruned and not selection.stopped_early  # an early stop still reports on test
    test = {} if pruned else selection.test(state)

  results = {
    "config": config.to_dict(),
    "step": step,
    "status": "pruned" if pruned else "finished",
    "stopped_early": selection.stopped_early,  # train.early_stopping_evals without improvement
    "main_metric": f"eval/{selection.metric}",
    "metrics": selection.last,
    "best": meta["best"] or selection.last,
    "best_step": meta["best_step"],
    "test": test,  # on the test split, from the best checkpoint (selected on validation)
    "splits": dict(run.datasets.splits),
    "lengths": dict(run.datasets.lengths),  # examples dropped or cut by the length limits
    **(
      {"bleu_signature": decode_eval.signature()} if decode_eval.enabled(config, run.info) else {}
    ),
    "throughput": log.throughput() if step > start_step else _earlier(workdir, "throughput"),
    "flops_per_step": run.steps.flops_per_step(),
    "params": int(run.num_params),
    "compile_seconds": run.steps.compile_seconds,
    "peak_memory_bytes": run.steps.peak_memory_bytes(),
    "wall_seconds": log.wall_seconds(),
    "provenance": origin,
  }
  if jax.process_index() == 0:
    _write_json(os.path.join(workdir, "results.json"), results)
  return results


def _earlier(workdir: str, key: str) -> Any:
  """`key` of the results.json a finished run wrote before (rerunning it trains nothing)."""
  try:
    with open(os.path.join(workdir, "results.json")) as f:
      return json.load(f)[key]
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _better(value: float, best: float, mode: str) -> bool:
  return value > best if mode == "max" else value < best


def _meta(meta: dict[str, Any], step: int, log: MetricsLog) -> dict[str, Any]:
  return {**meta, "next_batch": step, "wall_seconds": log.wall_seconds()}


def _fmt(metrics: dict[str, float]) -> str:
  return "  ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in sorted(metrics.items()))


def _check_nonfinite(config, state, seen: int, ckpt: checkpoints.Checkpoints) -> int:
  """Reads the state's non-finite counters (at a periodic action): warns about skipped steps,
  raises NonFiniteError where the policy stops the run. Returns the total seen so far."""
  total, in_a_row, last = (int(x) for x in jax.device_get(
    (state.nonfinite_total, state.nonfinite_in_a_row, state.nonfinite_step)
  ))  # fmt: skip
  if total == seen:
    return total
  last_good = ckpt.latest.latest_step()
  where = f"the last good checkpoint is step {last_good}" if last_good else "no checkpoint yet"
  if config.train.on_nonfinite == "stop":
    raise NonFiniteError(
      f"non-finite loss, gradients or parameters at step {last}; the update was not applied "
      f"and {where}. "
      "Lower the learning rate, enable clipping, or set train.on_nonfinite=skip"
    )
  logging.warning(
    "non-finite loss/gradients/parameters at step %d: update skipped (%d in a row, %d since the "
    "last check)", last, in_a_row, total - seen,
  )  # fmt: skip
  if in_a_row >= config.train.max_nonfinite:
    raise NonFiniteError(
      f"{in_a_row} non-finite steps in a row up to step {last} (train.max_nonfinite="
      f"{config.train.max_nonfinite}); {where}"
    )
  return total


def _write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=str)
  os.replace(tmp, path)
