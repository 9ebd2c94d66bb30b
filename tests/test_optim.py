"""Optimizers and schedules built from config.optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from experiments.run import optim


def _config(**fields):
  config = default.get_config().optimizer
  config.update(fields)
  return config


@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_schedules_warm_up_to_the_peak(schedule):
  fn = optim.schedule(_config(schedule=schedule, learning_rate=0.5, warmup_steps=10), 100)
  values = np.array([float(fn(s)) for s in range(100)])
  assert values.max() == pytest.approx(0.5, rel=1e-6)
  assert np.all(values >= 0)
  if schedule != "constant":
    assert values[0] < values[9]  # warming up
  if schedule in ("warmup_cosine", "linear", "rsqrt"):
    assert values[-1] < values[10]  # decaying


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_minimises_a_quadratic(name):
  tx = optim.create(_config(name=name, learning_rate=0.1, warmup_steps=0, schedule="constant"), 50)
  params = {"w": jnp.full((4, 4), 3.0)}
  state = tx.init(params)
  loss = lambda p: jnp.sum(p["w"] ** 2)  # noqa: E731
  start = loss(params)
  for _ in range(50):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert loss(params) < 0.5 * start


def test_gradient_accumulation_updates_every_k_steps():
  tx = optim.create(_config(name="sgd", momentum=0.0, grad_accum_steps=3, schedule="constant"), 9)
  params = jnp.ones(2)
  state = tx.init(params)
  seen = []
  for _ in range(6):
    updates, state = tx.update(jnp.ones(2), state, params)
    params = optax.apply_updates(params, updates)
    seen.append(float(params[0]))
  assert seen[0] == seen[1] == 1.0 and seen[2] < 1.0 and seen[3] == seen[4] == seen[2]


def test_clipping_bounds_the_gradient_before_the_step():
  """Clipped gradient norm 1, times the learning rate 0.5 (clipping the update would give 1)."""
  tx = optim.create(
    _config(name="sgd", momentum=0.0, grad_clip_norm=1.0, learning_rate=0.5, schedule="constant"), 1
  )
  updates, _ = tx.update(jnp.full(4, 100.0), tx.init(jnp.zeros(4)), jnp.zeros(4))
  np.testing.assert_allclose(updates, jnp.full(4, -0.25), rtol=1e-5)  # -0.5 · g / ‖g‖
