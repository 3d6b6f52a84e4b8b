"""Grouped matmul through a ragged-dot primitive, differentiable under vmap.

Two implementations share this wrapper: XLA's `jax.lax.ragged_dot_general`
('ragged_dot') and tokamax's `ragged_dot_general` ('tokamax': Google's Pallas
kernel library, Triton / Mosaic kernels on GPU and TPU with its own
autotuning, XLA elsewhere). tokamax picks its kernel from the default device
when the call is traced, so the same code runs its GPU kernel on a GPU and
XLA's ragged dot on CPU.

Both batch only when every operand carries the batch axis, and JAX's
custom_vmap is not differentiable; so each grouped matmul is a custom VJP whose
forward and backward ragged dots each carry a vmap rule (broadcasting
unbatched operands, e.g. expert weights shared across routing groups).
"""

from __future__ import annotations

import functools
import importlib.util

import jax
import jax.numpy as jnp
from jax import custom_batching

# out[m] = lhs[m] @ rhs[group(m)]
_GMM_DIMS = jax.lax.RaggedDotDimensionNumbers(
    dot_dimension_numbers=(((1,), (1,)), ((), ())), lhs_ragged_dimensions=[0],
    rhs_group_dimensions=[0])
# d_lhs[m] = dy[m] @ rhs[group(m)]ᵀ, without materialising the transpose
_GMM_TRANS_RHS_DIMS = jax.lax.RaggedDotDimensionNumbers(
    dot_dimension_numbers=(((1,), (2,)), ((), ())), lhs_ragged_dimensions=[0],
    rhs_group_dimensions=[0])
# tgmm: out[g] = lhs[rows of g]ᵀ @ dy[rows of g]; the ragged dim is contracted.
_TGMM_DIMS = jax.lax.RaggedDotDimensionNumbers(
    dot_dimension_numbers=(((0,), (0,)), ((), ())), lhs_ragged_dimensions=[0],
    rhs_group_dimensions=[])


def _vmappable(fn):
  """`fn` with a vmap rule that broadcasts the unbatched operands."""
  wrapped = custom_batching.custom_vmap(fn)

  @wrapped.def_vmap
  def _rule(axis_size, in_batched, *args):
    full = lambda a, b: a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)
    return jax.vmap(fn)(*[full(a, b) for a, b in zip(args, in_batched)]), True

  return wrapped


def _ragged_gmm_fn(dot_general, transpose_in_dims: bool):
  """A custom-VJP grouped matmul (lhs [M, K], rhs [G, K, N], group_sizes [G]
  -> [M, N]) over `dot_general` (ragged_dot_general's signature).
  transpose_in_dims: d_lhs contracts rhs's last dim in place (tokamax has a
  kernel for it) rather than on a swapped copy."""
  gmm_op = _vmappable(lambda lhs, rhs, gs: dot_general(lhs, rhs, gs, _GMM_DIMS))
  tgmm_op = _vmappable(lambda lhs, dy, gs: dot_general(lhs, dy, gs, _TGMM_DIMS))
  if transpose_in_dims:
    d_lhs_op = _vmappable(lambda dy, rhs, gs: dot_general(dy, rhs, gs, _GMM_TRANS_RHS_DIMS))
  else:
    d_lhs_op = _vmappable(
        lambda dy, rhs, gs: dot_general(dy, jnp.swapaxes(rhs, 1, 2), gs, _GMM_DIMS))

  @jax.custom_vjp
  def op(lhs, rhs, group_sizes):
    return gmm_op(lhs, rhs, group_sizes)

  def fwd(lhs, rhs, group_sizes):
    return gmm_op(lhs, rhs, group_sizes), (lhs, rhs, group_sizes)

  def bwd(residual, dy):
    lhs, rhs, group_sizes = residual
    d_lhs = d_lhs_op(dy, rhs, group_sizes)
    d_rhs = tgmm_op(lhs, dy, group_sizes).astype(rhs.dtype)
    return d_lhs.astype(lhs.dtype), d_rhs, None

  op.defvjp(fwd, bwd)
  return op


ragged_gmm = _ragged_gmm_fn(
    lambda lhs, rhs, gs, dims: jax.lax.ragged_dot_general(lhs, rhs, gs, dims), False)
ragged_gmm.__doc__ = "lhs: [M, K] sorted by group; rhs: [G, K, N]; group_sizes: [G] int32."


def tokamax_available() -> bool:
  """Whether the optional tokamax package is installed (the [gpu] / [tpu] extras)."""
  return importlib.util.find_spec("tokamax") is not None


@functools.lru_cache(maxsize=None)
def _tokamax_gmm():
  import tokamax  # optional: only imported when the backend is used
  return _ragged_gmm_fn(
      lambda lhs, rhs, gs, dims: tokamax.ragged_dot_general(lhs, rhs, gs, dims), True)


def tokamax_gmm(lhs, rhs, group_sizes):
  """ragged_gmm through tokamax's kernels (lhs: [M, K]; rhs: [G, K, N])."""
  return _tokamax_gmm()(lhs, rhs, group_sizes)
