"""Grouped matmul: rows sorted by group, each group times its own matrix.

    out[m] = lhs[m] @ rhs[group(m)],   group(m) from `group_sizes`

One front door, several backends. Rows past sum(group_sizes) are padding and
come out as zeros in every backend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BACKENDS = ("ragged_dot", "einsum")


def group_ids(group_sizes: jax.Array, num_rows: int) -> jax.Array:
  """[num_rows] int32 group of each row; padding rows get len(group_sizes)."""
  ends = jnp.cumsum(group_sizes)
  return jnp.searchsorted(ends, jnp.arange(num_rows), side="right").astype(jnp.int32)


def _einsum_gmm(lhs, rhs, group_sizes):
  # Every row against every group's matrix, then keep its own: G times the
  # FLOPs of the real work. A readable reference, not a fast path.
  onehot = jax.nn.one_hot(group_ids(group_sizes, lhs.shape[0]), rhs.shape[0], dtype=lhs.dtype)
  return jnp.einsum("mk,gkn,mg->mn", lhs, rhs, onehot)


def gmm(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array,
        backend: str = "ragged_dot") -> jax.Array:
  """Grouped matmul.

  Args:
    lhs: [M, K] rows sorted by group.
    rhs: [G, K, N] one matrix per group.
    group_sizes: [G] int32 rows per group, summing to at most M.
    backend: 'ragged_dot' (jax.lax.ragged_dot) or 'einsum' (masked dense
      reference).
  Returns:
    [M, N] in lhs's dtype.
  """
  if backend == "ragged_dot":
    return jax.lax.ragged_dot(lhs, rhs, group_sizes.astype(jnp.int32))
  if backend == "einsum":
    return _einsum_gmm(lhs, rhs, group_sizes)
  raise ValueError(f"gmm backend={backend!r} is invalid: valid values are "
                   + ", ".join(repr(b) for b in BACKENDS))
