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
