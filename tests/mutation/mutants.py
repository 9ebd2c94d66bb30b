"""The curated mutants: each a plausible bug, written as (file, exact snippet, replacement) with
the tests that must catch it. The issue's example bugs are here (ids in `ISSUE_EXAMPLES`).

A mutant known to be equivalent (no observable change) carries the reason in `equivalent`; it
still runs, and is reported as equivalent if its tests pass.
"""

import dataclasses

T_ATTN = "tests/test_attention.py"
T_EFF = "tests/test_attention_efficient.py"
T_REF = "tests/test_attention_reference.py"
T_DROP = "tests/test_dropout.py"
T_LOSS = "tests/test_losses_metrics.py"
T_SCHED = "tests/test_schedules.py"
T_OPTIM = "tests/test_optim.py"
T_TARGETS = "tests/test_task_targets.py"
T_DEC = "tests/test_decoding.py"
T_BLEU = "tests/test_decode_eval.py"
T_MODELS = "tests/test_models.py"
T_LEARNS = "tests/test_learns.py"


@dataclasses.dataclass(frozen=True)
class Mutant:
  id: str
  file: str
  original: str
  replacement: str
  tests: tuple[str, ...]  # pytest arguments: files, node ids, -k expressions
  why: str  # the bug it stands for
  equivalent: str = ""  # why it cannot be observed, if it cannot


GROUPS = (  # (path prefix, module group in the kill table), first match wins
  ("models/attention/", "models/attention"),
  ("models/decoding.py", "decoding + BLEU"),
  ("experiments/run/decode_eval.py", "decoding + BLEU"),
  ("input_pipeline/translation.py", "decoding + BLEU"),
  ("experiments/run/tasks.py", "experiments/tasks (loss, metrics)"),
  ("experiments/run/optim.py", "experiments/optim"),
  ("input_pipeline/", "input_pipeline (targets)"),
  ("experiments/benchmarks/attention_cost.py", "experiments/benchmark (FLOPs)"),
  ("models/", "models (families)"),
)


def group(path: str) -> str:
  for prefix, name in GROUPS:
    if path.startswith(prefix):
      return name
  return "other"


def _m(id, file, original, replacement, tests, why, equivalent=""):  # noqa: A002
  tests = (tests,) if isinstance(tests, str) else tuple(tests)
  return Mutant(id, file, original, replacement, tests, why, equivalent)


BASE = "models/attention/base.py"
TASKS = "experiments/run/tasks.py"
OPTIM = "experiments/run/optim.py"
SYN = "input_pipeline/synthetic.py"
DECODING = "models/decoding.py"

MUTANTS: tuple[Mutant, ...] = (
  # ------------------------------------------------------------------ experiments/run/tasks.py
  _m(
    "tasks-valid-ignored",
    TASKS,
    "weights = (targets > 0) & valid[:, None]",
    "weights = targets > 0",
    T_LOSS,
    "invalid (eval padding) rows count in the sequence loss and accuracy",
  ),
  _m(
    "tasks-padding-counted",
    TASKS,
    "weights = (targets > 0) & valid[:, None]",
    "weights = (targets >= 0) & valid[:, None]",
    T_LOSS,
    "padding targets count as tokens",
  ),
  _m(
    "tasks-correct-unmasked",
    TASKS,
    "correct = (jnp.argmax(logits, -1) == targets) | ~weights",
    "correct = jnp.argmax(logits, -1) == targets",
    T_LOSS,
    "sequence accuracy counts padding positions as errors",
  ),
  _m(
    "tasks-seqacc-any",
    TASKS,
    "jnp.all(correct, axis=-1).astype(jnp.float32)",
    "jnp.any(correct, axis=-1).astype(jnp.float32)",
    T_LOSS,
    "sequence accuracy: any token right instead of all",
  ),
  _m(
    "tasks-seqacc-valid-ignored",
    TASKS,
    "jnp.all(correct, axis=-1).astype(jnp.float32), mask=valid",
    "jnp.all(correct, axis=-1).astype(jnp.float32)",
    T_LOSS,
    "sequence accuracy averages over invalid rows",
  ),
  _m(
    "tasks-seqloss-mean",
    TASKS,
    "return (token_loss * weights).sum() / jnp.maximum(weights.sum(), 1), collection",
    "return (token_loss * weights).mean(), collection",
    T_LOSS,
    "sequence loss divided by all positions, not by the counted tokens",
  ),
  _m(
    "tasks-smoothing-dropped",
    TASKS,
    "optax.smooth_labels(one_hot, label_smoothing)",
    "one_hot",
    T_LOSS,
    "label smoothing silently ignored",
  ),
  _m(
    "tasks-smoothing-wrong",
    TASKS,
    "optax.smooth_labels(one_hot, label_smoothing)",
    "optax.smooth_labels(one_hot, label_smoothing / 2)",
    T_LOSS,
    "label smoothing with half the rate",
  ),
  _m(
    "tasks-cls-loss-valid-ignored",
    TASKS,
    "return (example_loss * valid).sum() / jnp.maximum(valid.sum(), 1), collection",
    "return example_loss.mean(), collection",
    T_LOSS,
    "classification loss over invalid rows",
  ),
  _m(
    "tasks-cls-acc-valid-ignored",
    TASKS,
    "accuracy=Average.from_model_output(correct, mask=valid)",
    "accuracy=Average.from_model_output(correct)",
    T_LOSS,
    "classification accuracy over invalid rows",
  ),
  _m(
    "tasks-lm-shifted-twice",
    TASKS,
    'return sequence_loss(logits, batch["inputs"], valid, label_smoothing)',
    'return sequence_loss(logits, jnp.roll(batch["inputs"], -1, axis=1), valid, label_smoothing)',
    T_LOSS,
    "lm labels shifted although the model already shifts its inputs",
  ),
  _m(
    "tasks-valid-default-false",
    TASKS,
    'batch.get("valid", jnp.ones((n,), bool))',
    'batch.get("valid", jnp.zeros((n,), bool))',
    T_LOSS,
    "training batches (no `valid`) count no example",
  ),
  # ------------------------------------------------------------------ experiments/run/optim.py
  _m(
    "optim-accum-sum",
    OPTIM,
    "optax.MultiSteps(opt, k)",
    "optax.MultiSteps(opt, k, use_grad_mean=False)",
    T_SCHED,
    "gradient accumulation sums the micro-batch gradients instead of averaging",
  ),
  _m(
    "optim-accum-schedule-microsteps",
    OPTIM,
    "lr = schedule(config, num_steps // k)",
    "lr = schedule(config, num_steps)",
    T_SCHED,
    "the schedule counts micro-batches, not updates",
  ),
  _m(
    "optim-cosine-decay-includes-warmup",
    OPTIM,
    "decay_steps = max(num_updates, warmup + 1)",
    "decay_steps = max(num_updates + warmup, warmup + 1)",
    T_SCHED,
    "cosine/linear decay ends `warmup` steps late",
  ),
  _m(
    "optim-linear-decay-length",
    OPTIM,
    "optax.linear_schedule(lr, 0.0, decay_steps - warmup)",
    "optax.linear_schedule(lr, 0.0, decay_steps)",
    T_SCHED,
    "linear decay over the whole run after the warm-up",
  ),
  _m(
    "optim-rsqrt-off-by-one",
    OPTIM,
    "jnp.minimum((step + 1.0) / warmup,",
    "jnp.minimum(step / warmup,",
    T_SCHED,
    "rsqrt warm-up counted from 0 (lr 0 at the first update)",
  ),
  _m(
    "optim-rsqrt-no-warmup-scale",
    OPTIM,
    "jnp.sqrt(warmup / jnp.maximum(step + 1.0, 1.0))",
    "jnp.sqrt(1.0 / jnp.maximum(step + 1.0, 1.0))",
    T_SCHED,
    "rsqrt decay not continuous with the warm-up",
  ),
  _m(
    "optim-warmup-plus-one",
    OPTIM,
    "max(config.warmup_steps, 1)",
    "config.warmup_steps + 1",
    T_SCHED,
    "warm-up one step too long",
  ),
  _m(
    "optim-clip-after",
    OPTIM,
    "optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)",
    "optax.chain(opt, optax.clip_by_global_norm(config.grad_clip_norm))",
    T_OPTIM,
    "clipping the update instead of the gradient",
  ),
  _m(
    "optim-no-momentum",
    OPTIM,
    "momentum=config.momentum or None",
    "momentum=None",
    T_SCHED,
    "sgd momentum ignored",
  ),
  _m(
    "optim-no-weight-decay",
    OPTIM,
    "weight_decay=config.weight_decay)",
    "weight_decay=0.0)",
    T_SCHED,
    "adamw weight decay ignored",
  ),
  # ------------------------------------------------------------------ input_pipeline targets
  _m(
    "targets-reverse-is-copy",
    SYN,
    '_register_seq2seq("reverse", _reverse)',
    '_register_seq2seq("reverse", lambda x, length: x)',
    T_TARGETS,
    "the issue's example: `reverse` targets equal the inputs",
  ),
  _m(
    "targets-reverse-padding",
    SYN,
    "return tf.reverse_sequence(x[None], length[None], seq_axis=1, batch_axis=0)[0]",
    "return tf.reverse(x, [0])",
    T_TARGETS,
    "reverse also reverses the padding",
  ),
  _m(
    "targets-sort-padding-first",
    SYN,
    "big = tf.where(x > 0, x, tf.int32.max)",
    "big = x",
    T_TARGETS,
    "sort puts the padding first",
  ),
  _m(
    "targets-eos-late",
    SYN,
    "tf.range(config.max_length + 1) == length, EOS_ID",
    "tf.range(config.max_length + 1) == length + 1, EOS_ID",
    T_TARGETS,
    "EOS one position late",
  ),
  _m(
    "targets-length-never-max",
    SYN,
    "config.min_length, config.max_length + 1, dtype=tf.int32",
    "config.min_length, config.max_length, dtype=tf.int32",
    T_TARGETS,
    "lengths never reach max_length",
  ),
  _m(
    "targets-symbols-include-eos",
    SYN,
    "FIRST_SYMBOL, config.vocab_size, dtype=tf.int32",
    "FIRST_SYMBOL - 1, config.vocab_size, dtype=tf.int32",
    T_TARGETS,
    "inputs may contain EOS",
  ),
  _m(
    "targets-recall-wrong-value",
    SYN,
    '"label": values[query]',
    '"label": values[0]',
    T_TARGETS,
    "associative recall labels the first value, not the queried one",
  ),
  _m(
    "targets-recall-wrong-query",
    SYN,
    "[marker, keys[query] + FIRST_SYMBOL]",
    "[marker, keys[0] + FIRST_SYMBOL]",
    T_TARGETS,
    "associative recall always queries the first key",
  ),
  _m(
    "targets-listops-median-rounds",
    "input_pipeline/listops_generate.py",
    "return int(np.median(values))",
    "return int(round(float(np.median(values))))",
    T_TARGETS,
    "ListOps MED rounds instead of rounding down",
  ),
  _m(
    "targets-listops-sum-no-mod",
    "input_pipeline/listops_generate.py",
    "return sum(values) % 10",
    "return sum(values) % 9",
    T_TARGETS,
    "ListOps SM modulo 9",
  ),
  # ------------------------------------------------------------------ decoding + BLEU
  _m(
    "decode-lp-base",
    DECODING,
    "((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha",
    "((5.0 + length.astype(jnp.float32)) / 5.0) ** alpha",
    T_DEC,
    "GNMT length penalty with the wrong base",
  ),
  _m(
    "decode-lp-length-without-eos",
    DECODING,
    "score = top_logp / length_penalty(bs.t + 1, alpha)",
    "score = top_logp / length_penalty(bs.t, alpha)",
    T_DEC,
    "the length penalty does not count the EOS",
  ),
  _m(
    "decode-eos-beams-stay-alive",
    DECODING,
    "jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_logp), k)",
    "jax.lax.top_k(top_logp, k)",
    T_DEC,
    "finished hypotheses keep being extended",
  ),
  _m(
    "decode-stop-at-first-finished",
    DECODING,
    "hopeless = jnp.all(bs.finished_flag, axis=1) & (worst_finished >= best_alive)",
    "hopeless = jnp.any(bs.finished_flag, axis=1)",
    T_DEC,
    "beam search stops at the first finished hypothesis",
  ),
  _m(
    "decode-state-not-gathered",
    DECODING,
    "state=gather_beams(bs.state, alive_from, flat=True)",
    "state=bs.state",
    T_DEC,
    "decoder state (caches) not reordered with the beams",
  ),
  _m(
    "decode-greedy-never-done",
    DECODING,
    "done | (y == eos_id)",
    "done",
    T_DEC,
    "greedy keeps emitting after EOS",
  ),
  _m(
    "decode-top-p-inclusive",
    DECODING,
    "keep = before < top_p",
    "keep = before <= top_p",
    T_DEC,
    "nucleus keeps one token too many at the boundary",
  ),
  _m(
    "bleu-strip-keeps-eos",
    "experiments/run/decode_eval.py",
    "return ids[: stop[0]] if stop.size else ids",
    "return ids[: stop[0] + 1] if stop.size else ids",
    (T_BLEU, "-k", "strip"),
    "EOS scored as a word",
  ),
  _m(
    "bleu-swapped",
    "input_pipeline/translation.py",
    "sacrebleu.corpus_bleu(list(hypotheses), [list(references)])",
    "sacrebleu.corpus_bleu(list(references), [list(hypotheses)])",
    (T_SCHED, "-k", "bleu"),
    "BLEU of the references against the hypotheses",
  ),
  # ------------------------------------------------------------------ models/attention
  _m(
    "attn-mask-ignored",
    BASE,
    "s = jnp.where(mask, s, NEG_INF)",
    "s = s",
    (T_ATTN, "-k", "padding or causality or dense_mask"),
    "normalize ignores the mask",
  ),
  _m(
    "attn-temperature-inverted",
    BASE,
    "s = s / temperature",
    "s = s * temperature",
    (T_REF, "-k", "temperature"),
    "temperature multiplies the scores",
  ),
  _m(
    "attn-top-k-strict",
    BASE,
    "s = jnp.where(s >= kth, s, NEG_INF)",
    "s = jnp.where(s > kth, s, NEG_INF)",
    (T_REF, "-k", "temperature"),
    "top-k keeps k − 1 keys",
  ),
  _m(
    "attn-causal-strict",
    "models/attention/masks.py",
    "(jnp.arange(kv_len)[None, :] <= q_pos)[None, None]",
    "(jnp.arange(kv_len)[None, :] < q_pos)[None, None]",
    (T_ATTN, "-k", "causality"),
    "causal mask hides the query's own position",
  ),
  _m(
    "attn-combine-or",
    "models/attention/masks.py",
    "out = jnp.logical_and(out, m)",
    "out = jnp.logical_or(out, m)",
    (T_ATTN, "-k", "causality or padding"),
    "masks combined with OR",
  ),
  _m(
    "attn-scale-missing",
    "models/attention/scaled_dot.py",
    "q = q * jnp.asarray(1.0 / (d**0.5 * temperature), q.dtype)",
    "q = q * jnp.asarray(1.0 / temperature, q.dtype)",
    (T_REF, "-k", "scaled_dot_vs"),
    "scaled dot-product without 1/√d",
  ),
  _m(
    "attn-dropout-ignores-deterministic",
    BASE,
    "if self.dropout_rate > 0.0 and not deterministic:",
    "if self.dropout_rate > 0.0:",
    T_DROP,
    "the issue's example: deterministic=True still drops weights",
  ),
  _m(
    "attn-dropout-never",
    BASE,
    "if self.dropout_rate > 0.0 and not deterministic:",
    "if False:",
    T_DROP,
    "the issue's example: dropout does not change the output",
  ),
  _m(
    "attn-dropout-not-rescaled",
    BASE,
    "return nn.Dropout(rate=self.dropout_rate, deterministic=False)(weights)",
    "return nn.Dropout(rate=self.dropout_rate, deterministic=False)(weights)"
    " * (1.0 - self.dropout_rate)",
    T_DROP,
    "dropout changes the expected output",
  ),
  _m(
    "attn-kernel-claims-dropout",
    "models/attention/linear.py",
    "drops_weights = False  # no weights",
    "drops_weights = True  # no weights",
    (T_DROP, "-k", "linear or performer"),
    "the issue's example: a type ignores dropout_rate silently",
  ),
  _m(
    "attn-kernel-no-warning",
    "models/attention/linear.py",
    "    self.warn_no_dropout()\n",
    "",
    (T_DROP, "-k", "linear or performer"),
    "a type ignores dropout_rate without warning",
  ),
  _m(
    "attn-memeff-dropout-not-rescaled",
    "models/attention/memory_efficient.py",
    "p = jnp.where(keep, p / (1.0 - dropout_rate), 0.0)",
    "p = jnp.where(keep, p, 0.0)",
    (T_DROP, "-k", "memory_efficient"),
    "chunked dropout not rescaled",
  ),
  _m(
    "attn-band-off-by-one",
    "models/attention/_blocks.py",
    "band = jnp.abs(offset) <= window",
    "band = jnp.abs(offset) < window",
    (T_EFF, "-k", "sliding_window or longformer"),
    "sliding window one key short",
  ),
  _m(
    "attn-bigbird-window-left-only",
    "models/attention/bigbird.py",
    "right = 0 if causal else num_window // 2",
    "right = 0",
    (T_EFF, "-k", "bigbird"),
    "BigBird's window misses the right-hand blocks",
  ),
  _m(
    "attn-bigbird-random-in-window",
    "models/attention/bigbird.py",
    "pool = [j for j in range(g, last) if j not in taken]",
    "pool = list(range(g, last))",
    (T_EFF, "-k", "bigbird"),
    "BigBird's random blocks may repeat global/window blocks",
  ),
  _m(
    "attn-bigbird-no-global-rows",
    "models/attention/bigbird.py",
    "rows = 0 if self.causal else min(self.num_global_blocks * bs, t)",
    "rows = 0",
    (T_EFF, "-k", "bigbird"),
    "BigBird's global queries do not see every key",
  ),
  _m(
    "attn-longformer-global-rows-causal-leak",
    "models/attention/longformer.py",
    "row_mask = row_mask & (jnp.arange(t)[None, :] <= jnp.arange(g)[:, None])[None, None]",
    "row_mask = row_mask",
    (T_EFF, "-k", "longformer"),
    "causal Longformer's global queries see the future",
  ),
  _m(
    "attn-performer-not-orthogonal",
    "models/attention/performer.py",
    "blocks = jnp.swapaxes(q, -1, -2).reshape(n * d, d)[:m]",
    "blocks = jax.random.normal(gauss_key, (n * d, d))[:m]",
    (T_EFF, "-k", "performer"),
    "Performer's Ω rows not orthogonal (iid Gaussian)",
  ),
  _m(
    "attn-lsh-one-sided-hash",
    "models/attention/lsh.py",
    "jnp.concatenate([rotated, -rotated], axis=-1)",
    "jnp.concatenate([rotated, rotated], axis=-1)",
    (T_EFF, "-k", "lsh"),
    "LSH hash without the −xR half: only half the buckets used",
  ),
  _m(
    "attn-sinkhorn-one-iteration",
    "models/attention/sinkhorn.py",
    "perm = sinkhorn(logits, self.sinkhorn_iters)",
    "perm = sinkhorn(logits, 1)",
    (T_EFF, "-k", "sinkhorn"),
    "Sinkhorn normalisation stopped after one iteration",
  ),
  _m(
    "attn-sinkhorn-rows-only",
    "models/attention/sinkhorn.py",
    "    x = x - jax.nn.logsumexp(x, axis=-2, keepdims=True)\n",
    "",
    (T_EFF, "-k", "sinkhorn"),
    "Sinkhorn normalises rows only (not doubly stochastic)",
  ),
  _m(
    "attn-joint-softmax-split",
    "models/attention/_blocks.py",
    "return jnp.split(normalize(scores, allowed), sizes, axis=-1)",
    "return [normalize(s, a) for s, a in zip(jnp.split(scores, sizes, axis=-1),"
    " jnp.split(allowed, sizes, axis=-1), strict=True)]",
    (T_EFF, "-k", "sparse_fixed or sinkhorn"),
    "separate softmaxes over own and summary keys",
  ),
  # ------------------------------------------------------------------ benchmark FLOPs
  _m(
    "flops-loop-type-halved",
    "models/attention/lsh.py",
    "return cost.proj(s, 3) + r * (cost.dense(s, padded * min(2 * m, padded)) + hashing)",
    "return (cost.proj(s, 3) + r * (cost.dense(s, padded * min(2 * m, padded)) + hashing)) / 2",
    ("tests/test_benchmark.py", "-k", "flop_formula and lsh"),
    "the issue's example: a FLOP formula of a type with a loop goes unchecked",
  ),
  # ------------------------------------------------------------------ models (families)
  _m(
    "model-ignores-input",
    "models/transformer_blocks.py",
    "x = emb(inputs.astype(jnp.int32)).astype(cfg.compute_dtype)",
    "x = 0.0 * emb(inputs.astype(jnp.int32)).astype(cfg.compute_dtype)",
    (T_MODELS, "-k", "family_trains and classifier"),
    "the issue's example: an encoder that ignores its input passes assert_trains",
  ),
  _m(
    "model-mean-pool-padding",
    "models/classifier.py",
    "return (x * v).sum(1) / jnp.maximum(v.sum(1), 1).astype(x.dtype)",
    "return x.mean(1)",
    (T_LOSS, "-k", "pooling"),
    "mean pooling over padding",
  ),
  _m(
    "model-max-pool-padding",
    "models/classifier.py",
    "jnp.where(v, x, jnp.finfo(x.dtype).min).max(1)",
    "x.max(1)",
    (T_LOSS, "-k", "pooling"),
    "max pooling over padding",
  ),
)

ISSUE_EXAMPLES = (
  "targets-reverse-is-copy", "tasks-valid-ignored", "tasks-padding-counted",
  "tasks-seqacc-valid-ignored", "tasks-smoothing-dropped", "attn-dropout-never",
  "attn-dropout-ignores-deterministic", "attn-kernel-claims-dropout", "model-ignores-input",
  "attn-bigbird-window-left-only", "attn-sinkhorn-one-iteration", "attn-lsh-one-sided-hash",
  "attn-performer-not-orthogonal", "optim-accum-sum", "model-mean-pool-padding",
  "decode-lp-base", "flops-loop-type-halved",
)  # fmt: skip
