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

import flax.linen as nn
import jax.numpy as jnp

from models.attention import _blocks, masks, register
from models.attention.base import Attention, normalize


def key_validity(mask: jnp.ndarray | None, length: int, batch: int) -> jnp.ndarray:
  """A key-padding mask `[B, 1, 1, T]` (or None) -> `[B, T]` booleans."""
  valid = masks.key_padding(mask, length)
  return jnp.ones((batch, length), bool) if valid is None else valid


def check_self_attention(name: str, inputs_q: jnp.ndarray, inputs_kv: jnp.ndarray | None) -> None:
  if inputs_kv is not None and inputs_kv is not inputs_q:
    raise ValueError(f"{name} is self-attention only (inputs_kv must be None)")


@register("sliding_window")
class SlidingWindowAttention(Attention):
  """Banded softmax attention over keys within `window` positions, in blocks of `window`."""

  supports_cross = False
  dense_mask = False

  window: int = 128  # keys at distance <= window on each side (causal: to the left)

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
    check_self_attention("sliding_window", inputs_q, inputs_kv)
    q, k, v = self.project_qkv(inputs_q, inputs_q)
    b, t, _, d = q.shape
    valid = key_validity(mask, t, b)
    q = q * jnp.asarray(d**-0.5, q.dtype)
    scores, allowed, w = _blocks.band_scores(q, k, valid, self.window, self.causal)
    weights = normalize(scores, allowed)  # [B, nb, H, w, S]
    if self.is_mutable_collection("intermediates"):
      self.sow("intermediates", "attention_weights", _blocks.band_to_dense(weights, t, w))
    weights = self.weights_dropout(weights, deterministic)
    context = _blocks.band_context(weights, v, w, self.causal)
    return self.project_out(context, inputs_q.shape[-1])
