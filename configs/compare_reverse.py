"""Attention types compared on the embedded reverse task, 3 seeds each: `make demo` (minutes on
2 CPU cores).

    python main.py --config=configs/compare_reverse.py --workdir=runs/compare --sweep --seeds=3
    python main.py --config=configs/compare_reverse.py:steps=100,types=scaled_dot+dot \
        --workdir=runs/quick --sweep --seeds=2
    python -m experiments.compare runs/compare [--baseline=linear]

A smaller version of configs/default.py (reversing 4-12 symbols, 300 steps of 32 examples): the
classic scores (Luong's dot, Bahdanau's additive, Chorowski's location-sensitive) in a GRU
encoder-decoder with Bahdanau placement; exact (scaled_dot, its chunked memory-efficient form:
the same function, a control that must show no difference) and linear-cost (linear, Performer)
attention in a 2+2-layer Transformer; and banded sliding-window attention (window 2) as the
Transformer's self-attention under exact cross attention (`model.cross_attention`, as in
Longformer's encoder-decoder), since it cannot cross-attend itself. Seed s of every type trains
on the same batches with the same optimizer; validation and test sets are fixed. `types=a+b`
picks types from the tuples below (e.g. `general`, Luong's bilinear score) in that order: the
first is the report's baseline.
"""

import ml_collections

from configs import default
from configs.common import parse_arg

TRANSFORMER_TYPES = ("scaled_dot", "memory_efficient", "linear", "performer")
SELF_ONLY_TYPES = ("sliding_window",)  # with scaled_dot cross attention
RNN_TYPES = ("dot", "general", "additive", "location_sensitive")  # step-wise over encoder states
DEMO_TYPES = (
  "scaled_dot", "memory_efficient", "linear", "performer", "sliding_window", "dot", "additive",
  "location_sensitive",
)  # fmt: skip
STEPS = 300


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, steps=STEPS, types="")  # types: see get_sweep
  config = default.get_config(f"steps={args.steps}")
  config.data.update(min_length=4, max_length=12, batch_size=32, eval_examples=256)
  config.model.update(
    emb_dim=64, qkv_dim=64, mlp_dim=128, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
    max_len=16, hidden_dim=64, cell="gru", attention_placement="bahdanau",
  )  # fmt: skip
  config.model.attention.window = 2  # sliding_window: keys within 2 positions
  config.optimizer.warmup_steps = 50
  config.train.update(
    eval_every_steps=max(args.steps // 5, 1),
    log_every_steps=max(args.steps // 5, 1),
    checkpoint_every_steps=args.steps,  # a run of seconds: the last step (and the best eval)
  )
  return config


def _point(name: str) -> dict:
  family = "rnn_seq2seq" if name in RNN_TYPES else "transformer"
  point = {"model.name": family, "model.attention.name": name}
  if name in SELF_ONLY_TYPES:
    point["model.cross_attention"] = "scaled_dot"
  return point


def get_sweep(arg: str | None = None) -> list[dict]:
  """One point per type; `types=a+b` keeps only those, in that order (the first is the report's
  baseline)."""
  args = parse_arg(arg, steps=STEPS, types="")
  every = TRANSFORMER_TYPES + SELF_ONLY_TYPES + RNN_TYPES
  wanted = args.types.split("+") if args.types else list(DEMO_TYPES)
  unknown = [t for t in wanted if t not in every]
  if unknown:
    raise ValueError(f"types={args.types!r}: unknown {unknown}; valid: {'+'.join(every)}")
  return [_point(t) for t in wanted]


def get_search(arg: str | None = None) -> dict:
  """`--search --sweep`: per type, the peak learning rate and warm-up, 8 trials each with the
  sweep's budget (`steps`, 5 evaluations); the objective is validation sequence accuracy. Then
  each type's best trial runs with 3 seeds and the report compares the tuned types."""
  from configs.common import integer, loguniform, search

  args = parse_arg(arg, steps=STEPS, types="")
  return search(
    loguniform("optimizer.learning_rate", 3e-4, 3e-2),
    integer("optimizer.warmup_steps", 10, 100, step=10),
    trials=8,
    budget={"train.num_steps": args.steps},
  )
