"""LRA ListOps: classify the value (0-9) of a nested MIN/MAX/MED/SM expression of up to 2000 tokens.

Data (either):
  python -m input_pipeline.listops_generate --output_dir=data/listops      # LRA's generator rules
  # or LRA's release, on a connected machine (ListOps is in lra_release/listops-1000/):
  wget https://storage.googleapis.com/long-range-arena/lra_release.gz && tar xzf lra_release.gz

    python main.py --config=configs/listops.py --workdir=runs/listops
    python main.py --config=configs/listops.py:data_dir=lra_release/listops-1000 \
        --workdir=runs/listops --config.model.attention.name=local

Settings are those of LRA's released code (`lra_benchmarks/listops/configs/base_listops_config.py`;
the paper: 512 dim, 8 heads, 6 layers, FFN 2048, 5K steps); where they differ it says so below.
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
  args = parse_arg(arg, steps=5000, data_dir="data/listops")
  config = ml_collections.ConfigDict()
  config.seed = 0  # drives parameters, dropout and data order (LRA: random_seed 0)

  # Task: input_pipeline/listops.py.
  config.data = ml_collections.ConfigDict()
  config.data.name = "listops"
  config.data.seed = config.get_ref("seed")
  # holds basic_train.tsv (train), basic_val.tsv (validation: selects the checkpoint) and
  # basic_test.tsv (test: reports, once, on the selected checkpoint)
  config.data.data_dir = args.data_dir
  config.data.task = "basic"  # file prefix (LRA: basic)
  config.data.max_length = 2000  # tokens per expression (LRA: 2000)
  config.data.keep_parens = False  # LRA's '(' ')' only repeat the brackets (LRA drops them too)
  config.data.batch_size = 32  # global (LRA: 32)
  config.data.eval_examples = 0  # per eval split; 0: the whole split (2000 each in LRA)

  # Model: an encoder with a [CLS] token and an MLP head (LRA: pooling_mode CLS).
  config.model = long_range_model(
    "encoder_classifier", width=512, heads=8, layers=6, mlp=2048, max_len=2001
  )  # LRA code and paper: 512 dim, 8 heads, 6 layers, FFN 2048; max_len = 2000 + [CLS]

  # Optimizer: LRA uses Adam(b1=0.9, b2=0.98) with decoupled weight decay 0.1 and the schedule
  # 0.05 * min(1, step / 1000) / sqrt(max(step, 1000)), i.e. a peak of 0.05 / sqrt(1000).
  config.optimizer = long_range_optimizer(warmup_steps=1000)  # LRA: 1000

  # Loop.
  config.train = loop_section(  # steps: LRA: 5000
    args.steps, eval_every=500, log_every=50, checkpoint_every=1000
  )

  config.mesh = mesh_section()  # devices: (data, fsdp, tensor) = (-1, 1, 1)
  return config


def get_sweep(arg: str | None = None) -> list[dict]:
  """The long-range family on this task (a row of LRA's Table 1 per type); same for every arg."""
  del arg
  return long_range_sweep()


SEARCH_STEPS = 1000  # per trial: a fifth of LRA's 5K steps


def get_search(arg: str | None = None) -> dict:
  """`--search` (with --sweep: per type of the long-range family): learning rate, weight decay and
  dropout, 20 trials of at most SEARCH_STEPS steps (warm-up a fifth of them, 4 evaluations for
  the pruner); the objective is validation accuracy."""
  from configs.common import loguniform, search, uniform

  steps = min(parse_arg(arg, steps=5000, data_dir="data/listops").steps, SEARCH_STEPS)
  return search(
    loguniform("optimizer.learning_rate", 1e-4, 5e-3),
    loguniform("optimizer.weight_decay", 1e-3, 0.3),
    uniform("model.dropout_rate", 0.0, 0.3),
    trials=20,
    budget={
      "train.num_steps": steps,
      "optimizer.warmup_steps": max(steps // 5, 1),
      "train.eval_every_steps": max(steps // 4, 1),
      "train.checkpoint_every_steps": steps,
    },
  )
