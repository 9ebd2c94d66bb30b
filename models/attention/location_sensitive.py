"""Location-sensitive attention: the score also sees where the previous step attended.

    f_i  = F ∗ α_{i-1}                              (1-D convolution along key positions)
    e_ij = vᵀ tanh(W q_i + V k_j + U f_ij)          α_i = softmax(e_i / τ) over allowed keys

Chorowski, Bahdanau, Serdyuk, Cho, Bengio 2015, "Attention-Based Models for Speech Recognition".
Per head: W, V the `query`/`key` projections (`[D, Dh]`, the key bias is b), F `[K, num_filters]`
(`location_conv`), U `[num_filters, Dh]` (`location_proj`), v `[Dh]`. With `cumulative=True`
the convolution reads the running sum Σ_{i'<i} α_i' instead of α_{i-1} (Shen et al. 2018,
Tacotron 2).

State: the previous (or cumulative) alignment `[B, H, Tk]` is `attention_state/alignment`, the
mechanism documented in `base.py` (`init_state` resets it to zeros). When that collection is
mutable (and the model is not being initialised) a call starts from the stored alignment and
stores its last one, so a decoder can step one query at a time. Every call runs its queries in
order (`lax.scan`): query i reads the alignment of query i-1, the first reads the stored
alignment, or zeros. Stepping and the full call therefore agree.

Cost: O(Tq Tk (d + K·num_filters)) time; O(Tk d) memory per step, O(Tq Tk d) kept for the
backward pass; the queries run sequentially.
"""

import jax
import jax.numpy as jnp

from models.attention import cost, masks
from models.attention._scores import ScoredAttention, energy_vector, head_param
from models.attention.base import KeysValues, normalize
from models.attention.registry import register

STATE = "attention_state"


def conv_along_keys(alignment: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """Zero-padded 'same' 1-D convolution: `[B, H, Tk]`, per-head `[H, K, F]` -> `[B, H, Tk, F]`.

  out[b, h, j] = Σ_i alignment[b, h, j + i - (K - 1) // 2] · kernel[h, i].
  """
  width = kernel.shape[1]
  left = (width - 1) // 2
  padded = jnp.pad(alignment, ((0, 0), (0, 0), (left, width - 1 - left)))
  tk = alignment.shape[-1]
  windows = jnp.stack([padded[..., i : i + tk] for i in range(width)], axis=-1)  # [B, H, Tk, K]
  return jnp.einsum("bhjk,hkf->bhjf", windows, kernel)


@register("location_sensitive")
class LocationSensitiveAttention(ScoredAttention):
  """Chorowski et al.'s location-aware additive attention (state in `attention_state`)."""

  test_fields = {"num_filters": 3, "kernel_size": 3}

  num_filters: int = 8
  kernel_size: int = 5  # width of the convolution over the previous alignment
  cumulative: bool = False  # convolve the sum of all previous alignments

  @classmethod
  def forward_flops(cls, s, f):
    """Per pair: the convolution F * α, U f and two additions; then vᵀ tanh and w v."""
    k, nf, d = f["kernel_size"], f["num_filters"], s.head_dim
    per_pair = 2.0 * k * nf + 2.0 * nf * d + 2.0 * d + 2.0 * d  # F * α, U f, two additions
    pairs = s.batch * s.heads * s.length * s.length
    return cost.proj(s, 4) + pairs * per_pair + cost.dense(s)  # + vᵀ tanh, w v (in dense)

  def init_state(self, inputs_q: jnp.ndarray, inputs_kv: jnp.ndarray | None = None) -> None:
    """Zero alignment `[B, H, Tk]` in `attention_state` (a new sequence of steps)."""
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    if isinstance(inputs_kv, KeysValues):
      inputs_kv = inputs_kv.inputs
    if not self.is_mutable_collection(STATE):
      raise ValueError(
        "location_sensitive attention keeps its alignment in 'attention_state': apply the model "
        "with mutable=['attention_state'] when stepping"
      )
    shape = (inputs_kv.shape[0], self.num_heads, inputs_kv.shape[1])
    self.put_variable(STATE, "alignment", jnp.zeros(shape, jnp.float32))

  def weights(
    self,
    inputs_q: jnp.ndarray,
    kv: KeysValues,
    mask: jnp.ndarray | None,
    input_mask: jnp.ndarray | None,
  ) -> jnp.ndarray:
    q, k = self.project(inputs_q, kv)  # [B, T, H, Dh]
    batch, q_len, heads, head_dim = q.shape
    kv_len = k.shape[1]
    conv = head_param(
      self,
      "location_conv",
      (heads, self.kernel_size, self.num_filters),
      ("heads", None, None),
      (1,),
      (2,),
      (0,),
    )
    proj = head_param(
      self,
      "location_proj",
      (heads, self.num_filters, head_dim),
      ("heads", None, "kv"),
      (1,),
      (2,),
      (0,),
    )
    v = energy_vector(self, heads, head_dim)

    shape = (batch, heads, kv_len)
    state = None
    initial = jnp.zeros(shape, jnp.float32)
    if self.is_mutable_collection(STATE):  # created (zeros) at init, so decoders can carry it
      state = self.variable(STATE, "alignment", jnp.zeros, shape, jnp.float32)
      if self.is_initializing():
        state = None
      elif state.value.shape != shape:
        raise ValueError(
          f"attention_state/alignment has shape {state.value.shape}, this call needs {shape}: "
          "call init_state at the start of each sequence"
        )
      else:
        initial = state.value

    keys = jnp.transpose(k, (0, 2, 1, 3))  # [B, H, Tk, Dh]
    step_masks = None
    if mask is not None:
      m = masks.as_4d(mask)
      m = jnp.broadcast_to(m, m.shape[:2] + (q_len, kv_len))
      step_masks = jnp.moveaxis(m, 2, 0)  # [Tq, B|1, H|1, Tk]

    def step(previous, xs):  # previous: α_{i-1} or Σ α_{<i} `[B, H, Tk]`
      q_i, mask_i = xs  # [B, H, Dh], [B|1, H|1, Tk]
      location = jnp.einsum("bhjf,hfd->bhjd", conv_along_keys(previous.astype(q.dtype), conv), proj)
      e = jnp.einsum("bhjd,hd->bhj", jnp.tanh(q_i[:, :, None] + keys + location), v)
      alpha = normalize(e, mask_i, self.temperature, self.top_k)
      carried = alpha.astype(jnp.float32)
      return (previous + carried if self.cumulative else carried), alpha

    final, alphas = jax.lax.scan(step, initial, (jnp.moveaxis(q, 1, 0), step_masks))
    if state is not None:
      state.value = final
    return jnp.moveaxis(alphas, 0, 2)  # [B, H, Tq, Tk]
