"""The long-range family against exact attention and its own quadratic forms; linear memory."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import attention
from models.attention import _blocks, linear, masks, performer

B, T, E, H = 2, 11, 8, 2


def _x(seed, t=T):
  return jax.random.normal(jax.random.key(seed), (B, t, E))


def _layer(name, **fields):
  return attention.build({"name": name, **fields})(num_heads=H, qkv_features=E)


def _init(layer, seed, x):
  """Jitted `layer.init` (op-by-op, every op compiles on first use: far slower)."""
  return jax.jit(layer.init)(jax.random.key(seed), x)


@functools.cache
def _jitted_apply(layer, mutable):
  mutable = list(mutable) or False
  return jax.jit(lambda v, x, m, r: layer.apply(v, x, mask=m, rngs=r, mutable=mutable))


def _run(layer, variables, x, *, mask=None, rngs=None, mutable=()):
  """Jitted `layer.apply` (returns `(out, state)` when `mutable`), one compile per layer."""
  return _jitted_apply(layer, tuple(mutable))(variables, x, mask, rngs or {})


def _exact(params, x, mask=None, causal=False):
  """scaled_dot with the same projection parameters (the trees match)."""
  return _run(_layer("scaled_dot", implementation="xla").clone(causal=causal), params, x, mask=mask)


@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window_covering_everything_is_exact(causal):
  x = _x(0)
  layer = _layer("sliding_window", window=T).clone(causal=causal)
  params = _init(layer, 1, x)
  np.testing.assert_allclose(_run(layer, params, x), _exact(params, x, causal=causal), atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window_equals_band_masked_exact_attention(causal):
  x, w = _x(2), 3
  layer = _layer("sliding_window", window=w).clone(causal=causal)
  params = _init(layer, 3, x)
  i, j = np.arange(T)[:, None], np.arange(T)[None, :]
  band = (np.abs(i - j) <= w) & ((j <= i) if causal else True)
  lengths = jnp.array([T, T - 4])
  pad = masks.padding_mask(None, jnp.arange(T)[None] < lengths[:, None])
  got = _run(layer, params, x, mask=pad)
  want = _exact(params, x, mask=masks.combine(pad, jnp.asarray(band)[None, None]))
  np.testing.assert_allclose(got, want, atol=1e-5)


def _longformer_mask(t, window, g, causal):
  """The dense form of longformer's pattern: the band, plus global rows and columns."""
  i, j = np.arange(t)[:, None], np.arange(t)[None, :]
  allowed = (np.abs(i - j) <= window) | (i < g) | (j < g)
  return allowed & (j <= i) if causal else allowed


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("window", "g"), [(T, 1), (1, T), (0, 0)])
def test_longformer_without_sparsity_is_exact(causal, window, g):
  """A window covering everything, or every token global, is exact attention; window 0 and no
  global tokens: each query sees only itself."""
  x = _x(8)
  layer = _layer("longformer", window=window, global_tokens=g).clone(causal=causal)
  params = _init(layer, 9, x)
  want_mask = jnp.asarray(_longformer_mask(T, window, g, causal))[None, None]
  np.testing.assert_allclose(
    _run(layer, params, x), _exact(params, x, mask=want_mask, causal=causal), atol=1e-5
  )
  if window >= T or g >= T:
    np.testing.assert_allclose(_run(layer, params, x), _exact(params, x, causal=causal), atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_longformer_equals_masked_exact_attention(causal):
  """Window 2, 2 global tokens, padded keys: scaled_dot with the same dense pattern, weights too."""
  x, window, g = _x(10), 2, 2
  layer = _layer("longformer", window=window, global_tokens=g).clone(causal=causal)
  pattern = _longformer_mask(T, window, g, False)[None]
  _assert_like_masked_exact(layer, _init(layer, 11, x), x, pattern, causal)


@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window_sows_its_band_weights(causal):
  x, w = _x(12), 3
  layer = _layer("sliding_window", window=w).clone(causal=causal)
  params = _init(layer, 13, x)
  i, j = np.arange(T)[:, None], np.arange(T)[None, :]
  band = jnp.asarray((np.abs(i - j) <= w) & ((j <= i) if causal else True))[None, None]
  _, got = _run(layer, params, x, mutable=["intermediates"])
  exact = _layer("scaled_dot", implementation="xla").clone(causal=causal)
  _, want = _run(exact, params, x, mask=band, mutable=["intermediates"])
  np.testing.assert_allclose(
    got["intermediates"]["attention_weights"][0],
    want["intermediates"]["attention_weights"][0],
    atol=1e-6,
  )


def test_performer_fixed_features_are_stored_and_every_call_redraws():
  x = _x(14, t=8)
  layer = _layer("performer", num_features=16)
  variables = _init(layer, 15, x)
  omega = variables["constants"]["omega"]
  assert omega.shape == (16, E // H)
  stored = _run(layer, variables, x)
  # Without the collection the same features are recomputed; stored ones are used when present.
  np.testing.assert_allclose(_run(layer, {"params": variables["params"]}, x), stored, atol=1e-6)
  other = {**variables, "constants": {"omega": 2.0 * omega}}
  assert not np.allclose(_run(layer, other, x), stored, atol=1e-4)
  redraw = layer.clone(redraw="every_call")
  np.testing.assert_allclose(_run(redraw, variables, x), stored, atol=1e-6)  # no rng: fixed
  a, b = (_run(redraw, variables, x, rngs={"attention": jax.random.key(s)}) for s in (1, 2))
  assert not np.allclose(a, b, atol=1e-4)


def test_performer_features_are_orthogonal_gaussian_blocks():
  """FAVOR+ (Choromanski et al. 2021): Ω's rows come in blocks of d mutually orthogonal rows
  (the last block cut), with norms drawn like Gaussian vectors' (not all equal, mean ≈ √d)."""
  d, m = 4, 10
  omega = np.asarray(performer.orthogonal_features(jax.random.key(3), m, d), np.float64)
  assert omega.shape == (m, d)
  norms = np.linalg.norm(omega, axis=1)
  for start in range(0, m, d):
    block = omega[start : start + d] / norms[start : start + d, None]
    np.testing.assert_allclose(block @ block.T, np.eye(len(block)), atol=1e-5)
  assert not np.allclose(omega[:d] @ omega[d : 2 * d].T, 0.0, atol=1e-3)  # blocks independent
  many = np.linalg.norm(
    np.asarray(performer.orthogonal_features(jax.random.key(4), 4096, d)), axis=1
  )
  assert abs(many.mean() - 1.88) < 0.05 and many.std() > 0.5  # E‖g‖ for d = 4: 3√π/4 ≈ 1.88


@pytest.mark.parametrize("causal", [False, True])
def test_performer_matches_its_equation(causal):
  """out = D⁻¹ φ(q) (φ(k)ᵀ v), φ(x) = exp(Ωx − ‖x‖²/2) / √m on x = q / d^¼ (positive random
  features), with the stored Ω; causal: the prefix sums, here as a lower-triangular matrix."""
  x = _x(16)
  layer = _layer("performer", num_features=8).clone(causal=causal)
  variables = _init(layer, 17, x)
  p = nn.unbox(variables)["params"]
  omega = np.asarray(variables["constants"]["omega"], np.float64)
  d = E // H
  phi = lambda a: np.exp(a @ omega.T - 0.5 * (a * a).sum(-1, keepdims=True)) / np.sqrt(8)  # noqa: E731
  q, k, v = (np.asarray(_proj(p, n, x), np.float64) for n in ("query", "key", "value"))
  valid = np.asarray(_lengths_mask()[:, 0, 0], np.float64)
  phi_q, phi_k = phi(q / d**0.25), phi(k / d**0.25) * valid[:, :, None, None]
  a = np.einsum("bqhm,bkhm->bhqk", phi_q, phi_k)
  if causal:
    a = a * np.tril(np.ones((T, T)))
  ctx = np.einsum("bhqk,bkhd->bqhd", a / a.sum(-1, keepdims=True), v)
  got = _run(layer, variables, x, mask=_lengths_mask())
  np.testing.assert_allclose(got, _out(p, jnp.asarray(ctx, jnp.float32)), atol=1e-4)


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
  """Mean error against exact attention over 3 feature draws at 16, 128 and 1024 features."""
  x = 0.5 * _x(4, t=16)
  errors = []
  for m in (16, 128, 1024):
    layer = _layer("performer", num_features=m).clone(causal=causal)
    variables = _init(layer, 5, x)
    want = _exact(variables, x, causal=causal)
    per_draw = []
    for seed in range(3):
      omega = performer.orthogonal_features(jax.random.key(100 + seed), m, E // H)
      got = _run(layer, {**variables, "constants": {"omega": omega}}, x)
      per_draw.append(float(jnp.abs(got - want).mean()))
    errors.append(np.mean(per_draw))
  assert errors[0] > errors[1] > errors[2], errors
  assert errors[2] < 0.05


@pytest.mark.parametrize("causal", [False, True])
def test_performer_features_do_not_underflow_at_large_norms(causal):
  """Queries and keys 30x larger (|k|²/(2√d) in the hundreds: exp(−|k|²/2) underflows in
  float32): outputs and gradients stay finite and queries keep their context (shifting by the
  maximum of ω·k alone left none). The key shift is one per sequence, so in causal mode early
  queries whose few keys lie far below the sequence's largest can still lose theirs."""
  x = _x(20)
  layer = _layer("performer", num_features=16).clone(causal=causal)
  variables = _init(layer, 21, x)
  params = dict(variables["params"])
  for name in ("query", "key"):
    params[name] = jax.tree.map(lambda a: 30.0 * a, params[name])
  big = {**variables, "params": params}
  out = np.asarray(_run(layer, big, x))
  bias = np.asarray(nn.unbox(params["out"]["bias"]))
  assert np.isfinite(out).all()
  with_context = (np.abs(out - bias).max(-1) > 1e-4).mean()  # not the output bias alone
  assert with_context >= (0.5 if causal else 0.9), with_context
  grads = jax.jit(jax.grad(lambda x: jnp.sum(layer.apply(big, x) ** 2)))(x)
  assert np.isfinite(np.asarray(grads)).all()


def test_linformer_matches_its_equation():
  x = _x(6)
  layer = _layer("linformer", k=5, max_length=16)
  params = _init(layer, 7, x)
  p = nn.unbox(params)["params"]

  def proj(name, inp):
    return jnp.einsum("btd,dhk->bthk", inp, p[name]["kernel"]) + p[name]["bias"]

  q, k, v = proj("query", x), proj("key", x), proj("value", x)
  e, f = p["e"][:, :T], p["f"][:, :T]
  kp, vp = jnp.einsum("rt,bthd->brhd", e, k), jnp.einsum("rt,bthd->brhd", f, v)
  w = jax.nn.softmax(jnp.einsum("bqhd,brhd->bhqr", q, kp) / np.sqrt(E // H), -1)
  ctx = jnp.einsum("bhqr,brhd->bqhd", w, vp)
  want = jnp.einsum("bqhd,hdo->bqo", ctx, p["out"]["kernel"]) + p["out"]["bias"]
  np.testing.assert_allclose(_run(layer, params, x), want, atol=1e-5)


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
    ("longformer", {"window": 64, "global_tokens": 1}),
    ("bigbird", {"block_size": 64}),
    ("sinkhorn", {"block_size": 64, "max_length": 4096}),
    ("lsh", {"bucket_size": 32, "num_hashes": 2}),
  ],
)
def test_compiled_memory_grows_linearly(name, fields):
  small, large = _temp_bytes(name, 1024, **fields), _temp_bytes(name, 4096, **fields)
  assert large / small < 6, (small, large)  # quadratic would be 16x


# ----------------------------------------------------------------------------- shared helpers


def _lengths_mask(t=T):
  """Key padding `[B, 1, 1, t]`: example 1 has 4 padded keys."""
  return masks.padding_mask(None, jnp.arange(t)[None] < jnp.array([t, t - 4])[:, None])


def _proj(p, name, x):
  return jnp.einsum("btd,dhk->bthk", x, p[name]["kernel"]) + p[name]["bias"]


def _out(p, context):
  return jnp.einsum("bqhd,hdo->bqo", context, p["out"]["kernel"]) + p["out"]["bias"]


def _assert_like_masked_exact(layer, params, x, pattern, causal):
  """`layer` with key padding = scaled_dot with padding AND `pattern` `[1|H, T, T]`, weights too."""
  pad = _lengths_mask()
  full = masks.combine(pad, jnp.asarray(pattern)[None])
  got, got_w = _run(layer, params, x, mask=pad, mutable=["intermediates"])
  exact = _layer("scaled_dot", implementation="xla").clone(causal=causal)
  want, want_w = _run(exact, params, x, mask=full, mutable=["intermediates"])
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(
    got_w["intermediates"]["attention_weights"][0],
    want_w["intermediates"]["attention_weights"][0],
    atol=1e-6,
  )


# ----------------------------------------------------------------------------- bigbird


def _bigbird_reference(layer, params, x, t, bs, causal):
  """BigBird's dense pattern `[H, T, T]` from its definition (Zaheer et al. 2020, ITC): every
  query sees the first g blocks (whose queries, non-causal, see every key), the w blocks around
  its own, and r random blocks per head among the others (causal: before the window). Which
  random blocks is the layer's draw: read from its sown weights (example 0, unpadded) and checked
  to be r distinct blocks of that pool."""
  g, w, r = layer.num_global_blocks, layer.num_window_blocks, layer.num_random_blocks
  nb = -(-t // bs)
  g = min(g, nb)
  _, state = _run(layer, params, x, mask=_lengths_mask(), mutable=["intermediates"])
  support = np.asarray(state["intermediates"]["attention_weights"][0][0]) > 0  # [H, T, T]
  support = np.pad(support, [(0, 0), (0, nb * bs - t), (0, nb * bs - t)])
  seen = support.reshape(H, nb, bs, nb, bs).any(axis=(2, 4))  # [H, query block, key block]
  left, right = (w - 1) // 2, 0 if causal else w // 2
  blocks = np.zeros((H, nb, nb), bool)
  for n in range(nb):
    fixed = set(range(g)) | {m for m in range(n - left, n + right + 1) if 0 <= m < nb}
    blocks[:, n, sorted(fixed)] = True
    if n < g:
      blocks[:, n] |= not causal
      continue
    pool = set(range(g, n - left if causal else nb)) - fixed
    for h in range(H):
      random = {int(m) for m in np.flatnonzero(seen[h, n])} - fixed
      assert random <= pool and len(random) == min(r, len(pool)), (h, n, random, pool)
      blocks[h, n, sorted(random)] = True
  dense = np.repeat(np.repeat(blocks, bs, axis=1), bs, axis=2)[:, :t, :t]
  return dense & np.tril(np.ones((t, t), bool)) if causal else dense


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
  "fields",
  [
    {"num_global_blocks": 6, "num_window_blocks": 1, "num_random_blocks": 0},  # all global
    {"num_global_blocks": 0, "num_window_blocks": 13, "num_random_blocks": 1},  # window ⊇ all
    {"num_global_blocks": 1, "num_window_blocks": 3, "num_random_blocks": 1},
  ],
)
def test_bigbird_equals_masked_exact_attention(causal, fields):
  """Blocks of 2 (T = 11: 6 blocks, the last half padding): scaled_dot masked with the same
  block pattern; with every block global or in the window, plain exact attention."""
  x = _x(20)
  layer = _layer("bigbird", block_size=2, **fields).clone(causal=causal)
  params = _init(layer, 21, x)
  pattern = _bigbird_reference(layer, params, x, T, 2, causal)
  _assert_like_masked_exact(layer, params, x, pattern, causal)
  if fields["num_random_blocks"] == 1 and fields["num_global_blocks"] == 1:
    assert not pattern.all() and (pattern[0] != pattern[1]).any()  # sparse, per-head random
  else:
    assert pattern.all() or causal
    np.testing.assert_allclose(_run(layer, params, x), _exact(params, x, causal=causal), atol=1e-5)


# ----------------------------------------------------------------------------- sparse_fixed


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("stride", "c"), [(3, 1), (T, 1), (4, 4)])
def test_sparse_fixed_equals_masked_exact_attention(causal, stride, c):
  """Own block of `stride` + the last c of every block; one block, or c = stride: exact."""
  x = _x(22)
  layer = _layer("sparse_fixed", stride=stride, num_summary=c).clone(causal=causal)
  params = _init(layer, 23, x)
  i, j = np.arange(T)[:, None], np.arange(T)[None, :]
  pattern = (i // stride == j // stride) | (j % stride >= stride - c)
  pattern = (pattern & (j <= i) if causal else pattern)[None]
  _assert_like_masked_exact(layer, params, x, pattern, causal)
  if stride == T or c == stride:
    np.testing.assert_allclose(_run(layer, params, x), _exact(params, x, causal=causal), atol=1e-5)


# ----------------------------------------------------------------------------- sinkhorn


@pytest.mark.parametrize("causal", [False, True])
def test_sinkhorn_with_one_block_is_exact(causal):
  """One block: P = [[1]], the sorted block is the own block (each key twice, same softmax);
  causal: block 0 has nothing earlier to sort, so only its causal own block."""
  x = _x(24)
  layer = _layer("sinkhorn", block_size=T, max_length=16).clone(causal=causal)
  params = _init(layer, 25, x)
  np.testing.assert_allclose(_run(layer, params, x), _exact(params, x, causal=causal), atol=1e-5)


def _sinkhorn_sort_matrix(p, block_keys, n, causal, iters=7, tau=0.75):
  """SortNet R = W₂ relu(W₁ e + c₁) + c₂ on the block-summed keys e `[B, N, H, D]`, then
  Sinkhorn's alternating row/column normalisation of exp(R / τ) (Tay et al. 2020), written
  here in numpy (float64); causal: each target column normalised over the earlier blocks."""
  e = np.asarray(block_keys, np.float64)
  hidden = np.maximum(e @ p["sort_hidden"]["kernel"] + p["sort_hidden"]["bias"], 0.0)
  r = (hidden @ p["sort_out"]["kernel"] + p["sort_out"]["bias"])[..., :n]  # [B, N, H, N]
  a = np.exp(np.moveaxis(r, 2, 1) / tau)  # [B, H, source, target]
  if causal:
    a = a * np.triu(np.ones((n, n)), 1)  # source k < target n
    return a / np.maximum(a.sum(-2, keepdims=True), 1e-30)
  for _ in range(iters):
    a = a / a.sum(-1, keepdims=True)
    a = a / a.sum(-2, keepdims=True)
  return a


@pytest.mark.parametrize("causal", [False, True])
def test_sinkhorn_matches_its_equation(causal):
  """Blocks of 3 (4 blocks, padded): the sort matrix is (causally) doubly stochastic and the
  output is softmax over [own block ; P-sorted block] — and equals its sown dense weights."""
  x, bs = _x(26), 3
  layer = _layer("sinkhorn", block_size=bs, max_length=16).clone(causal=causal)
  params = _init(layer, 27, x)
  pad = _lengths_mask()
  got, state = _run(layer, params, x, mask=pad, mutable=["intermediates", "diagnostics"])
  dense = state["intermediates"]["attention_weights"][0]  # [B, H, T, T]

  p = nn.unbox(params)["params"]
  valid = np.asarray(pad[:, 0, 0])
  n = -(-T // bs)
  tp = n * bs
  padded = lambda a: jnp.pad(a, [(0, 0), (0, tp - T), (0, 0), (0, 0)])  # noqa: E731
  q = padded(_proj(p, "query", x)) / np.sqrt(E // H)
  k, v = (padded(_proj(p, name, x) * valid[:, :, None, None]) for name in ("key", "value"))
  blocks = lambda a: a.reshape(B, n, bs, H, E // H)  # noqa: E731
  perm = _sinkhorn_sort_matrix(p, blocks(k).sum(2), n, causal)  # [B, H, N, N] source -> target
  np.testing.assert_allclose(state["diagnostics"]["sort_matrix"][0], perm, atol=1e-5)
  np.testing.assert_allclose(perm.sum(-2)[..., int(causal) :], 1.0, atol=1e-5)  # columns
  if causal:
    assert np.all(perm[..., np.tril(np.ones((n, n), bool))] == 0)  # k < n only
  else:
    np.testing.assert_allclose(perm.sum(-1), 1.0, atol=0.05)  # rows, after 7 iterations
  perm = jnp.asarray(perm, jnp.float32)
  sk, sv = (jnp.einsum("bhkn,bkphd->bnphd", perm, blocks(a)) for a in (k, v))
  keys = jnp.concatenate([blocks(k), sk], axis=2)  # [B, N, 2b, H, D]
  vals = jnp.concatenate([blocks(v), sv], axis=2)
  s = jnp.einsum("bnqhd,bnkhd->bnhqk", blocks(q), keys)
  own_ok = np.pad(valid, [(0, 0), (0, tp - T)]).reshape(B, n, 1, 1, bs)
  if causal:
    own_ok = own_ok & np.tril(np.ones((bs, bs), bool))
  sorted_ok = np.ones((B, n, 1, 1, bs), bool)
  if causal:
    sorted_ok[:, 0] = False
  ok = np.concatenate(np.broadcast_arrays(own_ok, sorted_ok), axis=-1)
  w = jax.nn.softmax(jnp.where(ok, s, -1e30), axis=-1)
  ctx = jnp.einsum("bnhqk,bnkhd->bnqhd", w, vals).reshape(B, tp, H, E // H)[:, :T]
  np.testing.assert_allclose(got, _out(p, ctx), atol=1e-5)
  from_dense = jnp.einsum("bhqk,bkhd->bqhd", dense, _proj(p, "value", x))
  np.testing.assert_allclose(got, _out(p, from_dense), atol=1e-5)


# ----------------------------------------------------------------------------- lsh


def _lsh_reference(p, x, allowed, causal):
  """Softmax over `allowed` `[B, H, T, T]` of q_i·q_j/‖q_j‖, self only when nothing else."""
  q = _proj(p, "query", x)
  k = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k) - 1e5 * np.eye(T)
  ok = allowed & np.asarray(_lengths_mask())
  if causal:
    ok = ok & np.tril(np.ones((T, T), bool))
  w = jax.nn.softmax(jnp.where(ok, s, -1e30), axis=-1)
  return _out(p, jnp.einsum("bhqk,bkhd->bqhd", w, _proj(p, "value", x))), w


@pytest.mark.parametrize("causal", [False, True])
def test_lsh_with_one_bucket_is_softmax_over_the_other_keys(causal):
  """bucket_size >= T: one bucket, one chunk: exact shared-QK attention without self."""
  x = _x(28)
  layer = _layer("lsh", bucket_size=T, num_hashes=2).clone(causal=causal)
  params = _init(layer, 29, x)
  want, _ = _lsh_reference(nn.unbox(params)["params"], x, True, causal)
  got = _run(layer, params, x, mask=_lengths_mask(), rngs={"attention": jax.random.key(1)})
  np.testing.assert_allclose(got, want, atol=1e-5)


def _lsh_union(buckets, c, causal):
  """Which keys query i sees in some round `[B, H, T, T]`, rebuilt from the sown buckets."""
  b, h, r, t = buckets.shape
  nc = -(-t // c)
  tp = nc * c
  pad = np.full((b, h, r, tp - t), buckets.max() + 1)
  full = np.concatenate([np.asarray(buckets), pad], axis=-1)
  order = np.argsort(full * tp + np.arange(tp), axis=-1)
  sidx = np.argsort(order, axis=-1)[..., :t]  # position -> sorted index
  same = full[..., :t, None] == full[..., None, :t]
  si, sj = sidx[..., :, None], sidx[..., None, :]
  if causal:
    near = (si - sj >= 0) & (si - sj <= c)
  else:
    near = (sj // c == si // c) | (sj // c == (si // c - 1) % nc)
  return np.any(same & near, axis=2)


def _lsh_buckets(layer, params, x, rounds):
  """h(x) = argmax([xR ; −xR]) (Kitaev et al. 2020) of the shared query/keys, R `[H, r, D,
  n_b/2]` normal from the layer's fixed key (its draw without an `attention` rng), n_b = 2
  ⌈T / (2 · bucket_size)⌉ -> `[B, H, r, T]`."""
  n_b = 2 * -(-T // (2 * layer.bucket_size))
  key = _blocks.layer_key(layer.bind(params), layer.seed)
  rotations = np.asarray(jax.random.normal(key, (H, rounds, E // H, n_b // 2)))
  q = np.asarray(_proj(nn.unbox(params)["params"], "query", x))
  rotated = np.einsum("bthd,hrdk->bhrtk", q, rotations)
  return np.argmax(np.concatenate([rotated, -rotated], axis=-1), axis=-1)


@pytest.mark.parametrize("causal", [False, True])
def test_lsh_rounds_combine_into_one_softmax_over_their_union(causal):
  """3 rounds, buckets of ~2 (chunks of 4), hashed here from the definition: the
  logsumexp-weighted rounds with duplicate counts equal one softmax over the union of the keys
  each round lets a query see."""
  x = _x(30)
  layer = _layer("lsh", bucket_size=2, num_hashes=3).clone(causal=causal)
  params = _init(layer, 31, x)
  sown = ["intermediates", "diagnostics"]
  got, state = _run(layer, params, x, mask=_lengths_mask(), mutable=sown)
  buckets = _lsh_buckets(layer, params, x, 3)
  assert buckets.shape == (B, H, 3, T) and len(np.unique(buckets)) > 3
  np.testing.assert_array_equal(state["diagnostics"]["lsh_buckets"][0], buckets)
  union = _lsh_union(buckets, 4, causal)
  assert not union.all()
  want, want_w = _lsh_reference(nn.unbox(params)["params"], x, union, causal)
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(state["intermediates"]["attention_weights"][0], want_w, atol=1e-6)
  # An `attention` rng draws fresh rotations: other buckets, another output.
  rngs = {"attention": jax.random.key(2)}
  other, other_state = _run(layer, params, x, rngs=rngs, mutable=["diagnostics"])
  assert (np.asarray(other_state["diagnostics"]["lsh_buckets"][0]) != buckets).any()
  assert not np.allclose(other, _run(layer, params, x), atol=1e-4)


# ----------------------------------------------------------------------------- synthesizer


@pytest.mark.parametrize(
  ("variant", "mix_dot", "trainable", "causal"),
  [
    ("dense", False, True, False),
    ("dense", True, True, True),
    ("random", False, False, True),
    ("random", True, True, False),
  ],
)
def test_synthesizer_matches_its_equation(variant, mix_dot, trainable, causal):
  x = _x(32)
  fields = {"variant": variant, "mix_dot": mix_dot, "trainable_random": trainable}
  layer = _layer("synthesizer", max_length=16, **fields).clone(causal=causal)
  variables = _init(layer, 33, x)
  p = nn.unbox(variables)["params"]
  if variant == "dense":
    hidden = jax.nn.relu(_proj(p, "synth_hidden", x))
    logits = jnp.einsum("bthd,dl->bhtl", hidden, p["synth_out"]["kernel"]) + p["synth_out"]["bias"]
  else:
    r = p["random"] if trainable else variables["constants"]["random"]
    assert ("random" in p) == trainable
    logits = jnp.broadcast_to(r, (B, H, 16, 16))
  logits = logits[..., :T, :T]
  if mix_dot:
    dot = jnp.einsum("bqhd,bkhd->bhqk", _proj(p, "query", x), _proj(p, "key", x))
    logits = p["mix"][0] * logits + p["mix"][1] * dot / np.sqrt(E // H)
  ok = np.asarray(_lengths_mask())
  if causal:
    ok = ok & np.tril(np.ones((T, T), bool))
  w = jax.nn.softmax(jnp.where(ok, logits, -1e30), axis=-1)
  want = _out(p, jnp.einsum("bhqk,bkhd->bqhd", w, _proj(p, "value", x)))
  np.testing.assert_allclose(_run(layer, variables, x, mask=_lengths_mask()), want, atol=1e-5)
  if not trainable:  # the fixed matrix is redrawn identically without the constants collection
    got = _run(layer, {"params": variables["params"]}, x, mask=_lengths_mask())
    np.testing.assert_allclose(got, want, atol=1e-5)


# ----------------------------------------------------------------------------- linformer


def test_linformer_with_identity_projections_is_exact():
  """k = n = T and E = F = I: the projected keys are the keys, so exact attention."""
  x = _x(34)
  layer = _layer("linformer", k=T, max_length=T)
  params = nn.unbox(_init(layer, 35, x))
  params["params"]["e"] = params["params"]["f"] = jnp.eye(T)
  np.testing.assert_allclose(_run(layer, params, x), _exact(params, x), atol=1e-5)


@pytest.mark.parametrize(
  ("sharing", "shapes"),
  [
    ("none", {"e": (H, 4, 16), "f": (H, 4, 16)}),
    ("headwise", {"e": (4, 16), "f": (4, 16)}),
    ("key_value", {"e": (4, 16)}),
    ("layerwise", {"e": (4, 16)}),
  ],
)
def test_linformer_sharing(sharing, shapes):
  x = _x(36)
  layer = _layer("linformer", k=4, max_length=16, sharing=sharing)
  params = nn.unbox(_init(layer, 37, x))["params"]
  got = {name: params[name].shape for name in ("e", "f") if name in params}
  assert got == shapes
