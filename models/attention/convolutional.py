"""Convolutional attention: the score of key j convolves the paired features around j.

    p_ij = [x_q_i ; x_kv_j] · m_ij                 (paired features; m_ij = may query i see key j)
    e_ij = vᵀ tanh(Σ_{r=0}^{K-1} W_c[r] p_{i, j + r - ⌊(K-1)/2⌋} + b)    (zero outside 0..Tk-1)

i.e. a 1-D convolution W_c of width K (`kernel_size`) along key positions over the paired
features of each query, scored by a learned v per head. Convolutional attention over the source
conditioned on the decoder state follows Allamanis, Peng, Sutton 2016, "A Convolutional Attention
Network for Extreme Summarization of Source Code" (there the convolved source features are gated
by the state; here the state is paired with each key before the convolution, as in the
equation).

Pairs that the mask hides are zeroed before the convolution, so hidden keys (padding, the future
under `causal`) cannot leak into their neighbours' scores. Since x_q_i is the same along j, W_c
splits into a query part, summed over the visible taps, and a key part: the paired tensor
`[B, Tq, Tk, Dq + Dkv]` is never formed.

Cost: O(Tq Tk K d) time, O(Tq Tk (K + d)) memory per head group (the convolution output is
formed for every query-key pair).
"""

import flax.linen as nn
import jax.numpy as jnp

from models.attention import cost, masks
from models.attention._scores import ScoredAttention, energy_vector, head_param
from models.attention.base import KeysValues
from models.attention.registry import register


def pad_for_taps(x: jnp.ndarray, width: int, axis: int) -> jnp.ndarray:
  """Zero-pads `axis` so that slice r of length n holds x[j + r - (width - 1) // 2]."""
  left = (width - 1) // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (left, width - 1 - left)
  return jnp.pad(x, pad)


@register("convolutional")
class ConvolutionalAttention(ScoredAttention):
  """vᵀ tanh of a width-`kernel_size` convolution along keys over [query; key] pairs."""

  projects_keys = False  # the keys enter through `key_conv` (prepared: `key_part`)
  test_fields = {"kernel_size": 3}

  kernel_size: int = 3

  @classmethod
  def forward_flops(cls, s, f):
    """W_c's query and key parts, the K taps summed for every pair, then vᵀ tanh and w v."""
    k, e = f["kernel_size"], s.width
    convs = 2 * 2.0 * s.batch * s.length * e * k * e  # query and key parts of W_c
    taps = 2 * 2.0 * cost.elements(s) * s.length * k  # summing the K taps for every pair
    return cost.proj(s, 2) + convs + taps + cost.dense(s)  # + vᵀ tanh, w v

  def conv_kernel(self, name: str, features: int, head_dim: int) -> jnp.ndarray:
    """W_c's query or key part `[K, features, H, Dh]`."""
    return head_param(
      self,
      name,
      (self.kernel_size, features, self.num_heads, head_dim),
      (None, "embed", "heads", "kv"),
      (0, 1),
      (2, 3),
    )

  def prepare_kv(
    self, inputs_kv: jnp.ndarray, inputs_q: jnp.ndarray | None
  ) -> dict[str, jnp.ndarray]:
    """The values and the key part of the convolution, shifted per tap `[B, Tk, K, H, Dh]`."""
    out = super().prepare_kv(inputs_kv, inputs_q)
    _, head_dim = self.features(inputs_q)
    width, kv_len = self.kernel_size, inputs_kv.shape[1]
    w_k = self.conv_kernel("key_conv", inputs_kv.shape[-1], head_dim)
    key_part = jnp.einsum("bje,rehd->bjrhd", jnp.asarray(inputs_kv, self.dtype), w_k)
    padded = pad_for_taps(key_part, width, axis=1)
    # key_shifted[b, j, r] = key_part[b, j + r - c, r] (0 outside the sequence)
    out["key_shifted"] = jnp.stack([padded[:, r : r + kv_len, r] for r in range(width)], axis=2)
    return out

  def scores(self, inputs_q: jnp.ndarray, kv: KeysValues, mask: jnp.ndarray | None) -> jnp.ndarray:
    _, head_dim = self.features(inputs_q)
    heads, width = self.num_heads, self.kernel_size
    batch, q_len, kv_len = inputs_q.shape[0], inputs_q.shape[1], kv.length
    w_q = self.conv_kernel("query_conv", inputs_q.shape[-1], head_dim)
    v = energy_vector(self, heads, head_dim)

    visible = jnp.ones((1, 1, q_len, kv_len), self.dtype) if mask is None else masks.as_4d(mask)
    visible = jnp.broadcast_to(visible, (batch, heads, q_len, kv_len)).astype(self.dtype)
    padded = pad_for_taps(visible, width, axis=3)
    # taps[b, h, i, j, r]: may query i see key j + r - c (0 outside the sequence)
    taps = jnp.stack([padded[..., r : r + kv_len] for r in range(width)], axis=-1)

    x_q = jnp.asarray(inputs_q, self.dtype)
    query_part = jnp.einsum("bte,rehd->btrhd", x_q, w_q)  # [B, Tq, K, H, Dh]
    hidden = jnp.einsum("bhtjr,btrhd->bhtjd", taps, query_part)
    hidden = hidden + jnp.einsum("bhtjr,bjrhd->bhtjd", taps, kv.cache["key_shifted"])
    if self.use_bias:
      bias = self.param(
        "conv_bias",
        nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")),
        (heads, head_dim),
        self.param_dtype,
      )
      hidden = hidden + jnp.asarray(bias, self.dtype)[None, :, None, None, :]
    return jnp.einsum("bhtjd,hd->bhtj", jnp.tanh(hidden), v)
