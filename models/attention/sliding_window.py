"""Sliding-window (local) attention, computed in blocks: query i sees keys with |i − j| <= w.

    out_i = Σ_{|i−j| <= w} softmax_j(q_i·k_j / √d) v_j          (causal: i − w <= j <= i)

As in the local attention of Longformer (Beltagy et al. 2020, "Longformer: The Long-Document
Transformer") and Image Transformer (Parmar et al. 2018). The sequence is cut into blocks of w
positions; each query block attends to its own and the two neighbouring key blocks (3w keys)
with a band mask, so nothing of size T² is formed.
Cost: O(T · 3w · d) time, O(T · 3w) memory. Self-attention only; key-padding masks only.
"""

import flax.linen as nn
import jax.numpy as jnp

from models.attention import masks, register
from models.attention.base import Attention, normalize


def neighbour_blocks(x: jnp.ndarray, w: int) -> jnp.ndarray:
  """`[B, nb*w, ...]` -> `[B, nb, 3w, ...]`: for block i, blocks i−1, i, i+1 (zeros outside)."""
  b, t = x.shape[:2]
  blocks = x.reshape(b, t // w, w, *x.shape[2:])
  pad = [(0, 0), (1, 1)] + [(0, 0)] * (blocks.ndim - 2)
  padded = jnp.pad(blocks, pad)
  return jnp.concatenate([padded[:, :-2], padded[:, 1:-1], padded[:, 2:]], axis=2)


def band_attention(q, k, v, valid, window: int, causal: bool):
  """Blocked banded softmax attention. q, k, v `[B, T, H, D]`, valid `[B, T]` -> `[B, T, H, D]`."""
  b, t, h, d = q.shape
  w = max(1, min(window, t))
  pad = -t % w
  q, k, v = (jnp.pad(x, [(0, 0), (0, pad), (0, 0), (0, 0)]) for x in (q, k, v))
  valid = jnp.pad(valid, [(0, 0), (0, pad)])
  n = (t + pad) // w
  pos = jnp.arange(t + pad)
  q_pos = pos.reshape(n, w)
  k_pos = neighbour_blocks(pos[None], w)[0]  # [nb, 3w] (0 outside: masked by in_range)
  in_range = neighbour_blocks(jnp.ones((1, t + pad), bool), w)[0]
  offset = q_pos[:, :, None] - k_pos[:, None, :]  # [nb, w, 3w]
  allowed = in_range[:, None, :] & (jnp.abs(offset) <= window)
  if causal:
    allowed &= offset >= 0
  key_ok = neighbour_blocks(valid, w)  # [B, nb, 3w]
  allowed = allowed[None] & key_ok[:, :, None, :]  # [B, nb, w, 3w]
  qb = q.reshape(b, n, w, h, d) / jnp.sqrt(jnp.asarray(d, q.dtype))
  scores = jnp.einsum("bnqhd,bnkhd->bnhqk", qb, neighbour_blocks(k, w))
  weights = normalize(scores, allowed[:, :, None]).astype(v.dtype)
  out = jnp.einsum("bnhqk,bnkhd->bnqhd", weights, neighbour_blocks(v, w))
  return out.reshape(b, n * w, h, d)[:, :t]


@register("sliding_window")
class SlidingWindowAttention(Attention):
  supports_cross = False
  dense_mask = False

  window: int = 128  # keys at distance <= window on each side (causal: to the left)

  @nn.compact
  def __call__(self, inputs_q, inputs_kv=None, *, mask=None, deterministic=True):
    del deterministic
    if inputs_kv is not None and inputs_kv is not inputs_q:
      raise ValueError("sliding_window is self-attention only (inputs_kv must be None)")
    q, k, v = self.project_qkv(inputs_q, inputs_q)
    valid = masks.key_padding(mask, k.shape[1])
    valid = jnp.ones(k.shape[:2], bool) if valid is None else valid
    out = band_attention(q, k, v, valid, self.window, self.causal)
    return self.project_out(out, inputs_q.shape[-1])
