"""Additive (concat) attention: e_ij = vᵀ tanh(W_q q_i + W_k k_j + b).

Bahdanau, Cho, Bengio 2015, "Neural Machine Translation by Jointly Learning to Align and
Translate" (Luong et al. 2015 call it `concat`). Per head: W_q, W_k `[D, Dh]` (the `query` and
`key` projections, the key bias is b), v `[Dh]`; w = softmax(e / τ) over the allowed keys,
out = W_o Σ_j w_ij W_v x_kv_j.

Cost: O(Tq Tk d) time and O(Tq Tk d) memory (tanh is taken for every query-key pair).
"""

import jax.numpy as jnp

from models.attention._scores import ScoredAttention, additive_scores, score_flops
from models.attention.base import KeysValues
from models.attention.registry import register


@register("additive")
class AdditiveAttention(ScoredAttention):
  """Bahdanau's additive score, one v per head."""

  @classmethod
  def forward_flops(cls, s, f):
    """The dense count plus q_i + k_j for every pair."""
    return super().forward_flops(s, f) + score_flops(s, "additive")

  def scores(self, inputs_q: jnp.ndarray, kv: KeysValues, mask: jnp.ndarray | None) -> jnp.ndarray:
    return additive_scores(self, *self.project(inputs_q, kv))
