"""Each attention type against a naive reference written from its equation with the module's own
parameters; scaled_dot against jax and flax; memory_efficient against scaled_dot (values,
gradients, memory growth); temperature/top-k limits; cached decoding and stepped
location-sensitive attention against the full call."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_cases import make

from models import attention
from models.attention import masks

jax.config.update("jax_disable_most_optimizations", True)

B, TQ, TK, D, DKV, H = 2, 5, 7, 6, 4, 2
ATOL = 1e-5


def rand(*shape: int, seed: int) -> jnp.ndarray:
  return jax.random.normal(jax.random.key(seed), shape)


def padding(lengths, total: int) -> jnp.ndarray:
  return masks.padding_mask(None, jnp.arange(total)[None] < jnp.asarray(lengths)[:, None])


def init_apply(layer, *args, mask=None):
  """-> (params as plain arrays, output, sown weights or None), all on fresh random inputs."""
  variables = jax.jit(layer.init)(jax.random.key(0), *args)
  params = nn.meta.unbox(variables["params"])

  @jax.jit
  def f(params, args, mask):
    return layer.apply({"params": params}, *args, mask=mask, mutable=["intermediates"])

  out, state = f(params, args, mask)
  sown = state.get("intermediates", {}).get("attention_weights")
  return params, out, None if sown is None else sown[0]


# --------------------------------------------------------------------- reference pieces


def dense(x, p):
  """x `[B, T, E]`, kernel `[E, H, Dh]` -> `[B, T, H, Dh]`."""
  return jnp.einsum("bte,ehd->bthd", x, p["kernel"]) + p["bias"]


def out_proj(context, p):
  return jnp.einsum("bthd,hde->bte", context, p["kernel"]) + p["bias"]


def softmax_ref(e, mask=None, temperature=1.0, top_k=None):
  """softmax(e / τ) over the allowed keys, the k largest only; rows with none allowed -> 0."""
  s = e / temperature
  allowed = jnp.ones(s.shape, bool) if mask is None else jnp.broadcast_to(mask, s.shape)
  s = jnp.where(allowed, s, -jnp.inf)
  if top_k is not None:
    kth = jnp.sort(s, axis=-1)[..., -top_k][..., None]
    s = jnp.where(s >= kth, s, -jnp.inf)
  top = jnp.max(jnp.where(allowed, s, -1e30), axis=-1, keepdims=True)
  p = jnp.where(jnp.isfinite(s), jnp.exp(s - top), 0.0)
  total = jnp.sum(p, axis=-1, keepdims=True)
  return jnp.where(total > 0, p / jnp.where(total > 0, total, 1.0), 0.0)


def finish(params, w, x_kv):
  """Weights `[B, H, Tq, Tk]` -> module output through the value and output projections."""
  return out_proj(jnp.einsum("bhqk,bkhd->bqhd", w, dense(x_kv, params["value"])), params["out"])


def cross_inputs():
  x, y = rand(B, TQ, D, seed=1), rand(B, TK, DKV, seed=2)
  return x, y, masks.combine(padding([TK, 4], TK), masks.causal_mask(TQ, TK))


def check(out, w, out_ref, w_ref):
  np.testing.assert_allclose(w, w_ref, atol=ATOL)
  np.testing.assert_allclose(out, out_ref, atol=ATOL)


# ------------------------------------------------------------------------------- types

LUONG_CASES = [
  ("dot", {"top_k": 1}),
  ("general", {"temperature": 0.7, "top_k": 3}),
  ("additive", {}),
  ("location", {"temperature": 2.0}),
]


@pytest.mark.parametrize(("name", "fields"), LUONG_CASES)
def test_luong_reference(name, fields):
  x, y, mask = cross_inputs()
  params, out, w = init_apply(make(name, causal=True, **fields), x, y, mask=padding([TK, 4], TK))
  q, k = (dense(x, params["query"]), dense(y, params["key"])) if name != "location" else (0, 0)
  e = {
    "dot": lambda: jnp.einsum("bqhd,bkhd->bhqk", q, k),
    "general": lambda: jnp.einsum("bqhd,hde,bkhe->bhqk", q, params["bilinear"], k),
    "additive": lambda: jnp.einsum(
      "bqkhd,hd->bhqk", jnp.tanh(q[:, :, None] + k[:, None]), params["energy"]
    ),
    "location": lambda: (
      jnp.einsum("bqe,ehl->bhql", x, params["location"]["kernel"])
      + params["location"]["bias"][None, :, None]
    )[..., :TK],
  }[name]()
  w_ref = softmax_ref(e, mask, fields.get("temperature", 1.0), fields.get("top_k"))
  check(out, w, finish(params, w_ref, y), w_ref)
  if fields.get("top_k") == 1:  # a hard argmax
    hard = jax.nn.one_hot(jnp.argmax(jnp.where(mask, e, -jnp.inf), -1), TK)
    np.testing.assert_allclose(w, hard, atol=ATOL)


def conv_same(x, kernel):
  """Zero-padded 'same' convolution along axis 1 of x `[N, T, C]` with kernel `[K, C, F]`."""
  width = kernel.shape[0]
  left = (width - 1) // 2
  xp = jnp.pad(x, ((0, 0), (left, width - 1 - left), (0, 0)))
  return sum(jnp.einsum("ntc,cf->ntf", xp[:, r : r + x.shape[1]], kernel[r]) for r in range(width))


def test_location_sensitive_reference():
  """Chorowski et al.'s previous-alignment form (the cumulative variant runs in the stepping
  test below)."""
  x, y, mask = cross_inputs()
  layer = make("location_sensitive", causal=True, kernel_size=3)
  params, out, w = init_apply(layer, x, y, mask=padding([TK, 4], TK))
  q, k = dense(x, params["query"]), dense(y, params["key"])
  state, rows = jnp.zeros((B, H, TK)), []
  for t in range(TQ):
    feats = jnp.stack(
      [conv_same(state[:, h, :, None], params["location_conv"][h][:, None, :]) for h in range(H)],
      axis=1,
    )  # [B, H, Tk, F]
    location = jnp.einsum("bhjf,hfd->bjhd", feats, params["location_proj"])
    pre = q[:, t, None] + k + location  # [B, Tk, H, Dh]
    e = jnp.einsum("bjhd,hd->bhj", jnp.tanh(pre), params["energy"])
    alpha = softmax_ref(e, mask[:, :, t])
    rows.append(alpha)
    state = alpha
  w_ref = jnp.stack(rows, axis=2)
  check(out, w, finish(params, w_ref, y), w_ref)


def test_convolutional_reference():
  x, y, mask = cross_inputs()
  params, out, w = init_apply(make("convolutional", causal=True), x, y, mask=padding([TK, 4], TK))
  visible = jnp.broadcast_to(mask, (B, 1, TQ, TK))[:, 0]  # [B, Tq, Tk]
  pairs = (
    jnp.concatenate(
      [
        jnp.broadcast_to(x[:, :, None], (B, TQ, TK, D)),
        jnp.broadcast_to(y[:, None], (B, TQ, TK, DKV)),
      ],
      axis=-1,
    )
    * visible[..., None]
  )
  kernel = jnp.concatenate([params["query_conv"], params["key_conv"]], axis=1)  # [K, D+Dkv, H, Dh]
  width, head_dim = kernel.shape[0], kernel.shape[-1]
  hidden = conv_same(pairs.reshape(B * TQ, TK, D + DKV), kernel.reshape(width, D + DKV, -1))
  hidden = hidden.reshape(B, TQ, TK, H, head_dim) + params["conv_bias"]
  e = jnp.einsum("bqkhd,hd->bhqk", jnp.tanh(hidden), params["energy"])
  w_ref = softmax_ref(e, mask)
  check(out, w, finish(params, w_ref, y), w_ref)


def test_recurrent_reference():
  x, y, mask = cross_inputs()
  params, out, w = init_apply(make("recurrent", causal=True), x, y, mask=padding([TK, 4], TK))
  cell = params["lstm"]["cell"]
  pairs = jnp.concatenate(
    [
      jnp.broadcast_to(x[:, :, None], (B, TQ, TK, D)),
      jnp.broadcast_to(y[:, None], (B, TQ, TK, DKV)),
    ],
    axis=-1,
  )
  hidden_size = cell["hi"]["kernel"].shape[0]
  c = h = jnp.zeros((B, TQ, hidden_size))
  states = []
  for j in range(TK):

    def gate(name, j=j, h=h):  # x W_i· + h W_h· + b_h·
      x_in, h_in = cell["i" + name], cell["h" + name]
      return pairs[:, :, j] @ x_in["kernel"] + h @ h_in["kernel"] + h_in["bias"]

    i, f, o = (jax.nn.sigmoid(gate(n)) for n in "ifo")
    c = f * c + i * jnp.tanh(gate("g"))
    h = o * jnp.tanh(c)
    states.append(h)
  hs = jnp.stack(states, axis=2)  # [B, Tq, Tk, hidden]
  proj = params["recurrent_proj"]
  r = jnp.einsum("bqkn,nhd->bqkhd", hs, proj["kernel"]) + proj["bias"]
  e = jnp.einsum("bqkhd,hd->bhqk", jnp.tanh(r), params["energy"])
  w_ref = softmax_ref(e, mask)
  check(out, w, finish(params, w_ref, y), w_ref)


LOCAL_CASES = [
  {"mode": "monotonic", "score": "dot", "window": 2},
  {"mode": "predictive", "score": "general", "window": 2, "temperature": 0.5, "top_k": 2},
  {"mode": "predictive", "score": "additive", "window": 3},
]


@pytest.mark.parametrize("fields", LOCAL_CASES, ids=lambda f: f"{f['mode']}-{f['score']}")
def test_local_reference(fields):
  x, y, mask = cross_inputs()
  lengths = [TK, 4]
  params, out, w = init_apply(make("local", causal=True, **fields), x, y, mask=padding(lengths, TK))
  q, k = dense(x, params["query"]), dense(y, params["key"])
  e = {
    "dot": lambda: jnp.einsum("bqhd,bkhd->bhqk", q, k),
    "general": lambda: jnp.einsum("bqhd,hde,bkhe->bhqk", q, params["bilinear"], k),
    "additive": lambda: jnp.einsum(
      "bqkhd,hd->bhqk", jnp.tanh(q[:, :, None] + k[:, None]), params["energy"]
    ),
  }[fields["score"]]()
  if fields["mode"] == "monotonic":
    p = jnp.broadcast_to(jnp.arange(TQ, dtype=jnp.float32)[None, None], (B, H, TQ))
  else:
    hidden = jnp.tanh(jnp.einsum("bqhd,hde->bqhe", q, params["position"]))
    gate = jax.nn.sigmoid(jnp.einsum("bqhe,he->bhq", hidden, params["position_energy"]))
    p = jnp.asarray(lengths, jnp.float32)[:, None, None] * gate
  dist = jnp.arange(TK)[None, None, None] - p[..., None]  # [B, H, Tq, Tk]
  window = fields["window"]
  w_ref = softmax_ref(e, mask & (jnp.abs(dist) <= window), fields.get("temperature", 1.0),
                      fields.get("top_k"))  # fmt: skip
  w_ref = w_ref * jnp.exp(-(dist**2) / (2 * (window / 2) ** 2))
  check(out, w, finish(params, w_ref, y), w_ref)


# -------------------------------------------------------------------------- scaled dot


def test_scaled_dot_vs_jax_and_flax():
  x, y, mask = cross_inputs()
  params, out, w = init_apply(make("scaled_dot", causal=True), x, y, mask=padding([TK, 4], TK))
  q, k, v = (dense(x, params["query"]), dense(y, params["key"]), dense(y, params["value"]))
  context = jax.nn.dot_product_attention(q, k, v, mask=jnp.broadcast_to(mask, (B, 1, TQ, TK)))
  np.testing.assert_allclose(out, out_proj(context, params["out"]), atol=ATOL)
  flax_mha = nn.MultiHeadDotProductAttention(num_heads=H, qkv_features=8, out_features=D)
  out_flax = flax_mha.apply({"params": params}, x, y, mask=mask)
  np.testing.assert_allclose(out, out_flax, atol=ATOL)
  # the `jax` kernel path (no weights asked for) gives the same, incl. rows that see no key
  empty_row = mask & (jnp.arange(TQ) != 0)[None, None, :, None]
  for implementation in ("xla", "jax"):
    layer = make("scaled_dot", implementation=implementation)
    got = jax.jit(lambda p, layer=layer: layer.apply({"params": p}, x, y, mask=empty_row))(params)
    ref = out_proj(jnp.einsum("bhqk,bkhd->bqhd", softmax_ref(
      jnp.einsum("bqhd,bkhd->bhqk", q, k) / 2.0, empty_row), v), params["out"])  # fmt: skip
    np.testing.assert_allclose(got, ref, atol=ATOL)


def test_grouped_query_heads():
  x, y, mask = cross_inputs()
  layer = make("scaled_dot", num_heads=4, num_kv_heads=2, causal=True)
  params, out, w = init_apply(layer, x, y, mask=padding([TK, 4], TK))
  q = dense(x, params["query"])  # 4 heads of width 2
  k, v = (jnp.repeat(dense(y, params[n]), 2, axis=2) for n in ("key", "value"))
  w_ref = softmax_ref(jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(2.0), mask)
  out_ref = out_proj(jnp.einsum("bhqk,bkhd->bqhd", w_ref, v), params["out"])
  check(out, w, out_ref, w_ref)


@pytest.mark.parametrize("num_kv_heads", [None, 1])
def test_cached_decoding_equals_causal_forward(num_kv_heads):
  x = rand(B, TQ, D, seed=3)
  full = make("scaled_dot", causal=True, num_kv_heads=num_kv_heads)
  params = jax.jit(full.init)(jax.random.key(0), x)["params"]
  expected = full.apply({"params": params}, x)
  decoder = make("scaled_dot", causal=True, num_kv_heads=num_kv_heads, decode=True)
  cache = decoder.init(jax.random.key(0), x)["cache"]

  @jax.jit
  def step(cache, x_t):
    return decoder.apply({"params": params, "cache": cache}, x_t, mutable=["cache"])

  outs = []
  for t in range(TQ):
    y, state = step(cache, x[:, t : t + 1])
    cache = state["cache"]
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), expected, atol=ATOL)


# ----------------------------------------------------------------- location-sensitive steps


class ScanDecoder(nn.Module):
  """An RNN-decoder-style loop: one query per step, `attention_state` carried by `nn.scan`."""

  @nn.compact
  def __call__(self, x, y, mask):
    def body(layer, carry, x_t):
      return carry, layer(x_t[:, None], y, mask=mask)[:, 0]

    scan = nn.scan(
      body,
      variable_broadcast="params",
      variable_carry="attention_state",
      split_rngs={"params": False},
      in_axes=1,
      out_axes=1,
    )
    layer = make("location_sensitive", name="attention")
    layer.init_state(x[:, :1], y)
    return scan(layer, None, x)[1]


def test_location_sensitive_stepping_equals_full_call():
  x, y, _ = cross_inputs()
  mask = padding([TK, 4], TK)
  layer = make("location_sensitive", cumulative=True, name="attention")
  params = jax.jit(layer.init)(jax.random.key(0), x, y)["params"]
  expected = layer.apply({"params": params}, x, y, mask=mask)

  @jax.jit
  def step(state, x_t):
    variables = {"params": params, **state}
    return layer.apply(variables, x_t, y, mask=mask, mutable=["attention_state"])

  state, outs = {}, []  # starting without the collection also starts from zeros
  for t in range(TQ):
    out, state = step(state, x[:, t : t + 1])
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), expected, atol=ATOL)

  # the same through nn.scan(variable_carry='attention_state'), as an RNN decoder does it
  decoder = ScanDecoder()
  d_params = jax.jit(decoder.init)(jax.random.key(0), x, y, mask)["params"]
  layer = make("location_sensitive")
  full = layer.apply({"params": d_params["attention"]}, x, y, mask=mask)
  run = jax.jit(lambda v: decoder.apply(v, x, y, mask, mutable=["attention_state"]))
  scanned, state = run({"params": d_params})
  np.testing.assert_allclose(scanned, full, atol=ATOL)
  again, _ = run({"params": d_params, **state})  # init_state resets a finished sequence
  np.testing.assert_allclose(again, full, atol=ATOL)


# ------------------------------------------------------------------- temperature, top-k


def normalising_types() -> list[str]:
  """Types with temperature and top_k whose weights are a plain softmax (not local's Gaussian)."""
  return [
    n
    for n in sorted(attention.REGISTRY)
    if {"temperature", "top_k"} <= attention.own_fields(n) and n != "local"
  ]


@pytest.mark.parametrize("name", normalising_types())
def test_temperature_and_top_k_limits(name):
  x = rand(B, TQ, D, seed=1)
  mask = padding([TQ, 3], TQ)
  hot, hard = make(name, temperature=1e6), make(name, top_k=1)
  variables = {"params": jax.jit(hot.init)(jax.random.key(0), x)["params"]}

  @jax.jit
  def weights(variables):
    def sown(layer):
      state = layer.apply(variables, x, mask=mask, mutable=["intermediates"])[1]
      return state["intermediates"]["attention_weights"][0]

    return sown(hot), sown(hard)

  w, w_hard = weights(variables)
  allowed = jnp.broadcast_to(mask, w.shape)
  uniform = allowed / jnp.sum(allowed, axis=-1, keepdims=True)
  np.testing.assert_allclose(w, uniform, atol=1e-4)
  w = w_hard
  np.testing.assert_array_equal(jnp.sum(w > 1e-6, axis=-1), 1)
  np.testing.assert_allclose(jnp.max(w, axis=-1), 1.0, atol=ATOL)
  assert np.all(np.asarray(allowed)[np.asarray(w) > 1e-6])


# ------------------------------------------------------------------------ memory-efficient

ME_CASES = {
  "self-causal-padding": dict(q_len=7, kv_len=7, causal=True, dense=False),
  "cross-padding": dict(q_len=5, kv_len=7, causal=False, dense=False),
  "cross-causal-dense": dict(q_len=5, kv_len=7, causal=True, dense=True),
}


@pytest.mark.parametrize("case", list(ME_CASES))
def test_memory_efficient_matches_scaled_dot(case):
  c = ME_CASES[case]
  x = rand(B, c["q_len"], D, seed=1)
  y = x if c["q_len"] == c["kv_len"] else rand(B, c["kv_len"], D, seed=2)
  mask = padding([c["kv_len"], 4], c["kv_len"])
  if c["dense"]:
    mask = mask & jax.random.bernoulli(jax.random.key(3), 0.7, (B, 1, c["q_len"], c["kv_len"]))
  common = dict(num_heads=4, num_kv_heads=2, causal=c["causal"], temperature=0.8)
  chunked = make("memory_efficient", query_chunk_size=3, key_chunk_size=2, **common)
  dense_ = make("scaled_dot", implementation="xla", **common)
  params = jax.jit(dense_.init)(jax.random.key(0), x, y)

  def loss(layer):
    def f(params, x, y):
      out = layer.apply(params, x, y, mask=mask)
      return jnp.sum(jnp.sin(out)), out

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))

  (_, out), grads = loss(chunked)(params, x, y)
  (_, out_ref), grads_ref = loss(dense_)(params, x, y)
  np.testing.assert_allclose(out, out_ref, atol=ATOL)
  leaves, leaves_ref = jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_ref)
  for g, g_ref in zip(leaves, leaves_ref, strict=True):
    np.testing.assert_allclose(g, g_ref, atol=1e-4)


def temp_bytes(name: str, length: int, **fields) -> int:
  """Compiled temporary memory of forward + backward at sequence length `length`."""
  layer = make(name, causal=True, **fields)
  x = jax.ShapeDtypeStruct((1, length, 16), jnp.float32)
  params = jax.eval_shape(layer.init, jax.random.key(0), x)

  def loss(params, x):
    return jnp.sum(layer.apply(params, x) ** 2)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_memory_efficient_memory_grows_linearly():
  fields = dict(num_heads=2, qkv_features=16, query_chunk_size=32, key_chunk_size=32)
  small, large = (temp_bytes("memory_efficient", n, **fields) for n in (512, 1024))
  assert large / small < 2.6, (small, large)  # quadratic would be 4
