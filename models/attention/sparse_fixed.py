"""Sparse Transformer, "fixed" pattern: a query's own block of l positions plus summary columns.

    out_i = Σ_{j ∈ A(i)} softmax_j(q_i·k_j / √d) v_j,
    A(i) = {j : ⌊j / l⌋ = ⌊i / l⌋}  ∪  {j : j mod l ∈ {l − c, ..., l − 1}}
    (causal: only j <= i; l = `stride`, c = `num_summary`)

Child et al. 2019, "Generating Long Sequences with Sparse Transformers" (the fixed pattern, both
parts merged in every head). Computed blockwise: each query block of l positions scores its own
block (l keys) and the shared summary keys (the last c positions of every block, ⌈T/l⌉·c keys;
its own block's summaries are masked there, as they are in its block), in one softmax.
Cost: O(T (l + T c / l) d) time, O(T (l + T c / l)) memory: O(T √T) with l ≈ √T, c fixed.
Self-attention only; key-padding masks only. Weights are sown (scattered to `[B, H, T, T]`)
only when `intermediates` is mutable.
"""

import jax.numpy as jnp
import numpy as np

from models.attention import _blocks, cost
from models.attention.registry import register


@register("sparse_fixed")
class SparseFixedAttention(_blocks.SparseSelfAttention):
  """Own block (`stride` l) + the last `num_summary` positions of every block."""

  covers_sequence_field = "stride"
  test_fields = {"stride": 2, "num_summary": 1}

  stride: int = 128  # l: the block length
  num_summary: int = 8  # c: summary positions at the end of every block

  @classmethod
  def forward_flops(cls, s, f):
    """Own block of l keys plus the c summary keys of every block."""
    stride, c = min(f["stride"], s.length), f["num_summary"]
    n = -(-s.length // stride)
    return cost.proj(s, 4) + cost.dense(s, n * stride * (stride + n * min(c, stride)))

  def context(self, q, k, v, valid, deterministic):
    """Scaled queries, keys, values `[B, T, H, D]`, key validity `[B, T]` -> `[B, T, H, D]`."""
    b, t, h, d = q.shape
    l = max(1, min(self.stride, t))  # noqa: E741
    c = max(0, min(self.num_summary, l))
    qb, kb, vb = (_blocks.split_blocks(x, l) for x in (q, k, v))  # [B, nb, l, H, D]
    vab = _blocks.split_blocks(valid, l)  # [B, nb, l]
    nb = qb.shape[1]
    q_pos = np.arange(nb * l).reshape(nb, l)

    # Own block.
    own_scores = jnp.einsum("bnqhd,bnkhd->bnhqk", qb, kb)
    own_ok = vab[:, :, None, None, :]
    if self.causal:
      own_ok = own_ok & jnp.tril(jnp.ones((l, l), bool))
    # Summary columns: the last c positions of every block, shared by all query blocks.
    ks, vs = (x[:, :, l - c :].reshape(b, nb * c, h, d) for x in (kb, vb))
    s_pos = q_pos[:, l - c :].reshape(-1)  # [nb·c]
    sum_scores = jnp.einsum("bnqhd,bmhd->bnhqm", qb, ks)
    pattern = (s_pos // l)[None, :] != np.arange(nb)[:, None]  # not the own block [nb, nb·c]
    pattern = np.broadcast_to(pattern[:, None, :], (nb, l, nb * c))
    if self.causal:
      pattern = pattern & (s_pos[None, None, :] <= q_pos[:, :, None])
    sum_ok = vab[:, :, l - c :].reshape(b, 1, 1, 1, nb * c) & jnp.asarray(pattern)[None, :, None]
    own_w, sum_w = _blocks.joint_softmax((own_scores, own_ok), (sum_scores, sum_ok))

    if self.is_mutable_collection("intermediates"):
      weights = jnp.concatenate([own_w, sum_w], axis=-1)  # [B, nb, H, l, l + nb·c]
      k_pos = np.concatenate([q_pos, np.broadcast_to(s_pos, (nb, nb * c))], axis=-1)
      k_pos = np.broadcast_to(k_pos[:, None, :], (nb, l, k_pos.shape[-1])).reshape(nb * l, -1)
      flat = jnp.moveaxis(weights, 2, 1).reshape(b, h, nb * l, -1)
      dense = _blocks.scatter_dense(flat, q_pos.reshape(-1, 1), k_pos, t, t)
      self.sow("intermediates", "attention_weights", dense)
    own_w = self.weights_dropout(own_w, deterministic).astype(v.dtype)
    sum_w = self.weights_dropout(sum_w, deterministic).astype(v.dtype)
    context = jnp.einsum("bnhqk,bnkhd->bnqhd", own_w, vb)
    context = context + jnp.einsum("bnhqm,bmhd->bnqhd", sum_w, vs)
    return context.reshape(b, nb * l, h, d)[:, :t]
