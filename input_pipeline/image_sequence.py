"""Images as pixel sequences (classification): LRA Image (sequential CIFAR-10) and sequential MNIST.

`cifar10`: RGB -> grayscale (`tf.image.rgb_to_grayscale`, as LRA), 32 x 32 = 1024 tokens;
`mnist`: 28 x 28 = 784 tokens; rows read top to bottom, left to right. A pixel value v (0..255)
is token v + 1, so id 0 stays padding (vocabulary 257; LRA's 256 values shifted by one).
10 classes. As LRA: train on `train[:90%]`, validate (select) on `train[90%:]`, test (report) on
`test` (the defaults).

`config.data` fields:
  name: 'image_sequence'
  dataset: 'cifar10' | 'mnist'
  data_dir: tfds data directory (None = tfds default)
  train_split: tfds split to train on (default 'train[:90%]')
  validation_split: tfds split that selects checkpoints (default 'train[90%:]')
  test_split: tfds split that reports (default 'test')
  batch_size: global (LRA: 256); seed: shuffle seed
  eval_examples: first N examples of each eval split (0: all)
"""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline.base import SPLITS, Datasets, TaskInfo
from input_pipeline.batching import (
  Examples,
  Ragged,
  load_tfds,
  make_datasets,
  tfds_split,
  tfds_splits,
)
from input_pipeline.registry import register

NUM_CLASSES = 10
PIXEL_OFFSET = 1
DATASETS = {"cifar10": (32, 32, True), "mnist": (28, 28, False)}  # height, width, grayscale
SPLITS_DEFAULT = {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"}  # LRA


def load_pixels(name: str, split, data_dir: str | None) -> Examples:
  """A tfds image split -> `inputs` (`[n, H*W]` pixel ids) and `label`."""
  height, width, rgb = DATASETS[name]

  def to_sequence(batch):
    image = batch["image"]
    if rgb:
      image = tf.image.rgb_to_grayscale(image)
    flat = tf.reshape(image, [tf.shape(image)[0], -1])
    return tf.cast(flat, tf.uint16) + PIXEL_OFFSET, tf.cast(batch["label"], tf.int32)

  ds = load_tfds(name, split, data_dir).batch(4096).map(to_sequence)
  pixels, labels = (
    [np.zeros((0, height * width), np.uint16)],
    [np.zeros(0, np.int32)],
  )  # may be empty
  for x, y in tfds.as_numpy(ds):
    pixels.append(x)
    labels.append(y)
  return Examples(
    {"inputs": Ragged.from_dense(np.concatenate(pixels))}, {"label": np.concatenate(labels)}
  )


@register("image_sequence")
def image_sequence(config, *, workdir=None, process_index=0, process_count=1) -> Datasets:
  """Sequential CIFAR-10 / MNIST (see the module docstring for the fields)."""
  del workdir  # decoding is fast; nothing to cache
  name = config.get("dataset", "cifar10")
  if name not in DATASETS:
    raise ValueError(f"data.dataset={name!r}; valid: {', '.join(DATASETS)}")
  height, width, _ = DATASETS[name]
  data_dir = config.get("data_dir")
  splits = tfds_splits(config, SPLITS_DEFAULT)
  train = load_pixels(name, tfds_split(splits["train"], process_index, process_count), data_dir)
  evals = {s: load_pixels(name, splits[s], data_dir) for s in SPLITS}
  length = height * width
  info = TaskInfo(
    kind="classification",
    vocab_size=256 + PIXEL_OFFSET,
    max_input_length=length,
    num_classes=NUM_CLASSES,
  )
  return make_datasets(
    train,
    evals,
    info,
    config,
    splits={s: f"{name} {split}" for s, split in splits.items()},
    lengths={"inputs": length},
    process_index=process_index,
    process_count=process_count,
    train_sharded=True,
  )
