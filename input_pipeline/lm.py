"""Language modelling (kind 'lm'): tfds `lm1b` or local text files, SentencePiece or bytes.

Each sentence (lm1b) or line (files; plain or .gz) is one sequence ending with EOS, cut to
`max_length` tokens. Batches are `inputs [B, T]`; the model predicts token t+1 from tokens <= t.
With `pack` (flax examples/lm1b), several sequences share a row, with `inputs_segmentation` and
`inputs_position` telling them apart. The SentencePiece model (pad 0, EOS 1, UNK 2) is trained on
the first `vocab_max_chars` characters of the training text on first use and kept in
`vocab_path` (or the workdir); tokenised splits are cached in `workdir/data_cache/`.

`config.data` fields:
  name: 'lm'
  dataset: 'lm1b' | 'files'
  data_dir: tfds data directory (lm1b; None = tfds default)
  eval_split: tfds split for eval (lm1b: 'test')
  train_path, eval_path: text files, one sequence per line (dataset='files')
  tokenizer: 'sentencepiece' | 'byte' (ids = byte + 2, vocabulary 258)
  vocab_size (flax lm1b: 30000), vocab_path, vocab_max_chars (10**7): SentencePiece
  max_length: tokens per sequence incl. EOS (flax lm1b: 128 train, 512 eval; here one length)
  pack: several sequences per row (flax lm1b: True); bucket_by_length: see batching.py
  batch_size: global; seed: shuffle seed; eval_examples: first N eval sequences (0: all)
"""

import tensorflow_datasets as tfds

from input_pipeline import register
from input_pipeline.base import Datasets, TaskInfo
from input_pipeline.batching import (
  Examples,
  cache_key,
  cached,
  file_identity,
  load_tfds,
  make_datasets,
  tfds_split,
)
from input_pipeline.text import EOS_ID, make_tokenizer, read_lines, require_file, tokenizer_id


def _tfds_lines(name: str, split, data_dir: str | None) -> list[str]:
  lines = []
  for batch in tfds.as_numpy(load_tfds(name, split, data_dir).batch(4096)):
    lines += [t.decode("utf-8") for t in batch["text"]]
  return lines


def _tfds_stream(name: str, data_dir: str | None):
  for batch in tfds.as_numpy(load_tfds(name, "train", data_dir).batch(1024)):
    yield from (t.decode("utf-8") for t in batch["text"])


@register("lm")
def lm(config, *, workdir=None, process_index=0, process_count=1) -> Datasets:
  """Language modelling (see the module docstring for the fields)."""
  dataset = config.get("dataset", "lm1b")
  max_length = int(config.get("max_length", 128))
  data_dir = config.get("data_dir")
  if dataset == "files":
    paths = {
      "train": require_file(config.get("train_path"), "data.train_path"),
      "eval": require_file(config.get("eval_path"), "data.eval_path"),
    }

    def load(split: str) -> list[str]:
      return read_lines(paths[split], f"data.{split}_path")

    def vocab_texts():
      return load("train")

    sources = [file_identity(p) for p in paths.values()]
    sharded = False
  elif dataset == "lm1b":
    splits = {
      "train": tfds_split("train", process_index, process_count),
      "eval": config.get("eval_split", "test"),
    }

    def load(split: str) -> list[str]:
      return _tfds_lines(dataset, splits[split], data_dir)

    def vocab_texts():
      return _tfds_stream(dataset, data_dir)

    sources = [dataset, data_dir, *map(str, splits.values())]
    sharded = True
  else:
    raise ValueError(f"data.dataset={dataset!r}; valid: files, lm1b")

  tokenizer = make_tokenizer(config, workdir, f"lm_{dataset}", vocab_texts, "sentencepiece")

  def build():
    return {
      split: Examples(
        {"inputs": tokenizer.encode(load(split), add_eos=True, max_length=max_length)}
      )
      for split in ("train", "eval")
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
    data["eval"],
    info,
    config,
    lengths={"inputs": max_length},
    process_index=process_index,
    process_count=process_count,
    train_sharded=sharded,
  )
