"""Config checks that run before anything compiles; each failure is one line saying what to change.

`ConfigError` is caught by main.py, which prints the message and exits with status 2.
"""

import json
import os
import shutil

import jax
import ml_collections

import input_pipeline
import models
from experiments.run import optim, sharding
from models import attention

DTYPES = ("float32", "bfloat16")
NONFINITE = ("stop", "skip")
MIN_FREE_BYTES = 64 * 2**20
# Fields that change parameter shapes or the data stream; a resumed run may not change them.
SHAPE_SECTIONS = ("model", "data")


class ConfigError(ValueError):
  pass


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _positive(config: ml_collections.ConfigDict, *paths: str) -> None:
  for path in paths:
    section, field = path.split(".")
    value = config[section][field]
    _require(isinstance(value, int | float) and value > 0, f"{path}={value!r} must be > 0")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Names, ranges and device layout — everything that needs no data."""
  for section in ("data", "model", "optimizer", "train", "mesh"):
    _require(section in config, f"config has no '{section}' section; start from configs/default.py")
  _require(
    config.data.name in input_pipeline.REGISTRY,
    f"unknown data.name {config.data.name!r}; valid: {', '.join(sorted(input_pipeline.REGISTRY))}",
  )
  _require(
    config.model.name in models.REGISTRY,
    f"unknown model.name {config.model.name!r}; valid: {', '.join(sorted(models.REGISTRY))}",
  )
  try:
    attention.build(config.model.attention)
  except ValueError as e:
    raise ConfigError(f"model.attention: {e}") from None
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
  _positive(
    config,
    "optimizer.learning_rate",
    "optimizer.grad_accum_steps",
    "train.num_steps",
    "train.eval_every_steps",
    "train.log_every_steps",
    "train.checkpoint_every_steps",
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


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writable, has space, and (if resuming) was made by a config of the same shapes."""
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
  path = os.path.join(workdir, "config.json")
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
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
  if jax.process_index() == 0:
    with open(path + ".tmp", "w") as f:
      json.dump(new, f, indent=2)
    os.replace(path + ".tmp", path)


def _flat(tree: dict, prefix: str) -> dict[str, str]:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}.{k}"
    out |= _flat(v, key) if isinstance(v, dict) else {key: json.dumps(v)}
  return out
