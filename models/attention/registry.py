"""The attention types by name: a type's module registers its class with `@register`."""

import difflib
from collections.abc import Callable

from models.attention.base import Attention

REGISTRY: dict[str, type[Attention]] = {}


def register(name: str) -> Callable[[type[Attention]], type[Attention]]:
  def wrap(cls: type[Attention]) -> type[Attention]:
    if name in REGISTRY:
      raise ValueError(f"attention type {name!r} registered twice")
    REGISTRY[name] = cls
    cls.registry_name = name
    return cls

  return wrap


def get(name: str) -> type[Attention]:
  if name not in REGISTRY:
    close = difflib.get_close_matches(str(name), REGISTRY, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown attention {name!r}{hint}; valid: {', '.join(sorted(REGISTRY))}")
  return REGISTRY[name]
