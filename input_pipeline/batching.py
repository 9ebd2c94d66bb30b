"""Shared batching for every file/tfds task: in-memory examples -> deterministic tf.data batches.

A task loads its splits once into `Examples` (numpy: ragged token sequences + scalar features,
tokenised at load time, optionally cached in the workdir) and hands them to `make_datasets`, which
builds the train stream and the two eval splits (`base.SPLITS`: validation selects, test reports)
of the batch contract in docs/architecture.md:

* train: an infinite stream. Epoch `e` visits this process's examples in the order
  `stateless_shuffle(range(n), seed=[data.seed, e])`; the stream is then batched in one of three
  ways (`data.pack`, `data.bucket_by_length`, or neither):

  - padded (default): every sequence padded (with 0) to its task maximum -> static shapes
    `[B, L]`, one `tf.gather` per batch. Resuming at `start_batch` jumps straight to example
    `start_batch * B` of the stream (no replay).
  - `pack` (seq2seq / lm): several examples share one row, flax `examples/wmt` style. Adds
    `<key>_segmentation` (1, 2, ... per example in a row, 0 = padding) and `<key>_position`
    (0, 1, ... restarting per example) for every sequence key. The examples are packed once
    (`pack_layout`: next fit in chunks of `PACK_CHUNK` of a seeded order; an example goes to the
    same row and segment in every key, inputs and targets never mix); epoch `e` visits the rows
    in the order `stateless_shuffle(range(R), seed=[data.seed, e])`. So every epoch has the same
    R rows, and resuming at `start_batch` jumps straight to row `start_batch * B` (no replay).
  - `bucket_by_length`: examples grouped by length into buckets with boundaries at powers of two
    (8, 16, ..., max length); each batch is padded to its bucket boundary, so the length dimension
    varies between batches (one compiled step per bucket). Batches hold `batch_size` rows, or,
    with `batch_tokens` (fairseq's --max-tokens), about that many tokens per sequence key: a
    bucket of length b gets the largest multiple of `batch_size` rows with rows x b <=
    batch_tokens (at least `batch_size`), so short sentences come in large batches.
    Buckets are filled per epoch (`_bucket_batches`: a partial bucket at an epoch's end is
    dropped), so every epoch has the same number of batches, computed from the lengths alone;
    resuming at `start_batch` starts at its epoch and batch without replaying earlier ones.

  `Datasets.batches_per_epoch` is what one epoch of this stream is (all processes together, one
  visit of every training example kept): examples / batch_size (padded), rows / batch_size
  (packed), the full buckets' batches (bucketed); the unit of schedules given in epochs.

* eval (`eval_dataset("validation")`, `eval_dataset("test")`): every example of this process's
  shard of that split once, in file order, padded to the task maxima;
  the last partial batch is padded and masked with `valid = False` (`base.pad_eval_batches`).
  With `pack`, eval batches are not packed but carry the same keys (segment 1 on tokens, positions
  0..len-1), so train and eval batches have the same structure.

Multi-process: each process keeps a disjoint share. Given a whole split, `make_datasets` keeps
the examples `process_index, process_index + process_count, ...` (what `Dataset.shard(
process_count, process_index)` keeps); tfds tasks read only their share of the (large) train split
with `tfds_split(...)` (a `tfds.even_splits` shard) and pass `train_sharded=True`. Eval splits are
small: read whole, cut to `eval_examples`, then sharded by index. Batches are
`batch_size // process_count` per process.
"""

import dataclasses
import hashlib
import io
import itertools
import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from input_pipeline.base import SPLITS, Datasets, TaskInfo, pad_eval_batches, pick_split

PACK_CHUNK = 1024  # examples packed together (part of the deterministic stream: do not vary)
MIN_BUCKET = 8
_FOREVER = 2**62


@dataclasses.dataclass(frozen=True)
class Ragged:
  """`n` variable-length integer sequences: sequence i is `values[splits[i]:splits[i + 1]]`."""

  values: np.ndarray  # [total] (smallest integer dtype that holds the ids)
  splits: np.ndarray  # [n + 1] int64, splits[0] = 0

  @classmethod
  def from_sequences(cls, seqs: Sequence[Sequence[int]], max_id: int | None = None) -> "Ragged":
    lengths = np.fromiter((len(s) for s in seqs), np.int64, count=len(seqs))
    splits = np.zeros(len(seqs) + 1, np.int64)
    np.cumsum(lengths, out=splits[1:])
    values = np.fromiter(itertools.chain.from_iterable(seqs), np.int64, count=int(splits[-1]))
    return cls(values.astype(id_dtype(max_id if max_id is not None else _max(values))), splits)

  @classmethod
  def from_dense(cls, array: np.ndarray) -> "Ragged":
    """`[n, L]` -> n sequences of length L each."""
    n, length = array.shape
    return cls(array.reshape(-1), np.arange(n + 1, dtype=np.int64) * length)

  def __len__(self) -> int:
    return len(self.splits) - 1

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.splits)

  def __getitem__(self, i: int) -> np.ndarray:
    return self.values[self.splits[i] : self.splits[i + 1]]

  def take(self, indices: np.ndarray) -> "Ragged":
    """The sequences at `indices`, in that order."""
    starts, lengths = self.splits[indices], self.lengths[indices]
    splits = np.zeros(len(indices) + 1, np.int64)
    np.cumsum(lengths, out=splits[1:])
    offsets = np.repeat(starts - splits[:-1], lengths)
    return Ragged(self.values[np.arange(splits[-1]) + offsets], splits)

  def truncate(self, max_length: int, keep_last: bool = False) -> "Ragged":
    """Keep the first `max_length` ids of every sequence (with `keep_last`: the first
    `max_length - 1` and the sequence's last id, e.g. EOS)."""
    if len(self) == 0 or self.lengths.max() <= max_length:
      return self
    lengths = np.minimum(self.lengths, max_length)
    keep = np.arange(len(self.values)) - np.repeat(self.splits[:-1], self.lengths)
    keep = keep < np.repeat(lengths, self.lengths)
    splits = np.zeros(len(self) + 1, np.int64)
    np.cumsum(lengths, out=splits[1:])
    values = self.values[keep]
    if keep_last:
      cut = np.flatnonzero(self.lengths > max_length)
      values[splits[cut + 1] - 1] = self.values[self.splits[cut + 1] - 1]
    return Ragged(values, splits)


def id_dtype(max_id: int) -> np.dtype:
  """The smallest dtype for ids in [0, max_id] (memory; batches cast ids to int32)."""
  for dtype in (np.uint8, np.uint16, np.int32):
    if max_id <= np.iinfo(dtype).max:
      return np.dtype(dtype)
  raise ValueError(f"token id {max_id} does not fit int32")


def _max(values: np.ndarray) -> int:
  return int(values.max()) if values.size else 0


@dataclasses.dataclass(frozen=True)
class Examples:
  """One split in memory: `sequences[k]` ragged token ids, `scalars[k]` `[n]` (e.g. labels)."""

  sequences: dict[str, Ragged]
  scalars: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    sizes = {k: len(v) for k, v in {**self.sequences, **self.scalars}.items()}
    if len(set(sizes.values())) > 1:
      raise ValueError(f"features have different numbers of examples: {sizes}")

  def __len__(self) -> int:
    return len(next(iter(self.sequences.values())))

  def take(self, indices: np.ndarray) -> "Examples":
    return Examples(
      {k: v.take(indices) for k, v in self.sequences.items()},
      {k: v[indices] for k, v in self.scalars.items()},
    )

  def first(self, n: int | None) -> "Examples":
    """The first `n` examples (all if `n` is falsy)."""
    return self.take(np.arange(min(n, len(self)))) if n else self

  def shard(self, process_index: int, process_count: int) -> "Examples":
    """Examples i with i % process_count == process_index (= `Dataset.shard`)."""
    if process_count == 1:
      return self
    return self.take(np.arange(process_index, len(self), process_count))

  def truncate(self, lengths: Mapping[str, int], keep_last: bool = False) -> "Examples":
    """Every sequence cut to its maximum (with `keep_last`, its last id, e.g. EOS, kept)."""
    return Examples(
      {k: v.truncate(lengths[k], keep_last) for k, v in self.sequences.items()},
      dict(self.scalars),
    )

  def longer(self, lengths: Mapping[str, int]) -> np.ndarray:
    """`[n]` bool: the examples with some sequence longer than its maximum."""
    out = np.zeros(len(self), bool)
    for k, v in self.sequences.items():
      out |= v.lengths > lengths[k]
    return out

  def filter_longer(self, lengths: Mapping[str, int]) -> "Examples":
    """Drop examples with any sequence longer than its maximum (flax wmt's training filter)."""
    keep = ~self.longer(lengths)
    return self if keep.all() else self.take(np.flatnonzero(keep))


# ----------------------------------------------------------------------------------------------
# Cache: tokenised splits as .npz in the workdir, so tokenisation runs once per run directory.


def cache_key(**parts) -> str:
  """A short stable hash of JSON-able `parts` (config fields, file identities, vocab hash)."""
  text = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_identity(path: str) -> dict:
  """What identifies a file's content cheaply: path, size, modification time."""
  stat = tf.io.gfile.stat(path)
  return {"path": path, "size": stat.length, "mtime": stat.mtime_nsec}


def cached(
  workdir: str | None, name: str, key: str, build: Callable[[], dict[str, Examples]]
) -> dict[str, Examples]:
  """`build()` once, stored as `workdir/data_cache/<name>-<key>.npz`; no cache without workdir."""
  if not workdir:
    return build()
  path = os.path.join(workdir, "data_cache", f"{name}-{key}.npz")
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path, "rb") as f:
      return _from_npz(np.load(io.BytesIO(f.read()), allow_pickle=False))
  splits = build()
  tf.io.gfile.makedirs(os.path.dirname(path))
  tmp = f"{path}.tmp-{uuid.uuid4().hex}"
  buffer = io.BytesIO()
  np.savez(buffer, **_to_npz(splits))
  with tf.io.gfile.GFile(tmp, "wb") as f:
    f.write(buffer.getvalue())
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return splits


def _to_npz(splits: dict[str, Examples]) -> dict[str, np.ndarray]:
  out = {}
  for split, ex in splits.items():
    for k, v in ex.sequences.items():
      out[f"{split}/seq/{k}/values"], out[f"{split}/seq/{k}/splits"] = v.values, v.splits
    for k, v in ex.scalars.items():
      out[f"{split}/scalar/{k}"] = v
  return out


def _from_npz(data) -> dict[str, Examples]:
  splits: dict[str, Examples] = {}
  for name in data.files:
    split, kind, key, *rest = name.split("/")
    ex = splits.setdefault(split, Examples({}, {}))
    if kind == "scalar":
      ex.scalars[key] = data[name]
    elif rest == ["values"]:
      ex.sequences[key] = Ragged(data[name], data[f"{split}/seq/{key}/splits"])
  return splits


# ----------------------------------------------------------------------------------------------
# tfds


def tfds_split(split: str, process_index: int, process_count: int):
  """This process's disjoint share of a tfds split (`tfds.split_for_jax_process` without jax)."""
  if process_count == 1:
    return split
  return tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]


def tfds_splits(config, defaults: Mapping[str, str]) -> dict[str, str]:
  """The tfds split strings of train and `SPLITS`: `config.<split>_split` (`train_split`,
  `validation_split`, `test_split`) where set, else `defaults[split]`."""
  return {s: config.get(f"{s}_split") or defaults[s] for s in ("train", *SPLITS)}


def load_tfds(name: str, split, data_dir: str | None, **kwargs) -> tf.data.Dataset:
  """`tfds.load` of an already built dataset, or a FileNotFoundError saying how to build it."""
  try:
    return tfds.load(name, split=split, data_dir=data_dir, download=False, **kwargs)
  except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as e:
    where = f" --data_dir={data_dir}" if data_dir else ""
    raise FileNotFoundError(
      f"tfds dataset {name!r} (split {split}) is not prepared in "
      f"{data_dir or 'the default tfds data dir'}; on a machine with network access run "
      f"`tfds build {name}{where}` (and copy the directory here): {e}"
    ) from None


# ----------------------------------------------------------------------------------------------
# Batching


def _to_tf(examples: Examples) -> tuple[dict[str, tuple], dict[str, tf.Variable]]:
  """Arrays -> non-trainable variables. tf.data functions capture variables by handle; captured
  tensors would be copied into the dataset graph (seconds and gigabytes for WMT / LM1B)."""

  def var(x: np.ndarray) -> tf.Variable:
    return tf.Variable(x, trainable=False)

  return (
    {k: (var(v.values), var(v.splits)) for k, v in examples.sequences.items()},
    {k: var(v) for k, v in examples.scalars.items()},
  )


def _permutation(n: int, seed: int, epoch) -> tf.Tensor:
  """Epoch `epoch`'s order of the examples: a seeded permutation of range(n)."""
  return tf.random.experimental.stateless_shuffle(
    tf.range(n, dtype=tf.int64),
    seed=tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]),
  )


def _epoch_indices(n: int, seed: int, first_epoch: int) -> tf.data.Dataset:
  """Indices of an infinite stream of epochs, each a seeded permutation of range(n)."""
  epochs = tf.data.Dataset.range(first_epoch, _FOREVER)
  return epochs.flat_map(lambda e: tf.data.Dataset.from_tensor_slices(_permutation(n, seed, e)))


def _gather(sequences, scalars, lengths, idx, dense: bool):
  """Examples `idx` (`[N]`) -> dict of `[N, L_k]` int32 (dense) or ragged `[N, None]` int32."""
  out = {}
  for k, (values, splits) in sequences.items():
    where = tf.ragged.range(tf.gather(splits, idx), tf.gather(splits, idx + 1))
    rows = where.with_flat_values(tf.cast(tf.gather(values, where.flat_values), tf.int32))
    out[k] = rows.to_tensor(0, shape=[idx.shape[0], lengths[k]]) if dense else rows
  for k, v in scalars.items():
    out[k] = tf.cast(tf.gather(v, idx), tf.int32)
  return out


@tf.function(jit_compile=True)  # XLA: the sequential loop runs ~200x faster than in graph mode
def _next_fit(lens: tf.Tensor, caps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Next fit inside each chunk `lens [C, PACK_CHUNK, K]` (zero lengths: no example), all chunks
  at once: per example its row in the chunk (-1: none), its first column per key and its
  segment (1, 2, ... in its row). An example starts a new row when any key would overflow."""

  def place(state, length):  # length [C, K]
    row, used, segment, _ = state
    real = tf.reduce_any(length > 0, axis=1)
    new = real & ~tf.reduce_all(used + length <= caps, axis=1)
    start = tf.where(new[:, None], tf.zeros_like(used), used)
    segment = tf.where(new, tf.ones_like(segment), segment + tf.cast(real, tf.int32))
    return row + tf.cast(new, tf.int32), start + length, segment, start

  c = tf.shape(lens)[0]
  zeros = tf.zeros([c], tf.int32)
  init = (zeros - 1, tf.zeros_like(lens[:, 0]) + caps + 1, zeros, tf.zeros_like(lens[:, 0]))
  rows, _, segments, starts = tf.scan(place, tf.transpose(lens, [1, 0, 2]), initializer=init)
  return tf.transpose(rows), tf.transpose(starts, [1, 0, 2]), tf.transpose(segments)


@dataclasses.dataclass(frozen=True)
class PackLayout:
  """Where every training example sits in the packed rows: examples in `order` (a seeded
  permutation), row r holding `order[row_splits[r]:row_splits[r + 1]]`, each example at
  column `start[:, k]` of key k with segment id `segment`."""

  order: np.ndarray  # [n] example ids
  row_splits: np.ndarray  # [R + 1]
  start: np.ndarray  # [n, K] (in `order`)
  segment: np.ndarray  # [n]

  @property
  def num_rows(self) -> int:
    return len(self.row_splits) - 1


def pack_layout(lens: np.ndarray, caps: Sequence[int], seed: int) -> PackLayout:
  """Packs examples of lengths `lens [n, K]` once, next fit in chunks of `PACK_CHUNK` of a seeded
  order (flax wmt style, computed from the lengths alone)."""
  n, k = lens.shape
  order = _permutation(n, seed, 0).numpy()
  chunks = -(-n // PACK_CHUNK)
  padded = np.zeros((chunks * PACK_CHUNK, k), np.int32)
  padded[:n] = lens[order]
  rows, start, segment = (
    x.numpy() for x in _next_fit(padded.reshape(chunks, PACK_CHUNK, k), tf.constant(caps, tf.int32))
  )
  rows_per_chunk = rows.max(axis=1) + 1
  offset = np.concatenate([[0], np.cumsum(rows_per_chunk)[:-1]])
  row = (rows + offset[:, None]).reshape(-1)[:n]  # nondecreasing along `order`
  row_splits = np.searchsorted(row, np.arange(int(rows_per_chunk.sum()) + 1))
  return PackLayout(order, row_splits, start.reshape(-1, k)[:n], segment.reshape(-1)[:n])


def _packed_rows(sequences, layout: dict, lengths: Mapping[str, int], keys, rows: tf.Tensor):
  """The packed rows `rows [B]` of a layout: `k`, `k_segmentation` (1.. per example in its
  row, 0 = padding), `k_position` (0.. per example) for every sequence key."""
  where = tf.ragged.range(
    tf.gather(layout["row_splits"], rows), tf.gather(layout["row_splits"], rows + 1)
  )
  batch_row, slot = where.value_rowids(), where.flat_values  # per example of the rows
  example = tf.gather(layout["order"], slot)
  out = {}
  for j, k in enumerate(keys):
    values, splits = sequences[k]
    tokens = tf.ragged.range(tf.gather(splits, example), tf.gather(splits, example + 1))
    owner = tokens.value_rowids()  # per token: its example among `example`
    position = tf.range(tf.size(tokens.flat_values, out_type=tf.int64)) - tf.gather(
      tokens.row_starts(), owner
    )
    column = tf.cast(tf.gather(layout["start"][:, j], tf.gather(slot, owner)), tf.int64) + position
    index = tf.stack([tf.gather(batch_row, owner), column], axis=1)
    shape = tf.stack([tf.size(rows, out_type=tf.int64), lengths[k]])
    ids = tf.cast(tf.gather(values, tokens.flat_values), tf.int32)
    segment = tf.gather(layout["segment"], tf.gather(slot, owner))
    out[k] = tf.scatter_nd(index, ids, shape)
    out[f"{k}_segmentation"] = tf.scatter_nd(index, segment, shape)
    out[f"{k}_position"] = tf.scatter_nd(index, tf.cast(position, tf.int32), shape)
  return out


def _unpacked_segmentation(ex: dict, keys: Sequence[str]) -> dict:
  """Segment 1 / positions 0.. for unpacked examples, so they look like packed ones."""
  out = dict(ex)
  for k in keys:
    mask = tf.cast(ex[k] != 0, tf.int32)
    out[f"{k}_segmentation"] = mask
    out[f"{k}_position"] = tf.range(tf.shape(ex[k])[-1], dtype=tf.int32) * mask
  return out


def _bucket_boundaries(max_length: int) -> list[int]:
  bounds, b = [], MIN_BUCKET
  while b < max_length:
    bounds.append(b)
    b *= 2
  return [*bounds, max_length]


def check_batching(config) -> None:
  """The batching fields' rules (`pack`, `bucket_by_length`, `batch_tokens`): a one-line
  ValueError, before any data is read."""
  pack, bucket = config.get("pack", False), config.get("bucket_by_length", False)
  tokens = config.get("batch_tokens", 0) or 0
  if pack and bucket:
    raise ValueError("data.pack and data.bucket_by_length are exclusive; pick one")
  if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
    raise ValueError(f"data.batch_tokens={tokens!r} must be an integer >= 0 (0: batch_size rows)")
  if tokens and not bucket:
    raise ValueError(
      f"data.batch_tokens={tokens} needs data.bucket_by_length=True (padded or packed rows all "
      "have one length: set data.batch_size to tokens / data.max_length instead)"
    )


def make_datasets(
  train: Examples,
  evals: Mapping[str, Examples],
  info: TaskInfo,
  config,
  *,
  splits: Mapping[str, str],
  lengths: Mapping[str, int],
  process_index: int = 0,
  process_count: int = 1,
  train_sharded: bool = False,
  references: Mapping[str, Sequence[str]] | None = None,
  drop_longer: bool = False,
  keep_last: bool = False,
) -> Datasets:
  """The task's `Datasets` from the whole eval splits `evals` (`{"validation": ..., "test": ...}`)
  and the whole train split (or, with `train_sharded`, this process's share of it, e.g. a
  `tfds_split`). `splits` describes where train / validation / test come from (`Datasets.splits`).

  `lengths[k]`: maximum length of sequence feature `k`. Longer training examples are dropped
  (`drop_longer`, flax wmt) or cut; longer eval examples are cut (every example counts, batches
  keep one shape); cut sequences keep their last id with `keep_last` (EOS). What was dropped or
  cut is logged (a warning) and counted in `Datasets.lengths`. `references[split]`: the raw
  target text of each whole eval split (`Datasets.references`, cut like the split). Reads
  `config.batch_size`, `config.seed`, `config.eval_examples` (0 = all; applied to each eval
  split, before sharding, so an eval set does not depend on the number of processes), and the
  optional `config.pack` / `config.bucket_by_length` / `config.batch_tokens`.
  """
  if set(evals) != set(SPLITS) or set(splits) != {"train", *SPLITS}:
    raise ValueError(
      f"make_datasets takes the eval splits {', '.join(SPLITS)} and describes train and both; "
      f"got evals {sorted(evals)}, splits {sorted(splits)}"
    )
  for split, examples in evals.items():
    if len(examples) == 0:
      raise ValueError(f"the {split} split ({splits[split]}) has no examples")
  check_batching(config)
  pack = bool(config.get("pack", False))
  bucket = bool(config.get("bucket_by_length", False))
  batch_tokens = int(config.get("batch_tokens", 0) or 0)
  if pack and (train.scalars or info.kind not in ("seq2seq", "lm")):
    raise ValueError(f"data.pack=True needs a seq2seq or lm task, not {info.kind!r}")
  if config.batch_size % process_count:
    raise ValueError(
      f"data.batch_size={config.batch_size} must divide by {process_count} processes"
    )
  local = config.batch_size // process_count
  references = dict(references or {})
  for split, texts in references.items():
    if len(texts) != len(evals[split]):
      raise ValueError(f"{len(texts)} references for the {len(evals[split])} {split} examples")
  evals = {
    split: examples.first(config.get("eval_examples", 0)) for split, examples in evals.items()
  }
  references = {split: list(texts[: len(evals[split])]) for split, texts in references.items()}
  report = {
    split: {"examples": len(ex), "cut": int(ex.longer(lengths).sum())}
    for split, ex in evals.items()
  }
  evals = {
    split: examples.shard(process_index, process_count).truncate(lengths, keep_last)
    for split, examples in evals.items()
  }
  # the examples trained on (after `drop_longer`); a split read per process is counted only
  # when there is one process (every process must agree on the count)
  kept = len(train) - int(train.longer(lengths).sum()) if drop_longer else len(train)
  known = not train_sharded or process_count == 1
  if not train_sharded:
    train = train.shard(process_index, process_count)
  longer = int(train.longer(lengths).sum())
  report = {
    "train": {"examples": len(train), "dropped" if drop_longer else "cut": longer},
    **report,
  }
  train = train.filter_longer(lengths) if drop_longer else train.truncate(lengths, keep_last)
  _log_lengths(report, lengths, process_index, process_count, train_sharded)
  if len(train) == 0:
    raise ValueError(
      f"no training examples for process {process_index}/{process_count}"
      + (f" ({longer} longer than {dict(lengths)}, dropped)" if drop_longer and longer else "")
    )
  seq_keys = sorted(train.sequences)
  seed = int(config.seed)
  tensors: dict[str, tuple] = {}
  n = len(train)
  lens = np.stack([train.sequences[k].lengths for k in seq_keys], axis=1)
  if pack:  # packed once: every epoch visits the same rows
    layout = pack_layout(lens, [lengths[k] for k in seq_keys], seed)
    per_epoch = layout.num_rows / local
  elif bucket:
    bounds = _bucket_boundaries(max(lengths[k] for k in seq_keys))
    rows = _bucket_rows(bounds, config.batch_size, batch_tokens) // process_count  # local
    per_bucket = np.bincount(np.searchsorted(bounds, lens.max(axis=1)), minlength=len(bounds))
    per_epoch = int((per_bucket // rows).sum())
    if per_epoch == 0:
      raise ValueError(
        f"no bucket of length boundaries {bounds} holds a batch of "
        f"{dict(zip(bounds, rows.tolist(), strict=True))} training examples; lower "
        "data.batch_size (or data.batch_tokens) or set data.bucket_by_length=False"
      )
  else:
    per_epoch = kept / config.batch_size
  # batches of a stream packed or bucketed per process differ between processes
  batches_per_epoch = per_epoch if known and (process_count == 1 or not (pack or bucket)) else None

  def as_tf(split: str, examples: Examples):
    if split not in tensors:  # once per Datasets: shared by every call of the split's dataset
      tensors[split] = _to_tf(examples)
    return tensors[split]

  def train_dataset(start_batch: int = 0) -> tf.data.Dataset:
    sequences, scalars = as_tf("train", train)
    if pack:
      packed = {
        "order": tf.constant(layout.order, tf.int64),
        "row_splits": tf.constant(layout.row_splits, tf.int64),
        "start": tf.constant(layout.start, tf.int32),
        "segment": tf.constant(layout.segment, tf.int32),
      }
      first_epoch, offset = divmod(start_batch * local, layout.num_rows)
      row_ids = _epoch_indices(layout.num_rows, seed, first_epoch).skip(offset)
      ds = row_ids.batch(local, drop_remainder=True).map(
        lambda r: _packed_rows(sequences, packed, lengths, seq_keys, r),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
      )
      return ds.prefetch(tf.data.AUTOTUNE)
    if not bucket:
      first_epoch, offset = divmod(start_batch * local, n)
      idx = _epoch_indices(n, seed, first_epoch).skip(offset).batch(local, drop_remainder=True)
      ds = idx.map(
        lambda i: _gather(sequences, scalars, lengths, i, dense=True),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
      )
      return ds.prefetch(tf.data.AUTOTUNE)
    epoch, skip = divmod(start_batch, per_epoch)
    longest_of = tf.constant(lens.max(axis=1), tf.int64)
    bounds_tf, rows_tf = tf.constant(bounds, tf.int64), tf.constant(rows, tf.int64)

    def epoch_batches(e):
      """Epoch e's batches (example ids, ragged [per_epoch, rows]) in the order buckets fill."""
      return _bucket_batches(_permutation(n, seed, e), longest_of, bounds_tf, rows_tf)

    def padded(idx):
      ragged = _gather(sequences, scalars, lengths, idx, dense=False)
      batch = {k: v.to_tensor(0) if k in seq_keys else v for k, v in ragged.items()}
      return _pad_to_boundary(batch, seq_keys, bounds)

    later = tf.data.Dataset.range(epoch + 1, _FOREVER).flat_map(
      lambda e: tf.data.Dataset.from_tensor_slices(epoch_batches(e))
    )
    ds = tf.data.Dataset.from_tensor_slices(epoch_batches(epoch)).skip(skip).concatenate(later)
    ds = ds.map(padded, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)

  def eval_dataset(split: str = "validation") -> tf.data.Dataset:
    examples = pick_split(split, evals)
    sequences, scalars = as_tf(split, examples)
    idx = tf.data.Dataset.range(len(examples)).batch(max(local, 1))
    ds = idx.map(lambda i: _gather(sequences, scalars, lengths, i, dense=True)).unbatch()
    if pack:
      ds = ds.map(lambda ex: _unpacked_segmentation(ex, seq_keys))
    return pad_eval_batches(ds, local)

  return Datasets(
    train_dataset,
    eval_dataset,
    info,
    dict(splits),
    references,
    report,
    batches_per_epoch=batches_per_epoch,
  )


def _log_lengths(report, lengths, process_index, process_count, train_sharded) -> None:
  """A warning for every split the length limits changed."""
  for split, counts in report.items():
    for what in ("dropped", "cut"):
      if counts.get(what):
        share = split == "train" and (train_sharded or process_count > 1)
        logging.warning(
          "%s split%s: %d of %d examples longer than %s %s",
          split, f" (process {process_index}/{process_count})" if share else "",
          counts[what], counts["examples"], dict(lengths),
          what if what == "dropped" else "cut to fit (raise the length to evaluate them whole)",
        )  # fmt: skip


def _bucket_rows(bounds: Sequence[int], batch_size: int, batch_tokens: int) -> np.ndarray:
  """Global rows per batch of each bucket: `batch_size`, or with `batch_tokens` the largest
  multiple of `batch_size` whose rows x boundary fit in `batch_tokens` (at least `batch_size`)."""
  bounds = np.asarray(bounds, np.int64)
  if not batch_tokens:
    return np.full(len(bounds), batch_size, np.int64)
  return np.maximum(batch_tokens // bounds // batch_size, 1) * batch_size


def _bucket_batches(perm, longest, bounds, rows) -> tf.RaggedTensor:
  """An epoch of length buckets: examples `perm` in order go to the bucket of their longest
  sequence (the smallest boundary >= it); a bucket that reaches its `rows` examples gives a
  batch (its remainder at the epoch's end is dropped). Returns the batches' example ids
  (ragged `[N, rows of its bucket]`) in the order they fill: the same batches every epoch."""
  bucket = tf.searchsorted(bounds, tf.gather(longest, perm))
  grouped = tf.argsort(bucket, stable=True)  # by bucket, in visiting order inside each
  counts = tf.math.bincount(tf.cast(bucket, tf.int32), minlength=len(bounds), dtype=tf.int64)
  member_bucket = tf.gather(bucket, grouped)
  rank = tf.range(tf.size(perm, out_type=tf.int64)) - tf.gather(
    tf.cumsum(counts, exclusive=True), member_bucket
  )
  size = tf.gather(rows, member_bucket)
  full = rank < tf.gather(counts // rows * rows, member_bucket)
  first_batch = tf.cumsum(counts // rows, exclusive=True)  # of each bucket
  batch_id = tf.boolean_mask(tf.gather(first_batch, member_bucket) + rank // size, full)
  batches = tf.RaggedTensor.from_value_rowids(  # positions in the epoch
    tf.cast(tf.boolean_mask(grouped, full), tf.int64), batch_id, nrows=tf.reduce_sum(counts // rows)
  )
  filled = tf.argsort(tf.reduce_max(batches, axis=1))  # a batch is complete at its last member
  ordered = tf.gather(batches, filled)
  return ordered.with_flat_values(tf.gather(perm, ordered.flat_values))


def _pad_to_boundary(batch: dict, keys: Sequence[str], bounds: Sequence[int]) -> dict:
  """Pad a bucket's sequences to the bucket's length (the smallest boundary >= its longest)."""
  longest = tf.reduce_max([tf.shape(batch[k])[1] for k in keys])
  target = tf.gather(bounds, tf.searchsorted(tf.constant(bounds), longest[None]))[0]
  out = dict(batch)
  for k in keys:
    out[k] = tf.pad(batch[k], [[0, 0], [0, target - tf.shape(batch[k])[1]]])
  return out
