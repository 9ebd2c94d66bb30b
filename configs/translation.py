"""WMT German -> English (or English -> German) with a Transformer, after flax `examples/wmt`.

Data, on a connected machine (then copy the tfds directory here):
  tfds build wmt17_translate/de-en --data_dir=~/tensorflow_datasets   # training data (flax wmt)
  tfds build wmt14_translate/de-en --data_dir=~/tensorflow_datasets   # newstest2014 for eval

    python main.py --config=configs/translation.py --workdir=runs/wmt_de_en
    python main.py --config=configs/translation.py:direction=en-de --workdir=runs/wmt_en_de
    # local parallel text (one sentence per line, plain or .gz):
    python main.py --config=configs/translation.py --workdir=runs/mt \
        --config.data.dataset=files --config.data.train_src=train.de \
        --config.data.train_tgt=train.en --config.data.dev_src=dev.de --config.data.dev_tgt=dev.en \
        --config.data.test_src=test.de --config.data.test_tgt=test.en
    # a small corpus (~30k pairs, e.g. Tatoeba/ManyThings): GRU + additive attention, 8k vocabulary
    python main.py --config=configs/translation.py:preset=small --workdir=runs/small \
        --config.data.train_src=train.de --config.data.train_tgt=train.en \
        --config.data.dev_src=dev.de --config.data.dev_tgt=dev.en \
        --config.data.test_src=test.de --config.data.test_tgt=test.en
    python -m experiments.run.translate --workdir=runs/small --input=new.de --output=new.en \
        --beam_size=4 --attention_png=attention.png

Model: Transformer-base (Vaswani et al. 2017: 512 dim, 8 heads, 6+6 layers, FFN 2048). flax
examples/wmt's default is Transformer-big (1024 dim, 16 heads, FFN 4096, batch 256, 500K steps,
lr 0.0625 * rsqrt schedule, 1000 warm-up steps, label smoothing 0.1, packed 256-token rows).
"""

import ml_collections

from configs.common import loop_section, mesh_section, optimizer_section, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, steps=100_000, direction="de-en", preset="wmt")
  if args.preset not in ("wmt", "small"):
    raise ValueError(f"preset={args.preset!r}; valid: wmt, small")
  source_lang, target_lang = args.direction.split("-")
  config = ml_collections.ConfigDict()
  config.seed = 0  # drives parameters, dropout and data order

  # Task: input_pipeline/translation.py.
  config.data = ml_collections.ConfigDict()
  config.data.name = "translation"
  config.data.seed = config.get_ref("seed")
  config.data.dataset = "wmt17_translate/de-en"  # or wmt14_translate/de-en | files
  config.data.eval_dataset = "wmt14_translate/de-en"  # both eval splits' dataset (flax wmt: wmt14)
  config.data.validation_split = "validation"  # selects the checkpoint: newstest2013 (wmt14)
  config.data.test_split = "test"  # reports, once, on the selected checkpoint: newstest2014 (wmt14)
  config.data.data_dir = None  # tfds data directory; None: tfds' default (~/tensorflow_datasets)
  config.data.source_lang = source_lang  # de | en
  config.data.target_lang = target_lang
  # dataset=files: line-aligned parallel text
  config.data.train_src = ""  # train
  config.data.train_tgt = ""
  config.data.dev_src = ""  # validation: selects the checkpoint
  config.data.dev_tgt = ""
  config.data.test_src = ""  # test: reports
  config.data.test_tgt = ""
  config.data.vocab_size = 32000  # joint SentencePiece pieces (flax wmt: 32000)
  config.data.vocab_path = ""  # SentencePiece model; empty: trained into the workdir on first use
  config.data.vocab_max_chars = 10**7  # training characters for the vocabulary (flax wmt: 1e7)
  config.data.max_length = 256  # tokens per sentence incl. EOS (flax wmt: 256)
  config.data.pack = True  # several pairs per 256-token row (flax wmt: packed)
  config.data.bucket_by_length = False  # alternative to packing; varying shapes
  config.data.batch_tokens = 0  # with bucket_by_length: ~tokens per batch (0: batch_size rows)
  config.data.batch_size = 256  # global rows (flax wmt: 256)
  config.data.eval_examples = 0  # per eval split; 0: the whole split (newstest2014: 3003)

  # Model: encoder-decoder Transformer.
  config.model = ml_collections.ConfigDict()
  config.model.name = "transformer"
  config.model.emb_dim = 512  # base: 512 (flax wmt big: 1024)
  config.model.num_heads = 8  # base: 8 (big: 16)
  config.model.num_encoder_layers = 6
  config.model.num_decoder_layers = 6
  config.model.qkv_dim = 512  # base: 512 (big: 1024)
  config.model.mlp_dim = 2048  # base: 2048 (big: 4096)
  config.model.dropout_rate = 0.1  # flax wmt: 0.1
  config.model.attention_dropout_rate = 0.1  # flax wmt: 0.1
  config.model.max_len = config.data.get_ref("max_length")  # one length: follows data.max_length
  config.model.position = "sinusoidal"  # flax wmt: sinusoidal
  config.model.norm = "pre"  # flax wmt: pre-layer-norm
  config.model.share_embeddings = True  # joint vocabulary: one table (flax wmt: True)
  config.model.logits_via_embedding = True  # output projection tied (flax wmt: True)
  config.model.dtype = "bfloat16"  # compute dtype (flax wmt: bfloat16); params stay float32
  config.model.attention = ml_collections.ConfigDict()
  config.model.attention.name = "scaled_dot"  # any registered attention type

  # Optimizer: flax wmt: Adam(0.9, 0.98), 0.0625 * linear_warmup * rsqrt_decay, 1000 warm-up
  # steps, i.e. a peak of 0.0625 / sqrt(1000); weight decay 0.
  config.optimizer = optimizer_section(
    learning_rate=0.0625 / 1000**0.5,  # peak, at the end of warm-up
    schedule="rsqrt",  # linear warm-up, then lr * sqrt(warmup / step)
    warmup_steps=1000,  # flax wmt: 1000
    weight_decay=0.0,  # flax wmt: 0
    grad_clip_norm=0.0,  # flax wmt: none
  )

  # Loop.
  # Eval by decoding: beam search, BLEU (sacrebleu) on detokenized text; BLEU picks the best.
  config.decode = ml_collections.ConfigDict()
  config.decode.bleu = True
  config.decode.beam_size = 4  # 1 = greedy
  config.decode.alpha = 0.6  # GNMT length penalty
  config.decode.max_len = 0  # 0 = the task's longest target

  config.train = loop_section(  # steps: flax wmt: 500000
    args.steps, eval_every=2000, log_every=100, checkpoint_every=5000
  )
  config.train.label_smoothing = 0.1  # flax wmt: 0.1

  config.mesh = mesh_section()  # devices: (data, fsdp, tensor) = (-1, 1, 1)
  return small(config) if args.preset == "small" else config


def small(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """preset=small: a corpus of ~30k short sentence pairs in local files, one machine, about an
  hour: a joint 8k vocabulary, a GRU encoder-decoder with Bahdanau's additive attention,
  length-bucketed batches of about 4096 tokens, a schedule in epochs, BLEU on dev (greedy) every
  epoch picking the checkpoint. Only the file fields (data.train_src ... data.test_tgt) need
  setting."""
  config.data.update(
    dataset="files", vocab_size=8000, max_length=64, pack=False, bucket_by_length=True,
    batch_tokens=4096, batch_size=16,  # ~4096 tokens a batch, in multiples of 16 rows
  )  # fmt: skip
  config.model.update(
    name="rnn_seq2seq", cell="gru", emb_dim=256, hidden_dim=256, num_layers=1,
    bidirectional=True, attention_placement="bahdanau", dropout_rate=0.2, dtype="float32",
  )  # fmt: skip
  config.model.attention.name = "additive"  # one head of the hidden width (Bahdanau et al.)
  config.optimizer.update(
    learning_rate=1e-3, schedule="warmup_cosine", warmup_steps=0, grad_clip_norm=1.0
  )  # fmt: skip
  config.optimizer.warmup_epochs = 0.5
  config.decode.beam_size = 1  # dev BLEU each epoch by greedy decoding (beam: translate)
  config.train.update(num_steps=0, eval_every_steps=0, checkpoint_every_steps=0)
  config.train.num_epochs = 20
  config.train.eval_every_epochs = 1
  config.train.checkpoint_every_epochs = 1
  config.train.early_stopping_evals = 5  # stop after 5 evaluations without a better dev BLEU
  return config
