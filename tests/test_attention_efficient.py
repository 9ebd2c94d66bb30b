"""The long-range family against exact attention and its own quadratic forms; linear memory."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import attention
from models.attention import linear, masks

B, T, E, H = 2, 11, 8, 2


def _x(seed, t=T):
  return jax.random.normal(jax.random.key(seed), (B, t, E))


def _layer(name, **fields):
  return attention.build({"name": name, **fields})(num_heads=H, qkv_features=E)


def _exact(params, x, mask=None, causal=False):
  """scaled_dot with the same projection parameters (the trees match)."""
  layer = _layer("scaled_dot", implementation="xla").clone(causal=causal)
  return layer.apply(params, x, mask=mask)


@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window_covering_everything_is_exact(causal):
  x = _x(0)
  layer = _layer("sliding_window", window=T).clone(causal=causal)
  params = layer.init(jax.random.key(1), x)
  np.testing.assert_allclose(layer.apply(params, x), _exact(params, x, causal=causal), atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window_equals_band_masked_exact_attention(causal):
  x, w = _x(2), 3
  layer = _layer("sliding_window", window=w).clone(causal=causal)
  params = layer.init(jax.random.key(3), x)
  i, j = np.arange(T)[:, None], np.arange(T)[None, :]
  band = (np.abs(i - j) <= w) & ((j <= i) if causal else True)
  lengths = jnp.array([T, T - 4])
  pad = masks.padding_mask(None, jnp.arange(T)[None] < lengths[:, None])
  got = layer.apply(params, x, mask=pad)
  want = _exact(params, x, mask=masks.combine(pad, jnp.asarray(band)[None, None]))
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_linear_causal_equals_its_quadratic_form():
  q, k, v = (jax.random.normal(jax.random.key(s), (B, T, H, 4)) for s in range(3))
  phi_q, phi_k = jax.nn.elu(q) + 1, jax.nn.elu(k) + 1
  got = linear.kernel_attention(phi_q, phi_k, v, causal=True, chunk_size=4)
  a = jnp.einsum("bqhm,bkhm->bhqk", phi_q, phi_k) * jnp.tril(jnp.ones((T, T)))
  want = jnp.einsum("bhqk,bkhd->bqhd", a / a.sum(-1, keepdims=True), v)
  np.testing.assert_allclose(got, want, atol=1e-5)
  full = linear.kernel_attention(phi_q, phi_k, v, causal=False)
  a = jnp.einsum("bqhm,bkhm->bhqk", phi_q, phi_k)
  want = jnp.einsum("bhqk,bkhd->bqhd", a / a.sum(-1, keepdims=True), v)
  np.testing.assert_allclose(full, want, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_performer_error_falls_with_more_features(causal):
  x = 0.5 * _x(4, t=16)
  errors = []
  for m in (16, 128, 1024):
    per_seed = []
    for seed in range(3):
      layer = _layer("performer", num_features=m, seed=seed).clone(causal=causal)
      params = layer.init(jax.random.key(5), x)
      err = jnp.abs(layer.apply(params, x) - _exact(params, x, causal=causal)).mean()
      per_seed.append(float(err))
    errors.append(np.mean(per_seed))
  assert errors[0] > errors[1] > errors[2], errors
  assert errors[2] < 0.05


def test_linformer_matches_its_equation():
  x = _x(6)
  layer = _layer("linformer", k=5, max_length=16)
  params = layer.init(jax.random.key(7), x)
  p = nn.unbox(params)["params"]

  def proj(name, inp):
    return jnp.einsum("btd,dhk->bthk", inp, p[name]["kernel"]) + p[name]["bias"]

  q, k, v = proj("query", x), proj("key", x), proj("value", x)
  e, f = p["e"][:, :T], p["f"][:, :T]
  kp, vp = jnp.einsum("rt,bthd->brhd", e, k), jnp.einsum("rt,bthd->brhd", f, v)
  w = jax.nn.softmax(jnp.einsum("bqhd,brhd->bhqr", q, kp) / np.sqrt(E // H), -1)
  ctx = jnp.einsum("bhqr,brhd->bqhd", w, vp)
  want = jnp.einsum("bqhd,hdo->bqo", ctx, p["out"]["kernel"]) + p["out"]["bias"]
  np.testing.assert_allclose(layer.apply(params, x), want, atol=1e-5)


def _temp_bytes(name, t, **fields):
  layer = attention.build({"name": name, **fields})(num_heads=4, qkv_features=64)
  x = jnp.zeros((1, t, 64))
  params = jax.eval_shape(layer.init, jax.random.key(0), x)
  loss = lambda p, x: layer.apply(p, x).sum()  # noqa: E731
  compiled = jax.jit(jax.grad(loss, (0, 1))).lower(params, x).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize(
  ("name", "fields"),
  [
    ("sliding_window", {"window": 64}),
    ("linear", {}),
    ("performer", {"num_features": 64}),
    ("linformer", {"k": 64, "max_length": 4096}),
  ],
)
def test_compiled_memory_grows_linearly(name, fields):
  small, large = _temp_bytes(name, 1024, **fields), _temp_bytes(name, 4096, **fields)
  assert large / small < 6, (small, large)  # quadratic would be 16x
