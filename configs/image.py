"""LRA Image: CIFAR-10 as a sequence of 1024 grayscale pixels (10 classes); also sequential MNIST.

Data, on a connected machine (then copy the tfds directory here):
  tfds build cifar10 --data_dir=~/tensorflow_datasets     # and/or: tfds build mnist

    python main.py --config=configs/image.py --workdir=runs/image
    python main.py --config=configs/image.py:dataset=mnist --workdir=runs/smnist

Settings are those of LRA's released code (`lra_benchmarks/image/configs/cifar10/
base_cifar10_config.py`): a small model, 200 epochs of the first 90% of the training set, the last
10% for validation.
"""

import ml_collections

from configs.common import (
  long_range_model,
  long_range_sweep,
  loop_section,
  mesh_section,
  optimizer_section,
  parse_arg,
)

EPOCHS = 200  # LRA: 200


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, dataset="cifar10", epochs=EPOCHS)
  config = ml_collections.ConfigDict()
  config.seed = 0  # drives parameters, dropout and data order

  # Task: input_pipeline/image_sequence.py.
  config.data = ml_collections.ConfigDict()
  config.data.name = "image_sequence"
  config.data.seed = config.get_ref("seed")
  config.data.dataset = args.dataset  # cifar10 (1024 tokens) | mnist (784 tokens)
  config.data.data_dir = None  # tfds data directory; None: tfds' default (~/tensorflow_datasets)
  config.data.train_split = "train[:90%]"  # tfds split trained on (LRA: train[:90%])
  config.data.validation_split = "train[90%:]"  # selects the checkpoint (LRA: train[90%:])
  config.data.test_split = "test"  # reports, once, on the selected checkpoint (LRA: test)
  config.data.batch_size = 256  # global (LRA: 256)
  config.data.eval_examples = 0  # per eval split; 0: the whole split

  # Model: LRA's CIFAR-10 Transformer is tiny (1 layer, 1 head, width 32) with heavy dropout.
  config.model = long_range_model(
    "encoder_classifier", width=32, heads=1, layers=1, mlp=64, max_len=1025,  # 32 * 32 + [CLS]
    dropout_rate=0.3,  # LRA: 0.3
    attention_dropout_rate=0.2,  # LRA: 0.2
    position="learned",  # LRA: learn_pos_emb True
  )  # fmt: skip

  # Optimizer: LRA: Adam, lr 5e-4, linear warm-up for one epoch then cosine decay, no weight decay.
  config.optimizer = optimizer_section(
    learning_rate=5e-4,  # LRA: 0.0005 (peak), linear warm-up then cosine decay
    warmup_epochs=1.0,  # LRA: one epoch
    weight_decay=0.0,  # LRA: 0
    grad_clip_norm=0.0,  # LRA: none
  )

  # Loop.
  config.train = loop_section(log_every=50)
  # In epochs of the training split (steps follow data.batch_size; LRA: 175 * 200 = 35000 steps).
  config.train.num_epochs = float(args.epochs)
  config.train.eval_every_epochs = 1.0  # LRA: every epoch
  config.train.checkpoint_every_epochs = 10.0

  config.mesh = mesh_section()  # devices: (data, fsdp, tensor) = (-1, 1, 1)
  return config


def get_sweep(arg: str | None = None) -> list[dict]:
  """The long-range family on this task (a row of LRA's Table 1 per type); same for every arg."""
  del arg
  return long_range_sweep()
