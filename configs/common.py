"""Small helpers shared by experiment files (configs import nothing else of ours)."""

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """`"a=1,b=x"` -> ConfigDict(a=1, b='x'), each value typed like its default (big_vision style)."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config arg {key!r}; valid: {sorted(defaults)}")
    kind = type(defaults[key])
    out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
  return out


# Sweeps: an experiment file may define `get_sweep(arg)` returning a list of override dicts,
# {"model.attention.name": "additive", "optimizer.learning_rate": 1e-3}, built with these.


def axis(key: str, values) -> list[dict]:
  """One swept field: [{key: v} for v in values]."""
  return [{key: v} for v in values]


def product(*sweeps: list[dict]) -> list[dict]:
  """Every combination of the given sweeps (later ones vary fastest)."""
  out = [{}]
  for sweep in sweeps:
    out = [{**a, **b} for a in out for b in sweep]
  return out


def zip_(*sweeps: list[dict]) -> list[dict]:
  """Point i of every sweep together (all sweeps must have the same length)."""
  if len({len(s) for s in sweeps}) > 1:
    raise ValueError(f"zip_ needs sweeps of one length, got {[len(s) for s in sweeps]}")
  return [{k: v for p in points for k, v in p.items()} for points in zip(*sweeps, strict=True)]


def chain(*sweeps: list[dict]) -> list[dict]:
  """The points of each sweep in turn."""
  return [point for sweep in sweeps for point in sweep]


# The long-range family every Long Range Arena experiment file sweeps: the exact baseline, the
# same attention computed in chunks, and every efficient type that works as an encoder's
# self-attention.
LONG_RANGE_TYPES = (
  "scaled_dot", "memory_efficient", "sliding_window", "longformer", "bigbird", "sparse_fixed",
  "linear", "performer", "linformer", "sinkhorn", "lsh", "synthesizer",
)  # fmt: skip


def long_range_sweep() -> list[dict]:
  """One point per type of `LONG_RANGE_TYPES`, everything else as in the experiment file."""
  return axis("model.attention.name", LONG_RANGE_TYPES)


# Sections every experiment shares (override fields after calling).


def long_range_attention(max_len: int) -> ml_collections.ConfigDict:
  """`config.model.attention` of a long-sequence experiment: scaled_dot, plus the length of the
  types that learn one weight per position (linformer, sinkhorn, synthesizer) set to the
  model's, so a sweep or `--config.model.attention.name=X` changes only the name. Every type
  uses its own defaults for the rest (`models/attention/<family>.py`)."""
  attention = ml_collections.ConfigDict()
  attention.name = "scaled_dot"  # any registered attention type
  attention.max_length = max_len  # read only by the types that have the field
  return attention


def optimizer_section(**fields) -> ml_collections.ConfigDict:
  """`config.optimizer` (optax, experiments/run/optim.py): AdamW with warm-up and cosine decay,
  b1 0.9, b2 0.98, clipping at global norm 1; an experiment passes only the fields it changes."""
  optimizer = ml_collections.ConfigDict()
  optimizer.name = "adamw"  # adamw | adam | sgd | adafactor
  optimizer.learning_rate = 3e-3  # peak
  optimizer.schedule = "warmup_cosine"  # constant | warmup_cosine | linear | rsqrt
  optimizer.warmup_steps = 100
  optimizer.warmup_epochs = 0.0  # > 0: replaces warmup_steps (converted once, at the start)
  optimizer.weight_decay = 1e-4  # decoupled (adamw, adafactor)
  optimizer.b1 = 0.9
  optimizer.b2 = 0.98
  optimizer.momentum = 0.9  # sgd only
  optimizer.grad_clip_norm = 1.0  # global-norm clipping; 0 disables
  optimizer.grad_accum_steps = 1  # >1: optax.MultiSteps, one update every k batches
  unknown = sorted(set(fields) - set(optimizer))
  if unknown:
    raise ValueError(f"optimizer_section: unknown field(s) {unknown}; valid: {sorted(optimizer)}")
  optimizer.update(fields)
  return optimizer


def long_range_model(
  name: str, width: int, heads: int, layers: int, mlp: int, max_len: int, **fields
) -> ml_collections.ConfigDict:
  """`config.model` of a Long Range Arena task, as LRA's released code builds it: an encoder of
  `layers` pre-norm blocks of `width` (embedding = attention width) with `heads` heads and an MLP
  of `mlp`, fixed sinusoidal positions, dropout 0.1, [CLS] pooling into a Dense(mlp) - ReLU -
  Dense(classes) head; `name` is the family (encoder_classifier | dual_encoder). `fields`
  override any of these (e.g. LRA Image's learned positions and heavier dropout)."""
  model = ml_collections.ConfigDict()
  model.name = name
  model.emb_dim = width
  model.num_heads = heads
  model.num_encoder_layers = layers
  model.num_decoder_layers = 0  # unused by the classifiers
  model.qkv_dim = width
  model.mlp_dim = mlp
  model.dropout_rate = 0.1  # LRA's model default
  model.attention_dropout_rate = 0.1  # LRA's model default
  model.max_len = max_len  # the task's max_length + the [CLS] position
  model.position = "sinusoidal"  # LRA: fixed sinusoidal (learn_pos_emb False)
  model.norm = "pre"  # LRA: pre-layer-norm blocks
  model.pooling = "cls"  # LRA: CLS
  model.classifier_dim = mlp  # LRA's head: Dense(mlp_dim) - ReLU - Dense(classes)
  model.dtype = "float32"  # compute dtype: float32 | bfloat16
  model.update(fields)
  model.attention = long_range_attention(model.max_len)  # scaled_dot
  return model


def long_range_optimizer(warmup_steps: int) -> ml_collections.ConfigDict:
  """LRA's optimizer: Adam(0.9, 0.98), decoupled weight decay 0.1, no clipping, and the schedule
  0.05 * min(1, step / warmup) / sqrt(max(step, warmup)): a peak of 0.05 / sqrt(warmup)."""
  return optimizer_section(
    learning_rate=0.05 / warmup_steps**0.5,
    schedule="rsqrt",  # linear warm-up, then lr * sqrt(warmup / step)
    warmup_steps=warmup_steps,
    weight_decay=0.1,
    grad_clip_norm=0.0,
  )


def loop_section(
  steps: int = 0, *, eval_every: int = 0, log_every: int = 100, checkpoint_every: int = 0
) -> ml_collections.ConfigDict:
  """`config.train`: steps (batches consumed) and the intervals of the periodic actions (eval
  also runs at the end), plus the fault-tolerance fields. An experiment giving its schedule in
  epochs leaves the steps at 0 and sets the `*_epochs` fields."""
  train = ml_collections.ConfigDict()
  train.num_steps = steps
  train.eval_every_steps = eval_every
  train.log_every_steps = log_every
  train.checkpoint_every_steps = checkpoint_every
  train.keep_checkpoints = 2  # the last K, plus the best by the task's main eval metric
  train.on_nonfinite = "stop"  # stop | skip (skip the update; stop after max_nonfinite in a row)
  train.max_nonfinite = 10
  train.label_smoothing = 0.0
  train.sync_every_steps = 0  # stop requests agreed across processes every K steps; 0: log interval
  train.profile_steps = (0, 0)  # (first step, count): a jax.profiler trace into workdir/profile
  # > 0: in epochs of the training split, replacing num_steps / eval_every_steps /
  # checkpoint_every_steps (converted once, with data.batch_size: experiments/run/epochs.py)
  train.num_epochs = 0.0
  train.eval_every_epochs = 0.0
  train.checkpoint_every_epochs = 0.0
  return train


def mesh_section(shape: tuple[int, int, int] = (-1, 1, 1)) -> ml_collections.ConfigDict:
  """`config.mesh`: axes (data, fsdp, tensor), -1 = the remaining devices; the batch is split
  over data x fsdp, parameters by their logical axis names."""
  mesh = ml_collections.ConfigDict()
  mesh.shape = shape
  mesh.logical_axis_rules = (
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
  )
  return mesh


# Hyperparameter search: an experiment file may define `get_search(arg)` returning
# `search(loguniform("optimizer.learning_rate", 1e-4, 3e-2), ..., trials=20, budget={...})`.
# Plain data: experiments/compare/search.py turns each parameter into an Optuna suggestion.


def loguniform(key: str, low: float, high: float) -> dict:
  """A float field sampled on a log scale in [low, high] (low > 0)."""
  return {"key": key, "kind": "float", "low": float(low), "high": float(high), "log": True}


def uniform(key: str, low: float, high: float, step: float | None = None) -> dict:
  """A float field in [low, high], on a grid of `step` if given."""
  out = {"key": key, "kind": "float", "low": float(low), "high": float(high), "log": False}
  return out | ({"step": float(step)} if step else {})


def integer(key: str, low: int, high: int, step: int = 1, log: bool = False) -> dict:
  """An int field in [low, high] (both included), every `step`, or on a log scale."""
  return {"key": key, "kind": "int", "low": int(low), "high": int(high), "step": int(step),
          "log": bool(log)}  # fmt: skip


def choice(key: str, values) -> dict:
  """One of `values` (numbers, strings, booleans)."""
  return {"key": key, "kind": "choice", "values": list(values)}


def search(
  *params: dict,
  trials: int = 20,
  budget: dict | None = None,
  metric: str | None = None,
  direction: str | None = None,
) -> dict:
  """A search space: the parameters, finished trials per study, and the per-trial budget
  (overrides every trial gets, e.g. `{"train.num_steps": 300}`). The objective is the validation
  value of `metric` (default: the task's main metric, e.g. eval/sequence_accuracy, eval/loss,
  eval/bleu) in its `direction` ("max" | "min"; default: the task's)."""
  return {"params": list(params), "trials": int(trials), "budget": dict(budget or {}),
          "metric": metric, "direction": direction}  # fmt: skip
