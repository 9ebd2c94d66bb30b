"""What every task returns: the datasets and the task description the models are built from."""

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

PAD_ID = 0


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
  """`train_dataset(start_batch)` is infinite and deterministic; `eval_dataset()` is finite."""

  train_dataset: Callable[[int], tf.data.Dataset]
  eval_dataset: Callable[[], tf.data.Dataset]
  info: TaskInfo


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
