"""Language modelling (kind 'lm'): tfds `lm1b` or local text files, SentencePiece or bytes.

Each sentence (lm1b) or line (files; plain or .gz) is one sequence ending with EOS, cut to
`max_length` tokens. Batches are `inputs [B, T]`; the model predicts token t+1 from tokens <= t.
With `pack` (flax examples/lm1b), several sequences share a row, with `inputs_segmentation` and
`inputs_position` telling them apart. The SentencePiece model (pad 0, EOS 1, UNK 2) is trained on
the first `vocab_max_chars` characters of the training split on first use and kept in
`vocab_path` (or the workdir); tokenised splits are cached in `workdir/data_cache/`. lm1b has only
`train` and `test`: validation (selects) is the held-out `train[99%:]` (~300K sentences, as many as
`test`), training uses `train[:99%]`, and `test` reports.

`config.data` fields:
  name: 'lm'
  dataset: 'lm1b' | 'files'
  data_dir: tfds data directory (lm1b; None = tfds default)
  train_split, validation_split, test_split: tfds splits (lm1b; default 'train[:99%]',
    'train[99%:]', 'test'): train, select, report
  train_path, validation_path, test_path: text files, one sequence per line (dataset='files')
  tokenizer: 'sentencepiece' | 'byte' (ids = byte + 2, vocabulary 258)
  vocab_size (flax lm1b: 30000), vocab_path, vocab_max_chars (10**7): SentencePiece
  max_length: tokens per sequence incl. EOS (flax lm1b: 128 train, 512 eval; here one length)
  pack: several sequences per row (flax lm1b: True); bucket_by_length: see batching.py
  batch_size: global; seed: shuffle seed; eval_examples: first N sequences of each eval split
    (0: all)
"""

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
from input_pipeline.text import EOS_ID, make_tokenizer, read_lines, require_file, tokenizer_id

TFDS_SPLITS = {"train": "train[:99%]", "validation": "train[99%:]", "test": "test"}  # lm1b


def _tfds_lines(name: str, split, data_dir: str | None) -> list[str]:
  lines = []
  for batch in tfds.as_numpy(load_tfds(name, split, data_dir).batch(4096)):
    lines += [t.decode("utf-8") for t in batch["text"]]
  return lines


def _tfds_stream(name: str, split, data_dir: str | None):
  for batch in tfds.as_numpy(load_tfds(name, split, data_dir).batch(1024)):
    yield from (t.decode("utf-8") for t in batch["text"])


@register("lm")
def lm(config, *, workdir=None, process_index=0, process_count=1) -> Datasets:
  """Language modelling (see the module docstring for the fields)."""
  dataset = config.get("dataset", "lm1b")
  max_length = int(config.get("max_length", 128))
  data_dir = config.get("data_dir")
  if dataset == "files":
    paths = {s: require_file(config.get(f"{s}_path"), f"data.{s}_path") for s in ("train", *SPLITS)}

    def load(split: str) -> list[str]:
      return read_lines(paths[split], f"data.{split}_path")

    def vocab_texts():
      return load("train")

    sources = {s: file_identity(p) for s, p in paths.items()}
    described = paths
    sharded = False
  elif dataset == "lm1b":
    splits = tfds_splits(config, TFDS_SPLITS)
    reads = {**splits, "train": tfds_split(splits["train"], process_index, process_count)}

    def load(split: str) -> list[str]:
      return _tfds_lines(dataset, reads[split], data_dir)

    def vocab_texts():  # the whole training split (every process trains the same model)
      return _tfds_stream(dataset, splits["train"], data_dir)

    sources = [dataset, data_dir, {s: str(r) for s, r in reads.items()}]
    described = {s: f"{dataset} {r}" for s, r in splits.items()}
    sharded = True
  else:
    raise ValueError(f"data.dataset={dataset!r}; valid: files, lm1b")

  tokenizer = make_tokenizer(config, workdir, f"lm_{dataset}", vocab_texts, "sentencepiece")

  def build():
    return {
      split: Examples(
        {"inputs": tokenizer.encode(load(split), add_eos=True, max_length=max_length)}
      )
      for split in ("train", *SPLITS)
    }

  key = cache_key(sources=sources, max_length=max_length, tokenizer=tokenizer_id(tokenizer))
  data = cached(workdir, f"lm-{process_index}of{process_count}", key, build)
  info = TaskInfo(
    kind="lm",
    vocab_size=tokenizer.vocab_size,
    max_input_length=max_length,
    eos_id=EOS_ID,
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
