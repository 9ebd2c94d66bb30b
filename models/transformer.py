"""Transformer encoder-decoder (Vaswani et al. 2017), following flax `examples/wmt`.

    logits = Transformer(cfg).apply(variables, batch, train)       # [B, T, target_vocab]

`batch`: `inputs [B, S]`, `targets [B, T]` (int32, 0 = pad, targets end with EOS); the decoder
input is `targets` shifted right with 0 as BOS. Packed batches add `inputs_segmentation`,
`inputs_position`, `targets_segmentation`, `targets_position`: attention then stays inside a
segment (dense-mask attention types only).

Cached decoding (flax style): `cfg.replace(decode=True)`, initialise the `cache` collection with
the full-length target (`model.init(..., method=Transformer.decode)`), then feed one position per
call (the previous token; see `models/decoding.py`).
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from models import register
from models.layers import (
  NORMS,
  POSITIONS,
  Decoder,
  Encoder,
  TransformerConfig,
  config_from,
  embed_module,
  rotary_supported,
)


def transformer_config(model_config: Any, info: Any, **extra: Any) -> TransformerConfig:
  """`config.model` + task info -> `TransformerConfig` (shared by every Transformer family)."""
  vocab = info.vocab_size
  return config_from(
    TransformerConfig,
    model_config,
    vocab_size=vocab,
    output_vocab_size=getattr(info, "target_vocab_size", None) or vocab,
    num_classes=getattr(info, "num_classes", None),
    **extra,
  )


def task_lengths(info: Any) -> tuple[int, ...]:
  """The sequence lengths a task feeds a model (inputs, targets), those it declares."""
  names = ("max_input_length", "max_target_length")
  return tuple(n for n in (getattr(info, a, None) for a in names) if n)


def validate_transformer(
  cfg: TransformerConfig, roles: tuple[str, ...], lengths: tuple[int, ...]
) -> None:
  """Shared checks; `roles` among 'self', 'causal', 'cross' (what the attention must do),
  `lengths` the sequence lengths the positions must cover."""
  if cfg.emb_dim % cfg.num_heads or cfg.qkv_dim % cfg.num_heads:
    raise ValueError(
      f"num_heads={cfg.num_heads} must divide emb_dim={cfg.emb_dim} and qkv_dim={cfg.qkv_dim}"
    )
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
  if "cross" in roles and not cfg.attention_class(cross=True).supports_cross:
    raise ValueError(
      f"attention {cfg.attention_fields(cross=True)['name']!r} does not support cross attention; "
      "keep it for self-attention with --config.model.cross_attention=scaled_dot (or another type)"
    )
  if cfg.position == "rotary" and not rotary_supported(cfg.attention_class(), cfg.attention):
    raise ValueError(
      f"position='rotary' needs an attention type projecting queries/keys with "
      f"Attention.dense_heads; {dict(cfg.attention)['name']!r} does not: use sinusoidal or learned"
    )


def check_attention_roles(cls: Any, roles: tuple[str, ...]) -> None:
  """Raise if an attention class cannot play every role ('causal': decoder, 'cross': enc-dec)."""
  name = getattr(cls, "registry_name", cls.__name__)
  if "causal" in roles and not cls.supports_causal:
    raise ValueError(f"attention {name!r} does not support causal masking: unfit for a decoder")
  if "cross" in roles and not cls.supports_cross:
    raise ValueError(f"attention {name!r} does not support cross attention: unfit for enc-dec")


@register("transformer")
class Transformer(nn.Module):
  """Encoder-decoder: `(batch, train) -> logits [B, T, target_vocab]`."""

  task_kinds: ClassVar[tuple[str, ...]] = ("seq2seq",)
  supports_packing: ClassVar[bool] = True
  config_class: ClassVar[type] = TransformerConfig
  config: TransformerConfig

  @classmethod
  def make_config(cls, model_config: Any, info: Any) -> TransformerConfig:
    return transformer_config(model_config, info)

  @classmethod
  def validate(cls, cfg: TransformerConfig, info: Any) -> None:
    validate_transformer(cfg, ("self", "causal", "cross"), task_lengths(info))

  def setup(self):
    cfg = self.config
    shared = None
    if cfg.share_embeddings:
      vocab = max(cfg.vocab_size, cfg.output_vocab_size)
      shared = embed_module(vocab, cfg.emb_dim, "shared_embedding")
    self.encoder = Encoder(cfg, shared_embedding=shared)
    self.decoder = Decoder(cfg, shared_embedding=shared)

  def encode(
    self,
    inputs: jnp.ndarray,
    inputs_positions: jnp.ndarray | None = None,
    inputs_segmentation: jnp.ndarray | None = None,
    train: bool = False,
  ) -> jnp.ndarray:
    """`inputs [B, S]` -> encodings `[B, S, D]`."""
    return self.encoder(inputs, inputs_positions, inputs_segmentation, deterministic=not train)

  def decode(
    self,
    encoded: jnp.ndarray,
    inputs: jnp.ndarray,
    targets: jnp.ndarray,
    targets_positions: jnp.ndarray | None = None,
    inputs_segmentation: jnp.ndarray | None = None,
    targets_segmentation: jnp.ndarray | None = None,
    train: bool = False,
  ) -> jnp.ndarray:
    """Encodings `[B, S, D]`, `inputs [B, S]`, targets `[B, T]` -> logits `[B, T, V]`.

    With `config.decode`, `targets` is the previous token `[B, 1]` (not shifted again).
    """
    return self.decoder(
      targets,
      encoded,
      encoder_valid=inputs > 0,
      positions=targets_positions,
      segmentation=targets_segmentation,
      encoder_segmentation=inputs_segmentation,
      deterministic=not train,
    )

  def __call__(self, batch: dict[str, jnp.ndarray], train: bool = False) -> jnp.ndarray:
    encoded = self.encode(
      batch["inputs"], batch.get("inputs_position"), batch.get("inputs_segmentation"), train
    )
    return self.decode(
      encoded,
      batch["inputs"],
      batch["targets"],
      batch.get("targets_position"),
      batch.get("inputs_segmentation"),
      batch.get("targets_segmentation"),
      train,
    )
