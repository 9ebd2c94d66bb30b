"""What every attention type shares: the fields, the head projections and the normalisation.

A type subclasses `Attention`, adds its own fields, and implements `__call__`:

    attn(inputs_q, inputs_kv=None, *, mask=None, deterministic=True) -> [B, Tq, out_features]

* `inputs_q` `[B, Tq, Dq]`, `inputs_kv` `[B, Tk, Dkv]` (self-attention when None).
* `mask` boolean, broadcastable to `[B, H, Tq, Tk]`, True = may attend (see `masks.py`).
  Types whose cost forbids a dense mask accept only a key-padding mask `[B, 1, 1, Tk]`.
* `causal` (a field) makes query i see keys <= i; every type implements it its own cheapest way.
* Weights, where a type forms them, are sown as `intermediates/attention_weights` `[B, H, Tq, Tk]`.
* Recurrent state between decoder steps (e.g. the previous alignment of location-sensitive
  attention) lives in the `attention_state` collection; this is the one mechanism for every
  stateful type. When the collection is mutable (and the model is not
  being initialised) a call starts from the stored state, or the initial state where there is
  none, and stores its own last state, so a decoder can step one query at a time by carrying
  the collection from call to call, for any attention type:
  * functionally: apply the step with `mutable=['attention_state']`, pass the returned
    collection to the next step, and start a sequence with none; or
  * inside a module: `layer.init_state(inputs_q, inputs_kv)` (creates/resets the state; a no-op
    for stateless types), then `nn.scan(..., variable_carry='attention_state')`, with the model
    applied with `mutable=['attention_state']`.
  Without a mutable collection every call starts from the initial state and runs its queries in
  order itself (a whole teacher-forced sequence, or a Transformer layer), so stepping and the
  full call give the same result.
* Keys/values prepared once: `prepared = layer.prepare(inputs_kv)` computes what depends only on
  the keys/values (their projections, the static parts of location features), and every later
  call `layer(query, prepared, ...)` reuses it; a decoder stepping one query at a time over the
  same source prepares once per source sequence. Types that prepare something set
  `prepares_kv` and return a `KeysValues` (their `__call__` with `inputs_q=None` does only that,
  and accepts a `KeysValues` as `inputs_kv`); the default `prepare` returns the keys/values
  themselves, so any type can be driven this way. A full call prepares and attends in one go,
  so stepping over prepared keys and the full call give the same result.
* Autoregressive key/value caches live in the `cache` collection (`decode=True`), as in flax.
* Shared pieces: `dense_heads`/`project_qkv`/`project_out` (projections), `full_mask` (caller's
  mask AND causal), `normalize` (masked softmax with temperature and top-k) and `attend` (sow the
  weights, dropout, weighted sum of the values). Score-based types derive from
  `_scores.ScoredAttention`, which only asks them for their scores.
"""

import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from models.attention import cost

Dtype = Any
NEG_INF = -1e30  # finite, so fully masked rows stay NaN-free


@flax.struct.dataclass
class KeysValues:
  """What an attention type computes from the keys/values alone (`Attention.prepare`).

  `inputs` `[B, Tk, Dkv]` the keys/values themselves; `cache` the type's precomputed arrays,
  each with leading axes `[B, Tk]` (e.g. `key`, `value` projections `[B, Tk, H, Dh]`).
  """

  inputs: jnp.ndarray
  cache: dict[str, jnp.ndarray]

  @property
  def length(self) -> int:
    return self.inputs.shape[1]


def default_kernel_init() -> Callable:
  return nn.initializers.xavier_uniform()


class Attention(nn.Module):
  """Fields shared by all attention types (subclass and add type-specific fields); the class
  attributes and `forward_flops` are what a type declares about itself, with defaults here."""

  # Capabilities, read by the models (to reject unfit combinations) and the parameterised tests.
  supports_causal: ClassVar[bool] = True  # implements the `causal` field
  supports_cross: ClassVar[bool] = True  # keys/values may come from another sequence/length
  dense_mask: ClassVar[bool] = True  # accepts any [B, H, Tq, Tk] mask, not only key padding
  # Appending keys that a key-padding mask hides leaves the outputs unchanged. False only where
  # the design mixes key positions before masking (e.g. a learned projection along the length).
  padding_invariant: ClassVar[bool] = True
  # Forms attention weights that `dropout_rate` drops. False for types with no weights (the
  # kernelised ones): they ignore the rate and warn when given one (`warn_no_dropout`).
  drops_weights: ClassVar[bool] = True
  # `prepare` computes the key/value-only parts once (a `KeysValues`); else it returns its input.
  prepares_kv: ClassVar[bool] = False
  # A sparse pattern's field that, at `model.max_len` or more, covers the whole sequence (the
  # type then computes dense attention at a sparse type's cost; the config check warns).
  covers_sequence_field: ClassVar[str | None] = None
  # Fields that must follow the sequence length: the type learns one weight per position up to
  # that many (the model checks them against `model.max_len`; the benchmark sets its length).
  length_fields: ClassVar[tuple[str, ...]] = ()
  # The type's fields at the tiny test shapes (`tests/attention_cases.py`); others: defaults.
  test_fields: ClassVar[dict[str, Any]] = {}

  num_heads: int = 1
  qkv_features: int | None = None  # total projected width, defaults to the query feature size
  out_features: int | None = None  # defaults to the query feature size
  causal: bool = False
  dropout_rate: float = 0.0  # on attention weights
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32
  use_bias: bool = True

  @classmethod
  def forward_flops(cls, s: cost.CallShape, f: Mapping[str, Any]) -> float:
    """Analytic FLOPs of one forward call at shape `s`, projections included (`cost.py`); `f`:
    every own field of the type by name. Default: dense attention, q/k/v/out projections."""
    del f
    return cost.proj(s, 4) + cost.dense(s)

  def init_state(self, inputs_q: jnp.ndarray, inputs_kv: jnp.ndarray | None = None) -> None:
    """Create or reset the `attention_state` of a stateful type for a new sequence of steps with
    queries like `inputs_q` `[B, 1, Dq]` and keys `inputs_kv` `[B, Tk, Dkv]`; stateless: no-op."""
    del inputs_q, inputs_kv

  def prepare(self, inputs_kv: jnp.ndarray) -> Any:
    """Once per key/value sequence `[B, Tk, Dkv]`: what every call with these keys/values
    reuses; pass the result as `inputs_kv`. Default: the keys/values themselves (nothing to
    precompute); types with `prepares_kv` return a `KeysValues` (and need `qkv_features`)."""
    if not self.prepares_kv:
      return inputs_kv
    return self(None, inputs_kv)

  def keys_values(self, inputs_q: jnp.ndarray | None, inputs_kv: Any) -> KeysValues:
    """`inputs_kv` as a `KeysValues`: prepared already, or prepared now (`prepare_kv`)."""
    if isinstance(inputs_kv, KeysValues):
      return inputs_kv
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    return KeysValues(inputs_kv, self.prepare_kv(inputs_kv, inputs_q))

  def prepare_kv(
    self, inputs_kv: jnp.ndarray, inputs_q: jnp.ndarray | None
  ) -> dict[str, jnp.ndarray]:
    """The type's key/value-only arrays (`KeysValues.cache`); `inputs_q` is None when preparing
    ahead of the queries. Types with `prepares_kv` override it."""
    raise NotImplementedError

  # ----------------------------------------------------------------------------- helpers

  def features(self, inputs_q: jnp.ndarray | None) -> tuple[int, int]:
    """-> (qkv_features, head_dim), checking that heads divide the width. `inputs_q` None (keys
    prepared ahead of the queries) needs `qkv_features`."""
    if self.qkv_features is None and inputs_q is None:
      raise ValueError(f"{type(self).__name__}.prepare needs qkv_features (the query width)")
    qkv = self.qkv_features or inputs_q.shape[-1]
    if qkv % self.num_heads:
      raise ValueError(f"qkv_features={qkv} must be divisible by num_heads={self.num_heads}")
    return qkv, qkv // self.num_heads

  def dense_heads(self, x: jnp.ndarray, name: str, heads: int, head_dim: int) -> jnp.ndarray:
    """`[B, T, D]` -> `[B, T, heads, head_dim]` (a DenseGeneral with logical axis names)."""
    return nn.DenseGeneral(
      features=(heads, head_dim),
      axis=-1,
      use_bias=self.use_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.with_logical_partitioning(default_kernel_init(), ("embed", "heads", "kv")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")),
      name=name,
    )(x)

  def project_qkv(
    self, inputs_q: jnp.ndarray, inputs_kv: jnp.ndarray, kv_heads: int | None = None
  ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Query/key/value projections `[B, T, H, Dh]`; keys/values may have fewer heads (GQA)."""
    _, head_dim = self.features(inputs_q)
    kv_heads = kv_heads or self.num_heads
    q = self.dense_heads(inputs_q, "query", self.num_heads, head_dim)
    k = self.dense_heads(inputs_kv, "key", kv_heads, head_dim)
    v = self.dense_heads(inputs_kv, "value", kv_heads, head_dim)
    return q, k, v

  def project_out(self, context: jnp.ndarray, out_features: int) -> jnp.ndarray:
    """`[B, T, H, Dh]` -> `[B, T, out_features]`."""
    return nn.DenseGeneral(
      features=self.out_features or out_features,
      axis=(-2, -1),
      use_bias=self.use_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.with_logical_partitioning(default_kernel_init(), ("heads", "kv", "embed")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
      name="out",
    )(context)

  def full_mask(self, mask: jnp.ndarray | None, q_len: int, kv_len: int) -> jnp.ndarray | None:
    """The caller's mask AND the causal mask when `causal` is set."""
    from models.attention import masks

    return masks.combine(mask, masks.causal_mask(q_len, kv_len) if self.causal else None)

  def warn_no_dropout(self) -> None:
    """For types that form no weights: say once that a `dropout_rate` is ignored."""
    if self.dropout_rate > 0.0:
      warnings.warn(
        f"{type(self).__name__} forms no attention weights; dropout_rate={self.dropout_rate} "
        "is ignored",
        stacklevel=2,
      )

  def weights_dropout(self, weights: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
    if self.dropout_rate > 0.0 and not deterministic:
      return nn.Dropout(rate=self.dropout_rate, deterministic=False)(weights)
    return weights

  def attend(self, weights: jnp.ndarray, values: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
    """Sow the weights, drop some out, mix the values: the end of every weight-forming type.

    `weights` `[B, H, Tq, Tk]`, `values` `[B, Tk, Hkv, Dh]` (Hkv divides H: query head h reads
    value head h // (H / Hkv)) -> context `[B, Tq, H, Dh]`.
    """
    self.sow("intermediates", "attention_weights", weights)
    weights = self.weights_dropout(weights, deterministic)
    b, h, tq, tk = weights.shape
    kv_heads = values.shape[2]
    if kv_heads == h:
      return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(values.dtype), values)
    grouped = weights.reshape(b, kv_heads, h // kv_heads, tq, tk).astype(values.dtype)
    context = jnp.einsum("bhgqk,bkhd->bqhgd", grouped, values)
    return context.reshape(b, tq, h, values.shape[-1])


def normalize(
  scores: jnp.ndarray,
  mask: jnp.ndarray | None = None,
  temperature: float = 1.0,
  top_k: int | None = None,
) -> jnp.ndarray:
  """Masked softmax over the last axis with temperature and top-k.

  w = softmax(s / τ) over the allowed keys; with `top_k` only the k largest allowed scores per
  query survive. Rows with no allowed key get all-zero weights. Computed in float32.
  """
  s = scores.astype(jnp.float32)
  if temperature != 1.0:
    s = s / temperature
  if mask is not None:
    s = jnp.where(mask, s, NEG_INF)
  if top_k is not None and top_k < s.shape[-1]:
    kth = jax.lax.top_k(s, top_k)[0][..., -1:]
    s = jnp.where(s >= kth, s, NEG_INF)
  w = jax.nn.softmax(s, axis=-1)
  if mask is not None:
    w = jnp.where(jnp.any(mask, axis=-1, keepdims=True), w, 0.0)
  return w.astype(scores.dtype)
