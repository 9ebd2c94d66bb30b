"""Attention types compared on WMT translation (configs/translation.py; needs its data).

    python main.py --config=configs/compare_translation.py --workdir=runs/mt_compare --sweep
    python main.py --config=configs/compare_translation.py:direction=en-de,steps=50000 \
        --workdir=runs/mt_compare_en_de --sweep_point=$SLURM_ARRAY_TASK_ID   # one job per point
    python -m experiments.compare runs/mt_compare

Points (9): an LSTM encoder-decoder with each classic attention, placed as in its paper --
Bahdanau et al. 2015 (`bahdanau` placement: additive; Chorowski et al. 2015's location-sensitive
likewise) and Luong et al. 2015 (`luong` placement with input feeding: dot, general, location) --
then Transformer-base with each exact attention (scaled_dot, its memory-efficient chunked form)
and the unscaled and bilinear scores as Transformer attention (dot, general). BLEU (beam search)
picks each run's best checkpoint and heads the report. RNN points read unpacked batches (the
recurrence does not take packed rows).
"""

import ml_collections

from configs import translation
from configs.common import axis, chain, parse_arg, product, zip_

ARGS = {"steps": 100_000, "direction": "de-en"}  # those of configs/translation.py

# (attention type, placement) of the RNN points.
RNN_ATTENTION = (
  ("additive", "bahdanau"),
  ("location_sensitive", "bahdanau"),
  ("dot", "luong"),
  ("general", "luong"),
  ("location", "luong"),
)
TRANSFORMER_ATTENTION = ("scaled_dot", "memory_efficient", "dot", "general")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = translation.get_config(arg)
  # Fields the rnn_seq2seq family reads (the Transformer ignores them).
  config.model.cell = "lstm"  # Luong et al.: LSTM; Bahdanau et al.: GRU
  config.model.hidden_dim = 512  # = emb_dim; the papers used 1000
  config.model.num_layers = 2  # encoder and decoder layers (Luong et al.: 4)
  config.model.bidirectional = True  # encoder
  config.model.attention_placement = "bahdanau"  # bahdanau | luong (swept with the attention)
  config.model.input_feeding = True  # luong only
  # `location`: one weight per source position; follows data.max_length with model.max_len
  config.model.attention.max_length = config.model.get_ref("max_len")
  return config


def get_sweep(arg: str | None = None) -> list[dict]:
  parse_arg(arg, **ARGS)  # the same arguments as get_config
  names, placements = zip(*RNN_ATTENTION, strict=True)
  rnn = product(
    axis("model.name", ["rnn_seq2seq"]),
    zip_(axis("model.attention.name", names), axis("model.attention_placement", placements)),
    axis("data.pack", [False]),
  )
  transformer = product(
    axis("model.name", ["transformer"]), axis("model.attention.name", TRANSFORMER_ATTENTION)
  )
  return chain(rnn, transformer)
