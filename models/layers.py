"""Blocks shared by every model family: embeddings, positions (incl. rotary), MLP, layer stacks.

The Transformer pieces follow flax `examples/wmt`: a frozen `TransformerConfig` replaces kwarg
plumbing (`cfg.replace(decode=True)` for cached decoding), encoder and decoder stacks are built
from `EncoderBlock` / `DecoderBlock`, pre- or post-layer-norm (`norm`), and every parameter carries
logical axis names (`embed`, `mlp`, `heads`, `kv`, `vocab`, `length`).

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
import functools
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
POSITIONS = ("sinusoidal", "learned", "rotary", "none")
NORMS = ("pre", "post")


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


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Everything a Transformer stack needs (flax wmt style); built by `from_model_config`."""

  vocab_size: int = 32
  output_vocab_size: int = 32
  num_classes: int = 2
  share_embeddings: bool = True
  logits_via_embedding: bool = False
  dtype: str = "float32"  # compute dtype; parameters are always float32
  emb_dim: int = 64
  num_heads: int = 4
  num_encoder_layers: int = 2
  num_decoder_layers: int = 2
  qkv_dim: int = 64
  mlp_dim: int = 128
  max_len: int = 64
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  position: str = "sinusoidal"  # sinusoidal | learned | rotary | none
  rotary_base: float = 10000.0
  norm: str = "pre"  # pre | post
  attention: tuple[tuple[str, Any], ...] = (("name", "scaled_dot"),)
  # Encoder-decoder cross attention: another registered type (with the fields of `attention`
  # that it has), e.g. dense cross attention under sparse self-attention; "": as `attention`.
  cross_attention: str = ""
  decode: bool = False  # decoder: one position per call, keys/values in the `cache` collection
  # Classification / retrieval heads (ignored by the sequence models).
  pooling: str = "cls"  # cls | mean | max
  classifier_dim: int = 0  # hidden width of the classifier MLP (0: = emb_dim)
  encoder: str = "transformer"  # transformer | rnn (classification / retrieval only)
  cell: str = "lstm"  # rnn encoder: simple | lstm | gru
  num_layers: int = 1  # rnn encoder layers
  hidden_dim: int = 0  # rnn encoder width; 0: = emb_dim
  bidirectional: bool = True  # rnn encoder

  def replace(self, **kw: Any) -> "TransformerConfig":
    return dataclasses.replace(self, **kw)

  @property
  def compute_dtype(self) -> Any:
    return dtype_of(self.dtype)

  @property
  def head_dim(self) -> int:
    return self.qkv_dim // self.num_heads

  def attention_fields(self, cross: bool = False) -> dict[str, Any]:
    """`{"name": ..., **fields}` of the self-attention, or of the cross attention."""
    fields = dict(self.attention)
    return {**fields, "name": self.cross_attention} if cross and self.cross_attention else fields

  def attention_class(self, cross: bool = False) -> type[Attention]:
    return attention_lib.get(self.attention_fields(cross)["name"])

  def make_attention(self, cross: bool = False) -> Callable[..., Attention]:
    make = attention_lib.build(self.attention_fields(cross))
    if self.decode and not cross:
      cls = self.attention_class()
      if "decode" not in {f.name for f in dataclasses.fields(cls)}:
        raise ValueError(f"attention {cls.registry_name!r} has no decode cache")
      return functools.partial(make, decode=True)
    return make


def config_from(cls: type, model_config: Mapping[str, Any], **task_fields: Any) -> Any:
  """A frozen config dataclass from `config.model` (fields the class lacks are ignored) + task."""
  names = {f.name for f in dataclasses.fields(cls)}
  kw = {k: v for k, v in dict(model_config).items() if k in names}
  if "attention" in kw:
    kw["attention"] = freeze_mapping(kw["attention"])
  kw.update({k: v for k, v in task_fields.items() if k in names and v is not None})
  return cls(**kw)


def has_decode_cache(attention_cls: type[Attention]) -> bool:
  return "decode" in {f.name for f in dataclasses.fields(attention_cls)}


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
  cfg: "TransformerConfig",
  f: Callable[[jnp.ndarray], jnp.ndarray],
  x: jnp.ndarray,
  deterministic: bool,
  norm_name: str,
) -> jnp.ndarray:
  """`x + Dropout(f(LN(x)))` (pre) or `LN(x + Dropout(f(x)))` (post), `[B, T, D]`.

  Called inside a compact method: the layer norm becomes a child named `norm_name`.
  """
  ln = layer_norm(cfg.compute_dtype, norm_name)
  y = f(ln(x)) if cfg.norm == "pre" else f(x)
  y = nn.Dropout(rate=cfg.dropout_rate)(y, deterministic=deterministic)
  return x + y if cfg.norm == "pre" else ln(x + y)


def make_attention(
  cfg: TransformerConfig, causal: bool, name: str, cross: bool = False
) -> Attention:
  return cfg.make_attention(cross)(
    num_heads=cfg.num_heads,
    qkv_features=cfg.qkv_dim,
    out_features=cfg.emb_dim,
    causal=causal,
    dropout_rate=cfg.attention_dropout_rate,
    dtype=cfg.compute_dtype,
    param_dtype=jnp.float32,
    name=name,
  )


class EncoderBlock(nn.Module):
  """Self-attention + MLP, each in a residual: `[B, S, D] -> [B, S, D]`."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x, mask=None, rotary_pos=None, deterministic: bool = True):
    cfg = self.config
    attn = make_attention(cfg, causal=False, name="self_attention")
    x = residual(
      cfg,
      lambda h: self_attention(attn, h, mask, rotary_pos, deterministic, cfg.rotary_base),
      x,
      deterministic,
      "ln_attention",
    )
    mlp = MlpBlock(cfg.mlp_dim, cfg.dropout_rate, cfg.compute_dtype, name="mlp")
    return residual(cfg, lambda h: mlp(h, deterministic), x, deterministic, "ln_mlp")


class DecoderBlock(nn.Module):
  """Causal self-attention, cross-attention (if `encoded` given), MLP: `[B, T, D] -> [B, T, D]`."""

  config: TransformerConfig

  @nn.compact
  def __call__(
    self,
    y,
    encoded=None,
    self_mask=None,
    cross_mask=None,
    rotary_pos=None,
    deterministic: bool = True,
  ):
    cfg = self.config
    attn = make_attention(cfg, causal=True, name="self_attention")
    y = residual(
      cfg,
      lambda h: self_attention(attn, h, self_mask, rotary_pos, deterministic, cfg.rotary_base),
      y,
      deterministic,
      "ln_attention",
    )
    if encoded is not None:
      cross = make_attention(cfg, causal=False, name="cross_attention", cross=True)
      y = residual(
        cfg,
        lambda h: cross(h, encoded, mask=cross_mask, deterministic=deterministic),
        y,
        deterministic,
        "ln_cross",
      )
    mlp = MlpBlock(cfg.mlp_dim, cfg.dropout_rate, cfg.compute_dtype, name="mlp")
    return residual(cfg, lambda h: mlp(h, deterministic), y, deterministic, "ln_mlp")


def default_positions(tokens: jnp.ndarray) -> jnp.ndarray:
  return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


class Encoder(nn.Module):
  """Token ids `[B, S]` -> encodings `[B, S, D]` (embedding, positions, blocks, final LN)."""

  config: TransformerConfig
  shared_embedding: nn.Module | None = None

  @nn.compact
  def __call__(
    self,
    inputs: jnp.ndarray,
    positions: jnp.ndarray | None = None,
    segmentation: jnp.ndarray | None = None,
    deterministic: bool = True,
  ) -> jnp.ndarray:
    cfg = self.config
    emb = self.shared_embedding or embed_module(cfg.vocab_size, cfg.emb_dim, "input_embedding")
    positions = default_positions(inputs) if positions is None else positions
    valid = inputs > 0 if segmentation is None else segmentation > 0
    mask = attention_masks(cfg.attention_class(), valid, valid, segmentation, segmentation)
    x = emb(inputs.astype(jnp.int32)).astype(cfg.compute_dtype)
    x = AddPositionEmbs(cfg.position, cfg.max_len, name="posembed_input")(x, positions)
    x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
    rotary = positions if cfg.position == "rotary" else None
    for i in range(cfg.num_encoder_layers):
      x = EncoderBlock(cfg, name=f"encoderblock_{i}")(x, mask, rotary, deterministic)
    if cfg.norm == "pre":
      x = layer_norm(cfg.compute_dtype, "encoder_norm")(x)
    return x


class Decoder(nn.Module):
  """Targets `[B, T]` (unshifted) -> logits `[B, T, V]`; cross-attends when `encoded` is given.

  With `config.decode` it takes one position `[B, 1]` per call (already the previous token: no
  shift), keeping the position counter and attention key/value caches in the `cache` collection.
  """

  config: TransformerConfig
  shared_embedding: nn.Module | None = None

  @nn.compact
  def __call__(
    self,
    targets: jnp.ndarray,
    encoded: jnp.ndarray | None = None,
    encoder_valid: jnp.ndarray | None = None,
    positions: jnp.ndarray | None = None,
    segmentation: jnp.ndarray | None = None,
    encoder_segmentation: jnp.ndarray | None = None,
    deterministic: bool = True,
  ) -> jnp.ndarray:
    cfg = self.config
    attn_cls = cfg.attention_class()
    emb = self.shared_embedding or embed_module(
      cfg.output_vocab_size, cfg.emb_dim, "output_embedding"
    )
    targets = targets.astype(jnp.int32)
    if cfg.decode:
      first = not self.has_variable("cache", "position_index")
      index = self.variable("cache", "position_index", lambda: jnp.array(0, jnp.int32))
      if first:
        positions = default_positions(targets)
      else:
        positions = jnp.broadcast_to(index.value, targets.shape)
        index.value = index.value + targets.shape[1]
      y_in, self_mask = targets, None
    else:
      positions = default_positions(targets) if positions is None else positions
      y_in = shift_right(targets, segmentation)
      valid = targets > 0 if segmentation is None else segmentation > 0
      self_mask = attention_masks(attn_cls, valid, valid, segmentation, segmentation)
    cross_mask = None
    if encoded is not None:
      cross_cls = cfg.attention_class(cross=True)
      if not cross_cls.supports_cross:
        raise ValueError(f"attention {cross_cls.registry_name!r} cannot cross-attend")
      q_valid = jnp.ones(targets.shape, bool) if cfg.decode else targets > 0
      if segmentation is not None:
        q_valid = segmentation > 0
      kv_valid = encoder_valid if encoder_valid is not None else jnp.ones(encoded.shape[:2], bool)
      cross_mask = attention_masks(
        cross_cls, q_valid, kv_valid, None if cfg.decode else segmentation, encoder_segmentation
      )
    y = emb(y_in).astype(cfg.compute_dtype)
    y = AddPositionEmbs(cfg.position, cfg.max_len, name="posembed_output")(y, positions)
    y = nn.Dropout(rate=cfg.dropout_rate)(y, deterministic=deterministic)
    rotary = positions if cfg.position == "rotary" else None
    for i in range(cfg.num_decoder_layers):
      y = DecoderBlock(cfg, name=f"decoderblock_{i}")(
        y, encoded, self_mask, cross_mask, rotary, deterministic
      )
    if cfg.norm == "pre":
      y = layer_norm(cfg.compute_dtype, "decoder_norm")(y)
    if cfg.logits_via_embedding:
      logits = emb.attend(y.astype(jnp.float32)) / jnp.sqrt(y.shape[-1])
    else:
      logits = nn.Dense(
        cfg.output_vocab_size,
        dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(
          nn.initializers.xavier_uniform(), ("embed", "vocab")
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.normal(1e-6), ("vocab",)),
        name="logits_dense",
      )(y)
    return logits[..., : cfg.output_vocab_size].astype(jnp.float32)
