"""Tiny test settings for every registered attention type, and a helper that builds one.

A type's fields at the tiny test shapes are its own `test_fields` (the others keep their
defaults); the shared fields come from `SHARED`.
"""

from typing import Any

from models import attention
from models.attention.base import Attention

# Shared fields at test size: 2 heads of width 4 (the inputs have another width, 6).
SHARED: dict[str, Any] = {"num_heads": 2, "qkv_features": 8}


def make(type_name: str, **fields: Any) -> Attention:
  """The registered type at test size; `fields` override type and shared fields (and may give
  the module a `name`)."""
  own = attention.own_fields(type_name)
  overrides = {k: v for k, v in fields.items() if k in own}
  type_fields = {**attention.get(type_name).test_fields, **overrides}
  shared = {**SHARED, **{k: v for k, v in fields.items() if k not in own}}
  unknown = set(shared) - attention.SHARED_FIELDS - {"name"}
  if unknown:
    raise ValueError(f"{type_name}: unknown field(s) {sorted(unknown)}")
  return attention.build({"name": type_name, **type_fields})(**shared)
