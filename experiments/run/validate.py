"""Config checks that run before anything compiles; each failure is one line saying what to change.

`check_fields` needs neither the data nor the devices (main.py runs it before TensorFlow is
imported and before JAX starts); `check_config` adds the task's and the devices' rules.
`ConfigError` is caught by main.py, which prints the message and exits with status 2.
"""

import json
import os
import shutil
from typing import Any

import jax
import ml_collections
from absl import logging

import models
from experiments.run import epochs, optim, sharding
from experiments.run.config_file import ATTENTION, ConfigError, allowed_types, attention_fields
from models import attention

DTYPES = ("float32", "bfloat16")
NONFINITE = ("stop", "skip")
MIN_FREE_BYTES = 64 * 2**20
# Fields that change parameter shapes or the data stream; a resumed run may not change them.
SHAPE_SECTIONS = ("model", "data")
# ... except where the data are read from (a copied dataset is the same data).
PATH_SUFFIXES = ("_dir", "_path", "_paths")


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _positive(config: ml_collections.ConfigDict, *paths: str) -> None:
  for path in paths:
    section, field = path.split(".")
    value = config[section][field]
    _require(isinstance(value, int | float) and value > 0, f"{path}={value!r} must be > 0")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Names, ranges, the task's own rules and the device layout — everything before the data."""
  import input_pipeline  # TensorFlow: after check_fields, which main.py runs without it

  for message in check_fields(config):
    logging.warning("%s", message)
  try:
    input_pipeline.get(config.data.name)
  except ValueError as e:
    raise ConfigError(f"data.name: {e}") from None
  try:
    input_pipeline.check(config.data)
  except ValueError as e:
    raise ConfigError(str(e) if str(e).startswith("data.") else f"data: {e}") from None
  check_devices(config)


def check_fields(config: ml_collections.ConfigDict) -> list[str]:
  """Names, types, ranges and cross-field rules that need neither data nor devices; returns
  warnings (settings that do nothing)."""
  for section in ("data", "model", "optimizer", "train", "mesh"):
    _require(section in config, f"config has no '{section}' section; start from configs/default.py")
  try:
    models.get(config.model.name)
  except ValueError as e:
    raise ConfigError(f"model.name: {e}") from None
  try:
    attention.build(config.model.attention)
  except ValueError as e:
    raise ConfigError(f"model.attention: {e}") from None
  _check_model_fields(config.model)
  warnings = _check_attention_fields(config.model)
  _require(
    config.optimizer.name in optim.OPTIMIZERS,
    f"unknown optimizer.name {config.optimizer.name!r}; valid: {', '.join(optim.OPTIMIZERS)}",
  )
  _require(
    config.optimizer.schedule in optim.SCHEDULES,
    f"unknown optimizer.schedule {config.optimizer.schedule!r}; "
    f"valid: {', '.join(optim.SCHEDULES)}",
  )
  _require(
    config.model.get("dtype", "float32") in DTYPES,
    f"model.dtype={config.model.get('dtype')!r}; valid: {', '.join(DTYPES)}",
  )
  _require(
    config.train.on_nonfinite in NONFINITE,
    f"train.on_nonfinite={config.train.on_nonfinite!r}; valid: {', '.join(NONFINITE)}",
  )
  for section, epochs_field, _ in epochs.FIELDS:
    value = config[section].get(epochs_field) or 0
    _require(value >= 0, f"{section}.{epochs_field}={value} must be >= 0 (0: use the steps field)")
  in_epochs = {steps for section, epochs_field, steps in epochs.FIELDS
               if (config[section].get(epochs_field) or 0) > 0}  # fmt: skip
  _positive(
    config,
    "optimizer.learning_rate",
    "optimizer.grad_accum_steps",
    *(
      f"train.{f}"
      for f in ("num_steps", "eval_every_steps", "checkpoint_every_steps")
      if f not in in_epochs
    ),  # fmt: skip
    "train.log_every_steps",
    "train.keep_checkpoints",
    "data.batch_size",
  )
  _require(config.optimizer.warmup_steps >= 0, "optimizer.warmup_steps must be >= 0")
  _require(
    config.train.get("sync_every_steps", 0) >= 0,
    f"train.sync_every_steps={config.train.get('sync_every_steps')} must be >= 0 "
    "(0: the log interval)",
  )
  profile = tuple(config.train.get("profile_steps", (0, 0)))
  _require(
    len(profile) == 2 and all(isinstance(v, int) and v >= 0 for v in profile),
    f"train.profile_steps={profile}; give START,COUNT (two integers >= 0; COUNT 0: no profile)",
  )
  return warnings


def check_devices(config: ml_collections.ConfigDict) -> None:
  """The mesh fits the devices and the batch splits over them (starts JAX's backends)."""
  try:
    shape = sharding.mesh_shape(config.mesh.shape, jax.device_count())
  except ValueError as e:
    raise ConfigError(str(e)) from None
  batch_devices = shape[0] * shape[1]
  _require(
    config.data.batch_size % batch_devices == 0,
    f"data.batch_size={config.data.batch_size} must be divisible by the data x fsdp mesh size "
    f"{batch_devices}",
  )
  _require(
    config.data.batch_size % jax.process_count() == 0,
    f"data.batch_size={config.data.batch_size} must be divisible by the "
    f"{jax.process_count()} processes",
  )


def check_config_for_task(config: ml_collections.ConfigDict, info) -> None:
  """Checks that need the task (lengths, kinds): the model family decides what fits."""
  try:
    models.check(config.model, info)
  except ValueError as e:
    raise ConfigError(f"model: {e}") from None
  _require(
    not config.data.get("pack", False) or models.supports_packing(config.model),
    f"data.pack=True needs a Transformer family and an attention type that takes dense masks "
    f"(model {config.model.name!r}, attention {config.model.attention.name!r}); "
    "set --config.data.pack=False",
  )
  beam = config.get("decode", {}).get("beam_size", 1)
  _require(beam >= 1, f"decode.beam_size={beam} must be >= 1")


# Ranges of `config.model` fields, where the chosen family has them.
MODEL_POSITIVE = ("emb_dim", "num_heads", "qkv_dim", "mlp_dim", "max_len", "num_layers")
MODEL_NONNEGATIVE = ("num_encoder_layers", "num_decoder_layers", "hidden_dim", "classifier_dim")
MODEL_RATES = ("dropout_rate", "attention_dropout_rate")  # probabilities in [0, 1)
# Ranges of attention type fields by name (a name means the same thing in every type).
ATTENTION_POSITIVE = (
  "window", "block_size", "bucket_size", "chunk_size", "key_chunk_size", "query_chunk_size",
  "kernel_size", "num_filters", "num_features", "k", "max_length", "stride", "sinkhorn_iters",
  "num_hashes", "num_window_blocks", "top_k", "num_kv_heads", "hidden_size",
)  # fmt: skip
ATTENTION_NONNEGATIVE = ("num_global_blocks", "num_random_blocks", "global_tokens", "num_summary")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _check_model_fields(model: ml_collections.ConfigDict) -> None:
  for field in MODEL_POSITIVE + MODEL_NONNEGATIVE:
    if field in model:
      value, low = model[field], 1 if field in MODEL_POSITIVE else 0
      _require(
        _is_int(value) and value >= low, f"model.{field}={value!r} must be an integer >= {low}"
      )
  for field in MODEL_RATES:
    value = model.get(field, 0.0)
    _require(
      isinstance(value, int | float) and 0 <= value < 1,
      f"model.{field}={value!r} must be a probability in [0, 1)",
    )


def _check_attention_fields(model: ml_collections.ConfigDict) -> list[str]:
  """Types and ranges of the chosen attention type's fields; warns where a sparse pattern covers
  the whole sequence (it then computes dense attention at a sparse type's cost)."""
  name = model.attention.name
  fields = attention_fields(name)
  values = {f: model.attention.get(f, default) for f, (_, default) in fields.items()}
  for field, value in values.items():
    where = f"{ATTENTION}.{field}={value!r}"
    kinds = allowed_types(fields[field][0])
    ok = any(
      (k is float and isinstance(value, int | float) and not isinstance(value, bool))
      or (k is int and _is_int(value))
      or (k not in (int, float) and isinstance(value, k))
      for k in kinds
    )
    names = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
    _require(ok or not kinds, f"{where}: attention {name!r} expects {names}")
    if value is None:
      continue
    if field in ATTENTION_POSITIVE:
      _require(value >= 1, f"{where} must be >= 1 (attention {name!r})")
    if field in ATTENTION_NONNEGATIVE:
      _require(value >= 0, f"{where} must be >= 0 (attention {name!r})")
    if field == "temperature":
      _require(value > 0, f"{where} must be > 0 (it divides the scores)")
  if values.get("num_kv_heads") is not None and "num_heads" in model:
    from models.attention import scaled_dot

    try:
      scaled_dot.check_kv_heads(model.num_heads, values["num_kv_heads"])
    except ValueError as e:
      raise ConfigError(f"{ATTENTION}.num_kv_heads: {e} (model.num_heads)") from None
  warnings = []
  covering = attention.get(name).covers_sequence_field
  max_len = model.get("max_len")
  if covering and _is_int(max_len) and values[covering] >= max_len:
    warnings.append(
      f"{ATTENTION}.{covering}={values[covering]} covers the whole sequence (model.max_len="
      f"{max_len}): {name!r} computes dense attention; lower it to compare a sparse pattern"
    )
  return warnings


def ignored_fields(config: ml_collections.ConfigDict, keys: list[str]) -> list[str]:
  """Warnings for the `model.*` keys of `keys` (e.g. command-line overrides) that the chosen
  family does not read."""
  import dataclasses

  try:
    cls = models.get(config.model.name)
  except ValueError:
    return []
  read = {f.name for f in dataclasses.fields(cls.config_class)} | {"name"}
  out = []
  for key in keys:
    section, _, field = key.partition(".")
    field = field.split(".")[0]
    if section == "model" and field and field not in read:
      out.append(f"model.{field} is not read by model {config.model.name!r}: it has no effect")
  return out


# What a run writes into its workdir (`--restart` moves these to workdir/previous.N/).
RUN_FILES = ("checkpoints", "metrics.jsonl", "results.json", "config.json", "profile")


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict, restart: bool = False) -> None:
  """Writable, has space, and (if resuming) was made by a config of the same shapes and still
  has its checkpoints; `restart` first moves the run's files to `workdir/previous.N/`."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe.{jax.process_index()}.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(
      f"workdir {workdir!r} is not writable ({e.strerror}); pick another --workdir"
    ) from None
  free = shutil.disk_usage(workdir).free
  _require(
    free >= MIN_FREE_BYTES,
    f"workdir {workdir!r} has only {free // 2**20} MiB free; free space or pick another --workdir",
  )
  if restart and jax.process_index() == 0:
    _set_aside_run(workdir)
  _require(
    restart
    or not os.path.exists(os.path.join(workdir, "metrics.jsonl"))
    or os.path.isdir(os.path.join(workdir, "checkpoints")),
    f"workdir {workdir!r} has metrics.jsonl but no checkpoints/ (removed?): restore them to "
    "resume, or add --restart to train from step 0 (the old files move to previous.N/)",
  )
  path = os.path.join(workdir, "config.json")
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, ValueError) as e:
      raise ConfigError(
        f"{path} is unreadable ({e}); restore it, or delete it to resume with this command's config"
      ) from None
    changed = sorted(
      key
      for section in SHAPE_SECTIONS
      for key in _flat(old.get(section, {}), section).items() ^ _flat(new[section], section).items()
    )
    keys = sorted({k for k, _ in changed})
    _require(
      not keys,
      f"workdir {workdir!r} holds a run whose config differs in {', '.join(keys)}; "
      "use a new --workdir for a fresh start",
    )


def _set_aside_run(workdir: str) -> None:
  names = [n for n in os.listdir(workdir) if n in RUN_FILES or n.startswith("events.out.")]
  if not names:
    return
  n = 1
  while os.path.exists(os.path.join(workdir, f"previous.{n}")):
    n += 1
  target = os.path.join(workdir, f"previous.{n}")
  os.makedirs(target)
  for name in names:
    os.replace(os.path.join(workdir, name), os.path.join(target, name))
  logging.warning("--restart: the earlier run's files moved to %s", target)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """`workdir/config.json`, once a run has started (a failed start leaves none to refuse the
  corrected command)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    with open(path + ".tmp", "w") as f:
      json.dump(json.loads(config.to_json_best_effort()), f, indent=2)
    os.replace(path + ".tmp", path)


def _flat(tree: dict, prefix: str) -> dict[str, str]:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}.{k}"
    if isinstance(v, dict):
      out |= _flat(v, key)
    elif not k.endswith(PATH_SUFFIXES):
      out[key] = json.dumps(v)
  return out
