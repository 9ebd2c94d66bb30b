"""The Transformer stack shared by four families: `Encoder`, `Decoder` and their blocks.

Following flax `examples/wmt`: a frozen config replaces kwarg plumbing (`cfg.replace(decode=True)`
for cached decoding), encoder and decoder stacks are built from `EncoderBlock` / `DecoderBlock`,
pre- or post-layer-norm (`norm`), and every parameter carries logical axis names (`embed`, `mlp`,
`heads`, `kv`, `vocab`, `length`).

`StackConfig` holds what the stack itself reads; each family's config derives from it and adds
only its own fields (vocabularies, depths, heads on top). Vocabulary size, depth and the cross
attention type are the stack modules' own fields, set by the family. `stack_decoding` is the
decoding step the Transformer families share: one position per call with key/value caches in the
`cache` collection when the attention type has a `decode` field, else the prefix re-run.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import attention as attention_lib
from models.attention.base import Attention
from models.layers import (
  AddPositionEmbs,
  MlpBlock,
  attention_masks,
  check_attention_roles,
  default_positions,
  dtype_of,
  embed_module,
  layer_norm,
  residual,
  rotary_supported,
  self_attention,
  shift_right,
)

POSITIONS = ("sinusoidal", "learned", "rotary", "none")
NORMS = ("pre", "post")


@dataclasses.dataclass(frozen=True)
class StackConfig:
  """The fields the Transformer encoder/decoder stack reads (flax wmt style)."""

  dtype: str = "float32"  # compute dtype; parameters are always float32
  emb_dim: int = 64
  num_heads: int = 4
  qkv_dim: int = 64
  mlp_dim: int = 128
  max_len: int = 64
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  position: str = "sinusoidal"  # sinusoidal | learned | rotary | none
  rotary_base: float = 10000.0
  norm: str = "pre"  # pre | post
  attention: tuple[tuple[str, Any], ...] = (("name", "scaled_dot"),)
  decode: bool = False  # decoder: one position per call, keys/values in the `cache` collection

  def replace(self, **kw: Any) -> Any:
    return dataclasses.replace(self, **kw)

  @property
  def compute_dtype(self) -> Any:
    return dtype_of(self.dtype)

  @property
  def attention_shape(self) -> tuple[int, int]:
    """(heads, qkv width) of every attention: `num_heads`, `qkv_dim`, unless
    `config.model.attention` sets `num_heads` / `qkv_features` explicitly."""
    explicit = attention_lib.shape_fields(self.attention)
    return explicit.get("num_heads", self.num_heads), explicit.get("qkv_features", self.qkv_dim)

  @property
  def head_dim(self) -> int:
    heads, qkv = self.attention_shape
    return qkv // heads

  def attention_fields(self, cross: str | None = None) -> dict[str, Any]:
    """`{"name": ..., **fields}` of the self-attention, or with `cross` (a registered type name,
    "" = the self-attention's type) of the cross attention."""
    fields = dict(self.attention)
    return {**fields, "name": cross} if cross else fields

  def attention_class(self, cross: str | None = None) -> type[Attention]:
    return attention_lib.get(self.attention_fields(cross)["name"])

  def make_attention(self, cross: str | None = None) -> Callable[..., Attention]:
    make = attention_lib.build(self.attention_fields(cross))
    if self.decode and cross is None:
      cls = self.attention_class()
      if not has_decode_cache(cls):
        raise ValueError(f"attention {cls.registry_name!r} has no decode cache")
      return functools.partial(make, decode=True)
    return make


def has_decode_cache(attention_cls: type[Attention]) -> bool:
  return "decode" in {f.name for f in dataclasses.fields(attention_cls)}


def task_lengths(info: Any) -> tuple[int, ...]:
  """The sequence lengths a task feeds a model (inputs, targets), those it declares."""
  names = ("max_input_length", "max_target_length")
  return tuple(n for n in (getattr(info, a, None) for a in names) if n)


def validate_stack(
  cfg: StackConfig,
  roles: tuple[str, ...],
  lengths: tuple[int, ...],
  cross_attention: str = "",
) -> None:
  """Shared checks; `roles` among 'self', 'causal', 'cross' (what the attention must do),
  `lengths` the sequence lengths the positions must cover, `cross_attention` the cross type."""
  heads, qkv = cfg.attention_shape
  if cfg.emb_dim % heads or qkv % heads:
    raise ValueError(f"num_heads={heads} must divide emb_dim={cfg.emb_dim} and qkv_dim={qkv}")
  if cfg.position not in POSITIONS:
    raise ValueError(f"position={cfg.position!r}; valid: {', '.join(POSITIONS)}")
  if cfg.position == "rotary" and cfg.head_dim % 2:
    raise ValueError(
      f"position='rotary' needs an even head dim, got qkv_dim/num_heads={cfg.head_dim}"
    )
  if cfg.norm not in NORMS:
    raise ValueError(f"norm={cfg.norm!r}; valid: {', '.join(NORMS)}")
  if cfg.position in ("sinusoidal", "learned"):
    longest = max(lengths, default=0)
    if longest > cfg.max_len:
      raise ValueError(
        f"max_len={cfg.max_len} is shorter than the task's longest sequence {longest}"
      )
  check_attention_roles(cfg.attention_class(), tuple(r for r in roles if r != "cross"))
  if "cross" in roles and not cfg.attention_class(cross_attention).supports_cross:
    raise ValueError(
      f"attention {cfg.attention_fields(cross_attention)['name']!r} does not support cross "
      "attention; keep it for self-attention with --config.model.cross_attention=scaled_dot "
      "(or another type)"
    )
  if cfg.position == "rotary" and not rotary_supported(cfg.attention_class(), cfg.attention):
    raise ValueError(
      f"position='rotary' needs an attention type projecting queries/keys with "
      f"Attention.dense_heads; {dict(cfg.attention)['name']!r} does not: use sinusoidal or learned"
    )


# ---------------------------------------------------------------------------------- blocks


def make_attention(
  cfg: StackConfig, causal: bool, name: str, cross: str | None = None
) -> Attention:
  heads, qkv = cfg.attention_shape
  return cfg.make_attention(cross)(
    num_heads=heads,
    qkv_features=qkv,
    out_features=cfg.emb_dim,
    causal=causal,
    dropout_rate=cfg.attention_dropout_rate,
    dtype=cfg.compute_dtype,
    param_dtype=jnp.float32,
    name=name,
  )


def stack_residual(cfg: StackConfig, f, x, deterministic: bool, norm_name: str) -> jnp.ndarray:
  return residual(cfg.norm, cfg.dropout_rate, cfg.compute_dtype, f, x, deterministic, norm_name)


class EncoderBlock(nn.Module):
  """Self-attention + MLP, each in a residual: `[B, S, D] -> [B, S, D]`."""

  config: StackConfig

  @nn.compact
  def __call__(self, x, mask=None, rotary_pos=None, deterministic: bool = True):
    cfg = self.config
    attn = make_attention(cfg, causal=False, name="self_attention")
    x = stack_residual(
      cfg,
      lambda h: self_attention(attn, h, mask, rotary_pos, deterministic, cfg.rotary_base),
      x,
      deterministic,
      "ln_attention",
    )
    mlp = MlpBlock(cfg.mlp_dim, cfg.dropout_rate, cfg.compute_dtype, name="mlp")
    return stack_residual(cfg, lambda h: mlp(h, deterministic), x, deterministic, "ln_mlp")


class DecoderBlock(nn.Module):
  """Causal self-attention, cross-attention (if `encoded` given), MLP: `[B, T, D] -> [B, T, D]`."""

  config: StackConfig
  cross_attention: str = ""  # the cross attention's type ("": the self-attention's)

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
    y = stack_residual(
      cfg,
      lambda h: self_attention(attn, h, self_mask, rotary_pos, deterministic, cfg.rotary_base),
      y,
      deterministic,
      "ln_attention",
    )
    if encoded is not None:
      cross = make_attention(cfg, causal=False, name="cross_attention", cross=self.cross_attention)
      y = stack_residual(
        cfg,
        lambda h: cross(h, encoded, mask=cross_mask, deterministic=deterministic),
        y,
        deterministic,
        "ln_cross",
      )
    mlp = MlpBlock(cfg.mlp_dim, cfg.dropout_rate, cfg.compute_dtype, name="mlp")
    return stack_residual(cfg, lambda h: mlp(h, deterministic), y, deterministic, "ln_mlp")


class Encoder(nn.Module):
  """Token ids `[B, S]` -> encodings `[B, S, D]` (embedding, positions, blocks, final LN)."""

  config: StackConfig
  vocab_size: int
  num_layers: int
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
    emb = self.shared_embedding or embed_module(self.vocab_size, cfg.emb_dim, "input_embedding")
    positions = default_positions(inputs) if positions is None else positions
    valid = inputs > 0 if segmentation is None else segmentation > 0
    mask = attention_masks(cfg.attention_class(), valid, valid, segmentation, segmentation)
    x = emb(inputs.astype(jnp.int32)).astype(cfg.compute_dtype)
    x = AddPositionEmbs(cfg.position, cfg.max_len, name="posembed_input")(x, positions)
    x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
    rotary = positions if cfg.position == "rotary" else None
    for i in range(self.num_layers):
      x = EncoderBlock(cfg, name=f"encoderblock_{i}")(x, mask, rotary, deterministic)
    if cfg.norm == "pre":
      x = layer_norm(cfg.compute_dtype, "encoder_norm")(x)
    return x


class Decoder(nn.Module):
  """Targets `[B, T]` (unshifted) -> logits `[B, T, V]`; cross-attends when `encoded` is given.

  With `config.decode` it takes one position `[B, 1]` per call (already the previous token: no
  shift), keeping the position counter and attention key/value caches in the `cache` collection.
  """

  config: StackConfig
  vocab_size: int
  num_layers: int
  logits_via_embedding: bool = False
  cross_attention: str = ""  # the cross attention's type ("": the self-attention's)
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
    emb = self.shared_embedding or embed_module(self.vocab_size, cfg.emb_dim, "output_embedding")
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
      cross_cls = cfg.attention_class(self.cross_attention)
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
    for i in range(self.num_layers):
      y = DecoderBlock(cfg, self.cross_attention, name=f"decoderblock_{i}")(
        y, encoded, self_mask, cross_mask, rotary, deterministic
      )
    if cfg.norm == "pre":
      y = layer_norm(cfg.compute_dtype, "decoder_norm")(y)
    if self.logits_via_embedding:
      logits = emb.attend(y.astype(jnp.float32)) / jnp.sqrt(y.shape[-1])
    else:
      logits = nn.Dense(
        self.vocab_size,
        dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(
          nn.initializers.xavier_uniform(), ("embed", "vocab")
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.normal(1e-6), ("vocab",)),
        name="logits_dense",
      )(y)
    return logits[..., : self.vocab_size].astype(jnp.float32)


# -------------------------------------------------------------------------------- decoding


def stack_decoding(
  model: nn.Module, params: Any, context: tuple, method: Callable, n: int, max_len: int
) -> tuple[Any, Callable]:
  """(initial state, step) of a Transformer family's `method(*context, tokens, ...)` -> logits.

  `n` rows decode `max_len` tokens. With a cacheable attention type (a `decode` field, e.g.
  `scaled_dot`) one position per call with key/value caches in the `cache` collection (flax
  style: the cache is initialised with the full-length target, then one position per call);
  other types re-run the whole prefix each step (O(L²) but exact, since the decoder is causal).
  """
  cfg = model.config
  if cfg.position in ("sinusoidal", "learned") and max_len > cfg.max_len:
    raise ValueError(f"decoding max_len={max_len} exceeds the model's max_len={cfg.max_len}")

  if has_decode_cache(cfg.attention_class()):
    decoder = model.clone(config=cfg.replace(decode=True))
    cache = decoder.init(
      jax.random.key(0), *context, jnp.ones((n, max_len), jnp.int32), method=method
    )["cache"]

    def cached_step(cache, tokens):
      logits, mutated = decoder.apply(
        {**params, "cache": cache}, *context, tokens[:, None], method=method, mutable=["cache"]
      )
      return logits[:, 0], mutated["cache"]

    return cache, cached_step

  # No cache: keep the outputs so far (1 = any non-padding id, hidden by causality) and re-run.
  def prefix_step(state, tokens):
    buffer, t = state
    buffer = jnp.where(t > 0, buffer.at[:, jnp.maximum(t - 1, 0)].set(tokens), buffer)
    logits = model.apply(params, *context, buffer, method=method)
    return jnp.take(logits, t, axis=1), (buffer, t + 1)

  return (jnp.ones((n, max_len), jnp.int32), jnp.array(0, jnp.int32)), prefix_step
