"""The device mesh: axes `data`, `fsdp`, `expert`, `tensor`, from a config.

  data    pure data parallelism: batch split, params replicated.
  fsdp    batch split, and params split along their model dimension (gathered
          for use, ZeRO-3 style).
  expert  batch split for everything but the experts; the stacked expert
          weights are split along E, and tokens travel to their experts by
          all_to_all (moejax.dispatch.expert_parallel).
  tensor  attention heads and FFN hidden units split (Megatron style);
          the batch is replicated along it.

The batch is split over BATCH_AXES = (data, fsdp, expert): every device of a
tensor group holds a distinct slice of tokens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import jax
import numpy as np

from moejax.validation import fail

MESH_AXES = ("data", "fsdp", "expert", "tensor")
BATCH_AXES = ("data", "fsdp", "expert")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the mesh axes; their product is the device count.

  Attributes:
    data, fsdp, expert, tensor: axis sizes. At most one may be -1: it takes
      whatever the others leave (device_count / product of the others). The
      default (data=-1) is plain data parallelism over every device; on one
      device everything is 1 and nothing is sharded.
  """

  data: int = -1
  fsdp: int = 1
  expert: int = 1
  tensor: int = 1

  def __post_init__(self):
    for name in MESH_AXES:
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and value != -1):
        fail(f"mesh.{name}", value, "must be a positive integer, or -1 (fill)")
    fills = [name for name in MESH_AXES if getattr(self, name) == -1]
    if len(fills) > 1:
      fail(f"mesh.{fills[1]}", -1, f"only one axis may be -1 (mesh.{fills[0]} already is)")

  def shape(self, num_devices: int) -> dict:
    """{axis: size} for num_devices, with the -1 axis filled.

    Raises ValueError (one line) when the sizes do not multiply to num_devices.
    """
    sizes = {name: getattr(self, name) for name in MESH_AXES}
    fixed = math.prod(v for v in sizes.values() if v != -1)
    given = " x ".join(f"{k}={v}" for k, v in sizes.items())
    for name, value in sizes.items():
      if value == -1:
        if num_devices % fixed:
          fail(f"mesh.{name}", -1, f"cannot fill: the other axes ({given}) use {fixed} devices, "
               f"which does not divide the {num_devices} devices")
        sizes[name] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
      fail("mesh", given, f"axis sizes multiply to {math.prod(sizes.values())}, but there are "
           f"{num_devices} devices; make them multiply to {num_devices} (or set one axis to -1)")
    return sizes


def mesh_config_from_mapping(values) -> MeshConfig:
  from moejax.validation import from_mapping
  return from_mapping(MeshConfig, dict(values), "mesh.")


def make_mesh(config: MeshConfig,
              devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
  """A Mesh with axes MESH_AXES (Auto axis types: XLA's partitioner places
  what the shardings leave open). devices: default all devices, all hosts."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = config.shape(len(devices))
  shape = tuple(sizes[a] for a in MESH_AXES)
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if len(devices) == jax.device_count():
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def axis_size(mesh, axes) -> int:
  """Product of the sizes of `axes` (a name or a tuple) in `mesh` (concrete or
  abstract); axes the mesh lacks count as 1."""
  names = (axes,) if isinstance(axes, str) else tuple(axes)
  shape = dict(mesh.shape)
  return math.prod(shape.get(a, 1) for a in names)


def current_mesh():
  """The mesh set by `jax.set_mesh` (abstract), or None when there is none or
  it has a single device."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.axis_names or math.prod(dict(mesh.shape).values()) == 1:
    return None
  return mesh
