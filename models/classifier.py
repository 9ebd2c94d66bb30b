"""Sequence classifiers: `encoder_classifier` (one text) and `dual_encoder` (a pair, retrieval).

    encoder_classifier:  z = pool(Enc(inputs));                 logits = MLP(z)           [B, C]
    dual_encoder:        u = pool(Enc(inputs)), v = pool(Enc(inputs2)) with shared weights;
                         logits = MLP([u, v, u ⊙ v, u − v])                                  [B, C]

(the matching head of the Long Range Arena retrieval task, after Conneau et al. 2017).
`encoder`: `transformer` (the Transformer encoder stack, any attention type) or `rnn` (the
`models/rnn.py` encoder: `cell`, `num_layers`, `hidden_dim`, `bidirectional`). `pooling`:
`cls` (a learned [CLS] token prepended, its output; for the RNN the final states), `mean` or
`max` over the valid tokens. The head is Dense(`classifier_dim`)-ReLU-Dropout-Dense(C).
"""

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from models.layers import config_from, embed_module
from models.registry import register
from models.rnn import CELLS, RNNEncoder
from models.transformer_blocks import Encoder, StackConfig, validate_stack

POOLINGS = ("cls", "mean", "max")
ENCODERS = ("transformer", "rnn")


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(StackConfig):
  """`encoder_classifier` / `dual_encoder`: the Transformer stack's fields (`encoder=transformer`)
  or the RNN encoder's (`encoder=rnn`), and the pooling and head."""

  vocab_size: int = 32
  num_classes: int = 2
  num_encoder_layers: int = 2
  pooling: str = "cls"  # cls | mean | max
  classifier_dim: int = 0  # hidden width of the classifier MLP (0: = emb_dim)
  encoder: str = "transformer"  # transformer | rnn
  cell: str = "lstm"  # rnn encoder: simple | lstm | gru
  num_layers: int = 1  # rnn encoder layers
  hidden_dim: int = 0  # rnn encoder width; 0: = emb_dim
  bidirectional: bool = True  # rnn encoder


def classifier_config(model_config: Any, info: Any) -> ClassifierConfig:
  return config_from(
    ClassifierConfig,
    model_config,
    vocab_size=info.vocab_size,
    num_classes=getattr(info, "num_classes", None),
  )


def pool(x: jnp.ndarray, valid: jnp.ndarray, how: str) -> jnp.ndarray:
  """`[B, S, D]`, validity `[B, S]` -> `[B, D]` (mean / max over valid tokens; 0 if none)."""
  v = valid[..., None]
  if how == "mean":
    return (x * v).sum(1) / jnp.maximum(v.sum(1), 1).astype(x.dtype)
  if how == "max":
    return jnp.where(v.any(1), jnp.where(v, x, jnp.finfo(x.dtype).min).max(1), 0)
  raise ValueError(f"pooling={how!r}; valid: {', '.join(POOLINGS)}")


class SequenceEncoder(nn.Module):
  """Token ids `[B, S]` -> one vector per sequence `[B, D]` (Transformer or RNN, pooled)."""

  config: ClassifierConfig

  @nn.compact
  def __call__(self, inputs: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    cfg = self.config
    inputs = inputs.astype(jnp.int32)
    valid = inputs > 0
    if cfg.encoder == "rnn":
      x = embed_module(cfg.vocab_size, cfg.emb_dim, "embedding")(inputs).astype(cfg.compute_dtype)
      x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
      outputs, final = RNNEncoder(
        cfg.cell,
        cfg.hidden_dim or cfg.emb_dim,
        cfg.num_layers,
        cfg.bidirectional,
        cfg.dropout_rate,
        cfg.compute_dtype,
        name="rnn",
      )(x, valid, deterministic)
      return final if cfg.pooling == "cls" else pool(outputs, valid, cfg.pooling)
    if cfg.pooling == "cls":  # id vocab_size is the [CLS] token (one extra embedding row)
      cls_ids = jnp.full((inputs.shape[0], 1), cfg.vocab_size, jnp.int32)
      tokens = jnp.concatenate([cls_ids, inputs], axis=1)
      x = Encoder(cfg, cfg.vocab_size + 1, cfg.num_encoder_layers, name="encoder")(
        tokens, deterministic=deterministic
      )
      return x[:, 0]
    x = Encoder(cfg, cfg.vocab_size, cfg.num_encoder_layers, name="encoder")(
      inputs, deterministic=deterministic
    )
    return pool(x, valid, cfg.pooling)


class ClassifierHead(nn.Module):
  """`[B, F]` -> logits `[B, num_classes]`: Dense-ReLU-Dropout-Dense."""

  config: ClassifierConfig

  @nn.compact
  def __call__(self, z: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    cfg = self.config
    z = nn.Dense(
      cfg.classifier_dim or cfg.emb_dim,
      dtype=cfg.compute_dtype,
      kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("embed", "mlp")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
      name="hidden",
    )(z)
    z = nn.Dropout(rate=cfg.dropout_rate)(nn.relu(z), deterministic=deterministic)
    return nn.Dense(
      cfg.num_classes,
      dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("mlp", None)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
      name="logits",
    )(z).astype(jnp.float32)


def validate_classifier(cfg: ClassifierConfig, info: Any) -> None:
  if not getattr(info, "num_classes", None):
    raise ValueError(f"task kind {info.kind!r} gives no num_classes: a classifier needs them")
  if cfg.pooling not in POOLINGS:
    raise ValueError(f"pooling={cfg.pooling!r}; valid: {', '.join(POOLINGS)}")
  if cfg.encoder not in ENCODERS:
    raise ValueError(f"encoder={cfg.encoder!r}; valid: {', '.join(ENCODERS)}")
  if cfg.encoder == "rnn":
    if cfg.cell not in CELLS:
      raise ValueError(f"cell={cfg.cell!r}; valid: {', '.join(CELLS)}")
    return
  extra = 1 if cfg.pooling == "cls" else 0  # the [CLS] token takes a position
  longest = (getattr(info, "max_input_length", None) or 0) + extra
  validate_stack(cfg, ("self",), (longest,))


@register("encoder_classifier")
class EncoderClassifier(nn.Module):
  """`batch['inputs'] [B, S] -> logits [B, num_classes]`."""

  task_kinds: ClassVar[tuple[str, ...]] = ("classification",)
  supports_packing: ClassVar[bool] = False
  config_class: ClassVar[type] = ClassifierConfig
  config: ClassifierConfig

  @classmethod
  def make_config(cls, model_config: Any, info: Any) -> ClassifierConfig:
    return classifier_config(model_config, info)

  @classmethod
  def validate(cls, cfg: ClassifierConfig, info: Any) -> None:
    validate_classifier(cfg, info)

  @nn.compact
  def __call__(self, batch: dict[str, jnp.ndarray], train: bool = False) -> jnp.ndarray:
    z = SequenceEncoder(self.config, name="sequence_encoder")(batch["inputs"], not train)
    return ClassifierHead(self.config, name="head")(z, not train)


@register("dual_encoder")
class DualEncoder(nn.Module):
  """`batch['inputs'], batch['inputs2'] [B, S] -> logits [B, num_classes]` (shared encoder)."""

  task_kinds: ClassVar[tuple[str, ...]] = ("retrieval",)
  supports_packing: ClassVar[bool] = False
  config_class: ClassVar[type] = ClassifierConfig
  config: ClassifierConfig

  @classmethod
  def make_config(cls, model_config: Any, info: Any) -> ClassifierConfig:
    return classifier_config(model_config, info)

  @classmethod
  def validate(cls, cfg: ClassifierConfig, info: Any) -> None:
    validate_classifier(cfg, info)

  @nn.compact
  def __call__(self, batch: dict[str, jnp.ndarray], train: bool = False) -> jnp.ndarray:
    encoder = SequenceEncoder(self.config, name="sequence_encoder")
    u = encoder(batch["inputs"], not train)
    v = encoder(batch["inputs2"], not train)
    z = jnp.concatenate([u, v, u * v, u - v], axis=-1)
    return ClassifierHead(self.config, name="head")(z, not train)
