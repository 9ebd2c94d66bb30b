"""The model families by name: a family module registers its flax Module class with
`@register`."""

import difflib
from collections.abc import Callable

import flax.linen as nn

REGISTRY: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
  def wrap(cls: type[nn.Module]) -> type[nn.Module]:
    if name in REGISTRY:
      raise ValueError(f"model family {name!r} registered twice")
    REGISTRY[name] = cls
    cls.registry_name = name
    return cls

  return wrap


def get(name: str) -> type[nn.Module]:
  if name not in REGISTRY:
    close = difflib.get_close_matches(str(name), REGISTRY, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown model {name!r}{hint}; valid: {', '.join(sorted(REGISTRY))}")
  return REGISTRY[name]
