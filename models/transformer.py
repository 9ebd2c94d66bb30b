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

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from models.decoding import StepFn, expand
from models.layers import config_from, embed_module
from models.registry import register
from models.transformer_blocks import (
  Decoder,
  Encoder,
  StackConfig,
  stack_decoding,
  task_lengths,
  validate_stack,
)


@dataclasses.dataclass(frozen=True)
class TransformerConfig(StackConfig):
  """`transformer`: the stack's fields and the encoder-decoder's own."""

  vocab_size: int = 32
  output_vocab_size: int = 32
  share_embeddings: bool = True
  logits_via_embedding: bool = False
  num_encoder_layers: int = 2
  num_decoder_layers: int = 2
  # Encoder-decoder cross attention: another registered type (with the fields of `attention`
  # that it has), e.g. dense cross attention under sparse self-attention; "": as `attention`.
  cross_attention: str = ""


@register("transformer")
class Transformer(nn.Module):
  """Encoder-decoder: `(batch, train) -> logits [B, T, target_vocab]`."""

  task_kinds: ClassVar[tuple[str, ...]] = ("seq2seq",)
  supports_packing: ClassVar[bool] = True
  config_class: ClassVar[type] = TransformerConfig
  config: TransformerConfig

  @classmethod
  def make_config(cls, model_config: Any, info: Any) -> TransformerConfig:
    vocab = info.vocab_size
    return config_from(
      TransformerConfig,
      model_config,
      vocab_size=vocab,
      output_vocab_size=getattr(info, "target_vocab_size", None) or vocab,
    )

  @classmethod
  def validate(cls, cfg: TransformerConfig, info: Any) -> None:
    validate_stack(cfg, ("self", "causal", "cross"), task_lengths(info), cfg.cross_attention)

  def setup(self):
    cfg = self.config
    shared = None
    if cfg.share_embeddings:
      vocab = max(cfg.vocab_size, cfg.output_vocab_size)
      shared = embed_module(vocab, cfg.emb_dim, "shared_embedding")
    self.encoder = Encoder(cfg, cfg.vocab_size, cfg.num_encoder_layers, shared_embedding=shared)
    self.decoder = Decoder(
      cfg,
      cfg.output_vocab_size,
      cfg.num_decoder_layers,
      cfg.logits_via_embedding,
      cfg.cross_attention,
      shared_embedding=shared,
    )

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

  @nn.nowrap
  def decoding_step(
    self, variables: Any, batch: dict[str, jnp.ndarray], max_len: int, times: int = 1
  ) -> tuple[Any, StepFn]:
    """(initial state, step) decoding `batch['inputs']` rows repeated `times` (see decoding.py):
    the encoder runs once, the decoder one position per step."""
    params = {"params": variables["params"]}
    inputs = batch["inputs"]
    encoded = self.apply(params, inputs, method=Transformer.encode)
    encoded, inputs = expand((encoded, inputs), inputs.shape[0], times)
    return stack_decoding(
      self, params, (encoded, inputs), Transformer.decode, inputs.shape[0], max_len
    )
