"""Decoder-only Transformer language model (`decoder_lm`), as in flax `examples/lm1b`.

    logits = DecoderLM(cfg).apply(variables, {"inputs": tokens}, train)     # [B, T, V]

The model shifts `inputs [B, T]` right (0 = BOS) itself, so logits[:, t] predict inputs[:, t]
from inputs[:, <t]. Packed batches may add `inputs_segmentation` and `inputs_position`.
It reuses the Transformer `Decoder` (causal self-attention, no cross-attention; depth
`num_decoder_layers`). Cached sampling: `cfg.replace(decode=True)` and `DecoderLM.decode`, one
token per call (see `models/decoding.py`).
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from models import register
from models.layers import Decoder, TransformerConfig
from models.transformer import task_lengths, transformer_config, validate_transformer


@register("decoder_lm")
class DecoderLM(nn.Module):
  """Causal Transformer LM: `(batch, train) -> logits [B, T, vocab]`."""

  task_kinds: ClassVar[tuple[str, ...]] = ("lm",)
  supports_packing: ClassVar[bool] = True
  config_class: ClassVar[type] = TransformerConfig
  config: TransformerConfig

  @classmethod
  def make_config(cls, model_config: Any, info: Any) -> TransformerConfig:
    cfg = transformer_config(model_config, info)
    return cfg.replace(output_vocab_size=cfg.vocab_size, share_embeddings=False)

  @classmethod
  def validate(cls, cfg: TransformerConfig, info: Any) -> None:
    validate_transformer(cfg, ("self", "causal"), task_lengths(info))

  def setup(self):
    self.decoder = Decoder(self.config)

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
