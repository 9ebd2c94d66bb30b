"""Shared machinery of the score-based types: scores -> weights -> context, and the Luong scores.

A score-based type derives from `ScoredAttention` and implements `scores` (or, when its weights
are not a plain softmax of scores, `weights`); the rest is shared:

    e = scores(x_q, x_kv)            [B, H, Tq, Tk]
    w = softmax(e / τ) over allowed keys (only the `top_k` largest kept)
    out = W_o [Σ_j w_ij W_v x_kv_j]_heads

Heads split the projected features (`qkv_features / num_heads` per head); each head scores with
its own parameters. The three scores of Luong et al. 2015 ("Effective Approaches to
Attention-based Neural Machine Translation") live here once, in `SCORES`, so that `dot`,
`general`, `additive` and `local` (which scores with any of them) share the code. For projected
queries q and keys k `[B, T, H, Dh]`:

    dot:       e_ij = q_iᵀ k_j
    general:   e_ij = q_iᵀ W k_j                 W `[H, Dh, Dh]`
    additive:  e_ij = vᵀ tanh(q_i + k_j)         q_i = W_q x_i, k_j = W_k x_j + b, v `[H, Dh]`
                                                  (Bahdanau et al. 2015's concat score)

Cost: dot and general O(Tq Tk d) time and O(Tq Tk) memory per head; additive O(Tq Tk d) time and
memory (the tanh argument is formed for every query-key pair).
"""

from collections.abc import Callable, Sequence
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from models.attention import cost
from models.attention.base import Attention, KeysValues, normalize


def head_param(
  module: nn.Module,
  name: str,
  shape: Sequence[int],
  logical_axes: Sequence[str | None],
  fan_in_axes: Sequence[int],
  fan_out_axes: Sequence[int] = (),
  batch_axes: Sequence[int] = (),
) -> jnp.ndarray:
  """A parameter with logical axis names and LeCun-normal init, cast to the compute dtype.

  Axes in `batch_axes` (usually the heads axis) are independent matrices, not fan-in.
  """
  init = nn.initializers.variance_scaling(
    1.0,
    "fan_in",
    "truncated_normal",
    in_axis=tuple(fan_in_axes),
    out_axis=tuple(fan_out_axes),
    batch_axis=tuple(batch_axes),
  )
  value = module.param(
    name, nn.with_logical_partitioning(init, tuple(logical_axes)), tuple(shape), module.param_dtype
  )
  return jnp.asarray(value, module.dtype)


def energy_vector(module: nn.Module, heads: int, head_dim: int) -> jnp.ndarray:
  """v `[H, Dh]` of the additive-style scores e = vᵀ tanh(·)."""
  return head_param(module, "energy", (heads, head_dim), ("heads", "kv"), (1,), (), (0,))


def dot_scores(module: nn.Module, q: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
  """Luong dot: `[B, Tq, H, Dh]`, `[B, Tk, H, Dh]` -> `[B, H, Tq, Tk]`, e = qᵀk."""
  del module
  return jnp.einsum("bqhd,bkhd->bhqk", q, k)


def general_scores(module: nn.Module, q: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
  """Luong general: e = qᵀ W k with one `[Dh, Dh]` matrix per head (param `bilinear`)."""
  heads, head_dim = q.shape[2], q.shape[3]
  w = head_param(
    module, "bilinear", (heads, head_dim, head_dim), ("heads", "kv", None), (1,), (2,), (0,)
  )
  return jnp.einsum("bqhd,hde,bkhe->bhqk", q, w, k)


def additive_scores(module: nn.Module, q: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
  """Bahdanau/concat: e = vᵀ tanh(q + k), q and k already projected (the key bias is b).

  Forms `[B, Tq, Tk, H, Dh]`: memory O(Tq Tk d).
  """
  v = energy_vector(module, q.shape[2], q.shape[3])
  hidden = jnp.tanh(q[:, :, None] + k[:, None, :])
  return jnp.einsum("bqkhd,hd->bhqk", hidden, v)


ScoreFn = Callable[[nn.Module, jnp.ndarray, jnp.ndarray], jnp.ndarray]
SCORES: dict[str, ScoreFn] = {
  "dot": dot_scores,
  "general": general_scores,
  "additive": additive_scores,
}


def score_fn(name: str) -> ScoreFn:
  if name not in SCORES:
    raise ValueError(f"score={name!r}; valid: {', '.join(SCORES)}")
  return SCORES[name]


def score_flops(s: cost.CallShape, score: str) -> float:
  """The FLOPs a Luong score adds to the plain q kᵀ (`cost.py`)."""
  if score == "general":  # q W per head
    return 2.0 * cost.elements(s) * s.head_dim
  if score == "additive":  # q_i + k_j for every pair
    return cost.elements(s) * s.length
  return 0.0


class ScoredAttention(Attention):
  """A type that forms weights from scores; subclasses implement `scores` or `weights`.

  The keys/values are prepared once (`Attention.prepare`, a `KeysValues`): `prepare_kv` projects
  the `value`s and, for types that score projected keys (`projects_keys`), the `key`s; a type
  with other key-only parts adds them there. `scores`/`weights` read them from `kv.cache`.
  """

  prepares_kv = True
  projects_keys: ClassVar[bool] = True  # scores read the `key` projection (`project`)

  temperature: float = 1.0  # logits / τ
  top_k: int | None = None  # keep the k largest scores per query

  def prepare_kv(
    self, inputs_kv: jnp.ndarray, inputs_q: jnp.ndarray | None
  ) -> dict[str, jnp.ndarray]:
    """Per-head `key` (if `projects_keys`) and `value` projections `[B, Tk, H, Dh]`."""
    _, head_dim = self.features(inputs_q)
    out = {}
    if self.projects_keys:
      out["key"] = self.dense_heads(inputs_kv, "key", self.num_heads, head_dim)
    out["value"] = self.dense_heads(inputs_kv, "value", self.num_heads, head_dim)
    return out

  def scores(self, inputs_q: jnp.ndarray, kv: KeysValues, mask: jnp.ndarray | None) -> jnp.ndarray:
    """`[B, Tq, Dq]`, prepared keys/values, mask (incl. causal) -> scores `[B, H, Tq, Tk]`."""
    raise NotImplementedError

  def weights(
    self,
    inputs_q: jnp.ndarray,
    kv: KeysValues,
    mask: jnp.ndarray | None,
    input_mask: jnp.ndarray | None,
  ) -> jnp.ndarray:
    """-> weights `[B, H, Tq, Tk]`, zero where `mask` (the caller's `input_mask` AND causal) is
    False."""
    return normalize(self.scores(inputs_q, kv, mask), mask, self.temperature, self.top_k)

  def project(self, inputs_q: jnp.ndarray, kv: KeysValues) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-head query projection (name `query`) and the prepared keys, `[B, T, H, Dh]`."""
    _, head_dim = self.features(inputs_q)
    q = self.dense_heads(inputs_q, "query", self.num_heads, head_dim)
    return q, kv.cache["key"]

  @nn.compact
  def __call__(
    self,
    inputs_q: jnp.ndarray | None,
    inputs_kv: jnp.ndarray | KeysValues | None = None,
    *,
    mask: jnp.ndarray | None = None,
    deterministic: bool = True,
  ) -> jnp.ndarray | KeysValues:
    kv = self.keys_values(inputs_q, inputs_kv)
    if inputs_q is None:  # `prepare`
      return kv
    full_mask = self.full_mask(mask, inputs_q.shape[1], kv.length)
    w = self.weights(inputs_q, kv, full_mask, mask)
    v = kv.cache["value"]
    context = self.attend(w.astype(v.dtype), v, deterministic)
    return self.project_out(context, inputs_q.shape[-1])
