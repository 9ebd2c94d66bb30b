"""Reformer LSH attention: shared-QK, hashed into buckets by random rotations, sorted, chunked.

    k_j = q_j / ‖q_j‖ (shared-QK),   h(x) = argmax([xR ; −xR]),  R ∈ R^{d × n_b/2} random
    per round r: sort positions by (h_r(q), position), cut into chunks of m = 2 · bucket_size;
    P_i^r = {j in the same bucket, in i's chunk or the previous one}
    o_i^r = Σ_{j ∈ P_i^r} exp(q_i·k_j − log N_ij − z_i^r) v_j,   z_i^r = logsumexp of those,
    o_i = Σ_r exp(z_i^r − logsumexp_r z_i^r) o_i^r
    (N_ij: the number of rounds in which i attends to j, so the rounds combine into one softmax
    over ∪_r P_i^r; i attends to itself only when no other key is allowed: score − 10⁵)

Kitaev, Kaiser, Levskaya 2020, "Reformer: The Efficient Transformer". n_b is derived from the
length: 2 · ⌈T / (2 · bucket_size)⌉ (1 when T <= bucket_size: one bucket, one chunk, which is
exact softmax attention over the other keys). The rotations are drawn on every call from the
`attention` rng when the call has one, and from a fixed per-layer key otherwise (eval).
Causal: j <= i; and instead of the previous fixed chunk a query sees the m sorted positions
before it, i.e. its up-to-m most recent same-bucket predecessors. (With fixed chunks, where
the chunk boundaries fall depends on how later tokens hash, so earlier outputs would depend on
later inputs; this keeps the layer exactly causal.)
Cost: O(r T m d + r T log T) time, O(r T m) memory (r = `num_hashes`; the duplicate counts
N_ij add O(r² T m)). Self-attention only; key-padding masks only. The combined weights are sown
(scattered to `[B, H, T, T]`) only when `intermediates` is mutable; the buckets as
`diagnostics/lsh_buckets` `[B, H, r, T]` when that collection is.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.attention import _blocks, cost
from models.attention.base import NEG_INF, Attention
from models.attention.registry import register

SELF_PENALTY = 1e5  # subtracted from a query's score for itself (as in the reference code)


def num_buckets(length: int, bucket_size: int) -> int:
  """n_b: about length / bucket_size buckets, even (for the ±rotation trick), 1 if it all fits."""
  return 1 if length <= bucket_size else 2 * -(-length // (2 * bucket_size))


def hash_buckets(x: jnp.ndarray, rotations: jnp.ndarray) -> jnp.ndarray:
  """`x` `[B, T, H, D]`, rotations `[H, r, D, n_b/2]` -> buckets `[B, H, r, T]` in [0, n_b)."""
  rotated = jnp.einsum("bthd,hrdk->bhrtk", x.astype(jnp.float32), rotations)
  return jnp.argmax(jnp.concatenate([rotated, -rotated], axis=-1), axis=-1).astype(jnp.int32)


def _at(info: jnp.ndarray, pos: jnp.ndarray) -> jnp.ndarray:
  """Per-position values `[B, H, r', Tp]` at positions `[B, H, r, ...]` -> `[B, H, r, ..., r']`."""
  b, h, rr, tp = info.shape
  table = jnp.moveaxis(info, 2, 3)[:, :, None]  # [B, H, 1, Tp, r']
  flat = pos.reshape(b, h, pos.shape[2], -1, 1)
  table = jnp.broadcast_to(table, (b, h, pos.shape[2], tp, rr))
  out = jnp.take_along_axis(table, jnp.broadcast_to(flat, flat.shape[:-1] + (rr,)), axis=3)
  return out.reshape(*pos.shape, rr)


@register("lsh")
class LSHAttention(Attention):
  """Multi-round LSH attention within sorted chunks (own + previous), shared query/key."""

  supports_cross = False
  dense_mask = False
  padding_invariant = False  # the buckets' number and the chunks depend on the length
  covers_sequence_field = "bucket_size"
  test_fields = {"bucket_size": 1, "num_hashes": 2}

  num_hashes: int = 4  # r: hashing rounds
  bucket_size: int = 32  # average bucket size; chunks are twice as long
  seed: int = 0  # of the rotations used when a call has no `attention` rng

  @classmethod
  def forward_flops(cls, s, f):
    """Shared QK (3 projections); per hash round: chunks of m = 2·bucket_size queries see their
    chunk and the previous one (2m keys), plus the random rotations for hashing."""
    r, m = f["num_hashes"], min(2 * f["bucket_size"], s.length)
    buckets = 2 * -(-s.length // (2 * f["bucket_size"]))
    padded = -(-s.length // m) * m
    hashing = 2.0 * cost.elements(s) * buckets / 2
    return cost.proj(s, 3) + r * (cost.dense(s, padded * min(2 * m, padded)) + hashing)

  @nn.compact
  def __call__(
    self,
    inputs_q: jnp.ndarray,
    inputs_kv: jnp.ndarray | None = None,
    *,
    mask: jnp.ndarray | None = None,
    deterministic: bool = True,
  ) -> jnp.ndarray:
    """`inputs_q` `[B, T, D]`, key-padding `mask` `[B, 1, 1, T]` -> `[B, T, out_features]`."""
    _blocks.check_self_attention("lsh", inputs_q, inputs_kv)
    _, head_dim = self.features(inputs_q)
    h, r = self.num_heads, self.num_hashes
    qk = self.dense_heads(inputs_q, "query", h, head_dim)  # shared query/key projection
    v = self.dense_heads(inputs_q, "value", h, head_dim)
    b, t = qk.shape[:2]
    valid = _blocks.key_validity(mask, t, b)
    n_b = num_buckets(t, self.bucket_size)
    c = max(1, min(2 * self.bucket_size, t))  # chunk length m
    nc = -(-t // c)
    tp = nc * c

    if n_b == 1:
      buckets = jnp.zeros((b, h, r, t), jnp.int32)
    else:
      use_rng = self.has_rng("attention") and not self.is_initializing()
      key = self.make_rng("attention") if use_rng else _blocks.layer_key(self, self.seed)
      rotations = jax.random.normal(key, (h, r, head_dim, n_b // 2))
      buckets = hash_buckets(qk, rotations)
    if not self.is_initializing():  # (init would store it with the variables)
      self.sow("diagnostics", "lsh_buckets", buckets)
    buckets = jnp.pad(buckets, [(0, 0)] * 3 + [(0, tp - t)], constant_values=n_b)  # pad: last
    perm = jnp.argsort(buckets * tp + jnp.arange(tp), axis=-1)  # [B, H, r, Tp]: sorted -> pos
    sidx = jnp.argsort(perm, axis=-1)  # pos -> sorted index

    def sort(x):  # [B, Tp, H, ...] -> [B, H, r, nc, c, ...] in each round's order
      xt = jnp.moveaxis(x, 2, 1)[:, :, None]  # [B, H, 1, Tp, ...]
      idx = perm.reshape(perm.shape + (1,) * (x.ndim - 3))
      xt = jnp.broadcast_to(xt, (b, h, r) + xt.shape[3:])
      idx = jnp.broadcast_to(idx, perm.shape + xt.shape[4:])
      out = jnp.take_along_axis(xt, idx, axis=3)
      return out.reshape(b, h, r, nc, c, *out.shape[4:])

    qk32 = _blocks.pad_time(qk.astype(jnp.float32), c)
    k_hat = qk32 * jax.lax.rsqrt(jnp.sum(qk32 * qk32, -1, keepdims=True) + 1e-12)
    circular = not self.causal
    back = lambda x: _blocks.look_back(x, 3, circular)  # noqa: E731
    sq, sk, sv = sort(qk32), back(sort(k_hat)), back(sort(_blocks.pad_time(v, c)))
    q_pos = perm.reshape(b, h, r, nc, c)
    k_pos = back(q_pos)
    q_buck = jnp.take_along_axis(buckets, perm, axis=-1).reshape(b, h, r, nc, c)
    k_buck = back(q_buck)
    k_ok = back(sort(_blocks.pad_time(valid, c)[:, :, None]))
    k_ok = k_ok & back(jnp.ones_like(q_pos, bool))  # causal: chunk 0 has no previous chunk
    allowed = k_ok[..., None, :] & (q_buck[..., :, None] == k_buck[..., None, :])
    q_sorted = jnp.arange(tp).reshape(nc, c)
    if self.causal:
      k_sorted = back(jnp.broadcast_to(q_sorted, (1, 1, 1, nc, c)))
      gap = q_sorted[..., :, None] - k_sorted[..., None, :]  # [1, 1, 1, nc, c, S]
      allowed = allowed & (k_pos[..., None, :] <= q_pos[..., :, None]) & (gap <= c)

    scores = jnp.einsum("bhrncd,bhrnsd->bhrncs", sq, sk)
    scores = jnp.where(q_pos[..., :, None] == k_pos[..., None, :], scores - SELF_PENALTY, scores)
    if r > 1:  # N_ij: in how many rounds query i attends to key j
      same = _at(buckets, q_pos)[..., :, None, :] == _at(buckets, k_pos)[..., None, :, :]
      iq, ik = _at(sidx, q_pos)[..., :, None, :], _at(sidx, k_pos)[..., None, :, :]
      if self.causal:
        near = (iq - ik >= 0) & (iq - ik <= c)
      else:
        cq, ck = iq // c, ik // c
        near = (ck == cq) | (ck == (cq - 1) % nc)
      count = jnp.sum(same & near, axis=-1)
      scores = scores - jnp.log(jnp.maximum(count, 1).astype(scores.dtype))
    scores = jnp.where(allowed, scores, NEG_INF)
    lse = jax.nn.logsumexp(scores, axis=-1)  # [B, H, r, nc, c]
    any_key = jnp.any(allowed, axis=-1)
    weights = jnp.where(any_key[..., None], jnp.exp(scores - lse[..., None]), 0.0)
    lse = jnp.where(any_key, lse, NEG_INF)
    # Each query's rounds, back in position order, weighted by softmax_r(z^r).
    unsort = lambda x: jnp.take_along_axis(x, sidx, axis=-1)  # noqa: E731
    round_w = jax.nn.softmax(unsort(lse.reshape(b, h, r, tp)), axis=2)  # [B, H, r, Tp]

    if self.is_mutable_collection("intermediates"):
      per_query = jnp.take_along_axis(round_w, perm, axis=-1).reshape(b, h, r, nc, c, 1)
      flat = (weights * per_query).reshape(b, h, r * tp, -1)
      k_at = jnp.broadcast_to(k_pos[..., None, :], weights.shape).reshape(b, h, r * tp, -1)
      dense = _blocks.scatter_dense(flat, q_pos.reshape(b, h, r * tp, 1), k_at, t, t)
      self.sow("intermediates", "attention_weights", dense.astype(self.dtype))
    weights = self.weights_dropout(weights, deterministic)
    out = jnp.einsum("bhrncs,bhrnsd->bhrncd", weights.astype(sv.dtype), sv)
    out = out.reshape(b, h, r, tp, head_dim)
    out = jnp.take_along_axis(out, sidx[..., None], axis=3)  # position order
    context = jnp.einsum("bhrt,bhrtd->bthd", round_w.astype(out.dtype), out)[:, :t]
    return self.project_out(context.astype(self.dtype), inputs_q.shape[-1])
