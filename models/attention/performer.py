"""Performer (FAVOR+): softmax attention approximated with positive orthogonal random features.

    exp(q·k/√d) ≈ φ(q)ᵀφ(k),   φ(x) = exp(Ωx' − |x'|²/2) / √M,   x' = x / d^{1/4},
    Ω ∈ R^{M×d} rows orthogonal (blocks of QR-orthogonalised Gaussians, norms ~ χ_d)

Choromanski et al. 2021, "Rethinking Attention with Performers". The output is then that of
linear attention with this φ (`linear.kernel_attention`), bidirectional or causal (prefix sums).
For stability the per-query factor exp(−|q|²/2) is dropped and per-query (and, for keys,
per-batch-head) maxima are subtracted inside the exponentials; all cancel between numerator
and denominator, so the largest features are 1 and nothing underflows as norms grow.
`redraw`: `fixed` (Ω drawn at init from `seed` and the layer's path, kept in the non-trainable
`constants` collection) or `every_call` (a fresh Ω from the `attention` rng when the call has
one — training — and the fixed Ω otherwise). The error against exact softmax attention falls as
`num_features` M grows (tests/test_attention_efficient.py).
Cost: O(T M d) time, O(T (M + d) + M d) memory.
"""

import jax
import jax.numpy as jnp

from models.attention import _blocks, cost
from models.attention.linear import KernelAttention
from models.attention.registry import register

REDRAW = ("fixed", "every_call")


def orthogonal_features(key: jax.Array, m: int, d: int) -> jnp.ndarray:
  """`[M, d]` Gaussian rows made orthogonal in blocks of d, rescaled to Gaussian row norms."""
  gauss_key, norm_key = jax.random.split(key)
  n = -(-m // d)
  q, _ = jnp.linalg.qr(jax.random.normal(gauss_key, (n, d, d)))  # n orthogonal blocks at once
  blocks = jnp.swapaxes(q, -1, -2).reshape(n * d, d)[:m]  # rows of each block orthonormal
  norms = jnp.linalg.norm(jax.random.normal(norm_key, (m, d)), axis=1)
  return blocks * norms[:, None]


@register("performer")
class PerformerAttention(KernelAttention):
  test_fields = {"num_features": 16, "chunk_size": 3}

  num_features: int = 128  # M; the paper's theory asks for Θ(d log d)
  redraw: str = "fixed"  # fixed | every_call
  seed: int = 0  # of the fixed features

  @classmethod
  def forward_flops(cls, s, f):
    """The random features Ω q and Ω k, then the kernel products over M features."""
    m = f["num_features"]
    features = 2 * 2.0 * cost.elements(s) * m  # Ω q and Ω k
    return cost.proj(s, 4) + features + cost.kernel(s, m, f["chunk_size"])

  def feature_maps(self, q, k, valid):
    if self.redraw not in REDRAW:
      raise ValueError(f"redraw={self.redraw!r}; valid: {REDRAW}")
    d = q.shape[-1]

    # Fixed features: drawn at init from `seed` and the layer's path (every layer has its own)
    # and stored in the non-trainable `constants` collection. Applied without that collection
    # (e.g. with `{"params": ...}` only), the same draw is recomputed as a compile-time constant.
    def draw() -> jnp.ndarray:
      with jax.ensure_compile_time_eval():  # a constant of the compiled program
        return orthogonal_features(_blocks.layer_key(self, self.seed), self.num_features, d)

    omega = _blocks.constant(self, "omega", draw)
    if omega.shape != (self.num_features, d):
      raise ValueError(f"stored omega {omega.shape} != (num_features, head_dim)")
    if self.redraw == "every_call" and self.has_rng("attention") and not self.is_initializing():
      omega = orthogonal_features(self.make_rng("attention"), self.num_features, d)
    scale = d**-0.25

    m = self.num_features
    wq = jnp.einsum("bthd,md->bthm", q * scale, omega)
    wk = jnp.einsum("bthd,md->bthm", k * scale, omega)
    # φ(q) ∝ exp(ω·q − |q|²/2): the |q|²/2 term is one factor per query, which cancels in the
    # ratio, so it is dropped and each query is shifted by its own maximum instead. Keys keep
    # their term, and one shift per batch and head for all keys (the maximum of the exponent
    # over keys and features) also cancels exactly. So the largest feature of every query and
    # the largest key feature are 1: nothing underflows as the norms grow in training, which
    # shifting by the maximum of ω·k alone does not ensure. (Not a way for the future to leak
    # in: the shift cancels.)
    q_exp = wq - jax.lax.stop_gradient(jnp.max(wq, axis=-1, keepdims=True))
    k_exp = wk - 0.5 * scale**2 * jnp.sum(k * k, -1, keepdims=True)
    if valid is not None:
      k_exp = jnp.where(valid[:, :, None, None], k_exp, -jnp.inf)
    k_shift = jnp.max(k_exp, axis=(1, 3), keepdims=True)
    k_shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(k_shift), k_shift, 0.0))
    phi_q = jnp.exp(q_exp) / jnp.sqrt(m)
    phi_k = jnp.exp(k_exp - k_shift) / jnp.sqrt(m)
    return phi_q, phi_k
