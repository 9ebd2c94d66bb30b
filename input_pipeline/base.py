"""What every task returns: the datasets and the task description the models are built from."""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import tensorflow as tf

PAD_ID = 0
# The eval splits every task provides: validation selects (checkpoints, hyperparameters), test
# reports (evaluated once, on the selected checkpoint).
SPLITS = ("validation", "test")


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """Static facts about a task that models, losses and reports need."""

  kind: str  # 'seq2seq' | 'classification' | 'retrieval' | 'lm'
  vocab_size: int
  max_input_length: int
  target_vocab_size: int | None = None  # seq2seq; None = same as vocab_size
  max_target_length: int | None = None
  num_classes: int | None = None  # classification / retrieval
  eos_id: int | None = None
  detokenize: Callable[[np.ndarray], str] | None = None  # ids -> text (reports, BLEU)


@dataclasses.dataclass(frozen=True)
class Datasets:
  """`train_dataset(start_batch)` is infinite and deterministic; `eval_dataset(split)` is finite.

  `eval_dataset(split="validation")` takes a split of `SPLITS`; `splits` says, for results.json,
  where "train", "validation" and "test" come from (files, tfds splits, generator streams).
  `references[split]`: the raw target text of an eval split, one string per example in split
  order, as evaluated (`eval_examples` applied), for tasks scored on text (BLEU); empty where
  a task has none. `lengths`: what the length limits did to each split (`{"train": {"examples":
  n, "dropped": k}, "validation": {"examples": n, "cut": k}, ...}`, for results.json).
  """

  train_dataset: Callable[[int], tf.data.Dataset]
  eval_dataset: Callable[..., tf.data.Dataset]
  info: TaskInfo
  splits: Mapping[str, str]
  references: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
  lengths: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
  # train batches in one epoch (one visit of every training example kept), all processes
  # together: the unit of schedules given in epochs (experiments/run/epochs.py); None where
  # unknown (generated streams, packed or bucketed batches of a split read per process)
  batches_per_epoch: float | None = None


T = TypeVar("T")


def pick_split(split: str, splits: Mapping[str, T]) -> T:
  """`splits[split]` for a split of `SPLITS`, else a ValueError naming the valid splits."""
  if split not in SPLITS:
    raise ValueError(f"unknown eval split {split!r}; valid: {', '.join(SPLITS)}")
  return splits[split]


def pad_eval_batches(ds: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
  """Batch a finite dataset of examples keeping the last partial batch.

  The last batch is padded to `batch_size` with all-zero examples marked `valid = False`, so
  batch shapes are static and eval metrics cover every example exactly once.
  """
  ds = ds.map(lambda ex: {**ex, "valid": tf.constant(True)})
  ds = ds.batch(batch_size, drop_remainder=False)

  def pad(batch):
    n = tf.shape(batch["valid"])[0]
    return {
      k: tf.pad(v, [[0, batch_size - n]] + [[0, 0]] * (len(v.shape) - 1)) for k, v in batch.items()
    }

  return ds.map(pad).prefetch(tf.data.AUTOTUNE)
