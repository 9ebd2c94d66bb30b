"""Linear (kernelised) attention: softmax replaced by a feature map, so cost is linear in T.

    out_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ  /  φ(q_i)ᵀ Σ_j φ(k_j),      φ(x) = elu(x) + 1

Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive Transformers with Linear
Attention". Causal: the sums run over j <= i, computed chunk by chunk with a `lax.scan` carrying
the running Σ φ(k) vᵀ state (exact within a chunk by a masked chunk-local product).
Cost: O(T d²) time, O(T d + d²) memory (causal: O(T C d) for chunks of C).

`kernel_attention` is the shared core; `performer.py` uses it with FAVOR+ random features.
Only key-padding masks (padded keys get φ = 0); no weights are formed, so none are sown.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.attention import _blocks, cost, masks
from models.attention.base import Attention
from models.attention.registry import register

MIN_DENOMINATOR = 1e-12  # below it (its square underflows in float32 gradients) the output is 0


def _ratio(num: jnp.ndarray, den: jnp.ndarray) -> jnp.ndarray:
  """num `[..., D]` / den `[...]`; 0 where den < MIN_DENOMINATOR (no key, a padded query, or a
  query whose kernel mass underflows), with finite gradients everywhere. No ε is added, so a
  common scale of the key features cancels exactly."""
  ok = den > MIN_DENOMINATOR
  return jnp.where(ok[..., None], num / jnp.where(ok, den, 1.0)[..., None], 0.0)


def kernel_attention(
  phi_q: jnp.ndarray,
  phi_k: jnp.ndarray,
  v: jnp.ndarray,
  causal: bool,
  chunk_size: int = 64,
) -> jnp.ndarray:
  """`φ(q)` `[B, Tq, H, M]`, `φ(k)` `[B, Tk, H, M]` (0 at padded keys), v `[B, Tk, H, D]` ->
  `[B, Tq, H, D]`. Causal needs Tq == Tk."""
  if not causal:
    kv = jnp.einsum("bkhm,bkhd->bhmd", phi_k, v)
    num = jnp.einsum("bqhm,bhmd->bqhd", phi_q, kv)
    den = jnp.einsum("bqhm,bhm->bqh", phi_q, phi_k.sum(axis=1))
    return _ratio(num, den)
  t = phi_q.shape[1]
  c = min(chunk_size, t)
  qs, ks, vs = (_blocks.pad_time(x, c) for x in (phi_q, phi_k, v))
  n = qs.shape[1] // c
  split = lambda x: jnp.moveaxis(x.reshape(x.shape[0], n, c, *x.shape[2:]), 1, 0)  # noqa: E731
  lower = jnp.tril(jnp.ones((c, c), bool))

  def chunk(carry, xs):
    state, norm = carry  # Σ φ(k) vᵀ [B, H, M, D] and Σ φ(k) [B, H, M] of earlier chunks
    q, k, vv = xs
    local = jnp.where(lower, jnp.einsum("bqhm,bkhm->bhqk", q, k), 0.0)
    num = jnp.einsum("bhqk,bkhd->bqhd", local, vv) + jnp.einsum("bqhm,bhmd->bqhd", q, state)
    den = local.sum(-1).transpose(0, 2, 1) + jnp.einsum("bqhm,bhm->bqh", q, norm)
    state = state + jnp.einsum("bkhm,bkhd->bhmd", k, vv)
    norm = norm + k.sum(axis=1)
    return (state, norm), _ratio(num, den)

  b, _, h, m = phi_q.shape
  init = (jnp.zeros((b, h, m, v.shape[-1]), v.dtype), jnp.zeros((b, h, m), v.dtype))
  _, out = jax.lax.scan(chunk, init, (split(qs), split(ks), split(vs)))
  out = jnp.moveaxis(out, 0, 1).reshape(b, n * c, h, v.shape[-1])
  return out[:, :t]


class KernelAttention(Attention):
  """Shared call of the kernelised types: subclasses define `feature_maps(q, k, valid)`."""

  dense_mask = False
  drops_weights = False  # no weights are formed, so there is nothing to drop
  chunk_size: int = 64  # causal prefix sums: exact within chunks of this many positions

  def feature_maps(self, q, k, valid):  # pragma: no cover - abstract
    raise NotImplementedError

  @nn.compact
  def __call__(self, inputs_q, inputs_kv=None, *, mask=None, deterministic=True):
    del deterministic  # no weights, no dropout
    self.warn_no_dropout()
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    q, k, v = self.project_qkv(inputs_q, inputs_kv)
    valid = masks.key_padding(mask, k.shape[1])
    if self.causal and q.shape[1] != k.shape[1]:
      raise ValueError(f"causal {self.registry_name} needs equal query and key lengths")
    phi_q, phi_k = self.feature_maps(q.astype(jnp.float32), k.astype(jnp.float32), valid)
    if valid is not None:
      phi_k = phi_k * valid[:, :, None, None]
    out = kernel_attention(phi_q, phi_k, v.astype(jnp.float32), self.causal, self.chunk_size)
    return self.project_out(out.astype(self.dtype), inputs_q.shape[-1])


@register("linear")
class LinearAttention(KernelAttention):
  """φ(x) = elu(x) + 1 (Katharopoulos et al. 2020)."""

  test_fields = {"chunk_size": 3}

  @classmethod
  def forward_flops(cls, s, f):
    """φ of the head width, then the kernel products."""
    return cost.proj(s, 4) + cost.kernel(s, s.head_dim, f["chunk_size"])

  def feature_maps(self, q, k, valid):
    del valid
    return jax.nn.elu(q) + 1.0, jax.nn.elu(k) + 1.0
