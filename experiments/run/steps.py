"""The jitted train and eval steps, compiled ahead of time once per batch shape, and what their
compiled programs tell (FLOPs, memory)."""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.run import flops, sharding, tasks
from experiments.run.state import TrainState, apply, halted, rngs


class Compiled:
  """A jitted step compiled ahead of time once per batch shape (timed apart from running).

  Most tasks have one shape; length-bucketed batches have one per bucket. Tracing happens under
  the run's logical axis rules.
  """

  def __init__(self, jitted, axis_rules=()):
    self.jitted = jitted
    self.axis_rules = axis_rules
    self.executables = {}
    self.flops = {}  # per batch shape: matrix-product FLOPs of the traced program
    self.compile_seconds = 0.0

  def compile(self, state, batch):
    key = tuple(sorted((k, v.shape) for k, v in batch.items()))
    if key not in self.executables:
      start = time.perf_counter()
      with nn.logical_axis_rules(self.axis_rules):
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


class Steps:
  """The compiled train and eval steps of one run."""

  def __init__(self, train: Compiled, eval: Compiled):  # noqa: A002
    self.train, self.eval = train, eval

  @property
  def compile_seconds(self) -> float:
    return self.train.compile_seconds + self.eval.compile_seconds

  def flops_per_step(self) -> float | None:
    """Matrix-product FLOPs of one train step (forward + backward, loops counted per iteration:
    `experiments.run.flops`), of its largest batch shape; None where a loop has no static count."""
    counts = list(self.train.flops.values())
    return None if not counts or None in counts else max(counts)

  def peak_memory_bytes(self) -> int:
    """Device peak where the backend reports it (GPU/TPU), else the train step's compiled
    footprint (arguments + outputs + temporaries, per XLA's memory analysis)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      return int(stats["peak_bytes_in_use"])
    sizes = [e.memory_analysis() for e in self.train.executables.values()]
    return max(
      m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
      + m.temp_size_in_bytes
      for m in sizes
    )  # fmt: skip

  def evaluate(self, state, batches: list[dict[str, np.ndarray]], mesh) -> dict[str, float]:
    """Exact averages over a whole eval split (every process runs the same number of steps)."""
    total = None
    for batch in batches:
      metrics = self.eval(state, sharding.global_batch(batch, mesh))
      total = metrics if total is None else total.merge(metrics)
    return {k: float(v) for k, v in jax.device_get(total.compute()).items()}


def make_train_step(kind: str, label_smoothing: float, on_nonfinite: str, max_nonfinite: int):
  def train_step(state: TrainState, batch):
    def loss_fn(params):
      logits = apply(state, params, batch, train=True, rngs=rngs(state.rng, state.step))
      return tasks.loss_and_metrics(kind, logits, batch, label_smoothing)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.global_norm(grads)  # before clipping; train/grad_norm (log-interval mean)
    metrics = tasks.with_metrics(metrics, grad_norm=tasks.Average.from_model_output(grad_norm))
    updated = state.apply_gradients(grads=grads)
    finite = (
      jnp.isfinite(loss)
      & jnp.isfinite(grad_norm)
      & jnp.all(jnp.array([jnp.isfinite(p).all() for p in jax.tree.leaves(updated.params)]))
    )
    # A step with a non-finite loss, gradient or updated parameter leaves parameters and
    # optimizer state untouched (and is counted); a halted state does not change at all.
    stopped = halted(state, on_nonfinite, max_nonfinite)
    take = finite & ~stopped
    bad = ~finite & ~stopped
    # a branch, not an elementwise select over every buffer of the state: 3% of the step here
    kept = jax.lax.cond(take, lambda: updated, lambda: state)
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
    logits = apply(state, state.params, batch, train=False)
    return tasks.loss_and_metrics(kind, logits, batch)[1]

  return eval_step


def make(config, kind: str, state_sharding, mesh) -> Steps:
  """The jitted train and eval steps: state sharded by its logical axes, batches along the batch."""
  batch_sharding = sharding.batch_sharding(mesh)
  metrics_sharding = sharding.replicated(mesh)
  rules = tuple(tuple(r) for r in config.mesh.logical_axis_rules)
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
  return Steps(Compiled(train, rules), Compiled(evaluate, rules))
