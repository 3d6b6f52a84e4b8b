"""Grouped matmul: rows sorted by group, each group times its own matrix.

    out[m] = lhs[m] @ rhs[group(m)],   group(m) from `group_sizes`

One front door, several backends. Rows past sum(group_sizes) are padding and
come out as zeros in every backend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import custom_batching

BACKENDS = ("ragged_dot", "einsum")


def group_ids(group_sizes: jax.Array, num_rows: int) -> jax.Array:
  """[num_rows] int32 group of each row; padding rows get len(group_sizes)."""
  ends = jnp.cumsum(group_sizes)
  return jnp.searchsorted(ends, jnp.arange(num_rows), side="right").astype(jnp.int32)


def _vmappable(fn):
  """`fn` with a vmap rule: XLA's ragged dots only batch when every operand
  carries the batch axis, so broadcast the unbatched ones (e.g. expert weights
  shared across groups)."""
  wrapped = custom_batching.custom_vmap(fn)

  @wrapped.def_vmap
  def _rule(axis_size, in_batched, *args):
    full = lambda a, b: a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)
    return jax.vmap(fn)(*[full(a, b) for a, b in zip(args, in_batched)]), True

  return wrapped


# tgmm: out[g] = lhs[rows of g]^T @ dy[rows of g]; the ragged dim is contracted.
_TGMM_DIMS = jax.lax.RaggedDotDimensionNumbers(
    dot_dimension_numbers=(((0,), (0,)), ((), ())), lhs_ragged_dimensions=[0],
    rhs_group_dimensions=[])
_ragged_gmm_op = _vmappable(
    lambda lhs, rhs, group_sizes: jax.lax.ragged_dot(lhs, rhs, group_sizes))
_ragged_tgmm_op = _vmappable(
    lambda lhs, dy, group_sizes: jax.lax.ragged_dot_general(lhs, dy, group_sizes, _TGMM_DIMS))


# custom_vmap is not differentiable, so differentiation goes through this
# custom VJP whose forward and backward are each vmappable.
@jax.custom_vjp
def _ragged_gmm(lhs, rhs, group_sizes):
  return _ragged_gmm_op(lhs, rhs, group_sizes)


def _ragged_gmm_fwd(lhs, rhs, group_sizes):
  return _ragged_gmm_op(lhs, rhs, group_sizes), (lhs, rhs, group_sizes)


def _ragged_gmm_bwd(residual, dy):
  lhs, rhs, group_sizes = residual
  d_lhs = _ragged_gmm_op(dy, jnp.swapaxes(rhs, 1, 2), group_sizes)
  d_rhs = _ragged_tgmm_op(lhs, dy, group_sizes).astype(rhs.dtype)
  return d_lhs.astype(lhs.dtype), d_rhs, None


_ragged_gmm.defvjp(_ragged_gmm_fwd, _ragged_gmm_bwd)


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
    return _ragged_gmm(lhs, rhs, group_sizes.astype(jnp.int32))
  if backend == "einsum":
    return _einsum_gmm(lhs, rhs, group_sizes)
  raise ValueError(f"gmm backend={backend!r} is invalid: valid values are "
                   + ", ".join(repr(b) for b in BACKENDS))
