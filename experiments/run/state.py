"""The train state: parameters, optimizer state, model variables, the run's key and its
non-finite counters, created directly into its shardings."""

from typing import Any

import jax
from flax.training import train_state

from experiments.run import sharding

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


def rngs(key_data: jax.Array, step) -> dict[str, jax.Array]:
  """The step's keys of the model's rng streams, from the run's key."""
  key = jax.random.fold_in(jax.random.wrap_key_data(key_data), step)
  return dict(zip(RNG_STREAMS, jax.random.split(key, len(RNG_STREAMS)), strict=True))


def apply(state: TrainState, params, batch, *, train: bool, rngs=None):
  return state.apply_fn(
    {"params": params, **(state.model_state or {})}, batch, train=train, rngs=rngs
  )


def halted(state: TrainState, on_nonfinite: str, max_nonfinite: int) -> jax.Array:
  """Whether the non-finite policy stops the run: any bad step under 'stop', `max_nonfinite` in
  a row under 'skip'. A halted state no longer changes; the loop raises at its next check."""
  stop = state.nonfinite_total > 0 if on_nonfinite == "stop" else False
  return stop | (state.nonfinite_in_a_row >= max_nonfinite)


def create(config, model, tx, mesh, example_batch) -> tuple[TrainState, Any]:
  """Initialises the state directly into its shardings (no host copy of the full model).
  Call under the config's logical axis rules."""
  rules = config.mesh.logical_axis_rules

  def init(rng):
    rng_params, rng_other = jax.random.split(rng)
    variables = model.init(
      {"params": rng_params, **rngs(jax.random.key_data(rng), 0), "attention": rng_other},
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
