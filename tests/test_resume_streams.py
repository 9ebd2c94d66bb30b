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


def _datasets(mode: str, n: int = 300, batch_size: int = 8, **fields):
  config = ml_collections.ConfigDict({"batch_size": batch_size, "seed": 3, "eval_examples": 0})
  if mode != "padded":
    config[mode] = True
  config.update(fields)
  info = TaskInfo(kind="seq2seq", vocab_size=50, max_input_length=12, max_target_length=10)
  evals = {split: _examples(10, i) for i, split in enumerate(SPLITS)}
  splits = {"train": "generated", **{s: "generated" for s in SPLITS}}
  return batching.make_datasets(
    _examples(n, 0), evals, info, config, splits=splits, lengths=LENGTHS
  )


def _take(data, start: int, count: int) -> list[dict[str, np.ndarray]]:
  return list(data.train_dataset(start).take(count).as_numpy_iterator())


@pytest.mark.parametrize(
  ("mode", "fields"),
  [("pack", {}), ("bucket_by_length", {}), ("bucket_by_length", {"batch_tokens": 64})],
)
def test_resumed_stream_equals_the_uninterrupted_one_across_epochs(mode, fields):
  data = _datasets(mode, **fields)
  stream = _take(data, 0, 120)  # several epochs of 300 examples
  for start in (1, 17, 40, 63, 101):
    resumed = _take(data, start, 8)
    for a, b in zip(stream[start : start + 8], resumed, strict=True):
      assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), start


def test_every_epoch_packs_every_example_once_in_its_own_segment():
  """Rebuilt from the packed rows of one epoch, the examples are the corpus, each whole."""
  examples = _examples(2500, 1)  # three chunks of the packing, the last one partial
  lens = np.stack([examples.sequences[k].lengths for k in sorted(LENGTHS)], axis=1)
  layout = batching.pack_layout(lens, [LENGTHS[k] for k in sorted(LENGTHS)], seed=3)
  sequences, _ = batching._to_tf(examples)
  tensors = {
    "order": tf.constant(layout.order, tf.int64),
    "row_splits": tf.constant(layout.row_splits, tf.int64),
    "start": tf.constant(layout.start, tf.int32),
    "segment": tf.constant(layout.segment, tf.int32),
  }
  rows = tf.range(layout.num_rows, dtype=tf.int64)
  packed = batching._packed_rows(sequences, tensors, LENGTHS, sorted(LENGTHS), rows)
  packed = {k: v.numpy() for k, v in packed.items()}
  rebuilt = []
  for r in range(layout.num_rows):
    parts = {}
    for key in sorted(LENGTHS):
      seg, pos, tok = (packed[f"{key}{s}"][r] for s in ("_segmentation", "_position", ""))
      assert ((seg == 0) == (tok == 0)).all()
      for s in np.unique(seg[seg > 0]):
        where = np.flatnonzero(seg == s)
        assert (np.diff(where) == 1).all() and pos[where].tolist() == list(range(len(where)))
        parts.setdefault(s, {})[key] = tuple(tok[where].tolist())
    rebuilt += [(p["inputs"], p["targets"]) for _, p in sorted(parts.items())]
  corpus = [
    (
      tuple(examples.sequences["inputs"][i].tolist()),
      tuple(examples.sequences["targets"][i].tolist()),
    )
    for i in range(len(examples))
  ]
  assert sorted(rebuilt) == sorted(corpus)  # every example once, inputs with its own targets
  assert layout.num_rows < 0.9 * len(examples)  # rows hold several examples


def test_bucketing_with_no_full_bucket_says_what_to_change():
  with pytest.raises(ValueError, match="lower data.batch_size"):
    _datasets("bucket_by_length", n=20, batch_size=16)
  with pytest.raises(ValueError, match="data.batch_tokens=64 needs data.bucket_by_length=True"):
    _datasets("pack", batch_tokens=64)


def _ids(batch, i: int) -> tuple:
  return tuple(tuple(batch[k][i][batch[k][i] > 0].tolist()) for k in sorted(LENGTHS))


def test_batches_by_tokens_fill_each_bucket_to_the_budget_and_an_epoch_visits_each_once():
  """batch_tokens=64, batch_size=2: buckets of length 8 and 12 get 8 and 4 rows (the largest
  multiples of 2 with rows x length <= 64); `batches_per_epoch` batches are one epoch."""
  examples = _examples(300, 0)
  data = _datasets("bucket_by_length", batch_size=2, batch_tokens=64)
  per_epoch = data.batches_per_epoch
  assert per_epoch == int(per_epoch) > 0
  epoch = _take(data, 0, int(per_epoch))
  shapes = {b["inputs"].shape for b in epoch} | {b["targets"].shape for b in epoch}
  assert shapes == {(8, 8), (4, 12)}  # rows x bucket length: 64 and 48 tokens
  seen = [_ids(b, i) for b in epoch for i in range(len(b["inputs"]))]
  corpus = {
    (tuple(examples.sequences["inputs"][i].tolist()), tuple(examples.sequences["targets"][i]
     .tolist())) for i in range(len(examples))
  }  # fmt: skip
  assert len(set(seen)) == len(seen) and set(seen) <= corpus  # each example at most once
  longest = np.maximum(*(examples.sequences[k].lengths for k in sorted(LENGTHS)))
  short = int((longest <= 8).sum())  # bucket 8; the rest in bucket 12
  assert len(seen) == short // 8 * 8 + (300 - short) // 4 * 4  # only partial batches dropped
  # the next epoch is another order of the same examples
  following = _take(data, int(per_epoch), int(per_epoch))
  again = [_ids(b, i) for b in following for i in range(len(b["inputs"]))]
  assert again != seen and len(again) == len(seen)


def test_batches_per_epoch_count_the_batches_of_one_visit():
  """Padded: examples / batch; packed: the rows / batch; buckets: the full batches."""
  assert _datasets("padded").batches_per_epoch == 300 / 8
  examples = _examples(300, 0)
  lens = np.stack([examples.sequences[k].lengths for k in sorted(LENGTHS)], axis=1)
  rows = batching.pack_layout(lens, [LENGTHS[k] for k in sorted(LENGTHS)], seed=3).num_rows
  assert _datasets("pack").batches_per_epoch == rows / 8 < 300 / 8  # rows hold several
  longest = lens.max(axis=1)
  short = int((longest <= 8).sum())  # buckets of length 8 and 12
  assert _datasets("bucket_by_length").batches_per_epoch == short // 8 + (300 - short) // 8
