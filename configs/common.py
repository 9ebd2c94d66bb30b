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
