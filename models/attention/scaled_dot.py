"""Scaled dot-product multi-head attention, with grouped-query heads and a decode cache.

    score_ij = q_i · k_j / √d,   w = softmax(score / τ) (top-k optional),   out = Σ_j w_ij v_j

Vaswani et al. 2017, "Attention Is All You Need". `num_kv_heads < num_heads` gives grouped-query
attention (Ainslie et al. 2023, "GQA"); `num_kv_heads = 1` multi-query attention (Shazeer 2019,
"Fast Transformer Decoding: One Write-Head is All You Need").
Cost: O(Tq Tk d) time, O(Tq Tk) memory per head (for O(T) memory see `memory_efficient`).

`implementation`: `xla` (plain einsum), `jax` (`jax.nn.dot_product_attention`; on a GPU with
bfloat16/float16 inputs its cuDNN flash-attention kernel, O(T) memory), `auto` (the fastest
correct one for the backend: the cuDNN kernel on a GPU where it applies, the einsum elsewhere —
on CPU the einsum is faster than `jax.nn.dot_product_attention`'s XLA lowering, see
docs/benchmarks.md). The `jax` path supports no temperature/top-k; when the weights are asked
for (the `intermediates` collection is mutable) both `jax` and `auto` use the `xla` path.
Query rows with no allowed key give zeros on both paths.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.attention import masks
from models.attention.base import Attention, KeysValues, normalize
from models.attention.registry import register

IMPLEMENTATIONS = ("auto", "xla", "jax")


def cudnn_kernel(dtype) -> str | None:
  """'cudnn' where jax's cuDNN flash attention applies (GPU, 16-bit inputs), else None (XLA)."""
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  return "cudnn" if half and jax.default_backend() == "gpu" else None


def dot_product_weights(
  q: jnp.ndarray,
  k: jnp.ndarray,
  mask: jnp.ndarray | None,
  temperature: float = 1.0,
  top_k: int | None = None,
) -> jnp.ndarray:
  """`[B, Tq, H, D]`, `[B, Tk, Hkv, D]` (Hkv divides H) -> weights `[B, H, Tq, Tk]`."""
  b, tq, h, d = q.shape
  kv_heads = k.shape[2]
  # 1/(√d τ) scales q (O(T d)) rather than the scores (O(T²)).
  q = q * jnp.asarray(1.0 / (d**0.5 * temperature), q.dtype)
  if kv_heads == h:
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k)
  else:
    grouped = q.reshape(b, tq, kv_heads, h // kv_heads, d)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", grouped, k).reshape(b, h, tq, k.shape[1])
  return normalize(scores, mask, 1.0, top_k)


def check_kv_heads(num_heads: int, num_kv_heads: int | None) -> int:
  """The number of key/value heads (`num_heads` when None); it must divide `num_heads`."""
  kv = num_kv_heads or num_heads
  if num_heads % kv:
    raise ValueError(f"num_kv_heads={kv} must divide num_heads={num_heads}")
  return kv


@register("scaled_dot")
class ScaledDotProductAttention(Attention):
  """Multi-head (grouped-query) scaled dot-product attention."""

  num_kv_heads: int | None = None  # None: = num_heads
  implementation: str = "auto"
  temperature: float = 1.0
  top_k: int | None = None
  decode: bool = False  # autoregressive: keys/values cached, see `update_cache`

  prepares_kv = True

  def kv_heads(self) -> int:
    return check_kv_heads(self.num_heads, self.num_kv_heads)

  def use_jax_kernel(self) -> bool:
    if self.implementation not in IMPLEMENTATIONS:
      raise ValueError(f"implementation={self.implementation!r}; valid: {IMPLEMENTATIONS}")
    plain = self.temperature == 1.0 and self.top_k is None
    if self.implementation == "jax" and not plain:
      raise ValueError("implementation='jax' supports no temperature/top_k; use 'xla' or 'auto'")
    wants_weights = self.is_mutable_collection("intermediates")
    if self.implementation == "auto" and cudnn_kernel(self.dtype) is None:
      return False
    return self.implementation in ("jax", "auto") and plain and not wants_weights

  def prepare_kv(
    self, inputs_kv: jnp.ndarray, inputs_q: jnp.ndarray | None
  ) -> dict[str, jnp.ndarray]:
    """The `key` and `value` projections `[B, Tk, Hkv, Dh]`."""
    _, head_dim = self.features(inputs_q)
    kv_heads = self.kv_heads()
    return {
      "key": self.dense_heads(inputs_kv, "key", kv_heads, head_dim),
      "value": self.dense_heads(inputs_kv, "value", kv_heads, head_dim),
    }

  @nn.compact
  def __call__(
    self,
    inputs_q: jnp.ndarray | None,
    inputs_kv: jnp.ndarray | KeysValues | None = None,
    *,
    mask: jnp.ndarray | None = None,
    deterministic: bool = True,
  ) -> jnp.ndarray | KeysValues:
    _, head_dim = self.features(inputs_q)
    q = None if inputs_q is None else self.dense_heads(inputs_q, "query", self.num_heads, head_dim)
    kv = self.keys_values(inputs_q, inputs_kv)
    if inputs_q is None:  # `prepare`
      return kv
    k, v = kv.cache["key"], kv.cache["value"]
    q_len = q.shape[1]
    causal_offset = 0
    if self.decode:
      k, v, mask, causal_offset = self.update_cache(k, v, mask)
    kv_len = k.shape[1]
    mask = masks.combine(
      mask, masks.causal_mask(q_len, kv_len, causal_offset) if self.causal else None
    )
    use_dropout = self.dropout_rate > 0.0 and not deterministic
    if self.use_jax_kernel() and not use_dropout:
      if mask is not None:
        mask = masks.as_4d(jnp.asarray(mask, bool))
      context = jax.nn.dot_product_attention(
        q, k, v, mask=mask, implementation=cudnn_kernel(self.dtype)
      )
      if mask is not None:  # rows with no allowed key: zeros, as on the xla path
        any_key = jnp.any(mask, axis=-1)  # [B|1, H|1, Tq]
        context = context * jnp.transpose(any_key, (0, 2, 1))[..., None].astype(context.dtype)
    else:
      w = dot_product_weights(q, k, mask, self.temperature, self.top_k)
      context = self.attend(w, v, deterministic)
    return self.project_out(context, inputs_q.shape[-1])

  def update_cache(self, k, v, mask):
    """Writes this step's keys/values at the cache index; returns the whole cache.

    Initialise with the full-length input (`model.init(..., decode=True)` on a `[B, T_max, D]`
    query); each later call takes the next positions `[B, t, D]` (usually t = 1). Returns the
    cached keys/values `[B, T_max, Hkv, Dh]`, the mask AND "filled so far", and the absolute
    position of this call's first query (the causal offset).
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
