"""Input pipelines: `get_datasets(config.data)` picks a task from `REGISTRY` by `config.data.name`.

A task is a function `(data_config, *, workdir, process_index, process_count) -> Datasets`
(a training stream and the eval splits `SPLITS`: validation selects, test reports), registered
with `@register("name")` (input_pipeline/registry.py) in its own module, imported at the bottom
of this file.
"""

import ml_collections

from input_pipeline.base import SPLITS, Datasets, TaskInfo
from input_pipeline.registry import REGISTRY, check, get, register

__all__ = [
  "REGISTRY", "SPLITS", "Datasets", "TaskInfo", "check", "get", "get_datasets", "register",
]  # fmt: skip


def get_datasets(
  config: ml_collections.ConfigDict,
  *,
  workdir: str | None = None,
  process_index: int = 0,
  process_count: int = 1,
) -> Datasets:
  """Datasets for `config.name`; batches are per process (`config.batch_size // process_count`)."""
  return get(config.name)(
    config, workdir=workdir, process_index=process_index, process_count=process_count
  )


from input_pipeline import synthetic  # noqa: E402,F401

# isort: split
from input_pipeline import (  # noqa: E402,F401
  image_sequence,
  listops,
  lm,
  retrieval,
  text_classification,
  translation,
)
