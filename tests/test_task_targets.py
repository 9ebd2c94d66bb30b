"""Task targets against plain-Python references, through the public API (`get_datasets`).

Each synthetic task's batches are checked example by example: `copy` / `reverse` / `sort` targets
are the transformed inputs followed by EOS, `associative_recall` labels are the value bound to the
queried key, and ListOps labels (generated files, loaded back) equal a stack evaluation of the
detokenized expression.
"""

import ml_collections
import numpy as np
import pytest

import input_pipeline
from input_pipeline import listops_generate

EOS, FIRST = 1, 2
REFERENCE = {  # inputs (no padding) -> targets (no EOS), the task definitions
  "copy": lambda xs: list(xs),
  "reverse": lambda xs: list(reversed(xs)),
  "sort": lambda xs: sorted(xs),
}


def _batches(data: ml_collections.ConfigDict, n: int) -> list[dict[str, np.ndarray]]:
  ds = input_pipeline.get_datasets(data).train_dataset(0)
  return [{k: np.asarray(v) for k, v in b.items()} for b in ds.take(n).as_numpy_iterator()]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_seq2seq_targets_are_the_transformed_inputs_then_eos(name):
  data = ml_collections.ConfigDict(
    {"name": name, "seed": 3, "vocab_size": 9, "min_length": 1, "max_length": 7,
     "batch_size": 16, "eval_examples": 16}
  )  # fmt: skip
  lengths = set()
  for batch in _batches(data, 4):
    assert batch["inputs"].shape == (16, 7) and batch["targets"].shape == (16, 8)
    for x, y in zip(batch["inputs"], batch["targets"], strict=True):
      n = int(np.count_nonzero(x))
      lengths.add(n)
      assert 1 <= n <= 7 and np.all(x[:n] >= FIRST) and np.all(x[:n] < 9) and not x[n:].any()
      want = REFERENCE[name](x[:n].tolist()) + [EOS] + [0] * (7 - n)
      assert y.tolist() == want, (x.tolist(), y.tolist())
  assert min(lengths) == 1 and max(lengths) == 7  # uniform over [min_length, max_length]


def test_associative_recall_label_is_the_value_of_the_queried_key():
  pairs, keys, classes = 4, 6, 3
  data = ml_collections.ConfigDict(
    {"name": "associative_recall", "seed": 1, "num_pairs": pairs, "num_keys": keys,
     "num_classes": classes, "batch_size": 16, "eval_examples": 16}
  )  # fmt: skip
  labels = []
  for batch in _batches(data, 3):
    for x, label in zip(batch["inputs"], batch["label"], strict=True):
      x = x.tolist()
      assert len(x) == 2 * pairs + 2 and x[-2] == FIRST + keys + classes  # the query marker
      bound = dict(zip(x[0 : 2 * pairs : 2], x[1 : 2 * pairs : 2], strict=True))
      assert len(bound) == pairs and all(FIRST <= k < FIRST + keys for k in bound)
      assert x[-1] in bound
      assert int(label) == bound[x[-1]] - (FIRST + keys)
      labels.append(int(label))
  assert set(labels) == set(range(classes))


def _evaluate(tokens: list[str]) -> int:
  """ListOps by a stack: `[OP a b ... ]` with MIN, MAX, MED (median, rounded down), SM."""
  ops = {
    "[MIN": min,
    "[MAX": max,
    "[MED": lambda v: (sorted(v)[(len(v) - 1) // 2] + sorted(v)[len(v) // 2]) // 2,
    "[SM": lambda v: sum(v) % 10,
  }
  stack: list = []
  for tok in tokens:
    if tok in ops:
      stack.append([tok])
    elif tok == "]":
      op, *args = stack.pop()
      value = ops[op](args)
      if not stack:
        return value
      stack[-1].append(value)
    elif tok.isdigit():
      if not stack:
        return int(tok)
      stack[-1].append(int(tok))
  raise AssertionError(f"unterminated expression {tokens}")


def test_listops_labels_evaluate_the_expression(tmp_path):
  listops_generate.main(
    [f"--output_dir={tmp_path}", "--num_train=48", "--num_valid=4", "--num_test=4",
     "--min_length=4", "--max_length=30", "--max_depth=4", "--max_args=4", "--seed=5"]
  )  # fmt: skip
  data = ml_collections.ConfigDict(
    {"name": "listops", "data_dir": str(tmp_path), "max_length": 32, "batch_size": 16,
     "seed": 0, "eval_examples": 16}
  )  # fmt: skip
  datasets = input_pipeline.get_datasets(data)
  seen = set()
  for batch in _batches(data, 3):
    for x, label in zip(batch["inputs"], batch["label"], strict=True):
      text = datasets.info.detokenize(x)
      seen.add(text)
      assert int(label) == _evaluate(text.split()), text
  assert len(seen) > 16 and any(t.startswith("[MED") for t in seen)


@pytest.mark.parametrize(
  "values,want",
  [([3, 8], 5), ([1, 2], 1), ([9, 0, 4], 4), ([1, 2, 3, 4], 2), ([7], 7)],
)
def test_listops_median_rounds_down(values, want):
  tree = ("[MED", values)
  assert listops_generate.evaluate(tree) == want == _evaluate(["[MED", *map(str, values), "]"])
