"""Attention registry: every type is registered by a snake_case name.

    from models import attention
    make = attention.build({"name": "scaled_dot", "implementation": "xla"})
    layer = make(num_heads=8, causal=True)        # shared fields supplied by the model
    y = layer(x, mask=m)                          # -> [B, T, D]

A new type: write `models/attention/<family>.py` with a `@register("name")` class (from
`models.attention.registry`) deriving from `base.Attention`, and import the module below. The
parameterised tests pick it up automatically.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

from models.attention.base import Attention
from models.attention.registry import REGISTRY, get, register  # noqa: F401

SHARED_FIELDS = frozenset(f.name for f in dataclasses.fields(Attention)) - {"parent", "name"}
# Shared fields `config.model.attention` may set explicitly: the attention's shape, which each
# model family otherwise gives a type itself (the RNN: one head of its hidden width; the
# Transformer: `num_heads`, `qkv_dim`). `build` leaves them to the family (`shape_fields`).
SHAPE_FIELDS = frozenset({"num_heads", "qkv_features"})


def shape_fields(config: Mapping[str, Any]) -> dict[str, Any]:
  """The shape fields (`SHAPE_FIELDS`) that an attention config sets explicitly."""
  return {k: v for k, v in dict(config).items() if k in SHAPE_FIELDS}


def own_fields(name: str) -> set[str]:
  """The fields a type adds to the shared ones (what `config.model.attention` may set)."""
  cls = get(name)
  return {f.name for f in dataclasses.fields(cls)} - SHARED_FIELDS - {"parent", "name"}


def build(config: Mapping[str, Any]) -> Callable[..., Attention]:
  """`{"name": ..., **type_fields}` -> constructor taking the shared fields (num_heads, ...);
  shape fields in `config` are the model family's to read (`shape_fields`)."""
  fields = dict(config)
  name = fields.pop("name")
  cls = get(name)
  # Fields of other registered types are ignored, so a sweep can change only the name.
  known_anywhere = set().union(*(own_fields(n) for n in REGISTRY))
  unknown = set(fields) - known_anywhere - SHAPE_FIELDS
  if unknown:
    raise ValueError(
      f"attention {name!r} has no field(s) {sorted(unknown)}; "
      f"valid: {sorted(own_fields(name)) or 'none'}"
    )
  return functools.partial(cls, **{k: v for k, v in fields.items() if k in own_fields(name)})


# Importing a family module registers its types.
from models.attention import additive  # noqa: E402,F401,I001
from models.attention import convolutional  # noqa: E402,F401
from models.attention import local  # noqa: E402,F401
from models.attention import location_sensitive  # noqa: E402,F401
from models.attention import luong  # noqa: E402,F401
from models.attention import memory_efficient  # noqa: E402,F401
from models.attention import recurrent  # noqa: E402,F401
from models.attention import scaled_dot  # noqa: E402,F401
from models.attention import linear  # noqa: E402,F401
from models.attention import linformer  # noqa: E402,F401
from models.attention import performer  # noqa: E402,F401
from models.attention import sliding_window  # noqa: E402,F401
from models.attention import longformer  # noqa: E402,F401
from models.attention import bigbird  # noqa: E402,F401
from models.attention import sparse_fixed  # noqa: E402,F401
from models.attention import sinkhorn  # noqa: E402,F401
from models.attention import lsh  # noqa: E402,F401
from models.attention import synthesizer  # noqa: E402,F401
