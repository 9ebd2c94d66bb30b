"""BigBird: block-sparse attention to global, sliding and random blocks.

    out_i = Σ_{j ∈ A(i)} softmax_j(q_i·k_j / √d) v_j,
    A(i) = G ∪ W(i) ∪ R(i)   for a query i in block n (blocks of b positions):
      G    the first g blocks (`num_global_blocks`): every query sees them, and their queries
           see every key,
      W(i) the w blocks around n (`num_window_blocks`; w = 3: n − 1, n, n + 1),
      R(i) r random blocks (`num_random_blocks`), drawn per head and query block among the
           blocks in neither G nor W,
    (causal: only j <= i; the window keeps its left half, random blocks lie before it).

Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences" (the ITC variant: existing
tokens made global). Computed blockwise: each query block gathers its K = g + w + r key blocks
(a block already in the set is masked, so no key counts twice) and the g·b global queries attend
densely. The random pattern is fixed per layer (drawn with numpy from `seed` and the layer's
path when the call is traced, as in the reference implementation), so every call and the
tests can rebuild it (`block_pattern`).
Cost: O(T (g + w + r) b d + g b T d) time, O(T (g + w + r) b + g b T) memory. Self-attention
only; key-padding masks only. Weights are sown (scattered to `[B, H, T, T]`) only when
`intermediates` is mutable.
"""

import jax.numpy as jnp
import numpy as np

from models.attention import _blocks, cost
from models.attention.base import normalize
from models.attention.registry import register


def block_pattern(
  num_blocks: int,
  num_heads: int,
  num_global: int,
  num_window: int,
  num_random: int,
  causal: bool,
  seed: int,
) -> tuple[np.ndarray, np.ndarray]:
  """The key blocks of every (head, query block): indices `[H, nb, K]` and whether each slot
  is used `[H, nb, K]` (False: outside the sequence, already in the set, or after the query
  block when causal). K = g + w' + r, w' the window's blocks (causal: its left half + own)."""
  g = min(num_global, num_blocks)
  left = (num_window - 1) // 2
  right = 0 if causal else num_window // 2
  size = g + left + 1 + right + num_random
  idx = np.zeros((num_heads, num_blocks, size), np.int32)
  ok = np.zeros((num_heads, num_blocks, size), bool)
  rng = np.random.default_rng(seed)
  for h in range(num_heads):
    for n in range(num_blocks):
      window = list(range(n - left, n + right + 1))
      chosen = []
      if n >= g:  # global query blocks see everything already
        taken = set(range(g)) | set(window)
        last = n - left if causal else num_blocks
        pool = [j for j in range(g, last) if j not in taken]
        if pool:
          chosen = list(rng.choice(pool, size=min(num_random, len(pool)), replace=False))
      seen: set[int] = set()
      for s, j in enumerate(list(range(g)) + window + chosen):
        if 0 <= j < num_blocks and j not in seen and (not causal or j <= n):
          seen.add(j)
          idx[h, n, s], ok[h, n, s] = j, True
  return idx, ok


@register("bigbird")
class BigBirdAttention(_blocks.SparseSelfAttention):
  """Global + sliding-window + random block-sparse attention, computed blockwise."""

  test_fields = {"block_size": 2, "num_global_blocks": 1, "num_random_blocks": 1}

  block_size: int = 64  # b
  num_global_blocks: int = 1  # g: the first g blocks are global
  num_window_blocks: int = 3  # w: blocks around the query's (odd: n − w//2 .. n + w//2)
  num_random_blocks: int = 3  # r: random key blocks per query block and head
  seed: int = 0  # of the random pattern (with the layer's path)

  @classmethod
  def forward_flops(cls, s, f):
    """Each query block: K = global + window + random key blocks; the global queries: all keys."""
    blk, g = f["block_size"], f["num_global_blocks"]
    k = g + f["num_window_blocks"] + f["num_random_blocks"]
    padded = -(-s.length // blk) * blk
    blocks = cost.dense(s, padded * min(k * blk, s.length))
    return cost.proj(s, 4) + blocks + cost.dense(s, g * blk * s.length)

  def context(self, q, k, v, valid, deterministic):
    """Scaled queries, keys, values `[B, T, H, D]`, key validity `[B, T]` -> `[B, T, H, D]`."""
    b, t, h, d = q.shape
    bs = max(1, min(self.block_size, t))
    nb = -(-t // bs)
    idx, ok = block_pattern(
      nb,
      h,
      self.num_global_blocks,
      self.num_window_blocks,
      self.num_random_blocks,
      self.causal,
      _blocks.layer_seed(self, self.seed),
    )
    k_pos = (idx[..., None] * bs + np.arange(bs)).reshape(h, nb, -1)  # [H, nb, S]
    slot_ok = np.repeat(ok, bs, axis=-1)  # [H, nb, S]
    q_pos = np.arange(nb * bs).reshape(nb, bs)

    # Every query block against its gathered key blocks.
    kg = _blocks.gather_time(_blocks.pad_time(k, bs), k_pos)  # [B, nb, H, S, D]
    vg = _blocks.gather_time(_blocks.pad_time(v, bs), k_pos)
    scores = jnp.einsum("bnqhd,bnhsd->bnhqs", _blocks.split_blocks(q, bs), kg)
    key_ok = jnp.moveaxis(_blocks.pad_time(valid, bs)[:, k_pos], 1, 2)  # [B, nb, H, S]
    pattern = slot_ok[:, :, None, :]  # [H, nb, 1, S]
    if self.causal:
      pattern = pattern & (k_pos[:, :, None, :] <= q_pos[None, :, :, None])  # [H, nb, bs, S]
    allowed = key_ok[:, :, :, None, :] & jnp.asarray(np.moveaxis(pattern, 0, 1))[None]
    weights = normalize(scores, allowed)  # [B, nb, H, bs, S]

    # The global queries (causal: they see only the global blocks, already in their set).
    rows = 0 if self.causal else min(self.num_global_blocks * bs, t)
    if rows:
      row_scores = jnp.einsum("bqhd,bkhd->bhqk", q[:, :rows], k)
      row_weights = normalize(row_scores, valid[:, None, None, :])  # [B, H, rows, T]

    if self.is_mutable_collection("intermediates"):
      flat = jnp.moveaxis(weights, 2, 1).reshape(b, h, nb * bs, -1)
      key_at = np.broadcast_to(k_pos[:, :, None, :], (h, nb, bs, k_pos.shape[-1]))
      dense = _blocks.scatter_dense(
        flat, q_pos.reshape(-1, 1), key_at.reshape(h, nb * bs, -1), t, t
      )
      if rows:
        dense = dense.at[:, :, :rows].set(row_weights)
      self.sow("intermediates", "attention_weights", dense)
    weights = self.weights_dropout(weights, deterministic)
    context = jnp.einsum("bnhqs,bnhsd->bnqhd", weights.astype(v.dtype), vg)
    context = context.reshape(b, nb * bs, h, d)[:, :t]
    if rows:
      row_weights = self.weights_dropout(row_weights, deterministic)
      rows_context = jnp.einsum("bhqk,bkhd->bqhd", row_weights.astype(v.dtype), v)
      context = context.at[:, :rows].set(rows_context)
    return context
