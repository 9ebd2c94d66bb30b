"""Embedded default: a small Transformer learns to reverse sequences (no downloads).

    python main.py --config=configs/default.py --workdir=runs/default
    python main.py --config=configs/default.py:steps=500 --workdir=runs/quick \
        --config.model.attention.name=additive

`get_config(arg)` takes `key=value,key=value` (big_vision style); any field can also be
overridden with `--config.a.b=value`.
"""

import ml_collections

from configs.common import loop_section, mesh_section, optimizer_section, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, steps=2500)
  config = ml_collections.ConfigDict()
  config.seed = 0  # drives parameters, dropout and data order

  # Task: any name registered in input_pipeline/ (README lists them).
  config.data = ml_collections.ConfigDict()
  config.data.name = "reverse"  # synthetic seq2seq: targets = reversed inputs + EOS
  config.data.seed = config.get_ref("seed")
  config.data.vocab_size = 16  # incl. padding (0) and EOS (1)
  config.data.min_length = 4
  config.data.max_length = 16
  config.data.batch_size = 64  # global, over all processes and devices
  config.data.eval_examples = 512

  # Model: see models/ (family by name) and models/attention/ (attention by name).
  config.model = ml_collections.ConfigDict()
  config.model.name = "transformer"  # encoder-decoder
  config.model.emb_dim = 64  # model width
  config.model.num_heads = 4
  config.model.num_encoder_layers = 2
  config.model.num_decoder_layers = 2
  config.model.qkv_dim = 64  # total query/key/value width (split over heads)
  config.model.mlp_dim = 128
  config.model.dropout_rate = 0.0
  config.model.attention_dropout_rate = 0.0
  config.model.max_len = 32  # longest input/target the model accepts
  config.model.position = "sinusoidal"  # sinusoidal | learned | rotary
  config.model.norm = "pre"  # pre | post (layer norm placement)
  config.model.share_embeddings = True  # one embedding table for source and target
  config.model.logits_via_embedding = True  # output projection tied to the embedding
  config.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
  # rnn_seq2seq (and encoder=rnn classifiers) only:
  config.model.cell = "lstm"  # simple | lstm | gru
  config.model.hidden_dim = 0  # 0 = emb_dim
  config.model.num_layers = 1
  config.model.bidirectional = True  # encoder
  config.model.attention_placement = "bahdanau"  # bahdanau | luong | none
  config.model.input_feeding = True  # luong only
  # encoder_classifier / dual_encoder only:
  config.model.pooling = "cls"  # cls | mean | max
  config.model.classifier_dim = 0  # 0 = emb_dim
  config.model.encoder = "transformer"  # transformer | rnn
  config.model.attention = ml_collections.ConfigDict()
  config.model.attention.name = "scaled_dot"  # any registered attention type
  config.model.attention.implementation = "auto"  # scaled_dot only: auto | xla | jax
  config.model.cross_attention = ""  # transformer: the cross attention's type; "": as attention

  # Optimizer: optax.
  config.optimizer = optimizer_section()

  # Loop.
  config.train = loop_section(  # steps: batches consumed
    args.steps, eval_every=500, log_every=100, checkpoint_every=500
  )

  config.mesh = mesh_section()  # devices: (data, fsdp, tensor) = (-1, 1, 1)
  return config


SEARCH_STEPS = 200  # per trial: minutes for a whole search on 2 CPU cores


def get_search(arg: str | None = None) -> dict:
  """`--search`: peak learning rate, warm-up and dropout, 12 trials of at most SEARCH_STEPS
  steps (`:steps=N` caps it further), evaluated 4 times for the pruner; the objective is the
  task's: validation sequence accuracy, higher is better."""
  from configs.common import integer, loguniform, search, uniform

  steps = min(parse_arg(arg, steps=2500).steps, SEARCH_STEPS)
  return search(
    loguniform("optimizer.learning_rate", 1e-4, 3e-2),
    integer("optimizer.warmup_steps", 10, 100, step=10),
    uniform("model.dropout_rate", 0.0, 0.2),
    trials=12,
    budget={
      "train.num_steps": steps,
      "train.eval_every_steps": max(steps // 4, 1),
      "train.log_every_steps": max(steps // 4, 1),
      "train.checkpoint_every_steps": steps,
    },
  )
