"""Machine translation (seq2seq): tfds WMT de-en in either direction, or local parallel text.

Sources: `dataset='wmt14_translate/de-en'` or `'wmt17_translate/de-en'`, translating
`source_lang` -> `target_lang`; the eval splits come from `eval_dataset` (default: `dataset`):
`validation_split` selects, `test_split` reports. flax examples/wmt trains on wmt17 and evaluates
on wmt14 (configs/translation.py): validation = newstest2013, test = newstest2014. Or
`dataset='files'` with `train_src`/`train_tgt`, `dev_src`/`dev_tgt` (validation) and
`test_src`/`test_tgt` (test), one sentence per line (plain or .gz), line i of the source file
translated by line i of the target file.

Tokens: one joint SentencePiece model (pad 0, EOS 1, UNK 2) trained on the first
`vocab_max_chars` characters of the training split only, both languages, on first use and kept in
`vocab_path` (or `workdir/translation_<...>.model`). Inputs and targets end with EOS.

Lengths: `max_length` is the one length of both sides (the experiment files point the model's
and the attention's lengths at it). Training pairs with a side longer than it are dropped (flax
wmt); eval pairs are cut to it (EOS kept last), so every eval pair counts and train/eval batches
share one shape. Both are logged as warnings with their counts and recorded in
`Datasets.lengths` (results.json). BLEU is scored against `Datasets.references`, the raw target
text of each eval split, so a cut reference does not flatter it.

Tokenised splits are cached in `workdir/data_cache/`. `TaskInfo.detokenize` turns ids back into
text; `bleu(hypotheses, references)` scores detokenized text with sacrebleu.

`config.data` fields:
  name: 'translation'
  dataset: 'wmt14_translate/de-en' | 'wmt17_translate/de-en' | 'files'
  eval_dataset: tfds dataset both eval splits come from (default: `dataset`)
  validation_split: its split that selects (default 'validation'; wmt14: newstest2013)
  test_split: its split that reports (default 'test'; wmt14: newstest2014)
  data_dir: tfds data directory (None = tfds default)
  source_lang, target_lang: 'de' / 'en' (either direction)
  train_src, train_tgt, dev_src, dev_tgt, test_src, test_tgt: local files (dataset='files'):
    train, validation (selects), test (reports)
  vocab_size: SentencePiece pieces (flax wmt: 32000); vocab_path; vocab_max_chars (10**7)
  max_length: tokens per sentence incl. EOS, inputs and targets (flax wmt: 256)
  pack: pack several pairs per row with segment ids / positions (flax wmt: True)
  bucket_by_length: padded batches grouped by length (varying shapes) instead of packing
  batch_size: global; seed: shuffle seed; eval_examples: first N pairs of each eval split (0: all)
"""

import itertools
from collections.abc import Sequence

import sacrebleu
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
)
from input_pipeline.registry import register
from input_pipeline.text import (
  EOS_ID,
  load_or_train_sentencepiece,
  read_lines,
  require_file,
  tokenizer_id,
)

TFDS_DATASETS = ("wmt14_translate/de-en", "wmt17_translate/de-en")
FILE_PREFIX = {"train": "train", "validation": "dev", "test": "test"}  # data.<prefix>_src / _tgt


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
  """Corpus BLEU (sacrebleu, 13a tokenisation) of detokenized hypotheses against references."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
  return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def read_parallel(src_path: str, tgt_path: str, field: str) -> tuple[list[str], list[str]]:
  """Line-aligned files -> (sources, targets); different line counts are an error."""
  src = read_lines(src_path, f"data.{field}_src")
  tgt = read_lines(tgt_path, f"data.{field}_tgt")
  if len(src) != len(tgt):
    raise ValueError(
      f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
      f"data.{field}_src and data.{field}_tgt must be line-aligned"
    )
  return src, tgt


def _tfds_pairs(name, split, data_dir, source_lang, target_lang) -> tuple[list[str], list[str]]:
  src, tgt = [], []
  for batch in tfds.as_numpy(load_tfds(name, split, data_dir).batch(4096)):
    src += [s.decode("utf-8") for s in batch[source_lang]]
    tgt += [t.decode("utf-8") for t in batch[target_lang]]
  return src, tgt


def _tfds_text_stream(name, data_dir, langs):
  """Sentences of the whole train split, both languages interleaved (SentencePiece training)."""
  for batch in tfds.as_numpy(load_tfds(name, "train", data_dir).batch(1024)):
    for pair in zip(*(batch[lang] for lang in langs), strict=True):
      for sentence in pair:
        yield sentence.decode("utf-8")


@register("translation")
def translation(config, *, workdir=None, process_index=0, process_count=1) -> Datasets:
  """Translation (see the module docstring for the fields)."""
  dataset = config.get("dataset", "wmt17_translate/de-en")
  source_lang, target_lang = config.get("source_lang", "de"), config.get("target_lang", "en")
  max_length = int(config.get("max_length", 256))
  data_dir = config.get("data_dir")
  if dataset == "files":
    files = {
      f"{p}_{side}": require_file(config.get(f"{p}_{side}"), f"data.{p}_{side}")
      for p in FILE_PREFIX.values()
      for side in ("src", "tgt")
    }

    def load(split: str):
      p = FILE_PREFIX[split]
      return read_parallel(files[f"{p}_src"], files[f"{p}_tgt"], p)

    train_text = load("train")  # also checks the files before any vocabulary is trained

    def vocab_texts():
      return itertools.chain.from_iterable(zip(*train_text, strict=True))

    sources = {f: file_identity(p) for f, p in files.items()}
    described = {s: f"{files[f'{p}_src']} -> {files[f'{p}_tgt']}" for s, p in FILE_PREFIX.items()}
    sharded = False
  elif dataset in TFDS_DATASETS:
    eval_dataset = config.get("eval_dataset") or dataset
    for name in (dataset, eval_dataset):
      if name not in TFDS_DATASETS:
        raise ValueError(f"data.dataset / eval_dataset {name!r}; valid: {TFDS_DATASETS}")
    langs = set(dataset.split("/")[1].split("-"))
    if {source_lang, target_lang} != langs:
      raise ValueError(
        f"data.source_lang={source_lang!r}, target_lang={target_lang!r}: "
        f"{dataset} has the languages {sorted(langs)}"
      )
    splits = {
      "train": (dataset, "train"),
      "validation": (eval_dataset, config.get("validation_split") or "validation"),
      "test": (eval_dataset, config.get("test_split") or "test"),
    }
    reads = {**splits, "train": (dataset, tfds_split("train", process_index, process_count))}

    def load(split: str):
      name, tfds_name = reads[split]
      return _tfds_pairs(name, tfds_name, data_dir, source_lang, target_lang)

    def vocab_texts():  # the whole train split of `dataset`, never an eval split
      return _tfds_text_stream(dataset, data_dir, sorted(langs))

    sources = [data_dir, {s: f"{n}:{r}" for s, (n, r) in reads.items()}]
    described = {s: f"{n} {r} ({source_lang}->{target_lang})" for s, (n, r) in splits.items()}
    sharded = True
  else:
    raise ValueError(f"data.dataset={dataset!r}; valid: files, {', '.join(TFDS_DATASETS)}")

  vocab_size = int(config.get("vocab_size", 32000))
  name = dataset.replace("/", "_")
  tokenizer = load_or_train_sentencepiece(
    config.get("vocab_path"),
    workdir,
    f"translation_{name}_spm{vocab_size}.model",
    vocab_texts,
    vocab_size,
    int(config.get("vocab_max_chars", 10**7)),
  )

  raw = {split: load(split) for split in SPLITS}  # small; the references are their targets

  def build():  # whole sentences: make_datasets drops long training pairs and cuts eval pairs
    out = {}
    for split in ("train", *SPLITS):
      src, tgt = raw.get(split) or load(split)
      out[split] = Examples(
        {
          "inputs": tokenizer.encode(src, add_eos=True),
          "targets": tokenizer.encode(tgt, add_eos=True),
        }
      )
    return out

  key = cache_key(
    sources=sources, langs=[source_lang, target_lang], tokenizer=tokenizer_id(tokenizer),
    uncut=True,
  )  # fmt: skip
  data = cached(workdir, f"translation-{process_index}of{process_count}", key, build)
  info = TaskInfo(
    kind="seq2seq",
    vocab_size=tokenizer.vocab_size,
    target_vocab_size=tokenizer.vocab_size,
    max_input_length=max_length,
    max_target_length=max_length,
    eos_id=EOS_ID,
    detokenize=tokenizer.decode,
  )
  return make_datasets(
    data["train"],
    {s: data[s] for s in SPLITS},
    info,
    config,
    splits=described,
    lengths={"inputs": max_length, "targets": max_length},
    process_index=process_index,
    process_count=process_count,
    train_sharded=sharded,
    references={split: tgt for split, (_, tgt) in raw.items()},
    drop_longer=True,
    keep_last=True,
  )
