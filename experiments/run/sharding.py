"""Device mesh and shardings: axes ('data', 'fsdp', 'tensor'), logical axis rules from config."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both; fsdp also splits parameters


def mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Fill the (at most one) -1 with the remaining devices; check the product."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh.shape={shape} needs {len(MESH_AXES)} entries for axes {MESH_AXES}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh.shape={shape} may contain at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if known <= 0 or num_devices % known:
      raise ValueError(f"mesh.shape={shape} does not divide the {num_devices} devices")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if int(np.prod(shape)) != num_devices:
    raise ValueError(
      f"mesh.shape={shape} has {int(np.prod(shape))} devices but {num_devices} are available; "
      "make the product match or use -1"
    )
  return shape


def make_mesh(shape: Sequence[int]) -> Mesh:
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)  # XLA propagates shardings (GSPMD)
  return jax.make_mesh(mesh_shape(shape, jax.device_count()), MESH_AXES, axis_types=auto)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def logical_shardings(abstract_tree, mesh: Mesh, rules) -> object:
  """Shardings for a tree whose leaves may be `nn.Partitioned` (logical axis names)."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, tuple(tuple(r) for r in rules))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-process numpy batch -> global jax.Arrays sharded along the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
  )
