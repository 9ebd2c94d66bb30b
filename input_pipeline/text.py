"""Reading text files and turning text into token ids, shared by the text tasks.

Token ids (every tokenizer here): 0 = padding, 1 = EOS.

* `ByteTokenizer`: UTF-8 bytes, byte b -> b + 2 (vocabulary 258), as LRA's byte-level tasks.
* `SentencePieceTokenizer`: a SentencePiece model with pad 0, EOS 1, UNK 2 and no BOS (flax
  examples/wmt), trained on the task's training text on first use (`load_or_train_sentencepiece`).

Tokenisation runs once at load time over whole splits (SentencePiece's multi-threaded batch
encoder, or numpy for bytes); the tf.data hot path only gathers arrays.

File errors name the file and the line: `FileNotFoundError` for a missing file, `ValueError` for
an empty file, a malformed row or a label out of range.
"""

import csv
import gzip
import hashlib
import io
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
import tensorflow as tf

from input_pipeline.batching import Ragged

PAD_ID = 0
EOS_ID = 1
BYTE_OFFSET = 2
_ENCODE_CHUNK = 65536

csv.field_size_limit(2**31 - 1)  # LRA's documents are long single fields


# ----------------------------------------------------------------------------------------------
# Files


def require_file(path: str | None, field: str) -> str:
  """`path` must name an existing file; `field` (e.g. 'data.train_path') goes in the message."""
  if not path:
    raise ValueError(f"{field} is not set")
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: no such file ({field})")
  if tf.io.gfile.isdir(path):
    raise ValueError(f"{path}: is a directory, expected a file ({field})")
  return path


def read_text(path: str, field: str = "file") -> str:
  """The whole file as text (gzip if the name ends in .gz); empty files are an error."""
  require_file(path, field)
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  if path.endswith(".gz"):
    data = gzip.decompress(data)
  if not data.strip():
    raise ValueError(f"{path}: file is empty ({field})")
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data[: e.start].count(b"\n") + 1
    raise ValueError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None


def read_lines(path: str, field: str = "file") -> list[str]:
  """One entry per line, newline removed (a trailing newline does not add an empty line)."""
  text = read_text(path, field)
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  return [line.rstrip("\r") for line in lines]


def read_rows(
  path: str, field: str, delimiter: str | None = None, quoting: bool | None = None
) -> Iterator[tuple[int, list[str]]]:
  """(line number, fields) of a TSV/CSV file; the delimiter is ',' for *.csv, else TAB.

  TSV is split literally on tabs (LRA's files are read with quoting off); CSV follows the csv
  module's quoting rules. Blank lines are skipped.
  """
  text = read_text(path, field)
  name = path[:-3] if path.endswith(".gz") else path
  delimiter = delimiter or ("," if name.endswith(".csv") else "\t")
  quoting = delimiter == "," if quoting is None else quoting
  if not quoting:
    for number, line in enumerate(text.split("\n"), 1):
      line = line.rstrip("\r")
      if line.strip():
        yield number, line.split(delimiter)
    return
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
  for row in reader:
    if any(f.strip() for f in row):
      yield reader.line_num, row


def parse_label(value: str, path: str, line: int, num_classes: int) -> int:
  """An integer class id in [0, num_classes) ('1', '1.0' are fine), else a ValueError."""
  try:
    number = float(value)
  except ValueError:
    raise ValueError(f"{path}:{line}: label {value!r} is not a number") from None
  if number != int(number) or not 0 <= number < num_classes:
    raise ValueError(f"{path}:{line}: label {value!r} outside the classes 0..{num_classes - 1}")
  return int(number)


# ----------------------------------------------------------------------------------------------
# Tokenizers


class ByteTokenizer:
  """UTF-8 bytes: id = byte + 2 (0 = padding, 1 = EOS)."""

  vocab_size = 256 + BYTE_OFFSET
  eos_id = EOS_ID

  def encode(
    self, texts: Sequence[str | bytes], add_eos: bool = False, max_length: int | None = None
  ) -> Ragged:
    """Texts -> ragged ids, each cut to `max_length` (EOS, if added, is kept last)."""
    data = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts]
    if max_length is not None:
      keep = max_length - 1 if add_eos else max_length
      data = [d[:keep] for d in data]
    if add_eos:
      data = [d + b"\xff" for d in data]  # placeholder byte, replaced by EOS below
    lengths = np.fromiter(map(len, data), np.int64, count=len(data))
    splits = np.zeros(len(data) + 1, np.int64)
    np.cumsum(lengths, out=splits[1:])
    values = np.frombuffer(b"".join(data), np.uint8).astype(np.uint16) + BYTE_OFFSET
    if add_eos:
      values[splits[1:] - 1] = EOS_ID
    return Ragged(values, splits)

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> text, up to the first EOS; padding dropped."""
    out = bytearray()
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i >= BYTE_OFFSET:
        out.append(i - BYTE_OFFSET)
    return out.decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  """A SentencePiece model file (pad 0, EOS 1, UNK 2)."""

  eos_id = EOS_ID

  def __init__(self, path: str):
    require_file(path, "SentencePiece model")
    with tf.io.gfile.GFile(path, "rb") as f:
      self.model_proto = f.read()
    self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
    if self.sp.pad_id() != PAD_ID or self.sp.eos_id() != EOS_ID:
      raise ValueError(
        f"{path}: SentencePiece model has pad id {self.sp.pad_id()} and EOS id "
        f"{self.sp.eos_id()}; this pipeline needs pad 0 and EOS 1 (retrain without vocab_path)"
      )
    self.path = path

  @property
  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  def encode(
    self, texts: Sequence[str], add_eos: bool = False, max_length: int | None = None
  ) -> Ragged:
    """Texts -> ragged ids (multi-threaded), each cut to `max_length` keeping EOS last."""
    parts = []
    for start in range(0, len(texts), _ENCODE_CHUNK):
      ids = self.sp.encode(
        list(texts[start : start + _ENCODE_CHUNK]),
        out_type=int,
        add_eos=add_eos,
        num_threads=os.cpu_count(),
      )
      parts.append(Ragged.from_sequences(ids, max_id=self.vocab_size - 1))
    ids = concat(parts) if parts else Ragged(np.zeros(0, np.uint16), np.zeros(1, np.int64))
    return ids if max_length is None else ids.truncate(max_length, keep_last=add_eos)

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> text, up to the first EOS; padding dropped."""
    out = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i != PAD_ID:
        out.append(i)
    return self.sp.decode(out)


def concat(parts: Sequence[Ragged]) -> Ragged:
  if len(parts) == 1:
    return parts[0]
  offsets = np.cumsum([0] + [p.splits[-1] for p in parts[:-1]])
  splits = np.concatenate([[0]] + [p.splits[1:] + o for p, o in zip(parts, offsets, strict=True)])
  return Ragged(np.concatenate([p.values for p in parts]), splits.astype(np.int64))


def train_sentencepiece(
  texts: Iterable[str], path: str, vocab_size: int, max_chars: int = 10**7, seed: int = 0
) -> None:
  """Train a unigram model on `texts` (up to `max_chars` characters) and write it to `path`.

  The file is created atomically and never overwritten: if another process got there first, its
  model is kept, so every process of a run uses the same vocabulary.
  """
  spm.set_random_generator_seed(seed)
  with tempfile.TemporaryDirectory() as tmp:
    corpus = os.path.join(tmp, "corpus.txt")
    chars = 0
    with open(corpus, "w", encoding="utf-8") as f:
      for text in texts:
        text = text.replace("\n", " ").strip()
        if not text:
          continue
        f.write(text + "\n")
        chars += len(text)
        if chars >= max_chars:
          break
    if chars == 0:
      raise ValueError(f"no training text for the SentencePiece model {path}")
    prefix = os.path.join(tmp, "spm")
    spm.SentencePieceTrainer.train(
      input=corpus,
      model_prefix=prefix,
      vocab_size=vocab_size,
      model_type="unigram",
      character_coverage=1.0,
      pad_id=PAD_ID,
      eos_id=EOS_ID,
      unk_id=2,
      bos_id=-1,
      hard_vocab_limit=False,  # tiny corpora get a smaller vocabulary instead of an error
      num_threads=1,  # deterministic
      minloglevel=2,
    )
    directory = os.path.dirname(path)
    if directory:
      tf.io.gfile.makedirs(directory)
    staged = f"{path}.tmp-{uuid.uuid4().hex}"
    tf.io.gfile.copy(prefix + ".model", staged, overwrite=True)
  try:
    tf.io.gfile.rename(staged, path, overwrite=False)
  except tf.errors.AlreadyExistsError:
    tf.io.gfile.remove(staged)


def load_or_train_sentencepiece(
  vocab_path: str | None,
  workdir: str | None,
  default_name: str,
  texts: Callable[[], Iterable[str]],
  vocab_size: int,
  max_chars: int = 10**7,
) -> SentencePieceTokenizer:
  """The model at `vocab_path` (else `workdir/<default_name>`), trained on `texts()` if missing."""
  path = vocab_path or (os.path.join(workdir, default_name) if workdir else None)
  if path is None:
    path = os.path.join(tempfile.mkdtemp(prefix="spm"), default_name)
  if not tf.io.gfile.exists(path):
    train_sentencepiece(texts(), path, vocab_size, max_chars)
  return SentencePieceTokenizer(path)


def make_tokenizer(
  config, workdir: str | None, name: str, texts: Callable[[], Iterable[str]], default: str = "byte"
):
  """`config.tokenizer`: 'byte' or 'sentencepiece' (`vocab_size`, `vocab_path`,
  `vocab_max_chars`); `name` names the model file kept in the workdir."""
  kind = config.get("tokenizer", default)
  if kind == "byte":
    return ByteTokenizer()
  if kind == "sentencepiece":
    size = int(config.get("vocab_size", 32000))
    return load_or_train_sentencepiece(
      config.get("vocab_path"),
      workdir,
      f"{name}_spm{size}.model",
      texts,
      size,
      int(config.get("vocab_max_chars", 10**7)),
    )
  raise ValueError(f"data.tokenizer={kind!r}; valid: byte, sentencepiece")


def tokenizer_id(tokenizer) -> str:
  """Identifies a tokenizer's vocabulary (for cache keys)."""
  if isinstance(tokenizer, SentencePieceTokenizer):
    return "spm-" + hashlib.sha256(tokenizer.model_proto).hexdigest()[:16]
  return "byte"
