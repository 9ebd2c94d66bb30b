"""Memory-efficient exact attention: softmax(q kᵀ / (√d τ)) v in chunks with an online softmax.

For each query chunk, the key chunks are visited in turn keeping a running maximum m, normaliser
l and weighted sum a (Milakov & Gimelshein 2018's online softmax):

    s = q kᵀ / (√d τ) (masked),  m' = max(m, max_j s_j),  l' = l e^{m - m'} + Σ_j e^{s_j - m'},
    a' = a e^{m - m'} + Σ_j e^{s_j - m'} v_j,            out = a / l

Rabe & Staats 2021, "Self-attention Does Not Need O(n²) Memory"; Dao et al. 2022,
"FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness". Pure JAX: a
`lax.map` over query chunks of a rematerialised (`jax.checkpoint`) `lax.scan` over key chunks,
so the backward pass recomputes one query chunk at a time instead of storing its probabilities.
Projections as `scaled_dot` (incl. grouped-query heads, `num_kv_heads`).

Masks: `causal` from positions chunk by chunk (key chunks wholly in the future are skipped), a
key-padding mask `[B, 1, 1, Tk]`, or any dense mask broadcastable to `[B, H, Tq, Tk]` (sliced per
chunk; the mask itself is then O(Tq Tk) booleans). Lengths need not divide the chunk sizes. Rows
with no allowed key give zeros. Dropout drops weights chunk by chunk. No weights are formed, so
nothing is sown and there is no top-k.

Cost: O(Tq Tk d) time (≈ 1.3x for the backward recomputation); memory O((Tq + Tk) d) plus
O(Cq Ck) per chunk pair and O(Tk / Ck · Cq d) during one query chunk's backward pass.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.attention import cost, masks
from models.attention.base import NEG_INF, Attention
from models.attention.registry import register
from models.attention.scaled_dot import check_kv_heads


def _pad_axis(x: jnp.ndarray, axis: int, size: int, value=0) -> jnp.ndarray:
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def chunked_attention(
  q: jnp.ndarray,
  k: jnp.ndarray,
  v: jnp.ndarray,
  mask: jnp.ndarray | None = None,
  *,
  causal: bool = False,
  scale: float | None = None,
  query_chunk_size: int = 128,
  key_chunk_size: int = 128,
  dropout_rate: float = 0.0,
  dropout_rng: jax.Array | None = None,
) -> jnp.ndarray:
  """Exact softmax attention in O(T) memory for forward and backward.

  q `[B, Tq, H, D]`, k/v `[B, Tk, Hkv, D]` (Hkv divides H), mask bool broadcastable to
  `[B, H, Tq, Tk]` -> `[B, Tq, H, D]` (in q's dtype; accumulation in float32). With
  `dropout_rng`, weights are dropped at `dropout_rate` (the normaliser keeps them all, as for
  dropout applied to the softmax weights); each chunk pair draws from its own folded key.
  """
  batch, q_len, heads, dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  groups = heads // kv_heads
  scale = 1.0 / math.sqrt(dim) if scale is None else scale
  cq, ck = min(query_chunk_size, q_len), min(key_chunk_size, kv_len)
  nq, nk = -(-q_len // cq), -(-kv_len // ck)

  qp = _pad_axis(q, 1, nq * cq).reshape(batch, nq * cq, kv_heads, groups, dim)
  kp, vp = _pad_axis(k, 1, nk * ck), _pad_axis(v, 1, nk * ck)
  key_in_range = jnp.arange(nk * ck) < kv_len
  if mask is not None:  # -> [B|1, Hkv|1, G|1, Tq|1, Tk|1], padded with False
    m = masks.as_4d(jnp.asarray(mask, bool))
    if m.shape[2] == q_len:
      m = _pad_axis(m, 2, nq * cq, False)
    if m.shape[3] == kv_len:
      m = _pad_axis(m, 3, nk * ck, False)
    m = m.reshape(m.shape[0], kv_heads, groups, *m.shape[2:]) if m.shape[1] > 1 else m[:, :, None]

  def query_chunk(qi: jnp.ndarray) -> jnp.ndarray:
    q_start = qi * cq
    q_c = jax.lax.dynamic_slice_in_dim(qp, q_start, cq, axis=1)  # [B, Cq, Hkv, G, D]
    q_pos = q_start + jnp.arange(cq)
    m_q = None
    if mask is not None:
      m_q = jax.lax.dynamic_slice_in_dim(m, q_start, cq, axis=3) if m.shape[3] > 1 else m

    def attend_chunk(carry, kj):
      run_max, denom, acc = carry
      k_start = kj * ck
      k_c = jax.lax.dynamic_slice_in_dim(kp, k_start, ck, axis=1)  # [B, Ck, Hkv, D]
      v_c = jax.lax.dynamic_slice_in_dim(vp, k_start, ck, axis=1)
      s = jnp.einsum("bqhgd,bkhd->bhgqk", q_c, k_c, preferred_element_type=jnp.float32) * scale
      allowed = jax.lax.dynamic_slice_in_dim(key_in_range, k_start, ck)[None, None, None, None]
      if causal:
        k_pos = k_start + jnp.arange(ck)
        allowed = allowed & (k_pos[None, :] <= q_pos[:, None])[None, None, None]
      if m_q is not None:
        allowed = allowed & (
          jax.lax.dynamic_slice_in_dim(m_q, k_start, ck, axis=4) if m_q.shape[4] > 1 else m_q
        )
      s = jnp.where(allowed, s, NEG_INF)
      new_max = jnp.maximum(run_max, jnp.max(s, axis=-1))
      p = jnp.where(allowed, jnp.exp(s - new_max[..., None]), 0.0)
      correction = jnp.exp(run_max - new_max)
      denom = denom * correction + jnp.sum(p, axis=-1)
      if dropout_rng is not None and dropout_rate > 0.0:
        key = jax.random.fold_in(jax.random.fold_in(dropout_rng, qi), kj)
        keep = jax.random.bernoulli(key, 1.0 - dropout_rate, p.shape)
        p = jnp.where(keep, p / (1.0 - dropout_rate), 0.0)
      pv = jnp.einsum(
        "bhgqk,bkhd->bhgqd", p.astype(v.dtype), v_c, preferred_element_type=jnp.float32
      )
      acc = acc * correction[..., None] + pv
      return (new_max, denom, acc), None

    def maybe_attend(carry, kj):
      if not causal:
        return attend_chunk(carry, kj)
      visible = kj * ck <= q_start + cq - 1  # some key of the chunk is not in the future
      return jax.lax.cond(visible, attend_chunk, lambda c, _: (c, None), carry, kj)

    stats = (batch, kv_heads, groups, cq)
    init = (
      jnp.full(stats, NEG_INF, jnp.float32),
      jnp.zeros(stats, jnp.float32),
      jnp.zeros((*stats, dim), jnp.float32),
    )
    (_, denom, acc), _ = jax.lax.scan(maybe_attend, init, jnp.arange(nk))
    out = acc / jnp.where(denom == 0.0, 1.0, denom)[..., None]  # [B, Hkv, G, Cq, D]
    return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(batch, cq, heads, dim).astype(q.dtype)

  chunks = jax.lax.map(jax.checkpoint(query_chunk), jnp.arange(nq))  # [nq, B, Cq, H, D]
  out = jnp.moveaxis(chunks, 0, 1).reshape(batch, nq * cq, heads, dim)
  return out[:, :q_len]


@register("memory_efficient")
class MemoryEfficientAttention(Attention):
  """Exact scaled dot-product attention, chunked with an online softmax (sows no weights)."""

  test_fields = {"num_kv_heads": 1, "query_chunk_size": 3, "key_chunk_size": 2}

  num_kv_heads: int | None = None  # None: = num_heads
  query_chunk_size: int = 128
  key_chunk_size: int = 128
  temperature: float = 1.0

  @classmethod
  def forward_flops(cls, s, f):
    """The dense count; causal skips the key chunks wholly in the future."""
    if not s.causal:
      return super().forward_flops(s, f)
    return cost.proj(s, 4) + cost.dense(s, s.length * (s.length + f["key_chunk_size"]) / 2)

  @nn.compact
  def __call__(
    self,
    inputs_q: jnp.ndarray,
    inputs_kv: jnp.ndarray | None = None,
    *,
    mask: jnp.ndarray | None = None,
    deterministic: bool = True,
  ) -> jnp.ndarray:
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    kv_heads = check_kv_heads(self.num_heads, self.num_kv_heads)
    q, k, v = self.project_qkv(inputs_q, inputs_kv, kv_heads)
    context = chunked_attention(
      q,
      k,
      v,
      mask,
      causal=self.causal,
      scale=1.0 / (math.sqrt(q.shape[-1]) * self.temperature),
      query_chunk_size=self.query_chunk_size,
      key_chunk_size=self.key_chunk_size,
      dropout_rate=self.dropout_rate,
      dropout_rng=None if deterministic or self.dropout_rate == 0.0 else self.make_rng("dropout"),
    )
    return self.project_out(context, inputs_q.shape[-1])
