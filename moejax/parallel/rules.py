"""Logical axis names for parameters, and the rules that map them to mesh axes.

A parameter gets logical names (one per dimension) from the first pattern of
PARAM_LOGICAL_AXES that matches the end of its path ('block_0/moe/experts/
w_in'); LOGICAL_RULES then say which mesh axis splits each logical axis. The
same paths appear inside the optimizer state (Adam's mu/nu mirror params), so
one function places a whole train state. A dimension the mesh axis does not
divide stays whole (replicated), except the expert axis, which must divide
(moejax.parallel.checks says so before anything is compiled).
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Sequence, Tuple

import jax
from jax.sharding import NamedSharding, PartitionSpec

from moejax.parallel.mesh import BATCH_AXES, axis_size

# (path suffix regex, logical axis per dimension). First match wins.
PARAM_LOGICAL_AXES: Tuple[Tuple[str, Tuple[Optional[str], ...]], ...] = (
    # Quantized experts: integer values and their [E, K / group, N] scales.
    (r"experts/(w_in|w_gate)(_q|_scale)?$", ("expert", "embed", "mlp")),
    (r"experts/w_out(_q|_scale)?$", ("expert", "mlp", "embed")),
    (r"experts/b_(in|gate)$", ("expert", "mlp")),
    (r"experts/b_out$", ("expert", "embed")),
    (r"attention/(query|key|value)/kernel$", ("embed", "heads", None)),
    (r"attention/out/kernel$", ("heads", None, "embed")),
    # SwitchHead experts (models/switchhead.py): [heads, experts, in, out].
    (r"attention/value/kernel$", ("heads", "expert", "embed", None)),
    (r"attention/out/kernel$", ("heads", "expert", None, "embed")),
    (r"(w_in|w_gate)/kernel$", ("embed", "mlp")),
    (r"(w_in|w_gate)/bias$", ("mlp",)),
    (r"w_out/kernel$", ("mlp", "embed")),
    (r"embed/embedding$", ("vocab", "embed")),
    (r"unembed/kernel$", ("embed", "vocab")),
)

# Logical axis -> mesh axis (or axes). Unlisted logical axes are replicated.
LOGICAL_RULES: Dict[str, Tuple[str, ...]] = {
    "batch": BATCH_AXES,
    "expert": ("expert",),
    "embed": ("fsdp",),
    "mlp": ("tensor",),
    "heads": ("tensor",),
    "vocab": ("tensor",),
}


def path_string(path) -> str:
  """'a/b/c' from a jax key path (dict keys, attributes, sequence indices)."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return "/".join(parts)


def logical_axes(path: str, ndim: int) -> Tuple[Optional[str], ...]:
  """Logical names of a parameter's dimensions (None = no name)."""
  for pattern, names in PARAM_LOGICAL_AXES:
    if len(names) == ndim and re.search(pattern, path):
      return names
  return (None,) * ndim


def logical_to_spec(names: Sequence[Optional[str]], shape: Sequence[int], mesh,
                    rules: Dict[str, Tuple[str, ...]] = LOGICAL_RULES) -> PartitionSpec:
  """PartitionSpec for a value with these logical names and shape.

  A dimension is split only if the mesh axes it maps to have size > 1 and
  divide it; each mesh axis is used at most once per value.
  """
  used, spec = set(), []
  for name, size in zip(names, shape):
    axes = tuple(a for a in rules.get(name, ()) if a not in used and axis_size(mesh, a) > 1)
    if axes and size % axis_size(mesh, axes) == 0:
      used.update(axes)
      spec.append(axes[0] if len(axes) == 1 else axes)
    else:
      spec.append(None)
  return PartitionSpec(*spec)


def tree_shardings(tree, mesh):
  """NamedSharding for every array leaf of `tree` (params, optimizer state or
  a whole train state; concrete or jax.eval_shape'd), by its path."""
  def place(path, leaf):
    shape = getattr(leaf, "shape", ())
    names = logical_axes(path_string(path), len(shape))
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh))
  return jax.tree_util.tree_map_with_path(place, tree)


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) dimension split over BATCH_AXES; the rest replicated."""
  axes = tuple(a for a in BATCH_AXES if axis_size(mesh, a) > 1)
  return NamedSharding(mesh, PartitionSpec(axes or None))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
