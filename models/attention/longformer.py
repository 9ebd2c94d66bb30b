"""Longformer: sliding-window attention plus a few global tokens that see and are seen by all.

    local query i:   out_i = Σ_{j ∈ N(i) ∪ G} softmax_j(q_i·k_j / √d) v_j,  N(i) = {|i − j| <= w}
    global query i:  out_i = Σ_{all j} softmax_j(q_i·k_j / √d) v_j,          G = {0, ..., g − 1}

(causal: only j <= i in both). Beltagy et al. 2020, "Longformer: The Long-Document Transformer".
The global tokens are the first `global_tokens` positions (e.g. 1 for a CLS token). The window
part is the blocked band of `sliding_window` (`_blocks.py`); every query adds the g global keys
outside its band to the same softmax, and the g global queries attend to every key densely.
The global part reuses the shared query/key/value projections (the paper learns separate ones).
Cost: O(T (3w + g) d + g T d) time, O(T (3w + g)) memory. Self-attention only; key-padding masks
only. Weights are sown (scattered to `[B, H, T, T]`) only when `intermediates` is mutable.
"""

import jax.numpy as jnp

from models.attention import _blocks, cost
from models.attention.base import normalize
from models.attention.registry import register


@register("longformer")
class LongformerAttention(_blocks.SparseSelfAttention):
  """Banded attention within `window` plus `global_tokens` leading tokens with full attention."""

  covers_sequence_field = "window"
  test_fields = {"window": 1, "global_tokens": 1}

  window: int = 128  # keys at distance <= window on each side (causal: to the left)
  global_tokens: int = 1  # the first g positions attend everywhere and are attended by all

  @classmethod
  def forward_flops(cls, s, f):
    """The band plus the g global keys for every query, and the g global queries: all keys."""
    w, g = f["window"], f["global_tokens"]
    return cost.proj(s, 4) + cost.banded(s, w, g) + cost.dense(s, g * s.length)

  def context(self, q, k, v, valid, deterministic):
    """Scaled queries, keys, values `[B, T, H, D]`, key validity `[B, T]` -> `[B, T, H, D]`."""
    b, t, h, d = q.shape
    g = max(0, min(self.global_tokens, t))
    sow = self.is_mutable_collection("intermediates")

    # Every query: its band (blocked) and the global keys outside the band, in one softmax.
    scores, allowed, w = _blocks.band_scores(q, k, valid, self.window, self.causal)
    n = scores.shape[1]
    qp = _blocks.pad_time(q, w)  # [B, nb*w, H, D]
    i, j = jnp.arange(n * w)[:, None], jnp.arange(g)[None, :]
    extra = ~_blocks.in_band(i, j, self.window, self.causal)  # not already in the band
    if self.causal:
      extra &= j <= i
    extra = extra[None] & valid[:, None, :g]  # [B, nb*w, g]
    g_scores = jnp.einsum("bqhd,bkhd->bhqk", qp, k[:, :g]).reshape(b, h, n, w, g)
    scores = jnp.concatenate([scores, jnp.moveaxis(g_scores, 2, 1)], axis=-1)
    allowed = jnp.concatenate(
      [jnp.broadcast_to(allowed, (b, n, 1, w, allowed.shape[-1])), extra.reshape(b, n, 1, w, g)],
      axis=-1,
    )
    weights = normalize(scores, allowed)  # [B, nb, H, w, S + g]
    # The global queries: every key.
    row_mask = valid[:, None, None, :]
    if self.causal:
      row_mask = row_mask & (jnp.arange(t)[None, :] <= jnp.arange(g)[:, None])[None, None]
    row_weights = normalize(jnp.einsum("bqhd,bkhd->bhqk", q[:, :g], k), row_mask)  # [B,H,g,T]

    if sow:
      s = weights.shape[-1] - g
      dense = _blocks.band_to_dense(weights[..., :s], t, w)
      cols = jnp.moveaxis(weights[..., s:], 1, 2).reshape(b, h, n * w, g)[:, :, :t]
      dense = dense.at[..., :g].add(cols).at[:, :, :g].set(row_weights)
      self.sow("intermediates", "attention_weights", dense)
    weights = self.weights_dropout(weights, deterministic)
    row_weights = self.weights_dropout(row_weights, deterministic)
    s = weights.shape[-1] - g
    context = _blocks.band_context(weights[..., :s], v, w, self.causal)
    g_weights = jnp.moveaxis(weights[..., s:], 1, 2).reshape(b, h, n * w, g)[:, :, :t]
    context = context + jnp.einsum("bhqk,bkhd->bqhd", g_weights.astype(v.dtype), v[:, :g])
    rows = jnp.einsum("bhqk,bkhd->bqhd", row_weights.astype(v.dtype), v)
    return context.at[:, :g].set(rows)
