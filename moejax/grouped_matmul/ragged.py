"""Grouped matmul through XLA's `jax.lax.ragged_dot`, differentiable under vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import custom_batching


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
def ragged_gmm(lhs, rhs, group_sizes):
  """lhs: [M, K] sorted by group; rhs: [G, K, N]; group_sizes: [G] int32."""
  return _ragged_gmm_op(lhs, rhs, group_sizes)


def _fwd(lhs, rhs, group_sizes):
  return _ragged_gmm_op(lhs, rhs, group_sizes), (lhs, rhs, group_sizes)


def _bwd(residual, dy):
  lhs, rhs, group_sizes = residual
  d_lhs = _ragged_gmm_op(dy, jnp.swapaxes(rhs, 1, 2), group_sizes)
  d_rhs = _ragged_tgmm_op(lhs, dy, group_sizes).astype(rhs.dtype)
  return d_lhs.astype(lhs.dtype), d_rhs, None


ragged_gmm.defvjp(_fwd, _bwd)
