"""Where a result came from: the code (git commit, uncommitted changes), the libraries and the
devices; recorded in results.json and as TensorBoard hparams."""

import importlib.metadata
import os
import platform
import subprocess
from typing import Any

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow", "numpy", "clu")


def _git(*args: str) -> str | None:
  try:
    out = subprocess.run(
      ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
    )
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip()


def _version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def collect() -> dict[str, Any]:
  """{"git_commit", "git_dirty", "python", "versions": {library: version}, "device_kind",
  "device_count", "process_count", "backend"}; git fields are None outside a checkout."""
  status = _git("status", "--porcelain", "--untracked-files=no")
  devices = jax.devices()
  return {
    "git_commit": _git("rev-parse", "HEAD"),
    "git_dirty": None if status is None else bool(status),
    "python": platform.python_version(),
    "versions": {name: _version(name) for name in LIBRARIES},
    "device_kind": devices[0].device_kind,
    "device_count": len(devices),
    "process_count": jax.process_count(),
    "backend": jax.default_backend(),
  }


def hparams(config_dict: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
  """Flat scalar hparams for TensorBoard: every config field and the provenance record."""
  out: dict[str, Any] = {}

  def add(prefix: str, value: Any) -> None:
    if isinstance(value, dict):
      for k, v in value.items():
        add(f"{prefix}.{k}" if prefix else str(k), v)
    elif isinstance(value, bool | int | float | str):
      out[prefix] = value
    else:
      out[prefix] = str(value)

  add("", config_dict)
  add("provenance", record)
  return out
