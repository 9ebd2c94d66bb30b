"""LRA Retrieval: do two ACL Anthology papers cite each other? Byte-level, 4000 bytes per paper.

Data, on a connected machine (Retrieval is in lra_release/tsv_data/new_aan_pairs.*.tsv):
  wget https://storage.googleapis.com/long-range-arena/lra_release.gz && tar xzf lra_release.gz

    python main.py --config=configs/retrieval.py:data_dir=lra_release/tsv_data \
        --workdir=runs/retrieval

Settings are those of LRA's released code (`lra_benchmarks/matching/configs/base_match_config.py`):
a shared encoder for both documents and the [u, v, u*v, u-v] matching head.
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
  args = parse_arg(arg, steps=5000, data_dir="lra_release/tsv_data")
  config = ml_collections.ConfigDict()
  config.seed = 0  # drives parameters, dropout and data order

  # Task: input_pipeline/retrieval.py.
  config.data = ml_collections.ConfigDict()
  config.data.name = "retrieval"
  config.data.seed = config.get_ref("seed")
  config.data.data_dir = args.data_dir  # holds new_aan_pairs.{train,eval,test}.tsv
  # Explicit files instead of data_dir's (rows label, id1, id2, text1, text2); empty: data_dir's.
  config.data.train_path = ""  # train (LRA: new_aan_pairs.train.tsv)
  config.data.validation_path = ""  # selects the checkpoint (LRA: new_aan_pairs.eval.tsv)
  config.data.test_path = ""  # reports, once (LRA: new_aan_pairs.test.tsv)
  config.data.max_length = 4000  # bytes per document (LRA: 4000)
  config.data.batch_size = 32  # global (LRA: 32)
  config.data.eval_examples = 0  # per eval split; 0: the whole split

  # Model: one encoder applied to both documents, [CLS] pooling, matching MLP head.
  config.model = long_range_model(
    "dual_encoder", width=128, heads=4, layers=4, mlp=512, max_len=4001
  )  # LRA: 128 dim, 4 heads, 4 layers, FFN 512; max_len = 4000 + [CLS]

  # Optimizer: LRA: Adam(0.9, 0.98), weight decay 0.1, 0.05 * linear_warmup * rsqrt_decay with
  # 8000 warm-up steps (longer than the 5000-step run, so the rate is still rising at the end).
  config.optimizer = long_range_optimizer(warmup_steps=8000)  # LRA: 8000 (never reached)

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
