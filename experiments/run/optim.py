"""optax optimizer and learning-rate schedule from `config.optimizer`."""

import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("constant", "warmup_cosine", "linear", "rsqrt")
OPTIMIZERS = ("adamw", "adam", "sgd", "adafactor")


def schedule(config: ml_collections.ConfigDict, num_updates: int) -> optax.Schedule:
  """Learning rate per optimizer update; every schedule but `constant` warms up linearly."""
  lr, warmup = config.learning_rate, max(config.warmup_steps, 1)
  decay_steps = max(num_updates, warmup + 1)
  match config.schedule:
    case "constant":
      return optax.constant_schedule(lr)
    case "warmup_cosine":
      return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, decay_steps)
    case "linear":
      return optax.join_schedules(
        [
          optax.linear_schedule(0.0, lr, warmup),
          optax.linear_schedule(lr, 0.0, decay_steps - warmup),
        ],
        [warmup],
      )
    case "rsqrt":  # Vaswani et al.: linear warm-up, then lr * sqrt(warmup / step)
      return lambda step: (
        lr * jnp.minimum((step + 1.0) / warmup, jnp.sqrt(warmup / jnp.maximum(step + 1.0, 1.0)))
      )
  raise ValueError(f"unknown schedule {config.schedule!r}; valid: {', '.join(SCHEDULES)}")


def create(config: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """Clipping -> optimizer (with its schedule) -> optional gradient accumulation."""
  k = config.grad_accum_steps
  lr = schedule(config, num_steps // k)
  match config.name:
    case "adamw":
      opt = optax.adamw(lr, config.b1, config.b2, weight_decay=config.weight_decay)
    case "adam":
      opt = optax.adam(lr, config.b1, config.b2)
    case "sgd":
      opt = optax.sgd(lr, momentum=config.momentum or None)
    case "adafactor":
      opt = optax.adafactor(lr, weight_decay_rate=config.weight_decay or None)
    case _:
      raise ValueError(f"unknown optimizer {config.name!r}; valid: {', '.join(OPTIMIZERS)}")
  if config.grad_clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
  return optax.MultiSteps(opt, k) if k > 1 else opt
