"""Keys/values prepared once (`Attention.prepare`), then one query per call, equal the full call.

Every type that prepares something (`prepares_kv`: the classic and the exact types) is stepped
one query at a time over its prepared keys/values, carrying `attention_state`, and compared with
one call over all the queries, in float32; fields that change the weights (temperature, top-k,
cumulative alignment, Luong's scores inside `local`) get their own rows.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import attention
from models.attention import masks
from models.attention.base import KeysValues
from tests.attention_cases import make

jax.config.update("jax_disable_most_optimizations", True)

PREPARING = sorted(n for n, c in attention.REGISTRY.items() if c.prepares_kv)
EXTRA = {
  "additive-temperature-top_k": ("additive", {"temperature": 0.5, "top_k": 2}),
  "general-top_k": ("general", {"top_k": 3}),
  "location_sensitive-cumulative": ("location_sensitive", {"cumulative": True}),
  "local-dot": ("local", {"score": "dot"}),
  "local-general": ("local", {"score": "general"}),
  "scaled_dot-gqa": ("scaled_dot", {"num_kv_heads": 1, "implementation": "xla"}),
}
CASES = {**{n: (n, {}) for n in PREPARING}, **EXTRA}


def test_the_classic_types_prepare():
  classic = {"additive", "dot", "general", "location", "location_sensitive", "convolutional"}
  assert classic | {"recurrent", "local", "scaled_dot"} <= set(PREPARING)


@pytest.mark.parametrize("case", sorted(CASES))
def test_stepping_over_prepared_keys_equals_the_full_call(case):
  name, fields = CASES[case]
  layer = make(name, **fields)
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(2, 4, 6)), jnp.float32)
  kv = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
  mask = masks.padding_mask(None, jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool))
  params = jax.jit(lambda: layer.init(jax.random.key(0), q, kv, mask=mask))()["params"]
  full = jax.jit(lambda p: layer.apply({"params": p}, q, kv, mask=mask))(params)

  prepare = jax.jit(lambda p: layer.apply({"params": p}, kv, method="prepare"))
  prepared = prepare(params)
  assert isinstance(prepared, KeysValues)

  @jax.jit
  def step(p, state, q_t):
    variables = {"params": p, **({"attention_state": state} if state else {})}
    out, mutated = layer.apply(variables, q_t, prepared, mask=mask, mutable=["attention_state"])
    return out, mutated.get("attention_state", {})

  state, outs = {}, []
  for t in range(q.shape[1]):
    out, state = step(params, state, q[:, t : t + 1])
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5, rtol=1e-5)


def test_prepare_by_default_returns_the_keys_values():
  """A type without `prepares_kv` is driven the same way: `prepare` gives back its input."""
  plain = [n for n, c in attention.REGISTRY.items() if c.supports_cross and not c.prepares_kv]
  if not plain:
    pytest.skip("every cross-attention type prepares its keys/values")
  layer = make(plain[0])
  kv = jnp.ones((1, 3, 6))
  assert layer.prepare(kv) is kv


def test_prepare_needs_the_query_width():
  layer = make("additive", qkv_features=None)
  kv = jnp.ones((1, 3, 6))
  with pytest.raises(ValueError, match="qkv_features"):
    layer.init(jax.random.key(0), kv, method="prepare")
