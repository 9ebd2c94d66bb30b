"""Generate LRA ListOps files (Nangia & Bowman 2018; LRA's `lra_benchmarks/data/listops.py` rules).

    python -m input_pipeline.listops_generate --output_dir=data/listops --task=basic
    python -m input_pipeline.listops_generate --output_dir=/tmp/lo --num_train=1000 \
        --num_valid=100 --num_test=100 --min_length=10 --max_length=200

writes `<task>_train.tsv`, `<task>_val.tsv`, `<task>_test.tsv` with a `Source<TAB>Target` header,
the format of LRA's released `lra_release/listops-1000/` files, e.g.

    Source	Target
    ( ( ( ( [MAX 4 ) 3 ) ( ( ( [MIN 2 ) 3 ) ] ) ) ] )	4

Rules (as LRA): an expression is a digit 0-9 or `[OP arg ... ]` with OP one of MIN, MAX, MED
(median, rounded down) and SM (sum mod 10) and 2..`max_args` arguments; below depth `max_depth` a
node is an operator with probability 0.25. An expression's length counts digits, operators and
`]`; kept if `min_length < length < max_length`; duplicates dropped (first one kept, so the output
is a deterministic function of `--seed`). With the same seed the random draws are in LRA's order.
The parentheses are LRA's rendering of its nested pairs; `--noparens` leaves them out (the loader
ignores them by default either way).
"""

import argparse
import os
import random
from collections.abc import Sequence

import numpy as np

from input_pipeline.listops import END, FIRST, LAST, MAX, MED, MIN, SUM_MOD

OPERATORS = (MIN, MAX, MED, SUM_MOD)  # LRA's basic task; FIRST / LAST are defined, not drawn
VALUES = range(10)
VALUE_P = 0.25  # probability that a node above max_depth is an operator
HEADER = ("Source", "Target")

Tree = int | tuple[str, list["Tree"]]


def generate_tree(
  rng: random.Random, depth: int, max_depth: int, max_args: int
) -> tuple[Tree, int]:
  """A random expression and its length (digits + operators + closing brackets)."""
  r = rng.random() if depth < max_depth else 1.0
  if r > VALUE_P:
    return rng.choice(VALUES), 1
  num_args = rng.randint(2, max_args)
  args, length = [], 2
  for _ in range(num_args):
    sub, sub_length = generate_tree(rng, depth + 1, max_depth, max_args)
    args.append(sub)
    length += sub_length
  return (rng.choice(OPERATORS), args), length


def to_tokens(tree: Tree, parens: bool = True) -> list[str]:
  """LRA's rendering: `[OP a b ]`, with LRA's '(' ')' around each nested pair if `parens`."""
  if isinstance(tree, int):
    return [str(tree)]
  op, args = tree
  if not parens:
    return [op, *(t for a in args for t in to_tokens(a, parens)), END]
  # LRA nests (((op, a0), a1), ..., END) and prints every pair as '( left right )'.
  out = ["("] * (len(args) + 1) + [op, *to_tokens(args[0]), ")"]
  for a in args[1:]:
    out += [*to_tokens(a), ")"]
  return [*out, END, ")"]


def evaluate(tree: Tree) -> int:
  if isinstance(tree, int):
    return tree
  op, args = tree
  values = [evaluate(a) for a in args]
  if op == MIN:
    return min(values)
  if op == MAX:
    return max(values)
  if op == MED:
    return int(np.median(values))
  if op == SUM_MOD:
    return sum(values) % 10
  if op == FIRST:
    return values[0]
  if op == LAST:
    return values[-1]
  raise ValueError(f"unknown operator {op!r}")


def generate(
  num_examples: int,
  *,
  seed: int = 0,
  max_depth: int = 10,
  max_args: int = 10,
  min_length: int = 500,
  max_length: int = 2000,
  parens: bool = True,
) -> list[tuple[str, int]]:
  """`num_examples` distinct (source, target) pairs with `min_length < length < max_length`."""
  rng = random.Random(seed)
  seen: dict[str, int] = {}
  attempts, limit = 0, 10_000 + 1000 * num_examples
  while len(seen) < num_examples:
    attempts += 1
    if attempts > limit:
      raise ValueError(
        f"only {len(seen)} distinct expressions with {min_length} < length < {max_length} "
        f"after {limit} draws; widen the length bounds or ask for fewer examples"
      )
    tree, length = generate_tree(rng, 1, max_depth, max_args)
    if min_length < length < max_length:
      source = " ".join(to_tokens(tree, parens))
      if source not in seen:
        seen[source] = evaluate(tree)
  return list(seen.items())


def write_tsv(rows: Sequence[tuple[str, int]], path: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write("\t".join(HEADER) + "\n")
    f.writelines(f"{source}\t{target}\n" for source, target in rows)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--task", default="basic", help="file name prefix")
  parser.add_argument("--num_train", type=int, default=96000)
  parser.add_argument("--num_valid", type=int, default=2000)
  parser.add_argument("--num_test", type=int, default=2000)
  parser.add_argument("--max_depth", type=int, default=10)
  parser.add_argument("--max_args", type=int, default=10)
  parser.add_argument("--min_length", type=int, default=500)
  parser.add_argument("--max_length", type=int, default=2000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--noparens", action="store_true", help="omit LRA's '(' ')' tokens")
  args = parser.parse_args(argv)
  rows = generate(
    args.num_train + args.num_valid + args.num_test,
    seed=args.seed,
    max_depth=args.max_depth,
    max_args=args.max_args,
    min_length=args.min_length,
    max_length=args.max_length,
    parens=not args.noparens,
  )
  os.makedirs(args.output_dir, exist_ok=True)
  splits = {
    "train": rows[: args.num_train],
    "val": rows[args.num_train : args.num_train + args.num_valid],
    "test": rows[args.num_train + args.num_valid :],
  }
  for split, part in splits.items():
    path = os.path.join(args.output_dir, f"{args.task}_{split}.tsv")
    write_tsv(part, path)
    print(f"wrote {len(part)} examples to {path}")


if __name__ == "__main__":
  main()
