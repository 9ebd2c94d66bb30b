"""Scaled dot-product multi-head attention, with grouped-query heads and a decode cache.

    score_ij = q_i · k_j / √d,   w = softmax(score / τ) (top-k optional),   out = Σ_j w_ij v_j

Vaswani et al. 2017, "Attention Is All You Need". `num_kv_heads < num_heads` gives grouped-query
attention (Ainslie et al. 2023); `num_kv_heads = 1` multi-query attention (Shazeer 2019).
Cost: O(T² d) time, O(T²) memory per head (the `jax` implementation may use cuDNN flash
attention on a GPU, O(T) memory).

`implementation`: `xla` (plain einsum), `jax` (`jax.nn.dot_product_attention`), `auto` (the
`jax` path where it applies, i.e. no temperature/top-k/sown weights needed, else `xla`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.attention import masks, register
from models.attention.base import Attention, normalize

IMPLEMENTATIONS = ("auto", "xla", "jax")


def dot_product_weights(q, k, mask, temperature=1.0, top_k=None):
  """`[B, Tq, H, D]`, `[B, Tk, H, D]` -> weights `[B, H, Tq, Tk]` (k already repeated for GQA)."""
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  return normalize(scores, mask, temperature, top_k)


def repeat_kv(x: jnp.ndarray, num_heads: int) -> jnp.ndarray:
  """`[B, T, Hkv, D]` -> `[B, T, H, D]` by repeating each kv head for its query group."""
  return jnp.repeat(x, num_heads // x.shape[2], axis=2)


@register("scaled_dot")
class ScaledDotProductAttention(Attention):
  """Multi-head (grouped-query) scaled dot-product attention."""

  num_kv_heads: int | None = None  # None: = num_heads
  implementation: str = "auto"
  temperature: float = 1.0
  top_k: int | None = None
  decode: bool = False  # autoregressive: one query per call, keys/values cached

  def kv_heads(self) -> int:
    kv = self.num_kv_heads or self.num_heads
    if self.num_heads % kv:
      raise ValueError(f"num_kv_heads={kv} must divide num_heads={self.num_heads}")
    return kv

  def use_jax_kernel(self) -> bool:
    if self.implementation not in IMPLEMENTATIONS:
      raise ValueError(f"implementation={self.implementation!r}; valid: {IMPLEMENTATIONS}")
    plain = self.temperature == 1.0 and self.top_k is None and not self.is_mutable_collection(
      "intermediates"
    )
    if self.implementation == "jax" and not plain:
      raise ValueError("implementation='jax' supports no temperature/top_k; use 'xla' or 'auto'")
    return self.implementation == "jax" or (self.implementation == "auto" and plain)

  @nn.compact
  def __call__(self, inputs_q, inputs_kv=None, *, mask=None, deterministic=True):
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    q, k, v = self.project_qkv(inputs_q, inputs_kv, self.kv_heads())
    q_len, kv_len = q.shape[1], k.shape[1]
    causal_offset = 0
    if self.decode:
      k, v, mask, causal_offset = self.update_cache(k, v, mask)
      kv_len = k.shape[1]
    mask = masks.combine(
      mask, masks.causal_mask(q_len, kv_len, causal_offset) if self.causal else None
    )
    use_dropout = self.dropout_rate > 0.0 and not deterministic
    if self.use_jax_kernel() and not use_dropout:
      context = jax.nn.dot_product_attention(
        q, k, v, mask=None if mask is None else jnp.broadcast_to(
          mask, (q.shape[0], 1 if mask.shape[1] == 1 else self.num_heads, q_len, kv_len)
        )
      )
    else:
      w = dot_product_weights(q, repeat_kv(k, self.num_heads), mask, self.temperature, self.top_k)
      self.sow("intermediates", "attention_weights", w)
      w = self.weights_dropout(w, deterministic)
      context = jnp.einsum("bhqk,bkhd->bqhd", w, repeat_kv(v, self.num_heads))
    return self.project_out(context, inputs_q.shape[-1])

  def update_cache(self, k, v, mask):
    """Writes this step's keys/values at the cache index; returns the whole cache.

    Initialise with the full-length input (`model.init(..., decode=True)` on a `[B, T_max, D]`
    query); each later call takes one position `[B, 1, D]`.
    """
    is_initialized = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not is_initialized:
      return k, v, mask, 0
    step = k.shape[1]
    i = index.value
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, i, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, i, 0, 0))
    index.value = i + step
    max_len = cached_k.value.shape[1]
    filled = (jnp.arange(max_len) < i + step)[None, None, None, :]
    return cached_k.value, cached_v.value, masks.combine(mask, filled), i
