"""Recurrent attention: an LSTM reads the [query; key] pairs along the keys and scores each key.

    h_ij = LSTM([x_q_i ; x_kv_j], h_i,j-1)          (run over j = 0..Tk-1 for every query i)
    e_ij = vᵀ tanh(W_r h_ij + b_r)                   (per head: W_r `[hidden, Dh]`, v `[Dh]`)

A recurrent scoring function in the spirit of Rocktäschel, Grefenstette, Hermann, Kočiský,
Blunsom 2016, "Reasoning about Entailment with Neural Attention" (there the recurrence runs over
the queries; here, as in the equation, an LSTM runs over the keys, so each key's score depends on
the query and on the keys before it). The LSTM (`nn.RNN` over `nn.OptimizedLSTMCell`) runs
forwards, so the score of key j reads keys <= j only: causality needs no extra care, and keys
appended after the sequence (padding) cannot change earlier scores. Keys hidden by a mask in the
middle of the sequence are still read by the LSTM; only their scores are masked.

Cost: O(Tq Tk d²) time with Tk sequential LSTM steps (batched over B·Tq); O(Tq Tk d) memory.
"""

import flax.linen as nn
import jax.numpy as jnp

from models.attention import cost
from models.attention._scores import ScoredAttention, energy_vector
from models.attention.base import KeysValues
from models.attention.registry import register


@register("recurrent")
class RecurrentAttention(ScoredAttention):
  """LSTM over [query; key] pairs along the keys, scored by vᵀ tanh(W_r h)."""

  projects_keys = False  # the LSTM reads the raw keys, paired with each query
  test_fields = {"hidden_size": 8}

  hidden_size: int | None = None  # LSTM width; defaults to qkv_features

  @classmethod
  def forward_flops(cls, s, f):
    """Value and out projections, an LSTM step on [x_q; x_kv] per pair, W_r h, vᵀ tanh, w v."""
    e, hid = s.width, f["hidden_size"] or s.width
    pairs = s.batch * s.length * s.length
    lstm = pairs * 2.0 * (2 * e + hid) * 4 * hid  # an LSTM step on [x_q; x_kv] per pair
    return cost.proj(s, 2) + lstm + pairs * 2.0 * hid * e + cost.dense(s)  # + W_r h, vᵀ tanh, w v

  def scores(self, inputs_q: jnp.ndarray, kv: KeysValues, mask: jnp.ndarray | None) -> jnp.ndarray:
    qkv, head_dim = self.features(inputs_q)
    inputs_kv = kv.inputs
    batch, q_len, kv_len = inputs_q.shape[0], inputs_q.shape[1], inputs_kv.shape[1]
    pairs = jnp.concatenate(
      [
        jnp.broadcast_to(inputs_q[:, :, None], (batch, q_len, kv_len, inputs_q.shape[-1])),
        jnp.broadcast_to(inputs_kv[:, None], (batch, q_len, kv_len, inputs_kv.shape[-1])),
      ],
      axis=-1,
    ).astype(self.dtype)
    cell = nn.OptimizedLSTMCell(
      self.hidden_size or qkv, dtype=self.dtype, param_dtype=self.param_dtype, parent=None
    )
    hidden = nn.RNN(cell, name="lstm")(pairs.reshape(batch * q_len, kv_len, pairs.shape[-1]))
    hidden = hidden.reshape(batch, q_len, kv_len, hidden.shape[-1])
    projected = nn.DenseGeneral(
      features=(self.num_heads, head_dim),
      use_bias=self.use_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), (None, "heads", "kv")
      ),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")),
      name="recurrent_proj",
    )(hidden)  # [B, Tq, Tk, H, Dh]
    v = energy_vector(self, self.num_heads, head_dim)
    return jnp.einsum("bqkhd,hd->bhqk", jnp.tanh(projected), v)
