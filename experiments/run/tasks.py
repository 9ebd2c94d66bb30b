"""Losses and metrics per task kind: what the one train loop optimises and reports.

Every kind maps `(logits, batch)` to a mean training loss and a clu metrics collection whose
averages are exact over any number of (padded) batches. `MAIN_METRIC[kind]` is the metric that
picks the best checkpoint and heads the reports.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax
from clu import metrics

Average = metrics.Average


def _valid(batch, n: int) -> jnp.ndarray:
  return batch.get("valid", jnp.ones((n,), bool)).astype(bool)


def cross_entropy(logits, labels, label_smoothing: float = 0.0) -> jnp.ndarray:
  """Per-position cross entropy; `[..., V]` logits, `[...]` integer labels."""
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  one_hot = jax.nn.one_hot(labels, logits.shape[-1])
  return optax.softmax_cross_entropy(logits, optax.smooth_labels(one_hot, label_smoothing))


def sequence_loss(logits, targets, valid, label_smoothing: float = 0.0):
  """Token-level loss over non-padding targets (id 0 is padding) of valid examples."""
  weights = (targets > 0) & valid[:, None]
  token_loss = cross_entropy(logits, targets, label_smoothing)
  correct = (jnp.argmax(logits, -1) == targets) | ~weights
  collection = metrics.Collection.create_collection(  # per target token; sequence: all right
    loss=Average.from_model_output(token_loss, mask=weights),
    accuracy=Average.from_model_output(correct.astype(jnp.float32), mask=weights),
    sequence_accuracy=Average.from_model_output(
      jnp.all(correct, axis=-1).astype(jnp.float32), mask=valid
    ),
  )
  return (token_loss * weights).sum() / jnp.maximum(weights.sum(), 1), collection


def classification_loss(logits, labels, valid, label_smoothing: float = 0.0):
  example_loss = cross_entropy(logits, labels, label_smoothing)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  collection = metrics.Collection.create_collection(
    loss=Average.from_model_output(example_loss, mask=valid),
    accuracy=Average.from_model_output(correct, mask=valid),
  )
  return (example_loss * valid).sum() / jnp.maximum(valid.sum(), 1), collection


def loss_and_metrics(kind: str, logits, batch, label_smoothing: float = 0.0):
  """-> (mean loss, metrics collection) for a task kind."""
  n = logits.shape[0]
  valid = _valid(batch, n)
  match kind:
    case "seq2seq":
      return sequence_loss(logits, batch["targets"], valid, label_smoothing)
    case "lm":
      return sequence_loss(logits, batch["inputs"], valid, label_smoothing)
    case "classification" | "retrieval":
      return classification_loss(logits, batch["label"], valid, label_smoothing)
  raise ValueError(f"unknown task kind {kind!r}; valid: {', '.join(sorted(MAIN_METRIC))}")


# The metric that selects the best checkpoint, and whether higher is better.
MAIN_METRIC = {
  "seq2seq": ("sequence_accuracy", "max"),
  "classification": ("accuracy", "max"),
  "retrieval": ("accuracy", "max"),
  "lm": ("loss", "min"),
}


def with_metrics(collection: metrics.Collection, **more: metrics.Metric) -> metrics.Collection:
  """`collection` and `more` metrics in one collection (e.g. the train step's gradient norm)."""
  fields = {
    f.name: getattr(collection, f.name)
    for f in dataclasses.fields(collection)
    if f.name != "_reduction_counter"
  }
  return metrics.Collection.create_collection(**fields, **more)


def with_derived(kind: str, computed: dict[str, float]) -> dict[str, float]:
  """The averaged metrics plus those computed from them: an LM's perplexity, exp(token loss)."""
  if kind == "lm" and "loss" in computed:
    return {**computed, "perplexity": math.exp(min(computed["loss"], 700.0))}
  return computed


def batch_tokens(batch) -> int:
  """Tokens in a batch (inputs + targets, padding included), for throughput."""
  return int(sum(batch[k].size for k in ("inputs", "inputs2", "targets") if k in batch))
