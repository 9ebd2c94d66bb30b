"""LRA Retrieval (document matching on the ACL Anthology Network): do two papers cite each other?

Rows `label<TAB>id1<TAB>id2<TAB>text1<TAB>text2` without a header: LRA's released
`lra_release/tsv_data/new_aan_pairs.{train,eval,test}.tsv` (labels written as `0`/`1` or
`0.0`/`1.0`); LRA's `eval` file is the validation split (selects), `test` the test split
(reports). Both documents are byte-level (id = byte + 2, vocabulary 258) and cut to `max_length`
(LRA: 4000 each). Batches: `inputs [B, L]`, `inputs2 [B, L]`, `label [B]` (2 classes). A row with
another number of fields, or a label other than 0/1, is a ValueError naming the file and line.
Tokenised splits are cached in `workdir/data_cache/`.

`config.data` fields:
  name: 'retrieval'
  data_dir: directory with LRA's new_aan_pairs.{train,eval,test}.tsv (for each unset path below)
  train_path, validation_path, test_path: explicit files (plain or .gz); default: LRA's train,
    eval and test files in data_dir
  max_length: bytes per document (LRA: 4000)
  batch_size: global; seed: shuffle seed
  eval_examples: first N examples of each eval split (0: all)
"""

import os

import numpy as np

from input_pipeline.base import SPLITS, Datasets, TaskInfo
from input_pipeline.batching import Examples, cache_key, cached, file_identity, make_datasets
from input_pipeline.registry import register
from input_pipeline.text import ByteTokenizer, parse_label, read_rows, require_file

NUM_CLASSES = 2
FIELDS = ("label", "id1", "id2", "text1", "text2")
LRA_FILE = "new_aan_pairs.{split}.tsv"
LRA_SPLITS = {"train": "train", "validation": "eval", "test": "test"}  # split -> LRA's file


def read_pairs(path: str, field: str, max_length: int) -> Examples:
  """An LRA matching TSV -> `inputs`, `inputs2` (byte ids) and `label`."""
  require_file(path, field)
  labels, texts1, texts2 = [], [], []
  for line, row in read_rows(path, field, delimiter="\t", quoting=False):
    if len(row) != len(FIELDS):
      raise ValueError(
        f"{path}:{line}: expected {len(FIELDS)} tab-separated fields "
        f"({'<TAB>'.join(FIELDS)}), got {len(row)}"
      )
    labels.append(parse_label(row[0], path, line, NUM_CLASSES))
    texts1.append(row[3])
    texts2.append(row[4])
  tokenizer = ByteTokenizer()
  return Examples(
    {
      "inputs": tokenizer.encode(texts1, max_length=max_length),
      "inputs2": tokenizer.encode(texts2, max_length=max_length),
    },
    {"label": np.asarray(labels, np.int32)},
  )


@register("retrieval")
def retrieval(config, *, workdir=None, process_index=0, process_count=1) -> Datasets:
  """LRA Retrieval from TSV files (see the module docstring for the fields)."""
  max_length = int(config.get("max_length", 4000))
  data_dir = config.get("data_dir")
  paths = {}
  for split, lra_split in LRA_SPLITS.items():
    path = config.get(f"{split}_path") or (
      os.path.join(data_dir, LRA_FILE.format(split=lra_split)) if data_dir else None
    )
    paths[split] = require_file(path, f"data.{split}_path (or data.data_dir)")
  key = cache_key(files={s: file_identity(p) for s, p in paths.items()}, max_length=max_length)
  data = cached(
    workdir,
    "retrieval",
    key,
    lambda: {s: read_pairs(p, f"data.{s}_path", max_length) for s, p in paths.items()},
  )
  tokenizer = ByteTokenizer()
  info = TaskInfo(
    kind="retrieval",
    vocab_size=tokenizer.vocab_size,
    max_input_length=max_length,
    num_classes=NUM_CLASSES,
    detokenize=tokenizer.decode,
  )
  return make_datasets(
    data["train"],
    {s: data[s] for s in SPLITS},
    info,
    config,
    splits=paths,
    lengths={"inputs": max_length, "inputs2": max_length},
    process_index=process_index,
    process_count=process_count,
  )
