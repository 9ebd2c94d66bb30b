"""Properties every registered attention type must have (parameterised over the registry).

A newly registered type is tested here automatically (its tiny-size fields are its
`test_fields`); the capability flags of `base.Attention` (`supports_causal`,
`supports_cross`, `dense_mask`, `padding_invariant`) say which properties apply.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_cases import make

from models import attention
from models.attention import masks

jax.config.update("jax_disable_most_optimizations", True)

NAMES = sorted(attention.REGISTRY)
B, TQ, TK, D, DKV = 2, 5, 7, 6, 4
KEY = jax.random.key(0)


def inputs(*shape: int, seed: int = 1) -> jnp.ndarray:
  return jax.random.normal(jax.random.key(seed), shape)


_PARAMS: dict = {}
NOT_IN_PARAMS = {"parent", "name", "dtype", "causal", "dropout_rate"}


def params(layer, *args) -> dict:
  """Parameters only (state collections made by init are dropped), cached: dtype and causal
  do not change them, so most tests share one initialisation per type and shape."""
  fields = [f.name for f in dataclasses.fields(layer) if f.name not in NOT_IN_PARAMS]
  key = (type(layer), *(getattr(layer, f) for f in fields), *(a.shape for a in args))
  if key not in _PARAMS:
    _PARAMS[key] = {"params": jax.jit(layer.init)(KEY, *args)["params"]}
  return _PARAMS[key]


def run(layer, variables, *args, mask=None, weights: bool = False):
  """Jitted forward -> output, or (output, sown weights or None) with `weights`."""

  def f(variables, args, mask):
    if not weights:
      return layer.apply(variables, *args, mask=mask)
    out, state = layer.apply(variables, *args, mask=mask, mutable=["intermediates"])
    sown = state.get("intermediates", {}).get("attention_weights")
    return out, None if sown is None else sown[0]

  return jax.jit(f)(variables, args, mask)


def key_padding(lengths, total: int) -> jnp.ndarray:
  """`[B, 1, 1, total]`, True for the first `lengths[b]` keys."""
  return masks.padding_mask(None, jnp.arange(total)[None] < jnp.asarray(lengths)[:, None])


def check_weights(w, q_len: int, kv_len: int, mask=None, heads: int = 2) -> None:
  """Sown weights: `[B, H, Tq, Tk]`, finite, zero where the mask hides a key (their values are
  type-specific: softmax rows sum to 1, local's Gaussian shrinks them, approximations differ)."""
  assert w.shape == (B, heads, q_len, kv_len)
  w = np.asarray(w, np.float32)
  assert np.all(np.isfinite(w))
  if mask is not None:
    np.testing.assert_array_equal(w[~np.broadcast_to(np.asarray(mask), w.shape)], 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_self_and_cross(name):
  cls = attention.get(name)
  layer = make(name)
  x = inputs(B, TQ, D)
  out, w = run(layer, params(layer, x), x, weights=True)
  assert out.shape == (B, TQ, D) and np.all(np.isfinite(out))
  if w is not None:
    check_weights(w, TQ, TQ)
  # cross attention (another length and width), one head, another output width
  layer = make(name, num_heads=1, qkv_features=4, out_features=3)
  args = (x, inputs(B, TK, DKV, seed=2)) if cls.supports_cross else (x,)
  out, w = run(layer, params(layer, *args), *args, weights=True)
  assert out.shape == (B, TQ, 3) and np.all(np.isfinite(out))
  if w is not None:
    check_weights(w, TQ, args[-1].shape[1], heads=1)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_finite(name):
  cls = attention.get(name)
  layer = make(name, causal=cls.supports_causal)
  x = inputs(B, TQ, D)
  variables = params(layer, x)
  mask = key_padding([TQ, 3], TQ)

  def loss(variables, x):
    return jnp.sum(layer.apply(variables, x, mask=mask) ** 2)

  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, x)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert any(np.any(g != 0) for g in jax.tree_util.tree_leaves(grads[0]))


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_is_close_to_float32(name):
  """bf16 compute (float32 parameters) gives bf16 outputs within bf16 rounding of float32."""
  layer = make(name, causal=attention.get(name).supports_causal)
  x = inputs(B, TQ, D)
  mask = key_padding([TQ, 3], TQ)
  variables = params(layer, x)

  @jax.jit
  def both(variables, x):
    full = layer.apply(variables, x, mask=mask)
    half = layer.clone(dtype=jnp.bfloat16).apply(variables, x.astype(jnp.bfloat16), mask=mask)
    return full, half

  full, half = both(variables, x)
  assert half.dtype == jnp.bfloat16 and half.shape == full.shape == (B, TQ, D)
  full, half = np.asarray(full), np.asarray(half, np.float32)
  scale = np.abs(full).max()
  np.testing.assert_allclose(half, full, atol=0.05 * scale)
  assert np.abs(half - full).mean() < 0.01 * scale


@pytest.mark.parametrize("name", NAMES)
def test_padding_and_batch_independence(name):
  """Appending keys hidden by a key-padding mask changes no output (self-attention), and an
  example's output does not depend on the other examples (inputs or mask)."""
  layer = make(name)
  x = inputs(B, TQ, D)
  x = jnp.concatenate([x, x.at[1].set(inputs(TQ, D, seed=5))])  # examples 0 and 2 equal
  variables = params(layer, x[:B])
  lengths = [TQ, 3, TQ, 4]
  out = run(layer, variables, x, mask=key_padding(lengths, TQ))
  np.testing.assert_allclose(out[2], out[0], atol=1e-5)
  if not attention.get(name).padding_invariant:
    pytest.skip(f"{name} declares padding_invariant=False")
  padded = jnp.concatenate([x, 5.0 * inputs(2 * B, 3, D, seed=3)], axis=1)
  out_padded = run(layer, variables, padded, mask=key_padding(lengths, TQ + 3))
  np.testing.assert_allclose(out_padded[:, :TQ], out, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_causality(name):
  """With causal=True, outputs at t do not change when inputs after t do; the first output
  depends on the first input (a query sees its own position)."""
  if not attention.get(name).supports_causal:
    pytest.skip(f"{name} does not support causal")
  layer = make(name, causal=True)
  x = inputs(B, TQ, D)
  variables = params(layer, x)
  t = 2
  changed = x.at[:, t + 1 :].set(inputs(B, TQ - t - 1, D, seed=4))
  first = x.at[:, 0].set(inputs(B, D, seed=5))  # position 0 sees (only) itself
  both = run(layer, variables, jnp.concatenate([x, changed, first]))  # one compile for all
  out, out_changed, out_first = both[:B], both[B : 2 * B], both[2 * B :]
  np.testing.assert_allclose(out_changed[:, : t + 1], out[:, : t + 1], atol=1e-5)
  assert not np.allclose(out_changed[:, t + 1 :], out[:, t + 1 :])
  assert not np.allclose(out_first[:, 0], out[:, 0], atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_dense_mask(name):
  """Dense types take any mask (weights are zero where it is False); the others refuse one."""
  cls = attention.get(name)
  layer = make(name)
  x = inputs(B, TQ, D)
  variables = params(layer, x)
  mask = jax.random.bernoulli(jax.random.key(6), 0.6, (B, 1, TQ, TQ))
  mask = mask | jnp.eye(TQ, dtype=bool)  # every query sees some key
  if not cls.dense_mask:
    with pytest.raises(ValueError):
      run(layer, variables, x, mask=mask)
    return
  out, w = run(layer, variables, x, mask=mask, weights=True)
  assert np.all(np.isfinite(out))
  if w is not None:
    check_weights(w, TQ, TQ, mask)
