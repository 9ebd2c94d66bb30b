"""LRA Text: byte-level IMDb sentiment (2 classes) from the first 1000 (or 4000) bytes of a review.

Data, on a connected machine (then copy the tfds directory here):
  tfds build imdb_reviews --data_dir=~/tensorflow_datasets

    python main.py --config=configs/text_classification.py --workdir=runs/text
    python main.py --config=configs/text_classification.py:max_length=4000 --workdir=runs/text4k
    # local files instead (rows `label<TAB>text`):
    python main.py --config=configs/text_classification.py --workdir=runs/mytext \
        --config.data.dataset=files --config.data.train_path=train.tsv \
        --config.data.validation_path=val.tsv --config.data.test_path=test.tsv \
        --config.data.num_classes=2

Settings are those of LRA's released code (`lra_benchmarks/text_classification/configs/
base_tc_config.py`: max_length 1000; the paper's table lists 4K for this task).
"""

import ml_collections

from configs.common import (
  long_range_model,
  long_range_optimizer,
  long_range_sweep,
  loop_section,
  mesh_section,
  parse_arg,
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, steps=20000, max_length=1000)
  config = ml_collections.ConfigDict()
  config.seed = 0  # drives parameters, dropout and data order

  # Task: input_pipeline/text_classification.py.
  config.data = ml_collections.ConfigDict()
  config.data.name = "text_classification"
  config.data.seed = config.get_ref("seed")
  config.data.dataset = "imdb_reviews"  # imdb_reviews | files
  config.data.data_dir = None  # tfds data directory; None: tfds' default (~/tensorflow_datasets)
  # IMDb has no validation split (LRA selected and reported on test): hold out 10% of train.
  config.data.train_split = "train[:90%]"  # tfds split trained on
  config.data.validation_split = "train[90%:]"  # selects the checkpoint
  config.data.test_split = "test"  # reports, once, on the selected checkpoint
  # dataset=files: `label<TAB>text` rows (.tsv) or `label,text` (.csv)
  config.data.train_path = ""  # train
  config.data.validation_path = ""  # selects the checkpoint
  config.data.test_path = ""  # reports
  config.data.num_classes = 2  # dataset=files only (imdb_reviews: 2)
  config.data.tokenizer = "byte"  # byte (LRA) | sentencepiece
  config.data.vocab_size = 8000  # sentencepiece only
  config.data.vocab_path = ""  # sentencepiece model; empty: trained into the workdir on first use
  config.data.vocab_max_chars = 10**7  # characters of training text the vocabulary is fitted on
  config.data.max_length = args.max_length  # bytes per review (LRA code: 1000; paper: 4000)
  config.data.batch_size = 32  # global (LRA: 32)
  config.data.eval_examples = 0  # per eval split; 0: the whole split (test: 25000)

  # Model: an encoder with a [CLS] token and an MLP head (LRA: classifier_pool CLS).
  config.model = long_range_model(
    "encoder_classifier", width=256, heads=4, layers=4, mlp=1024, max_len=args.max_length + 1
  )  # LRA: 256 dim, 4 heads, 4 layers, FFN 1024

  # Optimizer: LRA: Adam(0.9, 0.98), weight decay 0.1, 0.05 * linear_warmup * rsqrt_decay with
  # 8000 warm-up steps, i.e. a peak of 0.05 / sqrt(8000).
  config.optimizer = long_range_optimizer(warmup_steps=8000)  # LRA: 8000

  # Loop.
  config.train = loop_section(  # steps: LRA: 20000
    args.steps, eval_every=1000, log_every=100, checkpoint_every=2000
  )

  config.mesh = mesh_section()  # devices: (data, fsdp, tensor) = (-1, 1, 1)
  return config


def get_sweep(arg: str | None = None) -> list[dict]:
  """The long-range family on this task (a row of LRA's Table 1 per type); same for every arg."""
  del arg
  return long_range_sweep()
