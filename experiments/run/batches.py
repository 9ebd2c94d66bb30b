"""Batches between the input pipeline and the devices: a placeholder batch of a dataset's shape,
the train stream put on the devices ahead of the loop, and whole eval splits."""

import collections
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from experiments.run import sharding


def placeholder(dataset, global_batch_size: int, info=None) -> dict[str, np.ndarray]:
  """All-zero batch of the dataset's element spec; a length left open (length-bucketed batches)
  becomes the task's longest (`info.max_target_length` for target features)."""

  def longest(key: str) -> int:
    if info is None:
      raise ValueError(f"batches of feature {key!r} have no fixed length")
    if key.startswith("targets") and info.max_target_length:
      return info.max_target_length
    return info.max_input_length

  return {
    k: np.zeros(
      (global_batch_size, *(d if d is not None else longest(k) for d in v.shape[1:])),
      v.dtype.as_numpy_dtype,
    )
    for k, v in dataset.element_spec.items()
  }


def prefetch(batches: Iterator[dict[str, np.ndarray]], mesh, size: int = 2) -> Iterator:
  """Global device batches `size` steps ahead of the loop, so the host reads and copies the next
  batches while the devices run the current step."""
  queue = collections.deque()
  for batch in batches:
    with jax.transfer_guard("allow"):  # the one intended transfer (multi-process: implicit)
      queue.append(sharding.global_batch(batch, mesh))
    if len(queue) == size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def eval_split(datasets, local_batch_size: int, split: str) -> list[dict[str, np.ndarray]]:
  """Materialises an eval split; processes with fewer batches pad with all-invalid ones."""
  dataset = datasets.eval_dataset(split)
  batches = list(dataset.as_numpy_iterator())
  n = len(batches)
  if jax.process_count() > 1:
    n = int(np.max(multihost_utils.process_allgather(np.array(n))))
  if n == 0:
    raise ValueError(f"the {split} split is empty; set data.eval_examples or check its files")
  filler = placeholder(dataset, local_batch_size)  # all zeros: valid = False
  return batches + [filler] * (n - len(batches))
