"""LRA ListOps (classification, 10 classes): `[MAX 4 3 [MIN 2 3 ] 1 0 ]` -> 4.

Reads `<task>_train.tsv` (train), `<task>_val.tsv` (validation: selects) and `<task>_test.tsv`
(test: reports) from `data_dir`: LRA's released files
(`lra_release/listops-1000/basic_*.tsv`) or those written by `python -m
input_pipeline.listops_generate`. A header row names the `Source` and `Target` columns (any
order); without one, column 1 is the source and column 2 the target.

Word-level tokens from a fixed vocabulary (`VOCAB`: 0 = padding, then operators, `]`, digits).
LRA's `(` `)` are dropped unless `keep_parens`: they repeat what the brackets say and would triple
the length. (LRA's own loader, tfds' alphanumeric `Tokenizer`, keeps only operator names and
digits, so its inputs also lose the `]` that close the lists; here they are kept, and an
expression fits `max_length` = 2000 exactly as LRA's generator bounds its length.) An unknown
token, a missing column or a target outside 0..9 is a ValueError naming the file and line.
Longer sequences are cut to `max_length`. Tokenised splits are cached in `workdir/data_cache/`.

`config.data` fields:
  name: 'listops'
  data_dir: directory with the TSV files
  task: file prefix, 'basic' (LRA)
  max_length: tokens per example (LRA: 2000)
  keep_parens: keep LRA's '(' ')' tokens (default False)
  batch_size: global batch size; seed: shuffle seed
  eval_examples: first N examples of each eval split (0: all)
"""

import os

import numpy as np
import tensorflow as tf

from input_pipeline.base import SPLITS, Datasets, TaskInfo
from input_pipeline.batching import (
  Examples,
  Ragged,
  cache_key,
  cached,
  file_identity,
  make_datasets,
)
from input_pipeline.registry import register
from input_pipeline.text import parse_label, read_rows, require_file

NUM_CLASSES = 10
FILES = {"train": "train", "validation": "val", "test": "test"}  # split -> LRA's file suffix
# LRA's token spellings (lra_benchmarks/data/listops.py); the generator draws MIN MAX MED SM.
MIN, MAX, MED, SUM_MOD, FIRST, LAST = "[MIN", "[MAX", "[MED", "[SM", "[FIRST", "[LAST"
END = "]"
PARENS = ("(", ")")
VOCAB = ("<pad>", MIN, MAX, MED, SUM_MOD, FIRST, LAST, END, *PARENS, *map(str, range(10)))
_CHUNK = 2048  # lines tokenised together


def read_tsv(path: str, max_length: int, keep_parens: bool = False) -> Examples:
  """A ListOps TSV -> `inputs` (ragged ids, cut to `max_length`) and `label`."""
  require_file(path, "data.data_dir")
  sources, labels, lines = [], [], []
  source_col, target_col = 0, 1
  for i, (line, row) in enumerate(read_rows(path, "data.data_dir", delimiter="\t")):
    if i == 0 and {"source", "target"} <= {c.strip().lower() for c in row}:
      names = [c.strip().lower() for c in row]
      source_col, target_col = names.index("source"), names.index("target")
      continue
    if len(row) <= max(source_col, target_col):
      raise ValueError(
        f"{path}:{line}: expected Source<TAB>Target, got {len(row)} field(s): {row[0][:40]!r}..."
      )
    sources.append(row[source_col])
    labels.append(parse_label(row[target_col], path, line, NUM_CLASSES))
    lines.append(line)
  if not sources:
    raise ValueError(f"{path}: no examples (only a header?)")
  ids = _tokenize(sources, lines, path, max_length, keep_parens)
  return Examples({"inputs": ids}, {"label": np.asarray(labels, np.int32)})


def _tokenize(sources, lines, path, max_length, keep_parens) -> Ragged:
  """Whitespace split + fixed-vocabulary lookup, vectorised in TF (once, at load time)."""
  table = tf.lookup.StaticHashTable(
    tf.lookup.KeyValueTensorInitializer(list(VOCAB), tf.range(len(VOCAB), dtype=tf.int32)), -1
  )
  drop = [] if keep_parens else [VOCAB.index(p) for p in PARENS]
  values, lengths = [], []
  for start in range(0, len(sources), _CHUNK):
    tokens = tf.strings.split(tf.constant(sources[start : start + _CHUNK]))
    ids = tf.ragged.map_flat_values(table.lookup, tokens)
    bad = tf.where(ids.flat_values < 0)
    if bad.shape[0]:
      first = int(bad[0, 0])
      row = int(ids.value_rowids()[first])
      token = tokens.flat_values[first].numpy().decode("utf-8", "replace")
      raise ValueError(
        f"{path}:{lines[start + row]}: unknown token {token!r}; "
        f"ListOps tokens: {' '.join(VOCAB[1:])}"
      )
    for p in drop:
      ids = tf.ragged.boolean_mask(ids, ids != p)
    ids = ids[:, :max_length]
    values.append(ids.flat_values.numpy().astype(np.uint8))
    lengths.append(ids.row_lengths().numpy())
  splits = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
  return Ragged(np.concatenate(values), splits)


@register("listops")
def listops(config, *, workdir=None, process_index=0, process_count=1) -> Datasets:
  """LRA ListOps from TSV files (see the module docstring for the fields)."""
  if not config.get("data_dir"):
    raise ValueError(
      "data.data_dir is not set: point it at LRA's lra_release/listops-1000/ or at the output of "
      "`python -m input_pipeline.listops_generate --output_dir=DIR`"
    )
  task = config.get("task", "basic")
  max_length = int(config.get("max_length", 2000))
  keep_parens = bool(config.get("keep_parens", False))
  paths = {s: os.path.join(config.data_dir, f"{task}_{f}.tsv") for s, f in FILES.items()}
  for path in paths.values():
    require_file(path, "data.data_dir")
  key = cache_key(
    files={s: file_identity(p) for s, p in paths.items()},
    max_length=max_length,
    parens=keep_parens,
  )
  splits = cached(
    workdir,
    "listops",
    key,
    lambda: {s: read_tsv(p, max_length, keep_parens) for s, p in paths.items()},
  )
  info = TaskInfo(
    kind="classification",
    vocab_size=len(VOCAB),
    max_input_length=max_length,
    num_classes=NUM_CLASSES,
    detokenize=detokenize,
  )
  return make_datasets(
    splits["train"],
    {s: splits[s] for s in SPLITS},
    info,
    config,
    splits=paths,
    lengths={"inputs": max_length},
    process_index=process_index,
    process_count=process_count,
  )


def detokenize(ids) -> str:
  return " ".join(VOCAB[int(i)] for i in ids if 0 < int(i) < len(VOCAB))
