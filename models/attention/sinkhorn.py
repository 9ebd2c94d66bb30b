"""Sparse Sinkhorn attention: blocks of keys softly sorted by a learned Sinkhorn permutation.

    blocks of b positions, N = ⌈T / b⌉;  e_k = Σ_{p ∈ block k} k_p            (block embeddings)
    R = W₂ relu(W₁ e + c₁) + c₂ ∈ R^{N×N}                                    (SortNet, per head)
    P = Sinkhorn((R + Gumbel noise) / τ)    (`sinkhorn_iters` row/column normalisations in
                                             log space: P is ≈ doubly stochastic)
    sorted block n:  k̃_{n,p} = Σ_k P_{kn} k_{k,p},   ṽ_{n,p} = Σ_k P_{kn} v_{k,p}
    out_i = softmax over [own block's keys ; sorted block's keys] (q_i·k / √d) · [v ; ṽ]

Tay et al. 2020, "Sparse Sinkhorn Attention" (Sinkhorn attention + the local block, as in the
paper). As in the authors' implementation, SortNet reads each head's block-summed keys and
predicts logits over `max_length / b` target blocks, cut to N. Gumbel noise is added only in
training calls (`deterministic=False`) that carry an `attention` rng.
Causal: query block n sorts only earlier blocks, P_{kn} = softmax_{k<n}(R_{kn} / τ), and its
own block is causally masked. Full Sinkhorn balancing would let later blocks change earlier
columns through the row sums, so causal mode normalises over the past blocks only (one
column normalisation); block 0 has no sorted block.
Cost: O(T · 2b · d + N² b d) time, O(T · 2b + N²) memory. Self-attention only; key-padding
masks only (padded keys are zeroed before sorting and excluded from the block embeddings).
Weights are sown as the equivalent dense matrix (own block + P-weighted sorted keys) only when
`intermediates` is mutable; the sort matrix P as `diagnostics/sort_matrix` `[B, H, N, N]` when
that collection is.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.attention import _blocks, cost
from models.attention.base import NEG_INF, default_kernel_init
from models.attention.registry import register


def sinkhorn(
  logits: jnp.ndarray, iters: int, allowed: jnp.ndarray | None = None, rows: bool = True
) -> jnp.ndarray:
  """Sinkhorn normalisation in log space over the last two axes `[..., N, N]`: rows (unless
  `rows` is False), then columns, `iters` times (the last step makes every column sum to 1).
  Entries not `allowed` are 0; a column with no allowed entry stays 0."""
  x = logits.astype(jnp.float32)
  if allowed is not None:
    x = jnp.where(allowed, x, NEG_INF)
  for _ in range(iters):
    if rows:
      x = x - jax.nn.logsumexp(x, axis=-1, keepdims=True)
    x = x - jax.nn.logsumexp(x, axis=-2, keepdims=True)
  p = jnp.exp(x)
  return p if allowed is None else jnp.where(allowed, p, 0.0)


@register("sinkhorn")
class SinkhornAttention(_blocks.SparseSelfAttention):
  """Local block + a Sinkhorn-sorted block of keys per query block."""

  padding_invariant = False  # the blocks' sort mixes positions across blocks
  covers_sequence_field = "block_size"
  length_fields = ("max_length",)
  test_fields = {"block_size": 2, "max_length": 16}

  block_size: int = 64  # b
  max_length: int = 512  # longest sequence (SortNet predicts max_length / b target blocks)
  sinkhorn_iters: int = 7
  temperature: float = 0.75  # τ

  @classmethod
  def forward_flops(cls, s, f):
    """Own block and one softly sorted block per query block; P (N x N) mixes key/value blocks."""
    blk = min(f["block_size"], s.length)
    n = -(-s.length // blk)
    sort = 2 * 2.0 * s.batch * s.heads * n * n * blk * s.head_dim  # sorted keys and values
    return cost.proj(s, 4) + cost.dense(s, n * blk * 2 * blk) + sort

  def context(self, q, k, v, valid, deterministic):
    """Scaled queries, keys, values `[B, T, H, D]`, key validity `[B, T]` -> `[B, T, H, D]`."""
    b, t, h, d = q.shape
    if t > self.max_length:
      raise ValueError(f"sinkhorn: length {t} > max_length={self.max_length}")
    bs = max(1, min(self.block_size, t))
    n = -(-t // bs)
    max_blocks = -(-self.max_length // bs)
    vb = _blocks.split_blocks(valid, bs)  # [B, N, b]
    keep = vb[..., None, None].astype(k.dtype)
    qb = _blocks.split_blocks(q, bs)  # [B, N, b, H, D]
    kb, vvb = (_blocks.split_blocks(x, bs) * keep for x in (k, v))

    # SortNet on block embeddings -> P [B, H, N_source, N_target].
    hidden = nn.relu(self.sort_dense(d, ("kv", None), "sort_hidden")(kb.sum(axis=2)))
    logits = self.sort_dense(max_blocks, ("kv", None), "sort_out")(hidden)[..., :n]
    logits = jnp.moveaxis(logits.astype(jnp.float32), 2, 1)  # [B, H, N, N]
    if not deterministic and self.has_rng("attention"):
      logits = logits + jax.random.gumbel(self.make_rng("attention"), logits.shape)
    logits = logits / self.temperature
    if self.causal:
      past = jnp.asarray(np.tril(np.ones((n, n), bool), -1).T)  # source k < target n
      perm = sinkhorn(logits, 1, past, rows=False)  # softmax over the earlier blocks
    else:
      perm = sinkhorn(logits, self.sinkhorn_iters)
    if not self.is_initializing():  # (init would store it with the variables)
      self.sow("diagnostics", "sort_matrix", perm)

    sk, sv = (jnp.einsum("bhkn,bkphd->bnphd", perm.astype(x.dtype), x) for x in (kb, vvb))
    sorted_ok = jnp.einsum("bhkn,bkp->bnhp", perm, vb.astype(jnp.float32)) > 0  # [B, N, H, b]
    own_scores = jnp.einsum("bnqhd,bnkhd->bnhqk", qb, kb)
    own_ok = vb[:, :, None, None, :]
    if self.causal:
      own_ok = own_ok & jnp.tril(jnp.ones((bs, bs), bool))
    sorted_scores = jnp.einsum("bnqhd,bnkhd->bnhqk", qb, sk)
    own_w, sorted_w = _blocks.joint_softmax(
      (own_scores, own_ok), (sorted_scores, sorted_ok[:, :, :, None, :])
    )

    if self.is_mutable_collection("intermediates"):
      eye = jnp.eye(n, dtype=own_w.dtype)
      dense = jnp.einsum("bnhqp,nk->bhnqkp", own_w, eye)
      dense = dense + jnp.einsum("bnhqp,bhkn->bhnqkp", sorted_w, perm.astype(own_w.dtype))
      dense = dense.reshape(b, h, n * bs, n * bs)[:, :, :t, :t] * valid[:, None, None, :]
      self.sow("intermediates", "attention_weights", dense)
    own_w = self.weights_dropout(own_w, deterministic).astype(v.dtype)
    sorted_w = self.weights_dropout(sorted_w, deterministic).astype(v.dtype)
    context = jnp.einsum("bnhqk,bnkhd->bnqhd", own_w, vvb)
    context = context + jnp.einsum("bnhqk,bnkhd->bnqhd", sorted_w, sv)
    return context.reshape(b, n * bs, h, d)[:, :t]

  def sort_dense(self, features: int, axes: tuple, name: str) -> nn.DenseGeneral:
    return nn.DenseGeneral(
      features=features,
      use_bias=self.use_bias,
      dtype=jnp.float32,
      param_dtype=self.param_dtype,
      kernel_init=nn.with_logical_partitioning(default_kernel_init(), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
      name=name,
    )
