"""Luong et al. 2015's global attention: the `dot`, `general` and `location` scores.

Luong, Pham, Manning 2015, "Effective Approaches to Attention-based Neural Machine Translation".
With per-head projections q = W_q x_q, k = W_k x_kv `[B, T, H, Dh]`:

    dot:       e_ij = q_iᵀ k_j
    general:   e_ij = q_iᵀ W k_j                       (one W `[Dh, Dh]` per head)
    location:  e_i  = W_a x_q_i + b_a ∈ R^max_length   (keys are not read; positions ≥ Tk dropped)

then w = softmax(e / τ) over the allowed keys and out = W_o Σ_j w_ij W_v x_kv_j.

Cost: dot/general O(Tq Tk d) time, O(Tq Tk) memory per head; location O(Tq L d) time
(L = max_length) and O(Tq Tk) memory. The scores themselves are shared with `local` (`_scores.py`).
"""

import flax.linen as nn
import jax.numpy as jnp

from models.attention import cost
from models.attention._scores import ScoredAttention, dot_scores, general_scores, score_flops
from models.attention.base import KeysValues, default_kernel_init
from models.attention.registry import register


@register("dot")
class DotAttention(ScoredAttention):
  """Luong dot score e = qᵀk on per-head projections (unscaled, unlike `scaled_dot`)."""

  def scores(self, inputs_q: jnp.ndarray, kv: KeysValues, mask: jnp.ndarray | None) -> jnp.ndarray:
    return dot_scores(self, *self.project(inputs_q, kv))


@register("general")
class GeneralAttention(ScoredAttention):
  """Luong general (bilinear) score e = qᵀ W k."""

  @classmethod
  def forward_flops(cls, s, f):
    """The dense count plus q W per head."""
    return super().forward_flops(s, f) + score_flops(s, "general")

  def scores(self, inputs_q: jnp.ndarray, kv: KeysValues, mask: jnp.ndarray | None) -> jnp.ndarray:
    return general_scores(self, *self.project(inputs_q, kv))


@register("location")
class LocationAttention(ScoredAttention):
  """Luong location score: a_i = softmax(W_a x_q_i) over source positions 0..Tk-1.

  `max_length` bounds the key length; positions beyond the actual key length are cut off, and
  padded keys are hidden by the mask like for every type.
  """

  projects_keys = False  # the scores do not read the keys
  length_fields = ("max_length",)
  test_fields = {"max_length": 16}

  max_length: int = 512

  @classmethod
  def forward_flops(cls, s, f):
    """W_a x_q -> max_length scores per head (no key projection), then w v."""
    ell = f["max_length"]
    return cost.proj(s, 2) + 2.0 * s.batch * s.length * s.width * s.heads * ell + cost.dense(s) / 2

  def scores(self, inputs_q: jnp.ndarray, kv: KeysValues, mask: jnp.ndarray | None) -> jnp.ndarray:
    kv_len = kv.length
    if kv_len > self.max_length:
      raise ValueError(f"location attention: key length {kv_len} > max_length={self.max_length}")
    e = nn.DenseGeneral(
      features=(self.num_heads, self.max_length),
      use_bias=self.use_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.with_logical_partitioning(default_kernel_init(), ("embed", "heads", "length")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "length")),
      name="location",
    )(inputs_q)  # [B, Tq, H, L]
    return jnp.transpose(e[..., :kv_len], (0, 2, 1, 3))
