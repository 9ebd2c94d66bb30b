"""Tiny test settings for every registered attention type, and a helper that builds one.

`FIELDS` maps a registered name to the type fields used at the tiny test shapes (a type with no
entry is built with its defaults). The shared fields come from `SHARED`.
"""

from typing import Any

from models import attention
from models.attention.base import Attention

# Shared fields at test size: 2 heads of width 4 (the inputs have another width, 6).
SHARED: dict[str, Any] = {"num_heads": 2, "qkv_features": 8}

FIELDS: dict[str, dict] = {
  "additive": {},
  "convolutional": {"kernel_size": 3},
  "dot": {},
  "general": {},
  "local": {"mode": "predictive", "window": 2, "score": "additive"},
  "location": {"max_length": 16},
  "location_sensitive": {"num_filters": 3, "kernel_size": 3},
  "memory_efficient": {"num_kv_heads": 1, "query_chunk_size": 3, "key_chunk_size": 2},
  "recurrent": {"hidden_size": 8},
  "scaled_dot": {},
  "sliding_window": {"window": 2},
  "linear": {"chunk_size": 3},
  "performer": {"num_features": 16, "chunk_size": 3},
  "linformer": {"k": 4, "max_length": 16},
  "longformer": {"window": 1, "global_tokens": 1},
  "bigbird": {"block_size": 2, "num_global_blocks": 1, "num_random_blocks": 1},
  "sparse_fixed": {"stride": 2, "num_summary": 1},
  "sinkhorn": {"block_size": 2, "max_length": 16},
  "lsh": {"bucket_size": 1, "num_hashes": 2},
  "synthesizer": {"variant": "dense", "max_length": 16, "mix_dot": True},
}


def make(type_name: str, **fields: Any) -> Attention:
  """The registered type at test size; `fields` override type and shared fields (and may give
  the module a `name`)."""
  own = attention.own_fields(type_name)
  type_fields = {**FIELDS.get(type_name, {}), **{k: v for k, v in fields.items() if k in own}}
  shared = {**SHARED, **{k: v for k, v in fields.items() if k not in own}}
  unknown = set(shared) - attention.SHARED_FIELDS - {"name"}
  if unknown:
    raise ValueError(f"{type_name}: unknown field(s) {sorted(unknown)}")
  return attention.build({"name": type_name, **type_fields})(**shared)
