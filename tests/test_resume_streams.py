"""Resuming a packed or length-bucketed train stream at batch N gives the very batches an
uninterrupted stream gives from N, across epoch boundaries, without replaying the batches
before N (the start is located from the example lengths alone)."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import batching
from input_pipeline.base import SPLITS, TaskInfo

LENGTHS = {"inputs": 12, "targets": 10}


def _examples(n: int, seed: int) -> batching.Examples:
  rng = np.random.default_rng(seed)
  return batching.Examples(
    {
      k: batching.Ragged.from_sequences(
        [rng.integers(1, 50, rng.integers(1, cap + 1)) for _ in range(n)]
      )
      for k, cap in LENGTHS.items()
    }
  )


def _datasets(mode: str, n: int = 300, batch_size: int = 8):
  config = ml_collections.ConfigDict({"batch_size": batch_size, "seed": 3, "eval_examples": 0})
  config[mode] = True
  info = TaskInfo(kind="seq2seq", vocab_size=50, max_input_length=12, max_target_length=10)
  evals = {split: _examples(10, i) for i, split in enumerate(SPLITS)}
  splits = {"train": "generated", **{s: "generated" for s in SPLITS}}
  return batching.make_datasets(
    _examples(n, 0), evals, info, config, splits=splits, lengths=LENGTHS
  )


def _take(data, start: int, count: int) -> list[dict[str, np.ndarray]]:
  return list(data.train_dataset(start).take(count).as_numpy_iterator())


@pytest.mark.parametrize("mode", ["pack", "bucket_by_length"])
def test_resumed_stream_equals_the_uninterrupted_one_across_epochs(mode):
  data = _datasets(mode)
  stream = _take(data, 0, 120)  # several epochs of 300 examples
  for start in (1, 17, 40, 63, 101):
    resumed = _take(data, start, 8)
    for a, b in zip(stream[start : start + 8], resumed, strict=True):
      assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), start


def test_packed_start_counts_the_rows_next_fit_makes():
  """The vectorised row count agrees with packing the chunks for real."""
  examples = _examples(2500, 1)  # three chunks per epoch, the last one partial
  lens = np.stack([examples.sequences[k].lengths for k in sorted(LENGTHS)], axis=1)
  caps = [LENGTHS[k] for k in sorted(LENGTHS)]
  sequences, _ = batching._to_tf(examples)
  real = []
  for chunk in batching._epoch_chunks(len(examples), 3, 0, 0).take(6):  # two epochs
    rows = batching.pack_rows(
      batching._gather(sequences, {}, LENGTHS, chunk, dense=False), LENGTHS
    )
    real.append(int(tf.shape(rows["inputs"])[0]))
  boundaries = np.cumsum(real)
  for chunk, first_row in enumerate([0, *boundaries[:-1]]):
    for offset in (0, 1, real[chunk] - 1):
      epoch, in_epoch, row = batching.packed_start(lens, caps, 3, int(first_row) + offset)
      assert (epoch * 3 + in_epoch, row) == (chunk, offset)


def test_bucketing_with_no_full_bucket_says_what_to_change():
  with pytest.raises(ValueError, match="lower data.batch_size"):
    _datasets("bucket_by_length", n=20, batch_size=16).train_dataset(0)
