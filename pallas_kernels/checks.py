"""Input checks run in Python before any kernel is traced: a bad call stops
with one line naming the argument, its value and what is valid."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.tiling import MIN_TILE, TileSizes, is_power_of_two

# Float dtypes the kernels compute in (accumulating in float32).
SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
# Mosaic's default scoped VMEM. The TPU kernels keep whole strips there (a
# weight column strip of every group, a row strip, the gather source).
TPU_VMEM_BYTES = 16 * 2**20


def _names(dtypes) -> str:
  return ", ".join(jnp.dtype(d).name for d in dtypes)


def check_float(name: str, a: jax.Array) -> None:
  if a.dtype not in [jnp.dtype(d) for d in SUPPORTED_DTYPES]:
    raise TypeError(f"{name}.dtype={a.dtype.name} is unsupported by the Pallas kernels: "
                    f"valid dtypes are {_names(SUPPORTED_DTYPES)}")


def check_rank(name: str, a: jax.Array, rank: int, layout: str) -> None:
  if a.ndim != rank:
    raise ValueError(f"{name}.shape={tuple(a.shape)} is invalid: expected {layout}")


def check_int(name: str, a: jax.Array) -> None:
  if not jnp.issubdtype(a.dtype, jnp.integer):
    raise TypeError(f"{name}.dtype={a.dtype.name} is invalid: expected an integer array")


def check_index(name: str, a: jax.Array, rank: int, layout: str) -> None:
  """An integer index array of the given rank."""
  check_int(name, a)
  check_rank(name, a, rank, layout)


def check_rows(name: str, a: jax.Array, layout: str) -> None:
  """A [rows, width] float matrix the kernels can compute in."""
  check_rank(name, a, 2, layout)
  check_float(name, a)


def check_same_dtype(names: str, *arrays: jax.Array) -> None:
  dtypes = {a.dtype.name for a in arrays}
  if len(dtypes) > 1:
    raise TypeError(f"{names} dtypes {sorted(dtypes)} differ: cast them to one dtype")


def _concrete(a) -> Optional[np.ndarray]:
  """a's values when known in Python (not a tracer), else None."""
  try:
    return np.asarray(a)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def check_group_sizes(group_sizes: jax.Array, num_groups: int, num_rows: int) -> None:
  """[G] int sizes; when known in Python, non-negative and summing to at
  most num_rows. (Under jit the values are unknown; the kernels clamp group
  ends to the row count, so rows past it are never read.)"""
  check_int("group_sizes", group_sizes)
  if group_sizes.shape != (num_groups,):
    raise ValueError(f"group_sizes.shape={tuple(group_sizes.shape)} is invalid: expected "
                     f"({num_groups},), one size per group of rhs")
  sizes = _concrete(group_sizes)
  if sizes is None:
    return
  if (sizes < 0).any():
    raise ValueError(f"group_sizes={sizes.tolist()} is invalid: sizes must be >= 0")
  if sizes.sum() > num_rows:
    raise ValueError(f"group_sizes sum to {int(sizes.sum())} but lhs has {num_rows} rows: "
                     "the sizes must sum to at most the row count")


def check_tpu_vmem(platform: str, what: str, elements: int, itemsize: int, tiles) -> None:
  """On TPU, refuses a call whose double-buffered blocks (`elements` values
  of `itemsize` bytes) would not fit VMEM."""
  need = 2 * elements * itemsize
  if platform == "tpu" and need > TPU_VMEM_BYTES:
    raise ValueError(f"{what} with {tiles} needs ~{need / 2**20:.0f} MiB of VMEM (limit "
                     f"{TPU_VMEM_BYTES / 2**20:.0f} MiB): use smaller tiles or the "
                     "'ragged_dot' backend for this shape")


def check_tiles(tiles: TileSizes) -> None:
  for field in ("block_m", "block_k", "block_n"):
    value = getattr(tiles, field)
    if value is not None and (not isinstance(value, int) or value < MIN_TILE
                              or not is_power_of_two(value)):
      raise ValueError(f"TileSizes.{field}={value!r} is invalid: must be a power of two "
                       f">= {MIN_TILE}")


def sizes_from_sorted_groups(row_groups: jax.Array, num_groups: int) -> jax.Array:
  """[G] int32 group sizes from [M] per-row group ids, which the kernels need
  sorted (non-decreasing). Ids >= num_groups mark padding rows and must come
  last. When the ids are known in Python an unsorted array is refused; sort
  rows by group first (moejax's dropless dispatch does)."""
  check_int("row_groups", row_groups)
  check_rank("row_groups", row_groups, 1, "[M] one group id per row")
  ids = _concrete(row_groups)
  if ids is not None:
    if (ids < 0).any():
      raise ValueError(f"row_groups has a negative id ({int(ids.min())}): ids must be >= 0")
    drops = np.flatnonzero(np.diff(ids) < 0)
    if drops.size:
      r = int(drops[0]) + 1
      raise ValueError(f"row_groups is not sorted: row {r} has group {int(ids[r])} after group "
                       f"{int(ids[r - 1])}; the grouped-matmul kernels need rows sorted by "
                       "group (sort them, e.g. with jnp.argsort(row_groups, stable=True))")
  return jnp.bincount(row_groups, length=num_groups + 1)[:num_groups].astype(jnp.int32)
