"""Losses, metrics, label smoothing and pooling against hand computations on tiny batches.

The batches have padding targets (id 0) and an invalid row (`valid = False`, an eval padding
example), and the logits are chosen so that each mask changes the answer if it is ignored.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.run import tasks
from models.classifier import pool


def _log_softmax(z: np.ndarray) -> np.ndarray:
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _ce(logits: np.ndarray, labels: np.ndarray, eps: float = 0.0) -> np.ndarray:
  """-Σ_v q_v log p_v with q = (1 - ε) one_hot + ε / V (Szegedy et al. 2016)."""
  v = logits.shape[-1]
  q = (1 - eps) * np.eye(v)[labels] + eps / v
  return -(q * _log_softmax(logits)).sum(-1)


def _seq_batch():
  """3 rows of 4 targets over 5 ids: row 0 all right, row 1 one token wrong, row 2 invalid and
  all wrong; padding positions predict non-padding ids (they must not count as errors)."""
  rng = np.random.default_rng(0)
  targets = np.array([[2, 3, 1, 0], [4, 2, 3, 1], [3, 3, 1, 0]])
  predicted = np.array([[2, 3, 1, 4], [4, 2, 2, 1], [2, 2, 2, 2]])
  logits = rng.normal(size=(3, 4, 5))
  logits[np.arange(3)[:, None], np.arange(4)[None], predicted] += 6.0
  valid = np.array([True, True, False])
  return logits.astype(np.float32), targets, valid


def _computed(collection) -> dict[str, float]:
  return {k: float(v) for k, v in collection.compute().items()}


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_sequence_loss_and_metrics_by_hand(eps):
  logits, targets, valid = _seq_batch()
  loss, collection = tasks.sequence_loss(
    jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(valid), eps
  )
  w = (targets > 0) & valid[:, None]  # 3 + 4 tokens
  ce = _ce(logits, targets, eps)
  want_loss = (ce * w).sum() / w.sum()
  assert float(loss) == pytest.approx(want_loss, rel=1e-5)
  got = _computed(collection)
  assert got["loss"] == pytest.approx(want_loss, rel=1e-5)
  assert got["accuracy"] == pytest.approx(6 / 7)  # one wrong of the 7 counted tokens
  assert got["sequence_accuracy"] == pytest.approx(1 / 2)  # row 0 right, row 1 not; row 2 invalid


def test_label_smoothing_changes_the_loss_by_its_formula():
  logits, targets, valid = _seq_batch()
  plain = float(tasks.sequence_loss(logits, targets, valid)[0])
  smooth = float(tasks.sequence_loss(logits, targets, valid, 0.2)[0])
  w = (targets > 0) & valid[:, None]
  uniform = (-_log_softmax(logits).mean(-1) * w).sum() / w.sum()  # ε = 1: cross entropy to 1/V
  assert smooth == pytest.approx(0.8 * plain + 0.2 * uniform, rel=1e-5)
  assert smooth > plain  # confident right answers pay for the smoothing
  np.testing.assert_allclose(
    tasks.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), 0.3),
    _ce(logits, targets, 0.3),
    rtol=1e-5,
  )


def test_metrics_average_exactly_over_batches():
  """Merged over two batches of different token counts: totals / counts, not a mean of means."""
  logits, targets, valid = _seq_batch()
  first = tasks.sequence_loss(logits[:1], targets[:1], valid[:1])[1]  # 3 tokens, all right
  second = tasks.sequence_loss(logits[1:], targets[1:], valid[1:])[1]  # 4 tokens, one wrong
  got = _computed(first.merge(second))
  whole = _computed(tasks.sequence_loss(logits, targets, valid)[1])
  for k in ("loss", "accuracy", "sequence_accuracy"):
    assert got[k] == pytest.approx(whole[k], rel=1e-5)
  assert got["accuracy"] == pytest.approx(6 / 7)


def test_classification_loss_and_accuracy_by_hand():
  logits = np.array([[3.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
  labels = np.array([0, 2, 2, 1])
  valid = np.array([True, True, True, False])  # the last one is wrong and must not count
  for eps in (0.0, 0.1):
    loss, collection = tasks.classification_loss(logits, labels, valid, eps)
    want = _ce(logits, labels, eps)[:3].mean()
    assert float(loss) == pytest.approx(want, rel=1e-5)
    got = _computed(collection)
    assert got["loss"] == pytest.approx(want, rel=1e-5)
    assert got["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
  "kind,labels_key", [("seq2seq", "targets"), ("lm", "inputs"), ("classification", "label")]
)
def test_loss_and_metrics_reads_the_labels_and_valid_of_each_kind(kind, labels_key):
  logits, targets, valid = _seq_batch()
  if kind == "classification":
    logits, targets = logits[:, 0], np.array([2, 1, 3])
  batch = {labels_key: jnp.asarray(targets), "valid": jnp.asarray(valid)}
  loss, collection = tasks.loss_and_metrics(kind, jnp.asarray(logits), batch)

  def by_hand(rows):
    if kind == "classification":
      return _ce(logits, targets)[rows].mean()
    w = (targets > 0) & rows[:, None]
    return (_ce(logits, targets) * w).sum() / w.sum()

  assert float(loss) == pytest.approx(by_hand(valid), rel=1e-5)
  no_valid = tasks.loss_and_metrics(kind, jnp.asarray(logits), {labels_key: targets})[0]
  every_row = by_hand(np.ones(3, bool))  # training batches have no `valid`: every row counts
  assert float(no_valid) == pytest.approx(every_row, rel=1e-5)
  assert every_row != pytest.approx(by_hand(valid), rel=1e-3)


def test_unknown_kind_lists_the_valid_ones():
  with pytest.raises(ValueError, match="valid: classification, lm, retrieval, seq2seq"):
    tasks.loss_and_metrics("ranking", jnp.zeros((1, 2)), {})


def test_batch_tokens_counts_inputs_and_targets():
  batch = {"inputs": np.zeros((2, 5)), "targets": np.zeros((2, 3)), "label": np.zeros(2)}
  assert tasks.batch_tokens(batch) == 16


def test_pooling_uses_only_valid_tokens():
  x = np.array(
    [[[1.0, -2.0], [3.0, -4.0], [100.0, 50.0]],  # last position is padding (large values)
     [[-5.0, -6.0], [-7.0, -1.0], [9.0, 9.0]],  # only the first two are valid
     [[4.0, 4.0], [4.0, 4.0], [4.0, 4.0]]],  # nothing valid: zeros
    np.float32,
  )  # fmt: skip
  valid = np.array([[True, True, False], [True, True, False], [False, False, False]])
  mean = pool(jnp.asarray(x), jnp.asarray(valid), "mean")
  np.testing.assert_allclose(mean, [[2.0, -3.0], [-6.0, -3.5], [0.0, 0.0]])
  most = pool(jnp.asarray(x), jnp.asarray(valid), "max")
  np.testing.assert_allclose(most, [[3.0, -2.0], [-5.0, -1.0], [0.0, 0.0]])
  with pytest.raises(ValueError, match="valid: cls, mean, max"):
    pool(jnp.asarray(x), jnp.asarray(valid), "sum")
