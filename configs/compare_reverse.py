"""Attention types compared on the embedded reverse task: `make demo`.

    python main.py --config=configs/compare_reverse.py --workdir=runs/compare --sweep
    python -m experiments.report runs/compare

A smaller version of configs/default.py (reversing 4-12 symbols), swept over exact and
long-range attention in a Transformer and the classic scores in a GRU encoder-decoder with
Bahdanau attention. Every point trains from the same seed on the same batches.
"""

import ml_collections

from configs import default
from configs.common import axis, chain, parse_arg, product


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, steps=600)
  config = default.get_config(f"steps={args.steps}")
  config.data.update(min_length=4, max_length=12, batch_size=32, eval_examples=256)
  config.model.update(
    emb_dim=64, qkv_dim=64, mlp_dim=128, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
    max_len=16, hidden_dim=64, cell="gru", attention_placement="bahdanau",
  )  # fmt: skip
  config.optimizer.warmup_steps = 50
  config.train.update(eval_every_steps=100, log_every_steps=100, checkpoint_every_steps=300)
  return config


TRANSFORMER_TYPES = ("scaled_dot", "memory_efficient", "linear", "performer", "dot", "general")
RNN_TYPES = ("dot", "general", "additive", "location_sensitive")


def get_sweep(arg: str | None = None) -> list[dict]:
  del arg
  return chain(
    product(axis("model.name", ["transformer"]), axis("model.attention.name", TRANSFORMER_TYPES)),
    product(axis("model.name", ["rnn_seq2seq"]), axis("model.attention.name", RNN_TYPES)),
  )
