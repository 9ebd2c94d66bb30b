"""Flax linen models, chosen by name: `build(model_config, info)` picks a family from `REGISTRY`.

    import models
    models.check(config.model, info)          # one-line ValueError before anything compiles
    model = models.build(config.model, info)  # -> nn.Module
    logits = model.apply(variables, batch, train=False)

A family is a `flax.linen.Module` class with a `config` field, registered with `@register(name)`:

* `task_kinds` (class attribute): the task kinds it fits, e.g. `('seq2seq',)`;
* `config_class`: its frozen config dataclass; `make_config(model_config, info)` fills it from
  `config.model` (fields the class lacks are ignored, so a sweep can change only `name`) and the
  task info (vocabulary sizes, classes, lengths);
* `validate(cfg, info)` (classmethod): family-specific checks, raising a one-line ValueError;
* `supports_packing` (class attribute): whether it reads packed batches' segment ids;
* `__call__(batch, train: bool) -> logits` (`[B, T, V]` for seq2seq/lm, `[B, C]` otherwise).
* `decoding_step(variables, batch, max_len, times)` (sequence families, `nn.nowrap`):
  -> (initial state, step) for the family-agnostic searches of `models/decoding.py`.

Layout: one module per family (`transformer.py`, `rnn.py`, `classifier.py`, `lm.py`), each with
its own config dataclass; the Transformer stack shared by four of them in `transformer_blocks.py`;
small shared blocks (embeddings, positions, MLP, norm, residual, masks) in `layers.py`; attention
types in `attention/`; the searches in `decoding.py`.

`info` is duck-typed: `kind`, `vocab_size`, `target_vocab_size`, `num_classes`,
`max_input_length`, `max_target_length`, `eos_id` (models never import `input_pipeline`).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from models import attention
from models.registry import REGISTRY, get, register  # noqa: F401


def known_fields() -> set[str]:
  """Every `config.model` field some registered family reads (plus `name`)."""
  out = {"name"}
  for cls in REGISTRY.values():
    out |= {f.name for f in dataclasses.fields(cls.config_class)}
  return out


def _as_dict(model_config: Mapping[str, Any]) -> dict[str, Any]:
  if hasattr(model_config, "to_dict"):
    return model_config.to_dict()
  return dict(model_config)


def make_config(model_config: Mapping[str, Any], info: Any) -> Any:
  """`config.model` + task info -> the family's frozen config (no checks beyond the field names)."""
  fields = _as_dict(model_config)
  cls = get(fields.get("name", "<missing>"))
  unknown = set(fields) - known_fields()
  if unknown:
    raise ValueError(f"config.model has unknown field(s) {sorted(unknown)}; see docs/models.md")
  return cls.make_config(fields, info)


def check(model_config: Mapping[str, Any], info: Any) -> None:
  """Raise a one-line ValueError if `model_config` cannot be built and run for the task `info`."""
  fields = _as_dict(model_config)
  cls = get(fields.get("name", "<missing>"))
  if info.kind not in cls.task_kinds:
    fitting = [n for n, c in sorted(REGISTRY.items()) if info.kind in c.task_kinds]
    raise ValueError(
      f"model {cls.registry_name!r} fits task kinds {list(cls.task_kinds)}, not {info.kind!r}; "
      f"models for {info.kind!r}: {', '.join(fitting) or 'none'}"
    )
  if "attention" in fields:
    attention.build(fields["attention"])  # unknown type or field
    _check_attention_length(dict(fields["attention"]), fields.get("max_len"))
  cls.validate(make_config(fields, info), info)


def _check_attention_length(attention_fields: dict[str, Any], max_len: int | None) -> None:
  """Types that learn one weight per position (their `length_fields`) must cover the model's
  length."""
  if max_len is None:
    return
  name = attention_fields["name"]
  cls = attention.get(name)
  for field in cls.length_fields:
    have = attention_fields.get(field, getattr(cls, field))
    if have < max_len:
      raise ValueError(
        f"attention {name!r} has {field}={have} < model.max_len={max_len}; "
        f"set --config.model.attention.{field}={max_len}"
      )


def supports_packing(model_config: Mapping[str, Any]) -> bool:
  """Whether the family and its attention type take packed batches (`*_segmentation` keys).

  Packing needs a family that reads segment ids (`supports_packing` class attribute) and an
  attention type that accepts dense masks (`dense_mask`).
  """
  fields = _as_dict(model_config)
  cls = get(fields.get("name", "<missing>"))
  if not getattr(cls, "supports_packing", False):
    return False
  if "attention" not in fields:
    return True
  return attention.get(dict(fields["attention"])["name"]).dense_mask


def build(model_config: Mapping[str, Any], info: Any) -> nn.Module:
  """`config.model` (`name` + family fields) and task info -> an unbound flax Module."""
  check(model_config, info)
  cls = get(_as_dict(model_config)["name"])
  return cls(config=make_config(model_config, info))


# Importing a family module registers it.
from models import classifier, lm, rnn, transformer  # noqa: E402,F401
