"""The experiment file and its command-line overrides, read before TensorFlow or JAX is imported.

    config = config_file.load("configs/default.py:steps=500", ["--config.model.num_heads=8"])

* `--config.a.b=v` sets an existing field, parsed by the field's type (bool, int, float, str,
  tuple; a field declared `None`, such as a path, takes a Python literal or else the string).
* `--config.model.attention.<field>=v` may set any field of the chosen attention type (its flax
  dataclass field, typed by its annotation) whether or not the experiment file declares it; a
  field that type lacks is an error listing the fields it has.
* A misspelled field is an error suggesting the closest existing one.

Every failure is a `ConfigError`: one line, which main.py prints before exiting with status 2.
"""

import ast
import difflib
import importlib.util
import os
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

import ml_collections

ATTENTION = "model.attention"  # the section whose fields come from the chosen attention type
PREFIX = "--config."


class ConfigError(ValueError):
  pass


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """-> (argv without the `--config.a.b[=v]` overrides, the overrides in order)."""
  rest, overrides = [], []
  for arg in argv:
    bare = arg.lstrip("-")
    if arg.startswith("-") and (bare.startswith("config.") or bare.startswith("noconfig.")):
      overrides.append(arg)
    else:
      rest.append(arg)
  return rest, overrides


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, str | bool]]:
  """`--config.a.b=v` -> ("a.b", "v"); `--config.flag` -> ("flag", True); `--noconfig.flag` ->
  ("flag", False)."""
  out = []
  for arg in overrides:
    bare = arg.lstrip("-")
    key, sep, text = bare.partition("=")
    negated = key.startswith("no")
    key = key.removeprefix("no").removeprefix("config.")
    if negated and sep:
      raise ConfigError(f"{arg}: --no{PREFIX[2:]}{key} takes no value")
    out.append((key, (not negated) if not sep else text))
  return out


def load(experiment: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`configs/x.py[:arg]` + `--config.a.b=v` arguments -> the config (locked, like absl's)."""
  config = load_file(experiment)
  apply(config, parse_overrides(overrides))
  config.lock()
  return config


def load_file(experiment: str) -> ml_collections.ConfigDict:
  path, sep, arg = experiment.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--config={experiment}: no such file {path!r}")
  spec = importlib.util.spec_from_file_location("experiment_file", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"{path}:{e.lineno}: {e.msg}; fix the experiment file") from None
  except Exception as e:  # noqa: BLE001 - whatever the file raises, one line
    raise ConfigError(f"{path} fails to load: {type(e).__name__}: {e}") from None
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} defines no get_config(arg); see configs/default.py")
  try:
    config = module.get_config(arg) if sep else module.get_config()
  except (ValueError, TypeError, KeyError) as e:
    raise ConfigError(f"{experiment}: {e}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config returned {type(config).__name__}, not a ConfigDict")
  return config


def apply(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, Any]]) -> None:
  """Sets `(dotted key, text or value)` pairs in place; strings are parsed by the field's type.

  Fields of `model.attention` that the experiment file does not declare are set after the
  others, once the attention type (its `name`, possibly overridden too) is known.
  """
  deferred = []
  for key, value in overrides:
    parent, leaf = key.rpartition(".")[::2]
    node = _section(config, parent, key)
    if isinstance(node, ml_collections.ConfigDict) and leaf in node:
      _set(node, leaf, key, value, _current_type(node, leaf))
    elif parent == ATTENTION and isinstance(node, ml_collections.ConfigDict):
      deferred.append((key, leaf, value))
    else:
      raise ConfigError(f"--config.{key}: no such field{_suggest(config, key)}")
  for key, leaf, value in deferred:
    node = config.model.attention
    fields = attention_fields(node.get("name"))
    if leaf not in fields:
      raise ConfigError(_not_a_field(node.get("name"), leaf, fields, key))
    with node.unlocked():
      _set(node, leaf, key, value, fields[leaf][0], new=True)


def attention_fields(name: Any) -> dict[str, tuple[Any, Any]]:
  """The own fields of attention type `name`: {field: (annotation, default)} (imports models)."""
  import dataclasses

  from models import attention

  try:
    cls = attention.get(name)
  except ValueError as e:
    raise ConfigError(f"{ATTENTION}.name: {e}") from None
  own = attention.own_fields(name)
  return {f.name: (f.type, f.default) for f in dataclasses.fields(cls) if f.name in own}


def _not_a_field(name: str, leaf: str, fields: dict, key: str) -> str:
  from models import attention

  close = difflib.get_close_matches(leaf, fields, n=1)
  hint = f" (did you mean {close[0]!r}?)" if close else ""
  owners = sorted(n for n in attention.REGISTRY if leaf in attention.own_fields(n))
  elsewhere = f"; {leaf!r} belongs to {', '.join(owners)}" if owners else ""
  return (
    f"--config.{key}: attention {name!r} has no field {leaf!r}{hint}{elsewhere}; "
    f"its fields: {', '.join(sorted(fields)) or 'none'}"
  )


def _section(config: ml_collections.ConfigDict, parent: str, key: str) -> Any:
  node = config
  for part in filter(None, parent.split(".")):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(f"--config.{key}: no such field{_suggest(config, key)}")
    node = node[part]
  return node


def leaf_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  out = []
  for k, v in config.items():
    path = f"{prefix}{k}"
    out += leaf_paths(v, path + ".") if isinstance(v, ml_collections.ConfigDict) else [path]
  return out


def _suggest(config: ml_collections.ConfigDict, key: str) -> str:
  candidates = leaf_paths(config)
  try:
    from models import attention

    candidates += [f"{ATTENTION}.{f}" for n in attention.REGISTRY for f in attention.own_fields(n)]
  except ImportError:  # pragma: no cover - models always importable in this project
    pass
  close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.7)
  if close:
    return f" (did you mean {close[0]}?)"
  parent = key.rpartition(".")[0]
  siblings = sorted(c.rpartition(".")[2] for c in candidates if c.rpartition(".")[0] == parent)
  return f"; {parent or 'config'} has: {', '.join(sorted(set(siblings)))}" if siblings else ""


def _current_type(node: ml_collections.ConfigDict, leaf: str) -> Any:
  value = node[leaf]
  if value is None:
    return None
  if isinstance(value, ml_collections.ConfigDict):
    return ml_collections.ConfigDict
  return type(value)


def _set(
  node: ml_collections.ConfigDict, leaf: str, key: str, value: Any, kind: Any, new: bool = False
) -> None:
  if isinstance(value, str | bool):
    value = parse_value(value, kind, key)
  try:
    if new:
      node[leaf] = value
    else:
      with node.ignore_type() if kind is None else _nothing():
        node[leaf] = value
  except (TypeError, ValueError, KeyError) as e:
    raise ConfigError(f"--config.{key}={value!r}: {e}".splitlines()[0]) from None


class _nothing:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def allowed_types(annotation: Any) -> tuple[type, ...]:
  """`int | None` -> (int, NoneType); a string annotation is read by its names."""
  if isinstance(annotation, str):
    names = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None)}
    return tuple(names[p.strip()] for p in annotation.split("|") if p.strip() in names)
  if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
    return tuple(t for a in typing.get_args(annotation) for t in allowed_types(a))
  if annotation is None:
    return (type(None),)
  return (annotation,) if isinstance(annotation, type) else ()


TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_value(text: str | bool, kind: Any, key: str) -> Any:
  """The command-line `text` for a field of type `kind` (a type, an annotation, or None for a
  field declared `None`)."""
  kinds = allowed_types(kind) if kind is not None else ()
  if isinstance(text, bool):
    if kind is None or bool in kinds:
      return text
    raise ConfigError(f"--config.{key} needs a value (--config.{key}=VALUE)")
  lowered = text.strip().lower()
  if type(None) in kinds and lowered == "none":
    return None
  if bool in kinds:
    if lowered in TRUE or lowered in FALSE:
      return lowered in TRUE
    raise ConfigError(f"--config.{key}={text!r}: expects true or false")
  if int in kinds and float not in kinds:
    try:
      return int(text)
    except ValueError:
      raise ConfigError(f"--config.{key}={text!r}: expects an integer") from None
  if float in kinds:
    try:
      return float(text)
    except ValueError:
      raise ConfigError(f"--config.{key}={text!r}: expects a number") from None
  if str in kinds:
    return text
  if tuple in kinds or list in kinds:
    value = _literal(text)
    if not isinstance(value, tuple | list):
      value = tuple(_literal(v.strip()) for v in text.split(",") if v.strip())
    return tuple(value) if tuple in kinds else list(value)
  if kind is ml_collections.ConfigDict:
    raise ConfigError(f"--config.{key} is a section; set its fields (--config.{key}.FIELD=v)")
  return _literal(text)  # a field declared None (e.g. a path): a literal, else the string


def _literal(text: str) -> Any:
  if text.strip().lower() == "none":
    return None
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError, MemoryError, RecursionError):
    return text


def fail(error: BaseException, code: int = 2) -> typing.NoReturn:
  """One line on stderr and the exit status main.py documents for bad input."""
  print(f"error: {error}", file=sys.stderr, flush=True)
  sys.exit(code)
