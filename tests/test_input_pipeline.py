"""Input pipelines: every registered task keeps the batch contract (docs/architecture.md).

tfds tasks run under `tfds.testing.mock_data`; file tasks read small files written here. Every task
has a validation split (selects) and a test split (reports): `_mock` makes tfds' mock data
depend on the split (and honour slices such as `train[90%:]`) so the splits can be told apart.
"""

import contextlib
import gzip
import importlib
import os
import random
import re
import zlib

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import input_pipeline
from input_pipeline import batching, listops, listops_generate, text, translation

BATCH = 4
SIZES = {"train": 30, "validation": 10, "test": 8}  # examples per split of the small files


# ----------------------------------------------------------------------------------------------
# Small files


def _sentence(rng: random.Random, words: list[str]) -> str:
  return " ".join(rng.choice(words) for _ in range(rng.randint(2, 7)))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
  """Tiny versions of every file format the loaders read."""
  d = tmp_path_factory.mktemp("data")
  rng = random.Random(0)
  listops_generate.main(
    [f"--output_dir={d}", "--num_train=60", "--num_valid=10", "--num_test=10",
     "--min_length=4", "--max_length=40", "--max_depth=4", "--max_args=4"]
  )  # fmt: skip
  words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "über", "größe"]
  out = {"listops_dir": str(d)}
  lra_retrieval = {"train": "train", "validation": "eval", "test": "test"}
  for split, n in SIZES.items():
    rows = [f"{i % 3}\t{i} {_sentence(rng, words)}" for i in range(n)]
    out[f"text_{split}"] = _write(d / f"text_{split}.tsv", ["label\ttext", *rows])
    pairs = [
      f"{i % 2}.0\tid{i}a\tid{i}b\t{_sentence(rng, words)}\t{_sentence(rng, words)}"
      for i in range(n)
    ]
    out[f"pairs_{split}"] = _write(d / f"new_aan_pairs.{lra_retrieval[split]}.tsv", pairs)
    src = [_sentence(rng, words) for _ in range(n)]
    out[f"src_{split}"] = _write(d / f"{split}.de", src)
    out[f"tgt_{split}"] = _write(d / f"{split}.en.gz", [s.upper() for s in src])
    out[f"lm_{split}"] = _write(d / f"{split}.txt", [_sentence(rng, words) for _ in range(n)])
  return out


def _write(path, lines: list[str]) -> str:
  data = ("\n".join(lines) + "\n").encode("utf-8")
  if str(path).endswith(".gz"):
    data = gzip.compress(data)
  path.write_bytes(data)
  return str(path)


def _config(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"batch_size": BATCH, "seed": 0, "eval_examples": 0, **fields})


def task_configs(files: dict[str, str]) -> dict[str, tuple[ml_collections.ConfigDict, bool]]:
  """case -> (config.data, needs tfds mock data). Every registered task must appear here."""
  f = files
  syn = {"vocab_size": 12, "min_length": 2, "max_length": 6, "eval_examples": 10}
  spm = {"tokenizer": "sentencepiece", "vocab_size": 40}
  return {
    "copy": (_config(name="copy", **syn), False),
    "reverse": (_config(name="reverse", **syn), False),
    "sort": (_config(name="sort", **syn), False),
    "associative_recall": (
      _config(name="associative_recall", num_pairs=3, num_keys=6, num_classes=4, eval_examples=10),
      False,
    ),
    "listops": (_config(name="listops", data_dir=f["listops_dir"], max_length=64), False),
    "text_classification/imdb_bytes": (
      _config(name="text_classification", dataset="imdb_reviews", max_length=48),
      True,
    ),
    "text_classification/imdb_spm": (
      _config(name="text_classification", dataset="imdb_reviews", max_length=16, **spm),
      True,
    ),
    "text_classification/tsv": (
      _config(
        name="text_classification",
        dataset="files",
        train_path=f["text_train"],
        validation_path=f["text_validation"],
        test_path=f["text_test"],
        num_classes=3,
        max_length=40,
      ),
      False,
    ),  # fmt: skip
    "retrieval": (
      _config(name="retrieval", data_dir=os.path.dirname(f["pairs_train"]), max_length=32),
      False,
    ),
    "image_sequence/cifar10": (_config(name="image_sequence", dataset="cifar10"), True),
    "image_sequence/mnist": (_config(name="image_sequence", dataset="mnist"), True),
    "translation/wmt14_packed": (
      _config(
        name="translation",
        dataset="wmt14_translate/de-en",
        max_length=24,
        vocab_size=40,
        pack=True,
      ),
      True,
    ),  # fmt: skip
    "translation/wmt17_en_de": (
      _config(
        name="translation",
        dataset="wmt17_translate/de-en",
        source_lang="en",
        target_lang="de",
        eval_dataset="wmt14_translate/de-en",
        max_length=24,
        vocab_size=40,
      ),
      True,
    ),  # fmt: skip
    "translation/files": (
      _config(
        name="translation",
        dataset="files",
        train_src=f["src_train"],
        train_tgt=f["tgt_train"],
        dev_src=f["src_validation"],
        dev_tgt=f["tgt_validation"],
        test_src=f["src_test"],
        test_tgt=f["tgt_test"],
        max_length=24,
        vocab_size=48,
      ),
      False,
    ),  # fmt: skip
    "lm/lm1b_packed": (_config(name="lm", dataset="lm1b", max_length=24, pack=True, **spm), True),
    "lm/files_bytes": (
      _config(
        name="lm",
        dataset="files",
        train_path=f["lm_train"],
        validation_path=f["lm_validation"],
        test_path=f["lm_test"],
        tokenizer="byte",
        max_length=24,
      ),
      False,
    ),  # fmt: skip
  }


CASES = [
  "copy", "reverse", "sort", "associative_recall", "listops", "text_classification/imdb_bytes",
  "text_classification/imdb_spm", "text_classification/tsv", "retrieval",
  "image_sequence/cifar10", "image_sequence/mnist", "translation/wmt14_packed",
  "translation/wmt17_en_de", "translation/files", "lm/lm1b_packed", "lm/files_bytes",
]  # fmt: skip


def load(config, workdir=None, **kw) -> input_pipeline.Datasets:
  return input_pipeline.get_datasets(config, workdir=workdir, **kw)


# tfds mock data that depends on the split: example i of split s is built from (dataset, s, i), and
# a slice or an even split selects the examples tfds would (resolved by tfds' own SplitDict). (The
# default mock yields the same examples for every split.)
MOCK_SPLITS = {"train": 100, "validation": 10, "test": 10}


def _mock_example(name: str, split: str, i: int) -> dict:
  rng = np.random.default_rng(zlib.crc32(f"{name} {split} {i}".encode()))
  words = " ".join(rng.choice(["das", "haus", "ist", "klein", "the", "cat", "sat"], 3))
  sentence = f"{split} {i} {words}"
  if name in ("mnist", "cifar10"):
    shape = (28, 28, 1) if name == "mnist" else (32, 32, 3)
    return {"image": rng.integers(0, 256, shape, dtype=np.uint8), "label": np.int64(i % 10)}
  if name == "imdb_reviews":
    return {"text": sentence, "label": np.int64(i % 2)}
  if name == "lm1b":
    return {"text": sentence}
  if name.startswith("wmt"):
    return {"de": sentence, "en": sentence.upper()}
  raise AssertionError(f"no mock examples for tfds dataset {name!r}")


def _split_as_dataset(builder, split, decoders=None, read_config=None, **kwargs):
  """Mocks `DatasetBuilder._as_dataset`: the examples of `split` (e.g. 'train[90%:]')."""
  del decoders, read_config, kwargs
  infos = [
    tfds.core.SplitInfo(
      name=s, shard_lengths=[n], num_bytes=0,
      filename_template=tfds.core.ShardedFileTemplate(
        data_dir="/mock", dataset_name=builder.name, split=s, filetype_suffix="tfrecord"
      ),
    )
    for s, n in MOCK_SPLITS.items()
  ]  # fmt: skip
  examples = []
  for read in tfds.core.SplitDict(infos)[split].file_instructions:
    base = next(s for s in MOCK_SPLITS if f"-{s}.tfrecord" in read.filename)
    examples += [
      _mock_example(builder.name, base, i) for i in range(read.skip, read.skip + read.take)
    ]
  examples = [_mock_example(builder.name, "train", 0), *examples]  # the structure of an empty split
  columns = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  return tf.data.Dataset.from_tensor_slices(columns).skip(1)


def _mock(needed: bool = True):
  return (
    tfds.testing.mock_data(as_dataset_fn=_split_as_dataset) if needed else contextlib.nullcontext()
  )


def test_every_registered_task_has_a_case(files):
  covered = {c.split("/")[0] for c in task_configs(files)}
  assert set(input_pipeline.REGISTRY) <= covered, set(input_pipeline.REGISTRY) - covered
  assert sorted(CASES) == sorted(task_configs(files))


# ----------------------------------------------------------------------------------------------
# The batch contract, every task


KIND_KEYS = {
  "seq2seq": {"inputs", "targets"},
  "classification": {"inputs", "label"},
  "retrieval": {"inputs", "inputs2", "label"},
  "lm": {"inputs"},
}
PACKED_KEYS = {"inputs_segmentation", "inputs_position", "targets_segmentation", "targets_position"}


@pytest.mark.parametrize("case", CASES)
def test_batches_have_declared_shapes_and_dtypes(case, files, tmp_path):
  config, mock = task_configs(files)[case]
  with _mock(mock):
    data = load(config, workdir=str(tmp_path))
    info = data.info
    train = data.train_dataset(0)
    for spec in train.element_spec.values():  # the loop compiles one static shape
      assert spec.shape.is_fully_defined(), (case, train.element_spec)
    batches = list(train.take(3).as_numpy_iterator())
    evals = [b for s in input_pipeline.SPLITS for b in data.eval_dataset(s).as_numpy_iterator()]
  expected = KIND_KEYS[info.kind]
  if config.get("pack"):
    expected = expected | {k for k in PACKED_KEYS if k.split("_")[0] in expected}
  lengths = {
    "inputs": info.max_input_length,
    "inputs2": info.max_input_length,
    "targets": info.max_target_length,
  }
  assert evals, case
  for batch in batches + evals:
    is_eval = "valid" in batch
    assert set(batch) == expected | ({"valid"} if is_eval else set()), case
    for k, v in batch.items():
      assert v.dtype == (np.bool_ if k == "valid" else np.int32), (case, k, v.dtype)
      assert v.shape[0] == BATCH, (case, k, v.shape)
      base = k.split("_")[0]
      if k in lengths:
        assert v.shape == (BATCH, lengths[k]), (case, k, v.shape)
        vocab = info.target_vocab_size if k == "targets" and info.target_vocab_size else None
        assert v.min() >= 0 and v.max() < (vocab or info.vocab_size), (case, k)
      elif base in lengths:
        assert v.shape == (BATCH, lengths[base]), (case, k, v.shape)
      elif k == "label":
        assert v.shape == (BATCH,) and v.min() >= 0 and v.max() < info.num_classes, case
  if info.kind == "seq2seq":
    assert info.eos_id is not None
    for batch in batches:
      for row in batch["targets"]:
        assert row[row > 0][-1] == info.eos_id, case
  assert sum(int(b["valid"].sum()) for b in evals) >= 1


# ----------------------------------------------------------------------------------------------
# Splits: validation selects, test reports


def _rows(ds: tf.data.Dataset) -> list[tuple]:
  """The valid examples of a batched dataset, each as a hashable tuple of its features."""
  out = []
  for b in ds.as_numpy_iterator():
    keys = sorted(k for k in b if k != "valid" and not k.endswith(("_segmentation", "_position")))
    valid = b.get("valid", np.ones(len(b["inputs"]), bool))
    out += [tuple(b[k][r].tobytes() for k in keys) for r in np.flatnonzero(valid)]
  return out


def expected_splits(case: str, f: dict[str, str]) -> dict[str, str]:
  """What `Datasets.splits` says for each case of `task_configs`."""
  name = case.split("/")[0]
  if name in ("copy", "reverse", "sort", "associative_recall"):
    return {
      "train": f"{name} generator stream 'train' (data.seed=0)",
      "validation": f"{name} generator stream 'validation'",
      "test": f"{name} generator stream 'test'",
    }
  per_split = {
    "listops": lambda s: os.path.join(
      f["listops_dir"], f"basic_{s.replace('validation', 'val')}.tsv"
    ),
    "retrieval": lambda s: f[f"pairs_{s}"],
    "text_classification/tsv": lambda s: f[f"text_{s}"],
    "translation/files": lambda s: f"{f[f'src_{s}']} -> {f[f'tgt_{s}']}",
    "lm/files_bytes": lambda s: f[f"lm_{s}"],
  }
  slices = {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"}
  lm1b = {"train": "train[:99%]", "validation": "train[99%:]", "test": "test"}
  wmt = {"train": "train", "validation": "validation", "test": "test"}
  per_split |= {
    "text_classification/imdb_bytes": lambda s: f"imdb_reviews {slices[s]}",
    "text_classification/imdb_spm": lambda s: f"imdb_reviews {slices[s]}",
    "image_sequence/cifar10": lambda s: f"cifar10 {slices[s]}",
    "image_sequence/mnist": lambda s: f"mnist {slices[s]}",
    "lm/lm1b_packed": lambda s: f"lm1b {lm1b[s]}",
    "translation/wmt14_packed": lambda s: f"wmt14_translate/de-en {wmt[s]} (de->en)",
    "translation/wmt17_en_de": lambda s: (
      f"{'wmt17' if s == 'train' else 'wmt14'}_translate/de-en {wmt[s]} (en->de)"
    ),
  }
  return {s: per_split[case](s) for s in ("train", *input_pipeline.SPLITS)}


@pytest.mark.parametrize("case", CASES)
def test_every_task_has_a_validation_and_a_test_split(case, files, tmp_path):
  config, mock = task_configs(files)[case]
  with _mock(mock):
    data = load(config, workdir=str(tmp_path))
    rows = {s: _rows(data.eval_dataset(s)) for s in input_pipeline.SPLITS}
    default = _rows(data.eval_dataset())
  assert default == rows["validation"]  # eval_dataset() selects on validation
  assert rows["validation"] and rows["test"], case
  assert sorted(rows["validation"]) != sorted(rows["test"]), case  # different contents
  assert data.splits == expected_splits(case, files)


# The tfds tasks whose validation split is a slice of train (the split mock honours slices).
HELD_OUT = ["image_sequence/cifar10", "image_sequence/mnist", "text_classification/imdb_bytes",
            "lm/lm1b_packed"]  # fmt: skip


@pytest.mark.parametrize("case", HELD_OUT)
def test_validation_slice_is_held_out_of_train(case, files):
  config, _ = task_configs(files)[case]
  config.update(pack=False, tokenizer="byte")  # rows comparable between the two loads below
  epoch = MOCK_SPLITS["train"] // BATCH + 1  # batches covering one epoch of the train split
  with _mock():
    data = load(config)
    train = set(_rows(data.train_dataset(0).take(epoch)))
    validation, test = (set(_rows(data.eval_dataset(s))) for s in input_pipeline.SPLITS)
    config.train_split = "train"
    whole = set(_rows(load(config).train_dataset(0).take(epoch)))
  assert len(whole) == MOCK_SPLITS["train"]
  assert validation and train.isdisjoint(validation) and train | validation == whole
  assert test.isdisjoint(whole)


@pytest.mark.parametrize("name", ["copy", "reverse", "sort", "associative_recall"])
def test_synthetic_eval_splits_are_fixed_across_seeds(name, files):
  config = task_configs(files)[name][0]
  rows = {}
  for seed in (0, 7):
    config.seed = seed
    data = load(config)
    rows[seed] = {s: _rows(data.eval_dataset(s)) for s in input_pipeline.SPLITS}
    rows[seed]["train"] = _rows(data.train_dataset(0).take(3))
    assert data.splits["train"] == f"{name} generator stream 'train' (data.seed={seed})"
  for s in input_pipeline.SPLITS:
    assert rows[0][s] == rows[7][s] and len(rows[0][s]) == config.eval_examples
  assert rows[0]["train"] != rows[7]["train"]
  assert rows[0]["validation"] != rows[0]["test"]
  for seed in (0, 7):  # three streams: train does not replay an eval split
    for s in input_pipeline.SPLITS:
      assert rows[seed]["train"][: len(rows[seed][s])] != rows[seed][s]


def test_synthetic_eval_split_is_sharded_over_processes(files):
  config = task_configs(files)["reverse"][0]
  whole = _rows(load(config).eval_dataset("test"))
  shards = [
    _rows(load(config, process_index=p, process_count=2).eval_dataset("test")) for p in (0, 1)
  ]
  assert sorted(shards[0] + shards[1]) == sorted(whole) and len(shards[0]) == len(whole) // 2


@pytest.mark.parametrize("case", ["reverse", "text_classification/tsv"])
def test_unknown_eval_split_is_a_one_line_error(case, files):
  data = load(task_configs(files)[case][0])
  for split in ("eval", "train", "val"):
    with pytest.raises(ValueError) as error:
      data.eval_dataset(split)
    assert str(error.value) == f"unknown eval split {split!r}; valid: validation, test"


@pytest.mark.parametrize("case", ["reverse", "listops", "text_classification/tsv"])
def test_eval_examples_applies_to_each_split(case, files):
  config = task_configs(files)[case][0]
  config.eval_examples = 3
  data = load(config)
  for s in input_pipeline.SPLITS:
    batches = list(data.eval_dataset(s).as_numpy_iterator())
    assert [b["valid"].tolist() for b in batches] == [[True] * 3 + [False]], (case, s)


def test_eval_examples_zero_keeps_every_example_of_each_split(files):
  data = load(task_configs(files)["text_classification/tsv"][0])
  assert {s: len(_rows(data.eval_dataset(s))) for s in input_pipeline.SPLITS} == {
    "validation": SIZES["validation"],
    "test": SIZES["test"],
  }


def test_empty_eval_split_names_its_source():
  config = _config(name="image_sequence", dataset="mnist", validation_split="train[100%:]")
  with (
    _mock(),
    pytest.raises(ValueError, match=re.escape("validation split (mnist train[100%:]) has no")),
  ):
    load(config)


# ----------------------------------------------------------------------------------------------
# ListOps


def _independent_listops_value(source: str) -> int:
  """Evaluate a ListOps string with an explicit stack (no trees, parentheses ignored)."""
  stack: list[tuple[str, list[int]]] = []
  result = None
  for token in source.split():
    if token in ("(", ")"):
      continue
    if token.startswith("["):
      stack.append((token, []))
    elif token == "]":
      op, args = stack.pop()
      a = sorted(args)
      value = {
        "[MIN": a[0],
        "[MAX": a[-1],
        "[SM": sum(a) % 10,
        "[MED": a[len(a) // 2] if len(a) % 2 else (a[len(a) // 2 - 1] + a[len(a) // 2]) // 2,
      }[op]
      if stack:
        stack[-1][1].append(value)
      else:
        result = value
    else:
      if stack:
        stack[-1][1].append(int(token))
      else:
        result = int(token)
  assert not stack
  return result


def _structure(source: str) -> tuple[int, int, int]:
  """(length as LRA counts it, maximum depth, maximum number of arguments)."""
  length, depth, deepest, widest, args = 0, 1, 1, 0, []
  for token in source.split():
    if token in ("(", ")"):
      continue
    length += 1
    if token.startswith("["):
      if args:
        args[-1] += 1
      args.append(0)
      depth += 1
      deepest = max(deepest, depth)
    elif token == "]":
      widest = max(widest, args.pop())
      depth -= 1
    elif args:
      args[-1] += 1
  return length, deepest, widest


@pytest.mark.parametrize("parens", [True, False])
def test_listops_generator_follows_lra_rules(parens):
  rows = listops_generate.generate(
    300, seed=1, max_depth=5, max_args=5, min_length=10, max_length=80, parens=parens
  )
  assert len({s for s, _ in rows}) == 300  # de-duplicated
  for source, target in rows:
    assert _independent_listops_value(source) == target
    length, depth, width = _structure(source)
    assert 10 < length < 80 and depth <= 5 and 2 <= width <= 5, source
    assert set(source.split()) <= set(listops.VOCAB[1:])
    assert (" ( " in f" {source} ") == parens
  ops = {t for s, _ in rows for t in s.split() if t.startswith("[")}
  assert ops == {"[MIN", "[MAX", "[MED", "[SM"}
  assert rows == listops_generate.generate(
    300, seed=1, max_depth=5, max_args=5, min_length=10, max_length=80, parens=parens
  )


@pytest.mark.parametrize(
  "split, file", [("validation", "basic_val.tsv"), ("test", "basic_test.tsv")]
)
def test_listops_files_round_trip(split, file, files):
  data = load(task_configs(files)["listops"][0])
  with open(os.path.join(files["listops_dir"], file)) as f:
    rows = [line.rstrip("\n").split("\t") for line in f][1:]
  batches = list(data.eval_dataset(split).as_numpy_iterator())
  got = [
    (data.info.detokenize(x), int(y))
    for b in batches
    for x, y, v in zip(b["inputs"], b["label"], b["valid"], strict=True)
    if v
  ]
  want = [(" ".join(t for t in s.split() if t not in ("(", ")")), int(y)) for s, y in rows]
  assert got == want


def test_listops_loads_lra_release_format(tmp_path):
  """LRA's released files: CRLF line ends (csv.writer), any column order named by the header."""
  rows = [("( ( ( [MAX 4 ) 3 ) ] )", 4), ("( ( ( [SM 5 ) 7 ) ] )", 2)]
  (tmp_path / "basic_train.tsv").write_bytes(
    b"Source\tTarget\r\n" + b"".join(f"{s}\t{t}\r\n".encode() for s, t in rows)
  )
  for split in ("val", "test"):
    (tmp_path / f"basic_{split}.tsv").write_text(
      "Target\tSource\n" + "".join(f"{t}\t{s}\n" for s, t in rows)
    )
  config = _config(name="listops", data_dir=str(tmp_path), batch_size=2, max_length=2000)
  data = load(config)
  evals = [*data.eval_dataset("validation"), *data.eval_dataset("test")]
  for batch in (next(data.train_dataset(0).as_numpy_iterator()), *evals):
    batch = {k: np.asarray(v) for k, v in batch.items()}
    texts = sorted(data.info.detokenize(x) for x in batch["inputs"])
    assert texts == ["[MAX 4 3 ]", "[SM 5 7 ]"]
    assert sorted(batch["label"].tolist()) == [2, 4]
  assert data.info.max_input_length == 2000 and data.info.num_classes == 10


# ----------------------------------------------------------------------------------------------
# Translation, tokenizers


def test_translation_from_local_files(files, tmp_path):
  config = task_configs(files)["translation/files"][0]
  config.max_length = 128  # no sentence is cut
  data = load(config, workdir=str(tmp_path))
  model = tmp_path / "translation_files_spm48.model"
  assert model.exists()  # trained on first use, cached in the workdir
  mtime = model.stat().st_mtime_ns
  again = load(config, workdir=str(tmp_path))
  assert model.stat().st_mtime_ns == mtime and again.info.vocab_size == data.info.vocab_size
  for split in input_pipeline.SPLITS:  # dev_* files: validation; test_* files: test
    with gzip.open(files[f"tgt_{split}"], "rt", encoding="utf-8") as f:
      references = f.read().splitlines()
    batches = list(data.eval_dataset(split).as_numpy_iterator())
    hypotheses = [
      data.info.detokenize(t)
      for b in batches
      for t, v in zip(b["targets"], b["valid"], strict=True)
      if v
    ]
    assert hypotheses == references  # detokenize inverts the tokenisation
  assert translation.bleu(hypotheses, references) == pytest.approx(100.0)
  assert translation.bleu(["A B C D"] * len(references), references) < 50
  train = next(data.train_dataset(0).as_numpy_iterator())
  assert (train["targets"] == data.info.eos_id).sum(1).tolist() == [1] * BATCH


def test_byte_tokenizer_round_trip_and_truncation():
  tok = text.ByteTokenizer()
  ids = tok.encode(["größe", "ab"], add_eos=True, max_length=4)
  assert [tok.decode(ids[i]) for i in range(2)] == ["gr\ufffd", "ab"]
  assert ids[0].tolist()[-1] == text.EOS_ID and len(ids[0]) == 4
  full = tok.encode(["größe"])
  assert tok.decode(full[0]) == "größe" and full.values.min() >= text.BYTE_OFFSET


# ----------------------------------------------------------------------------------------------
# Packing


def test_packed_pipeline_segments_match_across_inputs_and_targets(files, tmp_path):
  config = task_configs(files)["translation/files"][0]
  config.pack = True
  data = load(config, workdir=str(tmp_path))
  with gzip.open(files["tgt_train"], "rt", encoding="utf-8") as f:
    references = set(f.read().splitlines())
  pairs = 0
  for batch in data.train_dataset(0).take(4).as_numpy_iterator():
    for r in range(BATCH):
      src_seg, tgt_seg = batch["inputs_segmentation"][r], batch["targets_segmentation"][r]
      assert set(src_seg[src_seg > 0]) == set(tgt_seg[tgt_seg > 0])
      for s in set(src_seg[src_seg > 0]):
        src = data.info.detokenize(batch["inputs"][r][src_seg == s])
        tgt = data.info.detokenize(batch["targets"][r][tgt_seg == s])
        assert tgt == src.upper() and tgt in references  # the target of the same pair
        assert batch["targets_position"][r][tgt_seg == s][0] == 0
        pairs += 1
  assert pairs > 4 * BATCH  # rows hold several pairs


# ----------------------------------------------------------------------------------------------
# Determinism, resumption, host sharding, eval padding


def _batches(data, start=0, n=6):
  return list(data.train_dataset(start).take(n).as_numpy_iterator())


def _same(a, b) -> bool:
  return len(a) == len(b) and all(
    x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    for x, y in zip(a, b, strict=True)
  )


@pytest.mark.parametrize("mode", ["padded", "pack", "bucket_by_length"])
def test_same_seed_same_batches_and_resume(mode, files):
  config = task_configs(files)["lm/files_bytes"][0]
  if mode != "padded":
    config[mode] = True
  first = _batches(load(config), n=12)
  assert _same(first, _batches(load(config), n=12))
  assert _same(first[7:], _batches(load(config), start=7, n=5))  # resume = the same stream
  config.seed = 1
  assert not _same(first, _batches(load(config), n=12))


def test_bucket_by_length_pads_to_bucket_boundaries(files):
  config = task_configs(files)["lm/files_bytes"][0]
  config.update(bucket_by_length=True, max_length=64)
  for batch in _batches(load(config), n=8):
    length = batch["inputs"].shape[1]
    assert length in batching._bucket_boundaries(64)
    longest = int((batch["inputs"] > 0).sum(1).max())
    assert longest <= length and (length == 8 or longest > length // 2)


def _examples(data, split: str, n_batches: int) -> list[str]:
  ds = data.eval_dataset() if split == "eval" else data.train_dataset(0).take(n_batches)
  out = []
  for b in ds.as_numpy_iterator():
    valid = b.get("valid", np.ones(len(b["inputs"]), bool))
    out += [data.info.detokenize(x) for x, v in zip(b["inputs"], valid, strict=True) if v]
  return out


def test_host_shards_are_disjoint_and_cover_the_data(files):
  config = task_configs(files)["text_classification/tsv"][0]
  config.update(batch_size=6, max_length=200)  # 3 processes x 2; no text is cut
  with open(files["text_train"]) as f:
    train_all = [line.rstrip("\n").split("\t", 1)[1] for line in f][1:]
  with open(files["text_validation"]) as f:
    eval_all = [line.rstrip("\n").split("\t", 1)[1] for line in f][1:]
  train, evals = [], []
  for p in range(3):
    data = load(config, process_index=p, process_count=3)
    assert next(data.train_dataset(0).as_numpy_iterator())["inputs"].shape[0] == 2
    train.append(_examples(data, "train", len(train_all) // 3 // 2))  # one epoch of the shard
    evals.append(_examples(data, "eval", 0))
  for shards, everything in ((train, train_all), (evals, eval_all)):
    assert sorted(sum(shards, [])) == sorted(everything)  # disjoint and complete
    assert all(len(set(s)) == len(s) for s in shards)


def test_tfds_split_for_processes():
  assert batching.tfds_split("train", 0, 1) == "train"
  shards = [batching.tfds_split("train", p, 4) for p in range(4)]
  assert len({(s.index, s.count) for s in shards}) == 4 and all(s.count == 4 for s in shards)


def test_eval_keeps_last_partial_batch(files):
  config = task_configs(files)["text_classification/tsv"][0]
  config.eval_examples = 7
  batches = list(load(config).eval_dataset().as_numpy_iterator())
  assert [b["valid"].tolist() for b in batches] == [[True] * 4, [True] * 3 + [False]]
  assert not batches[-1]["inputs"][-1].any()
  assert [b["inputs"].shape for b in batches] == [(BATCH, 40)] * 2


def test_tokenised_splits_are_cached_in_the_workdir(files, tmp_path, monkeypatch):
  config = task_configs(files)["listops"][0]
  first = _batches(load(config, workdir=str(tmp_path)))
  assert os.listdir(tmp_path / "data_cache")

  def fail(*args, **kwargs):
    raise AssertionError("re-read the files instead of the cache")

  monkeypatch.setattr(listops, "read_tsv", fail)
  assert _same(first, _batches(load(config, workdir=str(tmp_path))))


def test_cache_is_keyed_by_every_split_source(files, tmp_path):
  config = task_configs(files)["text_classification/tsv"][0]
  first = load(config, workdir=str(tmp_path))
  config.test_path = files["text_validation"]  # only the test split's file changes
  second = load(config, workdir=str(tmp_path))
  assert len(os.listdir(tmp_path / "data_cache")) == 2
  assert _rows(second.eval_dataset("test")) == _rows(first.eval_dataset("validation"))
  assert _rows(second.eval_dataset("test")) != _rows(first.eval_dataset("test"))


# ----------------------------------------------------------------------------------------------
# Bad input: errors name the file and the line


def _bad_cases(tmp_path, files):
  def text_cfg(train_path):
    return _config(
      name="text_classification", dataset="files", train_path=str(train_path),
      validation_path=files["text_validation"], test_path=files["text_test"], num_classes=3,
    )  # fmt: skip

  listops_dir = tmp_path / "listops"
  listops_dir.mkdir()
  (listops_dir / "basic_train.tsv").write_text("Source\tTarget\n[MAX 1 2 ]\t2\n[MAX 1 x ]\t1\n")
  (listops_dir / "basic_val.tsv").write_text("Source\tTarget\n[MAX 1 2 ]\t2\n")
  (listops_dir / "basic_test.tsv").write_text("Source\tTarget\n[MIN 1 2 ]\t1\n")
  (tmp_path / "empty.tsv").write_text("")
  (tmp_path / "no_tab.tsv").write_text("1\tgood\n2\tfine\njust text\n")
  (tmp_path / "label.tsv").write_text("1\tgood\n7\tbad\n")
  (tmp_path / "pairs.tsv").write_text("1\ta\tb\tx\ty\n0\ta\tb\tx\n")
  (tmp_path / "short.en").write_text("one\n")
  return {
    "missing file": (text_cfg(tmp_path / "nope.tsv"), FileNotFoundError, "nope.tsv"),
    "empty file": (text_cfg(tmp_path / "empty.tsv"), ValueError, "empty.tsv: file is empty"),
    "malformed row": (text_cfg(tmp_path / "no_tab.tsv"), ValueError, "no_tab.tsv:3:"),
    "label out of range": (text_cfg(tmp_path / "label.tsv"), ValueError, "label.tsv:2: label '7'"),
    "listops unknown token": (
      _config(name="listops", data_dir=str(listops_dir)),
      ValueError,
      "basic_train.tsv:3: unknown",
    ),
    "listops missing dir": (
      _config(name="listops", data_dir=str(tmp_path / "none")),
      FileNotFoundError,
      "basic_train",
    ),
    "retrieval field count": (
      _config(
        name="retrieval",
        train_path=str(tmp_path / "pairs.tsv"),
        validation_path=files["pairs_validation"],
        test_path=files["pairs_test"],
      ),
      ValueError,
      "pairs.tsv:2: expected 5",
    ),  # fmt: skip
    "translation line counts": (
      _config(
        name="translation",
        dataset="files",
        train_src=files["src_train"],
        train_tgt=str(tmp_path / "short.en"),
        dev_src=files["src_validation"],
        dev_tgt=files["tgt_validation"],
        test_src=files["src_test"],
        test_tgt=files["tgt_test"],
      ),
      ValueError,
      "short.en has 1",
    ),  # fmt: skip
    "lm missing validation": (
      _config(
        name="lm",
        dataset="files",
        train_path=files["lm_train"],
        validation_path=None,
        test_path=files["lm_test"],
        tokenizer="byte",
      ),
      ValueError,
      "data.validation_path is not set",
    ),  # fmt: skip
    "translation missing test": (
      _config(
        name="translation",
        dataset="files",
        train_src=files["src_train"],
        train_tgt=files["tgt_train"],
        dev_src=files["src_validation"],
        dev_tgt=files["tgt_validation"],
        test_src=files["src_test"],
      ),
      ValueError,
      "data.test_tgt is not set",
    ),  # fmt: skip
    "retrieval missing test file": (
      _config(
        name="retrieval",
        train_path=files["pairs_train"],
        validation_path=files["pairs_validation"],
        test_path=str(tmp_path / "nope.tsv"),
      ),
      FileNotFoundError,
      "nope.tsv: no such file (data.test_path (or data.data_dir))",
    ),  # fmt: skip
  }


BAD = [
  "missing file", "empty file", "malformed row", "label out of range", "listops unknown token",
  "listops missing dir", "retrieval field count", "translation line counts",
  "lm missing validation", "translation missing test", "retrieval missing test file",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_input_names_file_and_line(case, files, tmp_path):
  config, error, message = _bad_cases(tmp_path, files)[case]
  with pytest.raises(error, match=re.escape(message)):
    load(config)


def test_missing_tfds_dataset_says_how_to_build_it(tmp_path):
  config = _config(name="image_sequence", dataset="mnist", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="tfds build mnist"):
    load(config)


# ----------------------------------------------------------------------------------------------
# Experiment files


@pytest.mark.parametrize(
  "name", ["listops", "text_classification", "retrieval", "image", "translation", "lm"]
)
def test_experiment_config_is_valid(name):
  from experiments.run import validate

  config = importlib.import_module(f"configs.{name}").get_config()
  validate.check_config(config)
  assert config.data.name in input_pipeline.REGISTRY
  assert config.data.seed == config.seed


# Each experiment file trains end to end on its task's real code path (tfds under mock data,
# local files written here), shrunk to a tiny model and two steps.
EXPERIMENT_CASES = {
  "listops": "listops",
  "text_classification": "text_classification/imdb_bytes",
  "retrieval": "retrieval",
  "image": "image_sequence/cifar10",
  "translation": "translation/files",
  "lm": "lm/files_bytes",
}
TINY_MODEL = dict(
  emb_dim=16, qkv_dim=16, mlp_dim=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
  classifier_dim=16, dropout_rate=0.0, attention_dropout_rate=0.0, dtype="float32",
)  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPERIMENT_CASES))
def test_experiment_trains_end_to_end(name, files, tmp_path):
  from experiments.run import train

  config = importlib.import_module(f"configs.{name}").get_config()
  data, needs_mock = task_configs(files)[EXPERIMENT_CASES[name]]
  config.data.update(data.to_dict())
  config.model.update({k: v for k, v in TINY_MODEL.items() if k in config.model})
  config.optimizer.update(warmup_steps=1, warmup_epochs=0.0)  # image: in steps here
  config.train.update(num_steps=2, eval_every_steps=2, log_every_steps=1, checkpoint_every_steps=2)
  config.train.update(num_epochs=0.0, eval_every_epochs=0.0, checkpoint_every_epochs=0.0)
  with _mock(needs_mock):
    results = train.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 2
  assert all(np.isfinite(v) for v in results["metrics"].values()), results["metrics"]
