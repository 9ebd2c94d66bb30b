"""Luong local attention: a Gaussian-weighted window of width 2D + 1 around an aligned position.

    monotonic:   p_i = i                                   (the query's index in the call)
    predictive:  p_i = S · sigmoid(v_pᵀ tanh(W_p q_i))      (S = number of visible keys)
    a_ij = softmax_{j ∈ [p_i - D, p_i + D]}(e_ij / τ) · exp(-(j - p_i)² / (2σ²)),   σ = D / 2

Luong, Pham, Manning 2015, "Effective Approaches to Attention-based Neural Machine Translation".
e_ij is one of Luong's scores (`score`: dot, general or additive, shared with those types through
`_scores.SCORES`); keys outside the window are masked, and the Gaussian is applied to the
softmax weights without renormalising (as in the paper), so the predictive p_i gets gradients.

Monotonic p_i = i also for cross attention (no S/T rescaling): the paper's choice for roughly
aligned sequences, and it keeps a query's window independent of how much padding follows the
keys. It uses the query's index within the call, so a decoder stepping one query at a time should
use `predictive`. S counts the keys that the caller's mask lets some query see (the unpadded
source length; causality does not shorten it).

Cost, as implemented (dense scores, then the window mask): O(Tq Tk d) time, O(Tq Tk) memory per
head (the weights are kept dense so they can be sown as `[B, H, Tq, Tk]`); the algorithm needs
only O(Tq D d).
"""

import jax
import jax.numpy as jnp

from models.attention import cost, masks
from models.attention._scores import ScoredAttention, head_param, score_flops, score_fn
from models.attention.base import KeysValues, normalize
from models.attention.registry import register

MODES = ("monotonic", "predictive")


@register("local")
class LocalAttention(ScoredAttention):
  """Luong local-m / local-p attention with a Gaussian window."""

  covers_sequence_field = "window"
  test_fields = {"mode": "predictive", "window": 2, "score": "additive"}

  mode: str = "predictive"  # monotonic | predictive
  window: int = 8  # D: keys p_i - D .. p_i + D are visible, σ = D / 2
  score: str = "general"  # dot | general | additive

  @classmethod
  def forward_flops(cls, s, f):
    """The dense count with the `score`'s extra, plus W_p q of the position predictor (local-p)."""
    predictor = 2.0 * cost.elements(s) * s.head_dim if f["mode"] == "predictive" else 0.0
    return super().forward_flops(s, f) + score_flops(s, f["score"]) + predictor

  def weights(
    self,
    inputs_q: jnp.ndarray,
    kv: KeysValues,
    mask: jnp.ndarray | None,
    input_mask: jnp.ndarray | None,
  ) -> jnp.ndarray:
    if self.mode not in MODES:
      raise ValueError(f"local attention: mode={self.mode!r}; valid: {', '.join(MODES)}")
    if self.window < 1:
      raise ValueError(f"local attention: window={self.window} must be >= 1")
    q, k = self.project(inputs_q, kv)
    scores = score_fn(self.score)(self, q, k)  # [B, H, Tq, Tk]
    centre = self.centres(q, input_mask, k.shape[1])  # [B|1, H|1, Tq]
    offset = jnp.arange(k.shape[1], dtype=jnp.float32) - centre[..., None]
    in_window = jnp.abs(offset) <= self.window
    w = normalize(scores, masks.combine(mask, in_window), self.temperature, self.top_k)
    sigma = self.window / 2.0
    return (w * jnp.exp(-jnp.square(offset) / (2.0 * sigma**2))).astype(w.dtype)

  def centres(self, q: jnp.ndarray, input_mask: jnp.ndarray | None, kv_len: int) -> jnp.ndarray:
    """Aligned source positions p `[B|1, H|1, Tq]` (float32) of queries `[B, Tq, H, Dh]`; S
    counts the keys that the caller's mask (not causality) lets some query see."""
    q_len, heads, head_dim = q.shape[1], q.shape[2], q.shape[3]
    if self.mode == "monotonic":
      return jnp.arange(q_len, dtype=jnp.float32)[None, None]
    w_p = head_param(
      self, "position", (heads, head_dim, head_dim), ("heads", "kv", None), (1,), (2,), (0,)
    )
    v_p = head_param(self, "position_energy", (heads, head_dim), ("heads", "kv"), (1,), (), (0,))
    hidden = jnp.tanh(jnp.einsum("bqhd,hde->bqhe", q, w_p))
    gate = jax.nn.sigmoid(jnp.einsum("bqhe,he->bhq", hidden, v_p).astype(jnp.float32))
    if input_mask is None:
      lengths = jnp.full((1,), kv_len, jnp.float32)
    else:
      visible = masks.as_4d(input_mask)
      visible = jnp.broadcast_to(visible, visible.shape[:3] + (kv_len,))  # its Tk may be 1
      lengths = jnp.sum(jnp.any(visible, axis=(1, 2)), axis=-1).astype(jnp.float32)
    return lengths[:, None, None] * gate
