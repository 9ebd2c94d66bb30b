"""The tasks by name: a task module registers its `get_datasets` function with `@register`,
optionally with `check(data_config)`: its field rules, raising a one-line ValueError, run before
any data is read (`input_pipeline.check`)."""

import difflib
from collections.abc import Callable

from input_pipeline.base import Datasets

REGISTRY: dict[str, Callable[..., Datasets]] = {}
CHECKS: dict[str, Callable[..., None]] = {}


def register(name: str, check: Callable[..., None] | None = None):
  def wrap(fn):
    if name in REGISTRY:
      raise ValueError(f"task {name!r} registered twice")
    REGISTRY[name] = fn
    if check is not None:
      CHECKS[name] = check
    return fn

  return wrap


def check(data_config) -> None:
  """The batching rules and the task's own field rules (a one-line ValueError)."""
  from input_pipeline.batching import check_batching  # TensorFlow: only once a config is checked

  get(data_config.name)
  check_batching(data_config)
  if data_config.name in CHECKS:
    CHECKS[data_config.name](data_config)


def get(name: str) -> Callable[..., Datasets]:
  if name not in REGISTRY:
    close = difflib.get_close_matches(str(name), REGISTRY, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown task {name!r}{hint}; valid: {', '.join(sorted(REGISTRY))}")
  return REGISTRY[name]
