"""Sliding-window (local) attention, computed in blocks: query i sees keys with |i − j| <= w.

    out_i = Σ_{|i−j| <= w} softmax_j(q_i·k_j / √d) v_j          (causal: i − w <= j <= i)

The local attention of Longformer (Beltagy et al. 2020, "Longformer: The Long-Document
Transformer"; also Parmar et al. 2018, "Image Transformer", and Child et al. 2019's local
pattern). The sequence is padded to a multiple of w and cut into blocks of w positions; each
query block attends to its own and the neighbouring key blocks (3w keys; causal: its own and the
previous one, 2w) with a band mask (`_blocks.py`), so nothing of size T² is formed.
Cost: O(T · 3w · d) time, O(T · 3w) memory (causal 2w). Self-attention only; key-padding masks
only. The weights are sown (scattered to `[B, H, T, T]`) only when `intermediates` is mutable;
dropout drops the banded weights.
"""

from models.attention import _blocks, cost
from models.attention.base import normalize
from models.attention.registry import register


@register("sliding_window")
class SlidingWindowAttention(_blocks.SparseSelfAttention):
  """Banded softmax attention over keys within `window` positions, in blocks of `window`."""

  covers_sequence_field = "window"
  test_fields = {"window": 2}

  window: int = 128  # keys at distance <= window on each side (causal: to the left)

  @classmethod
  def forward_flops(cls, s, f):
    """Each block of `window` queries against 3 (causal 2) blocks of keys."""
    return cost.proj(s, 4) + cost.banded(s, f["window"])

  def context(self, q, k, v, valid, deterministic):
    """Scaled queries, keys, values `[B, T, H, D]`, key validity `[B, T]` -> `[B, T, H, D]`."""
    t = q.shape[1]
    scores, allowed, w = _blocks.band_scores(q, k, valid, self.window, self.causal)
    weights = normalize(scores, allowed)  # [B, nb, H, w, S]
    if self.is_mutable_collection("intermediates"):
      self.sow("intermediates", "attention_weights", _blocks.band_to_dense(weights, t, w))
    weights = self.weights_dropout(weights, deterministic)
    return _blocks.band_context(weights, v, w, self.causal)
