"""Language modelling on LM1B (One Billion Word) with a decoder-only Transformer, after flax lm1b.

Data, on a connected machine (then copy the tfds directory here):
  tfds build lm1b --data_dir=~/tensorflow_datasets

    python main.py --config=configs/lm.py --workdir=runs/lm1b
    # local text, one sequence per line, byte level:
    python main.py --config=configs/lm.py --workdir=runs/mylm --config.data.dataset=files \
        --config.data.train_path=train.txt --config.data.validation_path=valid.txt \
        --config.data.test_path=test.txt --config.data.tokenizer=byte

Settings follow flax `examples/lm1b/configs/default.py` (512 dim, 8 heads, 6 layers, FFN 2048,
30K SentencePiece vocabulary, packed 128-token rows, lr 0.0016 rsqrt with 1000 warm-up steps,
weight decay 0.1, 500K steps); flax evaluates on 512-token rows, here eval uses the training length.
"""

import ml_collections

from configs.common import loop_section, mesh_section, optimizer_section, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, steps=100_000)
  config = ml_collections.ConfigDict()
  config.seed = 0  # drives parameters, dropout and data order

  # Task: input_pipeline/lm.py.
  config.data = ml_collections.ConfigDict()
  config.data.name = "lm"
  config.data.seed = config.get_ref("seed")
  config.data.dataset = "lm1b"  # lm1b | files
  config.data.data_dir = None  # tfds data directory; None: tfds' default (~/tensorflow_datasets)
  # lm1b has only train and test: validation is a held-out 1% of train (~300K sentences).
  config.data.train_split = "train[:99%]"  # tfds split trained on
  config.data.validation_split = "train[99%:]"  # selects the checkpoint
  config.data.test_split = "test"  # reports, once, on the selected checkpoint
  # dataset=files: one sequence per line (plain or .gz)
  config.data.train_path = ""  # train
  config.data.validation_path = ""  # selects the checkpoint
  config.data.test_path = ""  # reports
  config.data.tokenizer = "sentencepiece"  # sentencepiece | byte
  config.data.vocab_size = 30000  # flax lm1b: 30000
  config.data.vocab_path = ""  # SentencePiece model; empty: trained into the workdir on first use
  config.data.vocab_max_chars = 10**7  # training characters for the vocabulary (flax: 1e7)
  config.data.max_length = 128  # tokens per row incl. EOS (flax lm1b: 128)
  config.data.pack = True  # several sentences per row (flax lm1b: packed)
  config.data.bucket_by_length = False  # alternative to packing; varying shapes
  config.data.batch_tokens = 0  # with bucket_by_length: ~tokens per batch (0: batch_size rows)
  config.data.batch_size = 256  # global rows (flax lm1b: 32 per device x 8)
  config.data.eval_examples = 10000  # first sentences of each eval split (0: all; test 306688)

  # Model: causal Transformer decoder.
  config.model = ml_collections.ConfigDict()
  config.model.name = "decoder_lm"
  config.model.emb_dim = 512  # flax lm1b: 512
  config.model.num_heads = 8  # flax lm1b: 8
  config.model.num_encoder_layers = 0  # unused
  config.model.num_decoder_layers = 6  # flax lm1b: 6
  config.model.qkv_dim = 512  # flax lm1b: 512
  config.model.mlp_dim = 2048  # flax lm1b: 2048
  config.model.dropout_rate = 0.1  # flax lm1b: 0.1
  config.model.attention_dropout_rate = 0.1  # flax lm1b: 0.1
  config.model.max_len = 128  # = data.max_length
  config.model.position = "sinusoidal"  # flax lm1b: sinusoidal
  config.model.norm = "pre"  # flax lm1b: pre-layer-norm
  config.model.logits_via_embedding = False  # flax lm1b: False
  config.model.dtype = "bfloat16"  # compute dtype (flax lm1b: bfloat16); params stay float32
  config.model.attention = ml_collections.ConfigDict()
  config.model.attention.name = "scaled_dot"  # any registered attention type

  # Optimizer: flax lm1b: AdamW(0.9, 0.98), 0.0016 with linear warm-up then rsqrt decay.
  config.optimizer = optimizer_section(
    learning_rate=0.0016,  # peak (flax lm1b: 0.0016)
    schedule="rsqrt",  # linear warm-up, then lr * sqrt(warmup / step)
    warmup_steps=1000,  # flax lm1b: 1000
    weight_decay=0.1,  # flax lm1b: 0.1
    grad_clip_norm=0.0,  # flax lm1b: none
  )

  # Loop.
  config.train = loop_section(  # steps: flax lm1b: 500000
    args.steps, eval_every=2000, log_every=100, checkpoint_every=5000
  )

  config.mesh = mesh_section()  # devices: (data, fsdp, tensor) = (-1, 1, 1)
  return config
