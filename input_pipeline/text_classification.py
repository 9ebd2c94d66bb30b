"""Document classification: tfds `imdb_reviews` (LRA Text) or local TSV/CSV files.

LRA's byte-level Text task is `dataset='imdb_reviews'`, `tokenizer='byte'`, `max_length=1000`
(LRA code; the paper's table uses 4000). IMDb has no validation split (LRA selected and reported
on `test`); here validation (selects) is a held-out `train[90%:]`, training uses `train[:90%]`
and `test` reports. With `tokenizer='sentencepiece'` a unigram model of `vocab_size` pieces is
trained on the training split's text on first use and kept in `vocab_path` (or the workdir).

Local files: one example per row, `label<TAB>text` (`*.tsv`, split on the first tab, so the text
may contain tabs) or `label,text` (`*.csv`, csv quoting); a first row `label<sep>text` is a header.
Labels are integers in [0, num_classes). Missing/empty files, rows without a label or labels out
of range are errors naming the file and line.

`config.data` fields:
  name: 'text_classification'
  dataset: 'imdb_reviews' | 'files'
  data_dir: tfds data directory (imdb_reviews; None = tfds default)
  train_split, validation_split, test_split: tfds splits (imdb_reviews; default 'train[:90%]',
    'train[90%:]', 'test'): train, select, report
  train_path, validation_path, test_path: files (dataset='files'); plain or .gz
  num_classes: classes of the files (imdb_reviews: 2)
  tokenizer: 'byte' (ids = byte + 2, vocabulary 258) | 'sentencepiece'
  vocab_size, vocab_path, vocab_max_chars: SentencePiece (size, where kept, training characters)
  max_length: tokens per document, longer ones are cut (LRA: 1000; paper: 4000)
  batch_size: global; seed: shuffle seed
  eval_examples: first N examples of each eval split (0: all)
"""

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.base import SPLITS, Datasets, TaskInfo
from input_pipeline.batching import (
  Examples,
  cache_key,
  cached,
  file_identity,
  load_tfds,
  make_datasets,
  tfds_split,
  tfds_splits,
)
from input_pipeline.registry import register
from input_pipeline.text import make_tokenizer, parse_label, read_rows, require_file, tokenizer_id

TFDS_DATASETS = {"imdb_reviews": ("text", "label", 2)}
TFDS_SPLITS = {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"}


def read_labeled_file(path: str, num_classes: int, field: str) -> tuple[list[str], np.ndarray]:
  """`label<sep>text` rows -> (texts, labels)."""
  require_file(path, field)
  texts, labels = [], []
  tsv = not path.removesuffix(".gz").endswith(".csv")
  for i, (line, row) in enumerate(read_rows(path, field)):
    if tsv and len(row) > 2:  # the text may hold tabs: split on the first one only
      row = [row[0], "\t".join(row[1:])]
    if i == 0 and row[0].strip().lower() == "label":
      continue
    if len(row) != 2:
      raise ValueError(
        f"{path}:{line}: expected label{'<TAB>' if tsv else ','}text, got {len(row)} field(s)"
      )
    labels.append(parse_label(row[0], path, line, num_classes))
    texts.append(row[1])
  if not texts:
    raise ValueError(f"{path}: no examples ({field})")
  return texts, np.asarray(labels, np.int32)


def _tfds_texts(name: str, split, data_dir, text_key: str, label_key: str):
  ds = load_tfds(name, split, data_dir).batch(1024)
  texts, labels = [], []
  for batch in tfds.as_numpy(ds):
    texts += [t.decode("utf-8", "replace") for t in batch[text_key]]
    labels.append(batch[label_key].astype(np.int32))
  return texts, np.concatenate(labels) if labels else np.zeros(0, np.int32)


@register("text_classification")
def text_classification(config, *, workdir=None, process_index=0, process_count=1) -> Datasets:
  """Text classification (see the module docstring for the fields)."""
  dataset = config.get("dataset", "imdb_reviews")
  max_length = int(config.get("max_length", 1000))
  data_dir = config.get("data_dir")
  if dataset == "files":
    num_classes = int(config.get("num_classes", 2))
    paths = {s: require_file(config.get(f"{s}_path"), f"data.{s}_path") for s in ("train", *SPLITS)}

    def load(split: str):
      return read_labeled_file(paths[split], num_classes, f"data.{split}_path")

    def vocab_texts():
      return load("train")[0]

    sources = {s: file_identity(p) for s, p in paths.items()}
    described = paths
    sharded = False
  elif dataset in TFDS_DATASETS:
    text_key, label_key, num_classes = TFDS_DATASETS[dataset]
    splits = tfds_splits(config, TFDS_SPLITS)
    reads = {**splits, "train": tfds_split(splits["train"], process_index, process_count)}

    def load(split: str):
      return _tfds_texts(dataset, reads[split], data_dir, text_key, label_key)

    def vocab_texts():  # the whole training split (every process trains the same model)
      return _tfds_texts(dataset, splits["train"], data_dir, text_key, label_key)[0]

    sources = [dataset, data_dir, {s: str(r) for s, r in reads.items()}]
    described = {s: f"{dataset} {r}" for s, r in splits.items()}
    sharded = True
  else:
    raise ValueError(f"data.dataset={dataset!r}; valid: files, {', '.join(TFDS_DATASETS)}")

  tokenizer = make_tokenizer(config, workdir, f"text_{dataset}", vocab_texts)

  def build():
    out = {}
    for split in ("train", *SPLITS):
      texts, labels = load(split)
      ids = tokenizer.encode(texts, max_length=max_length)
      out[split] = Examples({"inputs": ids}, {"label": labels})
    return out

  key = cache_key(sources=sources, max_length=max_length, tokenizer=tokenizer_id(tokenizer))
  data = cached(workdir, f"text_classification-{process_index}of{process_count}", key, build)
  info = TaskInfo(
    kind="classification",
    vocab_size=tokenizer.vocab_size,
    max_input_length=max_length,
    num_classes=num_classes,
    detokenize=tokenizer.decode,
  )
  return make_datasets(
    data["train"],
    {s: data[s] for s in SPLITS},
    info,
    config,
    splits=described,
    lengths={"inputs": max_length},
    process_index=process_index,
    process_count=process_count,
    train_sharded=sharded,
  )
