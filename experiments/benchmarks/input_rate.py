"""Input-pipeline throughput per task: examples/s and tokens/s of `train_dataset` on this machine.

    python -m experiments.benchmarks.input_rate [--output=FILE.md] [--seconds=5]

Builds each task from generated data (no downloads): the synthetic `reverse` task, ListOps from
files written by `input_pipeline.listops_generate` (LRA lengths), byte-level text classification
from a local TSV, translation (SentencePiece: padded, packed, bucketed) and byte-level lm
(packed) from local text. Times `as_numpy_iterator()` batches, as the train loop consumes them,
after a warm-up.
`tokens/s` counts non-padding tokens of all sequence features; `fill` is the non-padding share of
the batch. Load time (reading and tokenising; for the first translation row also training the
SentencePiece model, which the packed row reuses) is reported apart, and so is the time a
resumed stream takes to give its first batch at batch 0 and at batch `RESUME_AT` (locating the
start of a packed or bucketed stream without replaying it).
Prints a markdown table; `--output` also writes it to a file.
"""

import argparse
import datetime
import os
import platform
import random
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import ml_collections  # noqa: E402
import tensorflow as tf  # noqa: E402

import input_pipeline  # noqa: E402
from input_pipeline import listops_generate  # noqa: E402

SEQUENCE_KEYS = ("inputs", "inputs2", "targets")
RESUME_AT = 100_000
WORDS = [
  "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be",
  "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have",
  "an", "they", "you", "were", "her", "she", "there", "been", "one", "all", "we", "their", "has",
  "would", "when", "haus", "katze", "und", "der", "die", "das", "ist", "nicht", "mit", "auf",
  "für", "über", "größe", "straße", "wasser", "zeit",
]  # fmt: skip


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
  return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _write(path: str, lines) -> str:
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(line + "\n" for line in lines)
  return path


def make_cases(tmp: str) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(description, config.data) per benchmarked task, with their data written under `tmp`."""
  rng = random.Random(0)
  listops_generate.main(
    [f"--output_dir={tmp}", "--num_train=2000", "--num_valid=10", "--num_test=10"]
  )
  text_rows = [f"{i % 2}\t{_sentence(rng, 150, 900)}" for i in range(4000)]
  _write(os.path.join(tmp, "text_train.tsv"), text_rows)
  _write(os.path.join(tmp, "text_eval.tsv"), text_rows[:100])
  src = [_sentence(rng, 5, 40) for _ in range(50_000)]
  _write(os.path.join(tmp, "train.src"), src)
  _write(os.path.join(tmp, "train.tgt"), [s[::-1] for s in src])
  _write(os.path.join(tmp, "eval.src"), src[:100])
  _write(os.path.join(tmp, "eval.tgt"), [s[::-1] for s in src[:100]])
  j = lambda name: os.path.join(tmp, name)  # noqa: E731

  def config(**fields):
    return ml_collections.ConfigDict({"seed": 0, "eval_examples": 0, **fields})

  translation = dict(
    name="translation", dataset="files", train_src=j("train.src"), train_tgt=j("train.tgt"),
    dev_src=j("eval.src"), dev_tgt=j("eval.tgt"), test_src=j("eval.src"), test_tgt=j("eval.tgt"),
    vocab_size=8000, max_length=256, vocab_path=j("translation.model"),
  )  # fmt: skip
  return [
    ("synthetic reverse (len 4-16)", config(
      name="reverse", vocab_size=16, min_length=4, max_length=16, batch_size=64,
      eval_examples=64)),
    ("listops, LRA lengths (max 2000)", config(
      name="listops", data_dir=tmp, max_length=2000, batch_size=32)),
    ("text, bytes, TSV (max 4000)", config(
      name="text_classification", dataset="files", train_path=j("text_train.tsv"),
      validation_path=j("text_eval.tsv"), test_path=j("text_eval.tsv"), max_length=4000,
      batch_size=32)),
    ("translation, SentencePiece, padded (256)", config(**translation, batch_size=64)),
    ("translation, SentencePiece, packed (256)", config(**translation, batch_size=64, pack=True)),
    ("translation, SentencePiece, bucketed (256)", config(
      **translation, batch_size=64, bucket_by_length=True)),
    ("lm, bytes, packed (512)", config(
      name="lm", dataset="files", train_path=j("train.src"), validation_path=j("eval.src"),
      test_path=j("eval.src"), tokenizer="byte", max_length=512, batch_size=32, pack=True)),
  ]  # fmt: skip


def _examples_in(batch: dict) -> int:
  if "inputs_position" in batch:  # packed: one example starts at each position 0 of a token
    return int(((batch["inputs_position"] == 0) & (batch["inputs"] > 0)).sum())
  return len(batch["inputs"])


def measure(config: ml_collections.ConfigDict, workdir: str, seconds: float) -> dict[str, float]:
  start = time.perf_counter()
  data = input_pipeline.get_datasets(config, workdir=workdir)
  load_s = time.perf_counter() - start
  resume_s = {}
  for at in (0, RESUME_AT):
    start = time.perf_counter()
    next(data.train_dataset(at).as_numpy_iterator())
    resume_s[at] = time.perf_counter() - start
  it = data.train_dataset(0).as_numpy_iterator()
  for _ in range(20):  # warm-up: tracing, prefetch buffers
    next(it)
  batches = examples = tokens = positions = 0
  start = time.perf_counter()
  while time.perf_counter() - start < seconds:
    batch = next(it)
    batches += 1
    examples += _examples_in(batch)
    for k in SEQUENCE_KEYS:
      if k in batch:
        tokens += int((batch[k] > 0).sum())
        positions += batch[k].size
  elapsed = time.perf_counter() - start
  shape = "x".join(map(str, batch["inputs"].shape))
  return {
    "load_s": load_s,
    "resume_0_s": resume_s[0],
    "resume_far_s": resume_s[RESUME_AT],
    "batches/s": batches / elapsed,
    "examples/s": examples / elapsed,
    "tokens/s": tokens / elapsed,
    "fill": tokens / max(positions, 1),
    "shape": shape,
  }


def table(rows: list[tuple[str, dict]]) -> str:
  cpu = platform.processor() or platform.machine()
  lines = [
    f"Input pipeline throughput, {datetime.date.today()}, {os.cpu_count()} CPU cores ({cpu}), "
    f"TensorFlow {tf.__version__}; `python -m experiments.benchmarks.input_rate`.",
    "",
    f"| task | batch (inputs) | load s | first batch at 0 / at {RESUME_AT:,} s | batches/s "
    "| examples/s | tokens/s | fill |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for name, r in rows:
    lines.append(
      f"| {name} | {r['shape']} | {r['load_s']:.1f} | "
      f"{r['resume_0_s']:.2f} / {r['resume_far_s']:.2f} | {r['batches/s']:,.0f} | "
      f"{r['examples/s']:,.0f} | {r['tokens/s']:,.0f} | {r['fill']:.2f} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output", help="also write the markdown table to this file")
  parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per task")
  args = parser.parse_args(argv)
  tf.config.set_visible_devices([], "GPU")
  with tempfile.TemporaryDirectory() as tmp:
    rows = []
    for i, (name, config) in enumerate(make_cases(tmp)):
      workdir = os.path.join(tmp, "work", str(i))  # each task tokenises afresh (no shared cache)
      rows.append((name, measure(config, workdir, args.seconds)))
      print(f"measured {name}", flush=True)
  out = table(rows)
  print(out)
  if args.output:
    with open(args.output, "w") as f:
      f.write(out)


if __name__ == "__main__":
  main()
