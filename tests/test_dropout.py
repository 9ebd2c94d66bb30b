"""Attention-weight dropout, every registered type (Srivastava et al. 2014, inverted dropout).

Types that form weights (`drops_weights`): with `deterministic=False` the output changes with the
dropout rng, with `deterministic=True` it equals the output without dropout, and the average over
many rngs is the output without dropout (kept weights are scaled by 1 / (1 - rate); the output
is linear in the weights). Types without weights declare it and warn when given a rate.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_cases import make

from models import attention
from models.attention import masks

NAMES = sorted(attention.REGISTRY)
DROPPING = [n for n in NAMES if attention.get(n).drops_weights]
B, T, D, RATE, SAMPLES = 2, 5, 6, 0.5, 256


def _setup(name: str):
  cls = attention.get(name)
  layer = make(name, dropout_rate=RATE, causal=cls.supports_causal)
  x = jax.random.normal(jax.random.key(1), (B, T, D))
  mask = masks.padding_mask(None, jnp.arange(T)[None] < jnp.array([[T], [3]]))
  variables = {"params": jax.jit(layer.init)(jax.random.key(0), x)["params"]}
  return layer, x, mask, variables


@pytest.mark.parametrize("name", DROPPING)
def test_dropout_changes_the_output_and_preserves_its_expectation(name):
  layer, x, mask, variables = _setup(name)
  plain = layer.clone(dropout_rate=0.0)
  fixed = {"attention": jax.random.key(3)}  # types that draw hashes/features: one draw for all

  @jax.jit
  def outputs(variables, keys):
    off = layer.apply(variables, x, mask=mask, deterministic=True, rngs=fixed)
    want_off = plain.apply(variables, x, mask=mask, deterministic=True, rngs=fixed)
    # Training mode without dropout (Sinkhorn samples Gumbel noise from `attention` in training).
    ref = plain.apply(variables, x, mask=mask, deterministic=False, rngs=fixed)

    def dropped(key):
      rngs = {**fixed, "dropout": key}
      return layer.apply(variables, x, mask=mask, deterministic=False, rngs=rngs)

    return off, want_off, ref, jax.vmap(dropped)(keys)

  got = outputs(variables, jax.random.split(jax.random.key(7), SAMPLES))
  off, want_off, ref, samples = map(np.asarray, got)
  np.testing.assert_array_equal(off, want_off)  # deterministic=True: no dropout at all
  assert not np.allclose(samples[0], ref, atol=1e-3)  # dropout does something
  assert not np.allclose(samples[0], samples[1], atol=1e-3)  # and depends on the rng
  # Unbiased: the sample mean is within a few standard errors of the no-dropout output.
  stderr = samples.std(0) / np.sqrt(SAMPLES)
  z = np.abs(samples.mean(0) - ref) / (stderr + 1e-6)
  assert z.max() < 6.0, f"max z = {z.max():.1f}: dropout biases the output"


@pytest.mark.parametrize("name", sorted(set(NAMES) - set(DROPPING)))
def test_types_without_weights_ignore_the_rate_and_warn(name):
  layer, x, mask, variables = _setup(name)
  with pytest.warns(UserWarning, match="dropout_rate=0.5 is ignored"):
    got = layer.apply(
      variables, x, mask=mask, deterministic=False, rngs={"dropout": jax.random.key(7)}
    )
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no rate, no warning
    want = layer.clone(dropout_rate=0.0).apply(variables, x, mask=mask)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_the_kernelised_types_are_the_ones_without_weights():
  assert sorted(set(NAMES) - set(DROPPING)) == ["linear", "performer"]
