"""Synthetic tasks generated in-process (no files, no downloads), deterministic by seed.

Example `i` of a split is a pure function of `(seed, split, i)`, so any process, any batch size
and any resume point see the same examples. Three disjoint generator streams (different stateless
seeds): `train` from `data.seed`; `validation` (selects) and `test` (reports) from fixed seeds,
independent of `data.seed`, so every seed of every compared run is scored on the same examples.
Each eval split is its stream's first `data.eval_examples` examples.
Token ids: 0 = padding, 1 = EOS, 2.. = symbols.

* `copy` / `reverse` / `sort` (seq2seq): inputs x of random length in [min_length, max_length];
  targets x / reversed(x) / sorted(x), followed by EOS.
* `associative_recall` (classification): k1 v1 k2 v2 ... kn vn ? kq -> the value bound to kq.
"""

import ml_collections
import tensorflow as tf

from input_pipeline.base import Datasets, TaskInfo, pad_eval_batches, pick_split
from input_pipeline.registry import register

EOS_ID = 1
FIRST_SYMBOL = 2
# First word of each stream's stateless seed [stream, index]: train streams are even
# (2 * data.seed), the eval streams odd and fixed, so no seed's train stream is an eval stream.
EVAL_STREAMS = {"validation": 1, "test": 3}


def _stream(seed: int, split: str) -> int:
  """The first word of the stateless seeds of `split`'s stream (eval: independent of `seed`)."""
  return 2 * seed if split == "train" else EVAL_STREAMS[split]


def _example_seed(stream: int, index: tf.Tensor) -> tf.Tensor:
  return tf.stack([tf.constant(stream, tf.int64), tf.cast(index, tf.int64)])


def _random_symbols(seed: tf.Tensor, config: ml_collections.ConfigDict):
  """-> (symbols `[max_length]` zero-padded, length)."""
  s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  length = tf.random.stateless_uniform(
    [], s1, config.min_length, config.max_length + 1, dtype=tf.int32
  )
  symbols = tf.random.stateless_uniform(
    [config.max_length], s2, FIRST_SYMBOL, config.vocab_size, dtype=tf.int32
  )
  return tf.where(tf.range(config.max_length) < length, symbols, 0), length


def _seq2seq_example(transform):
  def make(seed, config):
    x, length = _random_symbols(seed, config)
    y = tf.pad(transform(x, length), [[0, 1]])
    targets = tf.where(tf.range(config.max_length + 1) == length, EOS_ID, y)  # EOS after y
    return {"inputs": x, "targets": targets}

  return make


def _reverse(x, length):
  return tf.reverse_sequence(x[None], length[None], seq_axis=1, batch_axis=0)[0]


def _sort(x, length):
  big = tf.where(x > 0, x, tf.int32.max)
  return tf.where(tf.range(tf.shape(x)[0]) < length, tf.sort(big), 0)


def _associative_recall_example(seed, config):
  """Keys are symbols [2, 2 + num_keys), values the next `num_classes` symbols."""
  n = config.num_pairs
  s1, s2, s3 = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  keys = tf.random.experimental.stateless_shuffle(tf.range(config.num_keys), s1)[:n]
  values = tf.random.stateless_uniform([n], s2, 0, config.num_classes, dtype=tf.int32)
  query = tf.random.stateless_uniform([], s3, 0, n, dtype=tf.int32)
  value_offset = FIRST_SYMBOL + config.num_keys
  pairs = tf.reshape(tf.stack([keys + FIRST_SYMBOL, values + value_offset], 1), [-1])
  marker = value_offset + config.num_classes
  inputs = tf.concat([pairs, [marker, keys[query] + FIRST_SYMBOL]], 0)
  return {"inputs": inputs, "label": values[query]}


def _datasets(make_example, info, config, process_index, process_count) -> Datasets:
  if config.batch_size % process_count:
    raise ValueError(
      f"data.batch_size={config.batch_size} must divide by {process_count} processes"
    )
  local = config.batch_size // process_count
  streams = {split: _stream(int(config.seed), split) for split in ("train", *EVAL_STREAMS)}

  def examples(split, indices):
    stream = streams[split]
    return indices.map(
      lambda i: make_example(_example_seed(stream, i), config),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
    )

  def train_dataset(start_batch: int) -> tf.data.Dataset:
    first = config.batch_size * start_batch + local * process_index
    batches = tf.data.Dataset.range(start_batch, 2**62).map(
      lambda b: first + (b - start_batch) * config.batch_size + tf.range(local, dtype=tf.int64)
    )
    ds = examples("train", batches.unbatch()).batch(local, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)

  def eval_dataset(split: str = "validation") -> tf.data.Dataset:
    pick_split(split, EVAL_STREAMS)
    _check_eval_examples(config)
    indices = tf.data.Dataset.range(config.eval_examples).shard(process_count, process_index)
    return pad_eval_batches(examples(split, indices), local)

  splits = {
    "train": f"{config.name} generator stream 'train' (data.seed={config.seed})",
    **{s: f"{config.name} generator stream {s!r}" for s in EVAL_STREAMS},
  }
  return Datasets(train_dataset, eval_dataset, info, splits)


def _check_eval_examples(config) -> None:
  if config.eval_examples <= 0:
    raise ValueError(
      f"data.eval_examples={config.eval_examples}: a generated task's eval split is its "
      "stream's first eval_examples examples; set a positive number"
    )


def check_sequences(config) -> None:
  """Fields of copy / reverse / sort: a vocabulary beyond padding and EOS, 1 <= min <= max."""
  if config.vocab_size < FIRST_SYMBOL + 1:
    raise ValueError(
      f"data.vocab_size={config.vocab_size} leaves no symbols (0 is padding, 1 EOS); set >= "
      f"{FIRST_SYMBOL + 1}"
    )
  if not 1 <= config.min_length <= config.max_length:
    raise ValueError(
      f"data.min_length={config.min_length}, data.max_length={config.max_length}: need "
      "1 <= min_length <= max_length"
    )
  _check_eval_examples(config)


def check_recall(config) -> None:
  """Fields of associative_recall: distinct keys for every pair, at least two classes."""
  if not 1 <= config.num_pairs <= config.num_keys:
    raise ValueError(
      f"data.num_pairs={config.num_pairs} must be in [1, data.num_keys={config.num_keys}]"
    )
  if config.num_classes < 2:
    raise ValueError(f"data.num_classes={config.num_classes} must be >= 2")
  _check_eval_examples(config)


def _register_seq2seq(name: str, transform) -> None:
  @register(name, check=check_sequences)
  def task(config, *, workdir=None, process_index=0, process_count=1) -> Datasets:
    del workdir
    check_sequences(config)
    info = TaskInfo(
      kind="seq2seq",
      vocab_size=config.vocab_size,
      target_vocab_size=config.vocab_size,
      max_input_length=config.max_length,
      max_target_length=config.max_length + 1,
      eos_id=EOS_ID,
      detokenize=_detokenize,
    )
    return _datasets(_seq2seq_example(transform), info, config, process_index, process_count)

  task.__doc__ = f"Synthetic `{name}` seq2seq task (fields: vocab_size, min/max_length)."


def _detokenize(ids) -> str:
  return " ".join(str(int(i)) for i in ids if i >= FIRST_SYMBOL)


_register_seq2seq("copy", lambda x, length: x)
_register_seq2seq("reverse", _reverse)
_register_seq2seq("sort", _sort)


@register("associative_recall", check=check_recall)
def associative_recall(config, *, workdir=None, process_index=0, process_count=1) -> Datasets:
  """Recall the value bound to a queried key (fields: num_pairs, num_keys, num_classes)."""
  del workdir
  check_recall(config)
  info = TaskInfo(
    kind="classification",
    vocab_size=FIRST_SYMBOL + config.num_keys + config.num_classes + 1,
    max_input_length=2 * config.num_pairs + 2,
    num_classes=config.num_classes,
    detokenize=_detokenize,
  )
  return _datasets(_associative_recall_example, info, config, process_index, process_count)
