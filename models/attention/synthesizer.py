"""Synthesizer: attention weights synthesised without query-key dot products.

    dense:   B_i = W₂ relu(W₁ x_i + b₁) + b₂ ∈ R^ℓ   (per head, from token i alone; row i of B)
    random:  B = R ∈ R^{ℓ×ℓ} per head (learned, or fixed at its random init)
    out = softmax(B[:Tq, :Tk]) G(X),   G the value projection
    mix_dot: softmax(α₁ B + α₂ QKᵀ/√d) G(X), α learned (initialised to 1)

Tay et al. 2021, "Synthesizer: Rethinking Self-Attention in Transformer Models". ℓ =
`max_length`: the dense map predicts ℓ logits per token and head (W₁ per head to the head width,
W₂ shared by the heads, as in the authors' code), cut to the key length; R is cut to the query
and key lengths (the rows are the queries' indices within the call, so a decoder stepping one
query at a time should use `dense`). `trainable_random=False` keeps R fixed: drawn at init
from the layer's path and stored in the non-trainable `constants` collection.
Cost: dense O(Tq (d² + d ℓ) + Tq Tk d), random O(Tq Tk d) time; O(Tq Tk) memory per head (the
weights are a full matrix; the gain is in not computing dot products, not in length).
Any mask; causal masks the synthesised logits. Weights are sown like scaled_dot's.
"""

import flax.linen as nn
import jax.numpy as jnp

from models.attention import _blocks, cost
from models.attention.base import Attention, default_kernel_init, normalize
from models.attention.registry import register

VARIANTS = ("dense", "random")


@register("synthesizer")
class SynthesizerAttention(Attention):
  """Dense or random synthesised attention weights, optionally mixed with dot products."""

  length_fields = ("max_length",)
  test_fields = {"variant": "dense", "max_length": 16, "mix_dot": True}

  variant: str = "dense"  # dense | random
  max_length: int = 512  # ℓ: longest query/key sequence
  trainable_random: bool = True  # random: learn R (else keep its random init)
  mix_dot: bool = False  # add learned-weighted dot-product logits

  @classmethod
  def forward_flops(cls, s, f):
    """Dense: W₁ (E -> E) and W₂ (d -> ℓ per head) per token; random: none; then w v (`mix_dot`:
    also the q, k projections and q kᵀ)."""
    synth = 0.0
    if f["variant"] == "dense":
      synth = cost.proj(s, 1) + 2.0 * s.batch * s.length * s.width * f["max_length"]
    if f["mix_dot"]:
      synth += cost.proj(s, 2) + cost.dense(s) / 2
    return cost.proj(s, 2) + synth + cost.dense(s) / 2

  @nn.compact
  def __call__(
    self,
    inputs_q: jnp.ndarray,
    inputs_kv: jnp.ndarray | None = None,
    *,
    mask: jnp.ndarray | None = None,
    deterministic: bool = True,
  ) -> jnp.ndarray:
    """`inputs_q` `[B, Tq, Dq]`, `inputs_kv` `[B, Tk, Dkv]` -> `[B, Tq, out_features]`."""
    if self.variant not in VARIANTS:
      raise ValueError(f"synthesizer: variant={self.variant!r}; valid: {VARIANTS}")
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    tq, tk = inputs_q.shape[1], inputs_kv.shape[1]
    longest = max(tq, tk) if self.variant == "random" else tk
    if longest > self.max_length:
      raise ValueError(f"synthesizer: length {longest} > max_length={self.max_length}")
    _, head_dim = self.features(inputs_q)
    heads = self.num_heads
    logits = self.synthesized(inputs_q, head_dim)[..., :tq, :tk]  # [B|1, H, Tq, Tk]
    if self.mix_dot:
      q, k, v = self.project_qkv(inputs_q, inputs_kv)
      dot = jnp.einsum("bqhd,bkhd->bhqk", q, k) * jnp.asarray(head_dim**-0.5, q.dtype)
      alpha = self.param("mix", nn.initializers.ones, (2,), self.param_dtype).astype(dot.dtype)
      logits = alpha[0] * logits + alpha[1] * dot
    else:
      v = self.dense_heads(inputs_kv, "value", heads, head_dim)
    weights = normalize(logits, self.full_mask(mask, tq, tk))
    weights = jnp.broadcast_to(weights, (inputs_q.shape[0], heads, tq, tk))
    context = self.attend(weights, v, deterministic)
    return self.project_out(context, inputs_q.shape[-1])

  def synthesized(self, inputs_q: jnp.ndarray, head_dim: int) -> jnp.ndarray:
    """The synthetic logits: dense `[B, H, Tq, ℓ]` or random `[1, H, ℓ, ℓ]`."""
    heads, length = self.num_heads, self.max_length
    if self.variant == "dense":
      hidden = nn.relu(self.dense_heads(inputs_q, "synth_hidden", heads, head_dim))
      logits = nn.DenseGeneral(
        features=length,
        use_bias=self.use_bias,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(default_kernel_init(), ("kv", "length")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("length",)),
        name="synth_out",
      )(hidden)  # [B, Tq, H, ℓ]
      return jnp.swapaxes(logits, 1, 2)
    shape = (heads, length, length)
    init = default_kernel_init()
    if self.trainable_random:
      r = self.param(
        "random",
        nn.with_logical_partitioning(init, ("heads", "length", None)),
        shape,
        self.param_dtype,
      )
    else:
      key = _blocks.layer_key(self, 0)
      r = _blocks.constant(self, "random", lambda: init(key, shape, self.param_dtype))
    return jnp.asarray(r, self.dtype)[None]
