"""The one train/eval loop, for every task and model.

    train_and_evaluate(config, workdir) -> results (also written to workdir/results.json)

Data (`input_pipeline`), model (`models`), loss (`experiments.run.tasks`) and optimizer
(`experiments.run.optim`) are chosen by name from the config; the loop is the same for all. The
state is sharded over a ('data', 'fsdp', 'tensor') mesh by the logical axis names of its parameters;
batches are split over ('data', 'fsdp'). A run resumes from the newest checkpoint in `workdir`,
at the very batch it would have read next.

Between periodic actions (log, eval, checkpoint, stop agreement, profile) nothing moves between
host and device except the explicit, prefetched batch puts: the steps run under
`jax.transfer_guard("disallow")`, and non-finite steps are counted in the state and read at the
next periodic action (a step that went bad halts the state on the device until then).
"""

import collections
import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from flax.training import train_state
from jax.experimental import multihost_utils

import input_pipeline
import models
from experiments.run import (
  checkpoints,
  decode_eval,
  flops,
  optim,
  preemption,
  sharding,
  tasks,
  validate,
)

RNG_STREAMS = ("dropout", "attention")
TRANSIENT_COLLECTIONS = ("intermediates", "cache", "attention_state")


class TrainState(train_state.TrainState):
  """Parameters and optimizer state, plus non-trainable model variables (e.g. fixed features)."""

  model_state: Any = None
  nonfinite_in_a_row: jax.Array | int = 0
  nonfinite_total: jax.Array | int = 0  # steps whose update was not applied
  nonfinite_step: jax.Array | int = 0  # the latest such step (0: none)
  rng: jax.Array | None = None  # raw key data of jax.random.key(config.seed): an argument of the
  # compiled steps, not a constant in them, so runs that differ only in seed share one compilation


class NonFiniteError(RuntimeError):
  pass


class Compiled:
  """A jitted step compiled ahead of time once per batch shape (timed apart from running).

  Most tasks have one shape; length-bucketed batches have one per bucket.
  """

  def __init__(self, jitted):
    self.jitted = jitted
    self.executables = {}
    self.flops = {}  # per batch shape: matrix-product FLOPs of the traced program
    self.compile_seconds = 0.0

  def compile(self, state, batch):
    key = tuple(sorted((k, v.shape) for k, v in batch.items()))
    if key not in self.executables:
      start = time.perf_counter()
      traced = self.jitted.trace(state, batch)
      self.executables[key] = traced.lower().compile()
      self.compile_seconds += time.perf_counter() - start
      try:
        self.flops[key] = flops.matmul_flops(traced.jaxpr)
      except ValueError:  # a while loop: no static count
        self.flops[key] = None
    return self.executables[key]

  def __call__(self, state, batch):
    return self.compile(state, batch)(state, batch)


@dataclasses.dataclass
class Step:
  """The compiled pieces of one run."""

  train: Compiled
  eval: Compiled

  @property
  def compile_seconds(self) -> float:
    return self.train.compile_seconds + self.eval.compile_seconds


def _rngs(key_data: jax.Array, step) -> dict[str, jax.Array]:
  key = jax.random.fold_in(jax.random.wrap_key_data(key_data), step)
  return dict(zip(RNG_STREAMS, jax.random.split(key, len(RNG_STREAMS)), strict=True))


def _apply(state: TrainState, params, batch, *, train: bool, rngs=None):
  return state.apply_fn(
    {"params": params, **(state.model_state or {})}, batch, train=train, rngs=rngs
  )


def halted(state: TrainState, on_nonfinite: str, max_nonfinite: int) -> jax.Array:
  """Whether the non-finite policy stops the run: any bad step under 'stop', `max_nonfinite` in
  a row under 'skip'. A halted state no longer changes; the loop raises at its next check."""
  stop = state.nonfinite_total > 0 if on_nonfinite == "stop" else False
  return stop | (state.nonfinite_in_a_row >= max_nonfinite)


def make_train_step(kind: str, label_smoothing: float, on_nonfinite: str, max_nonfinite: int):
  def train_step(state: TrainState, batch):
    def loss_fn(params):
      logits = _apply(state, params, batch, train=True, rngs=_rngs(state.rng, state.step))
      return tasks.loss_and_metrics(kind, logits, batch, label_smoothing)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updated = state.apply_gradients(grads=grads)
    finite = (
      jnp.isfinite(loss)
      & jnp.isfinite(optax.global_norm(grads))
      & jnp.all(jnp.array([jnp.isfinite(p).all() for p in jax.tree.leaves(updated.params)]))
    )
    # A step with a non-finite loss, gradient or updated parameter leaves parameters and
    # optimizer state untouched (and is counted); a halted state does not change at all.
    stopped = halted(state, on_nonfinite, max_nonfinite)
    apply = finite & ~stopped
    bad = ~finite & ~stopped
    kept = jax.tree.map(lambda new, old: jnp.where(apply, new, old), updated, state)
    kept = kept.replace(
      step=state.step + 1,
      nonfinite_in_a_row=jnp.where(
        stopped, state.nonfinite_in_a_row, jnp.where(finite, 0, state.nonfinite_in_a_row + 1)
      ),
      nonfinite_total=state.nonfinite_total + bad.astype(jnp.int32),
      nonfinite_step=jnp.where(bad, state.step + 1, state.nonfinite_step),
    )
    return kept, metrics

  return train_step


def make_eval_step(kind: str):
  def eval_step(state: TrainState, batch):
    logits = _apply(state, state.params, batch, train=False)
    return tasks.loss_and_metrics(kind, logits, batch)[1]

  return eval_step


def _dummy_batch(dataset, global_batch_size: int, info=None) -> dict[str, np.ndarray]:
  """All-zero batch of the dataset's element spec; a length left open (length-bucketed batches)
  becomes the task's longest (`info.max_target_length` for target features)."""

  def longest(key: str) -> int:
    if info is None:
      raise ValueError(f"batches of feature {key!r} have no fixed length")
    if key.startswith("targets") and info.max_target_length:
      return info.max_target_length
    return info.max_input_length

  return {
    k: np.zeros(
      (global_batch_size, *(d if d is not None else longest(k) for d in v.shape[1:])),
      v.dtype.as_numpy_dtype,
    )
    for k, v in dataset.element_spec.items()
  }


def create_state(config, model, tx, mesh, example_batch) -> tuple[TrainState, Any]:
  """Initialises the state directly into its shardings (no host copy of the full model)."""
  rules = config.mesh.logical_axis_rules

  def init(rng):
    rng_params, rng_other = jax.random.split(rng)
    variables = model.init(
      {"params": rng_params, **_rngs(jax.random.key_data(rng), 0), "attention": rng_other},
      example_batch,
      train=False,
    )
    variables = {k: v for k, v in variables.items() if k not in TRANSIENT_COLLECTIONS}
    params = variables.pop("params")
    return TrainState.create(
      apply_fn=model.apply,
      params=params,
      tx=tx,
      model_state=variables,
      rng=jax.random.key_data(rng),
    )

  rng = jax.random.key(config.seed)
  abstract = jax.eval_shape(init, rng)
  state_sharding = sharding.logical_shardings(abstract, mesh, rules)
  state = jax.jit(init, out_shardings=state_sharding)(rng)
  return state, state_sharding


def make_steps(config, kind, state_sharding, mesh) -> Step:
  """The jitted train and eval steps: state sharded by its logical axes, batches along the batch."""
  batch_sharding = sharding.batch_sharding(mesh)
  metrics_sharding = sharding.replicated(mesh)
  train = jax.jit(
    make_train_step(
      kind,
      config.train.get("label_smoothing", 0.0),
      config.train.on_nonfinite,
      config.train.max_nonfinite,
    ),
    in_shardings=(state_sharding, batch_sharding),
    out_shardings=(state_sharding, metrics_sharding),
    donate_argnums=0,
  )
  evaluate = jax.jit(
    make_eval_step(kind),
    in_shardings=(state_sharding, batch_sharding),
    out_shardings=metrics_sharding,
  )
  return Step(Compiled(train), Compiled(evaluate))


def evaluate(
  step: Step, state, eval_batches: list[dict[str, np.ndarray]], mesh
) -> dict[str, float]:
  """Exact averages over the whole eval set (every process runs the same number of steps)."""
  total = None
  for batch in eval_batches:
    metrics = step.eval(state, sharding.global_batch(batch, mesh))
    total = metrics if total is None else total.merge(metrics)
  return {k: float(v) for k, v in jax.device_get(total.compute()).items()}


def prefetch(batches: Iterator[dict[str, np.ndarray]], mesh, size: int = 2) -> Iterator:
  """Global device batches `size` steps ahead of the loop, so the host reads and copies the next
  batches while the devices run the current step."""
  queue = collections.deque()
  for batch in batches:
    with jax.transfer_guard("allow"):  # the one intended transfer (multi-process: implicit)
      queue.append(sharding.global_batch(batch, mesh))
    if len(queue) == size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _eval_batches(datasets, local_batch_size: int, split: str) -> list[dict[str, np.ndarray]]:
  """Materialises an eval split; processes with fewer batches pad with all-invalid ones."""
  dataset = datasets.eval_dataset(split)
  batches = list(dataset.as_numpy_iterator())
  n = len(batches)
  if jax.process_count() > 1:
    n = int(np.max(multihost_utils.process_allgather(np.array(n))))
  if n == 0:
    raise ValueError(f"the {split} split is empty; set data.eval_examples or check its files")
  filler = _dummy_batch(dataset, local_batch_size)  # all zeros: valid = False
  return batches + [filler] * (n - len(batches))


def peak_memory_bytes(step: Step) -> int:
  """Device peak where the backend reports it (GPU/TPU), else the train step's compiled footprint
  (arguments + outputs + temporaries, per XLA's memory analysis), comparable between runs."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"])
  sizes = [e.memory_analysis() for e in step.train.executables.values()]
  return max(
    m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    for m in sizes
  )


def flops_per_step(step: Step) -> float | None:
  """Matrix-product FLOPs of one train step (forward + backward, loops counted per iteration:
  `experiments.run.flops`), of its largest batch shape; None where a loop has no static count."""
  counts = list(step.train.flops.values())
  return None if not counts or None in counts else max(counts)


def _improved(value: float, best: dict[str, float] | None, key: str, mode: str) -> bool:
  if best is None:
    return True
  return value > best[key] if mode == "max" else value < best[key]


class _Log:
  """metrics.jsonl + TensorBoard (clu) + a progress line."""

  def __init__(self, workdir: str, num_steps: int, start_step: int):
    self.primary = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(workdir, just_logging=not self.primary)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.num_steps = num_steps
    if self.primary and os.path.exists(self.path):
      self._drop_after(start_step)

  def _drop_after(self, step: int) -> None:
    """Forgets records past the step a run resumes from (written before a crash; redone now)."""
    with open(self.path) as f:
      lines = f.readlines()
    kept = []
    for line in lines:
      try:
        if json.loads(line)["step"] <= step:
          kept.append(line)
      except (json.JSONDecodeError, KeyError, TypeError):  # a line cut short by a crash
        continue
    if len(kept) != len(lines):
      with open(self.path + ".tmp", "w") as f:
        f.writelines(kept)
      os.replace(self.path + ".tmp", self.path)

  def write(self, step: int, scalars: dict[str, float], wall: float) -> None:
    self.writer.write_scalars(step, scalars)
    if self.primary:
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": step, "wall_seconds": round(wall, 3), **scalars}) + "\n")

  def progress(self, step: int, loss: float, steps_per_sec: float, tokens_per_sec: float) -> None:
    eta = (self.num_steps - step) / max(steps_per_sec, 1e-9)
    logging.info(
      "step %d/%d  loss %.4f  %.1f steps/s  %.0f tokens/s  ETA %dm%02ds",
      step, self.num_steps, loss, steps_per_sec, tokens_per_sec, eta // 60, eta % 60,
    )  # fmt: skip

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.writer.flush()
    self.writer.close()


def main_metric(config: ml_collections.ConfigDict, info) -> tuple[str, str]:
  """The eval metric that picks the best checkpoint, and whether higher ('max') is better."""
  if decode_eval.enabled(config, info):
    return "bleu", "max"
  return tasks.MAIN_METRIC[info.kind]


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  hooks: Sequence[Callable[[int], None]] = (),
  on_eval: Callable[[int, dict[str, float]], bool] | None = None,
) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns results.json's dict.

  The validation split picks the best checkpoint; after the last step that checkpoint, and only
  it, is evaluated once on the test split (`results["test"]`). `hooks` are called with the step
  number after every step (e.g. to request a stop). `on_eval(step, {"eval/<metric>": value})` is
  called after every validation evaluation; if it returns True the run stops there (checkpoint
  saved, status "pruned": a hyperparameter search's pruner).
  """
  wall_start = time.time()
  validate.check_config(config)
  validate.prepare_workdir(workdir, config)
  datasets = input_pipeline.get_datasets(
    config.data,
    workdir=workdir,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  info = datasets.info
  validate.check_config_for_task(config, info)
  model = models.build(config.model, info)
  mesh = sharding.make_mesh(config.mesh.shape)
  tx = optim.create(config.optimizer, config.train.num_steps)
  kind, num_steps = info.kind, config.train.num_steps
  metric_name, mode = main_metric(config, info)

  with contextlib.ExitStack() as stack:  # closes checkpoints and writers on any exit
    stack.enter_context(preemption.handlers())  # a signal from here on: save and stop
    stack.enter_context(
      nn.logical_axis_rules(tuple(tuple(r) for r in config.mesh.logical_axis_rules))
    )
    example = _dummy_batch(datasets.train_dataset(0), config.data.batch_size, info)
    state, state_sharding = create_state(config, model, tx, mesh, example)
    num_params = sum(x.size for x in jax.tree.leaves(nn.unbox(state.params)))
    ckpt = stack.enter_context(
      checkpoints.Checkpoints(workdir, config.train.keep_checkpoints, metric_name, mode)
    )
    restored = ckpt.restore_latest(state)
    meta = {"next_batch": 0, "best": None, "best_step": None, "wall_seconds": 0.0}
    if restored is not None:
      state, meta = restored
      logging.info("resumed from step %d in %s", int(state.step), workdir)
    start_step = int(state.step)
    train_iter: Iterator = datasets.train_dataset(meta["next_batch"]).as_numpy_iterator()
    batches = prefetch(train_iter, mesh)
    local_batch_size = config.data.batch_size // jax.process_count()
    eval_batches = _eval_batches(datasets, local_batch_size, "validation")
    first = next(batches)
    step_fns = make_steps(config, kind, state_sharding, mesh)
    step_fns.train.compile(state, first)
    step_fns.eval.compile(state, sharding.global_batch(eval_batches[0], mesh))
    logging.info("%d parameters; compiled in %.1fs", num_params, step_fns.compile_seconds)

    def run_eval(state, batches=eval_batches, prefix="eval") -> dict[str, float]:
      out = {f"{prefix}/{k}": v for k, v in evaluate(step_fns, state, batches, mesh).items()}
      if decode_eval.enabled(config, info):
        out[f"{prefix}/bleu"] = decode_eval.bleu_score(model, state, batches, config, info, mesh)
      return out

    log = stack.enter_context(_Log(workdir, num_steps, start_step))
    profile = stack.enter_context(_Profile(workdir, *config.train.get("profile_steps", (0, 0))))
    tokens_per_step = tasks.batch_tokens(first)
    wall_before = meta["wall_seconds"]
    last_eval: dict[str, float] = {}
    train_metrics, window_start, window_steps, train_seconds = None, time.perf_counter(), 0, 0.0
    window_rates: list[float] = []  # steps/s of each log window (the steady-state throughput)
    intervals = config.train
    sync_every = intervals.get("sync_every_steps", 0) or intervals.log_every_steps
    nonfinite_seen = int(state.nonfinite_total)
    batch = first
    step, pruned = start_step, False
    while step < num_steps:
      profile.before(step)
      with jax.transfer_guard("disallow"), jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = step_fns.train(state, batch)
        train_metrics = metrics if train_metrics is None else train_metrics.merge(metrics)
        step += 1
        window_steps += 1
        for hook in hooks:
          hook(step)
        is_last = step == num_steps
        if not is_last:
          batch = next(batches)
      is_log = step % intervals.log_every_steps == 0
      is_eval = step % intervals.eval_every_steps == 0
      is_save = step % intervals.checkpoint_every_steps == 0
      # stop requests: a collective across processes, agreed every `sync_every` steps
      agree = step % sync_every == 0 or is_last or jax.process_count() == 1
      stop = agree and preemption.stop_requested()
      profile.after(step, state)
      if not (is_log or is_eval or is_save or is_last or stop):
        continue
      nonfinite_seen = _check_nonfinite(config, state, nonfinite_seen, ckpt)
      if is_log or is_last:
        jax.block_until_ready(state)
        elapsed = time.perf_counter() - window_start
        train_seconds += elapsed
        scalars = {f"train/{k}": float(v) for k, v in train_metrics.compute().items()}
        steps_per_sec = window_steps / elapsed
        window_rates.append(steps_per_sec)
        scalars |= {
          "train/steps_per_sec": steps_per_sec,
          "train/tokens_per_sec": steps_per_sec * tokens_per_step,
        }
        log.write(step, scalars, wall_before + time.time() - wall_start)
        log.progress(step, scalars["train/loss"], steps_per_sec, scalars["train/tokens_per_sec"])
        train_metrics, window_start, window_steps = None, time.perf_counter(), 0
      if is_eval or is_last:
        last_eval = run_eval(state)
        log.write(step, last_eval, wall_before + time.time() - wall_start)
        logging.info("eval at step %d: %s", step, _fmt(last_eval))
        if _improved(last_eval[f"eval/{metric_name}"], meta["best"], f"eval/{metric_name}", mode):
          meta |= {"best": last_eval, "best_step": step}
          ckpt.save_best(
            step, state, _meta(meta, step, wall_before, wall_start), _plain(last_eval, metric_name)
          )
        pruned = on_eval is not None and bool(on_eval(step, last_eval))
        window_start = time.perf_counter()
      if is_save or is_last or stop or pruned:
        ckpt.save(step, state, _meta(meta, step, wall_before, wall_start), force=True)
      if pruned and not is_last:
        logging.info("pruned at step %d; checkpoint saved", step)
        break
      if stop and not is_last:
        logging.warning(
          "stopped at step %d on request; checkpoint saved. Run the same command to resume.", step
        )
        return {"status": "preempted", "step": step}
    if not last_eval:  # the run had already finished: report its final state again
      last_eval = run_eval(state)
    test = {}
    if not pruned:  # the checkpoint picked on validation, evaluated once on test
      ckpt.wait()
      best_state = ckpt.restore_best(state) if meta["best_step"] is not None else None
      test_batches = _eval_batches(datasets, local_batch_size, "test")
      test = run_eval(state if best_state is None else best_state, test_batches, "test")
      logging.info("test at step %s (best on validation): %s", meta["best_step"], _fmt(test))

  results = {
    "config": config.to_dict(),
    "step": step,
    "status": "pruned" if pruned else "finished",
    "main_metric": f"eval/{metric_name}",
    "metrics": last_eval,
    "best": meta["best"] or last_eval,
    "best_step": meta["best_step"],
    "test": test,  # on the test split, from the best checkpoint (selected on validation)
    "splits": dict(datasets.splits),
    "throughput": {
      "steps_per_sec": (step - start_step) / train_seconds if train_seconds else None,
      "tokens_per_sec": (step - start_step) * tokens_per_step / train_seconds
      if train_seconds
      else None,
      # the median log window after the first: timings that do not include warm-up
      "steady_steps_per_sec": float(np.median(window_rates[1:] or window_rates))
      if window_rates
      else None,
    },
    "flops_per_step": flops_per_step(step_fns),
    "params": int(num_params),
    "compile_seconds": step_fns.compile_seconds,
    "peak_memory_bytes": peak_memory_bytes(step_fns),
    "wall_seconds": wall_before + time.time() - wall_start,
  }
  if jax.process_index() == 0:
    _write_json(os.path.join(workdir, "results.json"), results)
  return results


def _meta(meta: dict[str, Any], step: int, wall_before: float, wall_start: float) -> dict[str, Any]:
  return {**meta, "next_batch": step, "wall_seconds": wall_before + time.time() - wall_start}


def _plain(metrics: dict[str, float], name: str) -> dict[str, float]:
  return {name: metrics[f"eval/{name}"]}


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


class _Profile:
  """A jax.profiler trace of steps (first, first + count) into workdir/profile (TensorBoard's
  profile plugin or XProf open it); nothing when count is 0."""

  def __init__(self, workdir: str, first: int, count: int):
    self.directory = os.path.join(workdir, "profile")
    self.first, self.last = int(first), int(first) + int(count)
    self.active = False

  def before(self, step: int) -> None:
    if self.last > self.first and step == self.first:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int, state) -> None:
    if self.active and step >= self.last:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
      logging.info("profile of steps %d-%d in %s", self.first + 1, self.last, self.directory)

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    if self.active:
      jax.profiler.stop_trace()


def _write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=str)
  os.replace(tmp, path)
