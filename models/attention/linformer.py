"""Linformer: keys and values projected along the length to k rows, then exact attention.

    out_h = softmax(Q_h (E_h K_h)ᵀ / √d) (F_h V_h),     E_h, F_h ∈ R^{k × n} learned

Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity". E and F are learned over
`max_length` positions and cut to the key length; padded keys are zeroed before the projection,
so they contribute nothing (hence padding-invariant exactly). `sharing` (the paper's options):
`none` (E_h, F_h per head), `headwise` (one E, one F for the heads of a layer; the default),
`key_value` (also F = E), `layerwise` (one matrix for keys, values and heads: the same as
`key_value` within a layer; sharing it across layers is not done, every layer has its own).
Not causal (the projection mixes all positions).
Cost: O(T k d) time, O(T k) memory. Key-padding masks only.
"""

import flax.linen as nn
import jax.numpy as jnp

from models.attention import cost, masks
from models.attention.base import Attention, normalize
from models.attention.registry import register

SHARING = ("none", "headwise", "key_value", "layerwise")


@register("linformer")
class LinformerAttention(Attention):
  supports_causal = False
  dense_mask = False
  length_fields = ("max_length",)
  test_fields = {"k": 4, "max_length": 16}

  k: int = 64  # projected length
  max_length: int = 512  # longest key sequence
  sharing: str = "headwise"  # none | headwise | key_value | layerwise

  @classmethod
  def forward_flops(cls, s, f):
    """E K and F V along the length, then attention over the k projected keys."""
    k = f["k"]
    along_length = 2 * 2.0 * s.batch * k * s.length * s.width  # E K and F V
    return cost.proj(s, 4) + along_length + cost.dense(s, s.length * k)

  @nn.compact
  def __call__(self, inputs_q, inputs_kv=None, *, mask=None, deterministic=True):
    if self.sharing not in SHARING:
      raise ValueError(f"sharing={self.sharing!r}; valid: {SHARING}")
    if self.causal:
      raise ValueError("linformer cannot be causal: its projection mixes all positions")
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    q, k, v = self.project_qkv(inputs_q, inputs_kv)
    t = k.shape[1]
    if t > self.max_length:
      raise ValueError(f"linformer: {t} keys > max_length={self.max_length}; raise max_length")
    init = nn.initializers.normal(stddev=1.0 / self.k**0.5)
    h = q.shape[2]
    shape = (h, self.k, self.max_length) if self.sharing == "none" else (self.k, self.max_length)
    e = self.param("e", init, shape, self.param_dtype)
    if self.sharing in ("key_value", "layerwise"):
      f = e
    else:
      f = self.param("f", init, shape, self.param_dtype)
    e, f = (jnp.broadcast_to(x, (h, self.k, self.max_length))[..., :t] for x in (e, f))
    valid = masks.key_padding(mask, t)
    if valid is not None:
      k, v = (x * valid[:, :, None, None].astype(x.dtype) for x in (k, v))
    k_proj = jnp.einsum("hrt,bthd->brhd", e.astype(k.dtype), k)
    v_proj = jnp.einsum("hrt,bthd->brhd", f.astype(v.dtype), v)
    scores = jnp.einsum("bqhd,brhd->bhqr", q, k_proj) / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
    weights = self.weights_dropout(normalize(scores), deterministic).astype(v.dtype)
    context = jnp.einsum("bhqr,brhd->bqhd", weights, v_proj)
    return self.project_out(context, inputs_q.shape[-1])
