"""The tasks by name: a task module registers its `get_datasets` function with `@register`."""

import difflib
from collections.abc import Callable

from input_pipeline.base import Datasets

REGISTRY: dict[str, Callable[..., Datasets]] = {}


def register(name: str):
  def wrap(fn):
    if name in REGISTRY:
      raise ValueError(f"task {name!r} registered twice")
    REGISTRY[name] = fn
    return fn

  return wrap


def get(name: str) -> Callable[..., Datasets]:
  if name not in REGISTRY:
    close = difflib.get_close_matches(str(name), REGISTRY, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown task {name!r}{hint}; valid: {', '.join(sorted(REGISTRY))}")
  return REGISTRY[name]
