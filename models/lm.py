"""Decoder-only Transformer language model (`decoder_lm`), as in flax `examples/lm1b`.

    logits = DecoderLM(cfg).apply(variables, {"inputs": tokens}, train)     # [B, T, V]

The model shifts `inputs [B, T]` right (0 = BOS) itself, so logits[:, t] predict inputs[:, t]
from inputs[:, <t]. Packed batches may add `inputs_segmentation` and `inputs_position`.
It reuses the Transformer `Decoder` (causal self-attention, no cross-attention; depth
`num_decoder_layers`). Cached sampling: `cfg.replace(decode=True)` and `DecoderLM.decode`, one
token per call (see `models/decoding.py`).
"""

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from models.decoding import StepFn
from models.layers import config_from
from models.registry import register
from models.transformer_blocks import (
  Decoder,
  StackConfig,
  stack_decoding,
  task_lengths,
  validate_stack,
)


@dataclasses.dataclass(frozen=True)
class LMConfig(StackConfig):
  """`decoder_lm`: the stack's fields, the vocabulary and the depth."""

  vocab_size: int = 32
  num_decoder_layers: int = 2
  logits_via_embedding: bool = False


@register("decoder_lm")
class DecoderLM(nn.Module):
  """Causal Transformer LM: `(batch, train) -> logits [B, T, vocab]`."""

  task_kinds: ClassVar[tuple[str, ...]] = ("lm",)
  supports_packing: ClassVar[bool] = True
  config_class: ClassVar[type] = LMConfig
  config: LMConfig

  @classmethod
  def make_config(cls, model_config: Any, info: Any) -> LMConfig:
    return config_from(LMConfig, model_config, vocab_size=info.vocab_size)

  @classmethod
  def validate(cls, cfg: LMConfig, info: Any) -> None:
    validate_stack(cfg, ("self", "causal"), task_lengths(info))

  def setup(self):
    cfg = self.config
    self.decoder = Decoder(cfg, cfg.vocab_size, cfg.num_decoder_layers, cfg.logits_via_embedding)

  def decode(
    self,
    tokens: jnp.ndarray,
    positions: jnp.ndarray | None = None,
    segmentation: jnp.ndarray | None = None,
    train: bool = False,
  ) -> jnp.ndarray:
    """Tokens `[B, T]` -> logits `[B, T, V]`; with `config.decode`, the previous token `[B, 1]`."""
    return self.decoder(
      tokens, positions=positions, segmentation=segmentation, deterministic=not train
    )

  def __call__(self, batch: dict[str, jnp.ndarray], train: bool = False) -> jnp.ndarray:
    return self.decode(
      batch["inputs"], batch.get("inputs_position"), batch.get("inputs_segmentation"), train
    )

  @nn.nowrap
  def decoding_step(
    self, variables: Any, batch: dict[str, jnp.ndarray], max_len: int, times: int = 1
  ) -> tuple[Any, StepFn]:
    """(initial state, step) decoding from BOS for the rows of `batch` repeated `times` (the
    prompt, if any, is forced by the search: see `decoding.sample`)."""
    n = next(iter(batch.values())).shape[0] * times
    params = {"params": variables["params"]}
    return stack_decoding(self, params, (), DecoderLM.decode, n, max_len)
