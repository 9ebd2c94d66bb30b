"""Blocks shared by the model families: configs, masks, embeddings, positions, MLP, norm, residual.

Small pieces only; a family's stack lives with the family (`transformer_blocks.py` for the
Transformer encoder and decoder shared by four families, `rnn.py` for the recurrent ones).

Attention is chosen by name (`models.attention.build`); what a type can do is read from its class
flags (`supports_causal`, `supports_cross`, `dense_mask`), and `attention_masks` gives each role the
masks the type accepts: dense types get padding and packing (segment) masks, the others only a
key-padding mask `[B, 1, 1, Tk]` (packed batches are rejected) and causality through `causal=True`.

Rotary positions (Su et al. 2021, "RoFormer") rotate queries and keys after their projection,
inside the attention module. Rather than a per-type special case, `rotary_positions` intercepts the
shared projection helper `Attention.dense_heads` (names `query` and `key`) of whatever type is
called inside it; a type that does not project through that helper is rejected with a clear error.
"""

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import attention as attention_lib
from models.attention import masks
from models.attention.base import Attention

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str) -> Any:
  if name not in DTYPES:
    raise ValueError(f"dtype={name!r}; valid: {', '.join(DTYPES)}")
  return DTYPES[name]


def freeze_mapping(m: Mapping[str, Any] | tuple | None) -> tuple[tuple[str, Any], ...]:
  """A (nested) mapping -> sorted tuple of items: hashable, so it can live in a frozen config."""
  if m is None:
    return ()
  if isinstance(m, tuple):
    return m
  out = []
  for k, v in sorted(dict(m).items()):
    if isinstance(v, list):
      v = tuple(v)
    out.append((k, v))
  return tuple(out)


def config_from(cls: type, model_config: Mapping[str, Any], **task_fields: Any) -> Any:
  """A frozen config dataclass from `config.model` (fields the class lacks are ignored) + task."""
  names = {f.name for f in dataclasses.fields(cls)}
  kw = {k: v for k, v in dict(model_config).items() if k in names}
  if "attention" in kw:
    kw["attention"] = freeze_mapping(kw["attention"])
  kw.update({k: v for k, v in task_fields.items() if k in names and v is not None})
  return cls(**kw)


def check_attention_roles(cls: type[Attention], roles: tuple[str, ...]) -> None:
  """Raise if an attention class cannot play every role ('causal': decoder, 'cross': enc-dec)."""
  name = getattr(cls, "registry_name", cls.__name__)
  if "causal" in roles and not cls.supports_causal:
    raise ValueError(f"attention {name!r} does not support causal masking: unfit for a decoder")
  if "cross" in roles and not cls.supports_cross:
    raise ValueError(f"attention {name!r} does not support cross attention: unfit for enc-dec")


# ------------------------------------------------------------------------------------ masks


def attention_masks(
  attention_cls: type[Attention],
  q_valid: jnp.ndarray,
  kv_valid: jnp.ndarray,
  q_segments: jnp.ndarray | None = None,
  kv_segments: jnp.ndarray | None = None,
) -> jnp.ndarray:
  """The mask an attention type accepts: `[B, 1, Tq, Tk]` if dense, else `[B, 1, 1, Tk]`.

  `q_valid` `[B, Tq]`, `kv_valid` `[B, Tk]` (True = real token); segments `[B, T]` for packed
  batches (attention stays inside a segment). Causality is not in the mask: pass `causal=True`.
  """
  if attention_cls.dense_mask:
    seg = None if q_segments is None else masks.segment_mask(q_segments, kv_segments)
    return masks.combine(masks.padding_mask(q_valid, kv_valid), seg)
  if q_segments is not None:
    raise ValueError(
      f"attention {attention_cls.registry_name!r} takes only key-padding masks: "
      "packed batches (segmentation keys) are not supported; disable packing"
    )
  return masks.padding_mask(None, kv_valid)


def shift_right(x: jnp.ndarray, segmentation: jnp.ndarray | None = None) -> jnp.ndarray:
  """`[B, T]` -> `[B, T]` shifted one to the right with 0 (= BOS) first, per packed segment."""
  shifted = jnp.pad(x, ((0, 0), (1, 0)))[:, :-1]
  if segmentation is not None:
    same = segmentation == jnp.pad(segmentation, ((0, 0), (1, 0)))[:, :-1]
    shifted = jnp.where(same, shifted, 0)
  return shifted


def default_positions(tokens: jnp.ndarray) -> jnp.ndarray:
  """`[B, T]` -> positions 0..T-1 per row."""
  return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


# ---------------------------------------------------------------------------- embeddings


def embed_module(num: int, features: int, name: str) -> nn.Embed:
  return nn.Embed(
    num_embeddings=num,
    features=features,
    embedding_init=nn.with_logical_partitioning(
      nn.initializers.normal(stddev=1.0), ("vocab", "embed")
    ),
    name=name,
  )


def sinusoidal_table(max_len: int, features: int, max_scale: float = 10000.0) -> np.ndarray:
  """`[max_len, features]` sin/cos table (Vaswani et al. 2017, as in flax wmt)."""
  pe = np.zeros((max_len, features), dtype=np.float32)
  position = np.arange(0, max_len)[:, None]
  div_term = np.exp(np.arange(0, features // 2) * -(np.log(max_scale) / max(features // 2 - 1, 1)))
  pe[:, : features // 2] = np.sin(position * div_term)
  pe[:, features // 2 : 2 * (features // 2)] = np.cos(position * div_term)
  return pe


class AddPositionEmbs(nn.Module):
  """Adds sinusoidal or learned position embeddings: `[B, T, D]` + positions `[B, T]`."""

  position: str
  max_len: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
    d = x.shape[-1]
    if self.position == "sinusoidal":
      table = jnp.asarray(sinusoidal_table(self.max_len, d))
    elif self.position == "learned":
      table = self.param(
        "pos_embedding",
        nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), ("length", "embed")),
        (self.max_len, d),
      )
    else:
      return x
    return x + jnp.take(table, positions, axis=0).astype(x.dtype)


def apply_rotary(x: jnp.ndarray, positions: jnp.ndarray, base: float = 10000.0) -> jnp.ndarray:
  """Rotate `[B, T, H, Dh]` by angle `pos · base^(-2i/Dh)` in (i, i + Dh/2) pairs."""
  dh = x.shape[-1]
  if dh % 2:
    raise ValueError(f"position='rotary' needs an even head dim, got {dh}")
  half = dh // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[..., None] * freq  # [B, T, half]
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


@contextlib.contextmanager
def rotary_positions(positions: jnp.ndarray, base: float = 10000.0) -> Iterator[list[str]]:
  """Inside: every `Attention.dense_heads(x, 'query'|'key', ...)` output is rotated by position.

  Yields the list of projection names rotated, so the caller can check the type used the helper.
  """
  rotated: list[str] = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "dense_heads" and isinstance(context.module, Attention):
      name = args[1] if len(args) > 1 else kwargs.get("name")
      if name in ("query", "key"):
        rotated.append(name)
        out = apply_rotary(out, positions, base)
    return out

  with nn.intercept_methods(interceptor):
    yield rotated


def rotary_supported(attention_cls: type[Attention], config: Mapping[str, Any]) -> bool:
  """Whether a type projects queries and keys through `Attention.dense_heads` (shape-only run).

  Unknown (True) when the tiny probe itself fails: the model then checks while tracing.
  """
  layer = attention_lib.build(dict(config))(num_heads=1, qkv_features=2, out_features=2)
  x = jnp.zeros((1, 4, 2))
  try:
    with rotary_positions(jnp.zeros((1, 4), jnp.int32)) as rotated:
      jax.eval_shape(lambda: layer.init(jax.random.key(0), x))
  except Exception:  # a probe only
    return True
  return {"query", "key"} <= set(rotated)


def self_attention(
  layer: Attention,
  x: jnp.ndarray,
  mask: jnp.ndarray | None,
  positions: jnp.ndarray | None,
  deterministic: bool,
  rotary_base: float = 10000.0,
) -> jnp.ndarray:
  """Self-attention `[B, T, D] -> [B, T, D]`; with `positions` `[B, T]`, rotary on q and k."""
  if positions is None:
    return layer(x, mask=mask, deterministic=deterministic)
  with rotary_positions(positions, rotary_base) as rotated:
    y = layer(x, mask=mask, deterministic=deterministic)
  if not {"query", "key"} <= set(rotated):
    raise ValueError(
      f"position='rotary' needs an attention type projecting queries and keys with "
      f"Attention.dense_heads; {type(layer).__name__} does not: use sinusoidal or learned"
    )
  return y


# ---------------------------------------------------------------------------------- blocks


class MlpBlock(nn.Module):
  """Position-wise feed-forward `[B, T, D] -> [B, T, out_dim or D]`: Dense-ReLU-Dropout-Dense."""

  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  out_dim: int | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    out_dim = self.out_dim or x.shape[-1]
    x = nn.Dense(
      self.mlp_dim,
      dtype=self.dtype,
      kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("embed", "mlp")),
      bias_init=nn.with_logical_partitioning(nn.initializers.normal(1e-6), ("mlp",)),
      name="wi",
    )(x)
    x = nn.relu(x)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    return nn.Dense(
      out_dim,
      dtype=self.dtype,
      kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("mlp", "embed")),
      bias_init=nn.with_logical_partitioning(nn.initializers.normal(1e-6), ("embed",)),
      name="wo",
    )(x)


def layer_norm(dtype: Any, name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(
    dtype=dtype,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
    name=name,
  )


def residual(
  norm: str,
  dropout_rate: float,
  dtype: Any,
  f: Callable[[jnp.ndarray], jnp.ndarray],
  x: jnp.ndarray,
  deterministic: bool,
  norm_name: str,
) -> jnp.ndarray:
  """`x + Dropout(f(LN(x)))` (`norm='pre'`) or `LN(x + Dropout(f(x)))` (`'post'`), `[B, T, D]`.

  Called inside a compact method: the layer norm becomes a child named `norm_name`.
  """
  ln = layer_norm(dtype, norm_name)
  y = f(ln(x)) if norm == "pre" else f(x)
  y = nn.Dropout(rate=dropout_rate)(y, deterministic=deterministic)
  return x + y if norm == "pre" else ln(x + y)
