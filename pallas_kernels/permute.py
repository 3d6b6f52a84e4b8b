"""Fused permute / unpermute: moving token rows into expert order and back.

One kernel, a weighted row gather:

    out[m] = sum_j  w[m, j] * x[idx[m, j]]        (terms with idx out of range are 0)

  permute    (dispatch)  J = 1, no weights: row m of the expert-sorted layout
             reads its token.
  unpermute  (combine)   J = K: token t reads its K expert outputs and sums
             them under its gate weights in the same pass, so the [T, K, d]
             picked rows never exist in memory.

Backward passes are the same kernel with the maps swapped: permute's input
gradient sums each token's K rows (J = K, no weights); unpermute's output
gradient sends each row its token's gradient times the row's gate weight
(J = 1). The gate-weight gradient <dout[t], y[slot[t, k]]> is a gather and a
row dot in XLA.

Grid: (row block, column tile); an instance walks its rows one at a time
(each is J dynamic row reads of x), so it writes only its own tile.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import checks
from pallas_kernels.platform import call_options, resolve_platform, scalar_table_spec
from pallas_kernels.tiling import LANE_TILE, MIN_TILE, next_power_of_two, padded

# Rows per kernel instance: small, so a gather of few rows still spreads
# over many instances.
BLOCK_ROWS = 8


def _gather_kernel(idx_ref, *refs, num_terms: int, num_src: int, weighted: bool):
  if weighted:
    w_ref, x_ref, out_ref = refs
  else:
    x_ref, out_ref = refs
  row0 = pl.program_id(0) * BLOCK_ROWS
  width = out_ref.shape[1]

  def row(r, carry):
    acc = jnp.zeros((1, width), jnp.float32)
    for j in range(num_terms):
      src = idx_ref[row0 + r, j]
      valid = (src >= 0) & (src < num_src)
      x = x_ref[pl.ds(jnp.clip(src, 0, num_src - 1), 1), :].astype(jnp.float32)
      if weighted:
        x = x * w_ref[row0 + r, j].astype(jnp.float32)
      acc = acc + jnp.where(valid, x, 0.0)
    out_ref[pl.ds(r, 1), :] = acc.astype(out_ref.dtype)
    return carry

  jax.lax.fori_loop(0, BLOCK_ROWS, row, 0)


def _weighted_gather(x, idx, weight, platform: str):
  """out [M, d] = sum_j weight[m, j] * x[idx[m, j]]; weight None = ones."""
  num_src, d = x.shape
  m, num_terms = idx.shape
  block_d = max(MIN_TILE, min(LANE_TILE, next_power_of_two(d)))
  mp, dp = padded(m, BLOCK_ROWS), padded(d, block_d)
  x_p = x if dp == d else jnp.pad(x, ((0, 0), (0, dp - d)))
  # Padding rows read index num_src: out of range, so they sum nothing.
  idx_p = jnp.pad(idx.astype(jnp.int32), ((0, mp - m), (0, 0)), constant_values=num_src)
  checks.check_tpu_vmem(platform, "weighted_gather", (num_src + BLOCK_ROWS) * block_d,
                        x.dtype.itemsize, f"block_d={block_d}")
  tables = [idx_p]
  if weight is not None:
    tables.append(jnp.pad(weight.astype(jnp.float32), ((0, mp - m), (0, 0))))
  out = pl.pallas_call(
      functools.partial(_gather_kernel, num_terms=num_terms, num_src=num_src,
                        weighted=weight is not None),
      out_shape=jax.ShapeDtypeStruct((mp, dp), x.dtype),
      grid=(mp // BLOCK_ROWS, dp // block_d),
      in_specs=[scalar_table_spec(platform)] * len(tables)
      + [pl.BlockSpec((num_src, block_d), lambda i, j: (0, j))],
      out_specs=pl.BlockSpec((BLOCK_ROWS, block_d), lambda i, j: (i, j)),
      name="moejax_weighted_gather",
      **call_options(platform, 2),
  )(*tables, x_p)
  return out[:m, :d]


def weighted_gather(x: jax.Array, idx: jax.Array, weight: Optional[jax.Array] = None,
                    platform: Optional[str] = None) -> jax.Array:
  """out[m] = sum_j weight[m, j] * x[idx[m, j]] on the Pallas kernel (not
  differentiable by itself; permute/unpermute carry the VJPs).

  Args:
    x: [N, d] source rows. idx: [M, J] int source rows (out of range: skipped).
    weight: [M, J] or None (all ones). platform: as in pallas_kernels.gmm.
  Returns:
    [M, d] in x's dtype, summed in float32.
  """
  checks.check_rows("x", x, "[N, d] source rows")
  checks.check_index("idx", idx, 2, "[M, J] source rows of each output row")
  if weight is not None and weight.shape != idx.shape:
    raise ValueError(f"weight.shape={tuple(weight.shape)} is invalid: expected idx's shape "
                     f"{tuple(idx.shape)}")
  return _weighted_gather(x, idx, weight, resolve_platform(platform))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _permute(x, src, readers, platform):
  del readers
  return _weighted_gather(x, src[:, None], None, platform)


def _permute_fwd(x, src, readers, platform):
  return _permute(x, src, readers, platform), readers


def _permute_bwd(platform, readers, dout):
  return _weighted_gather(dout, readers, None, platform), None, None


_permute.defvjp(_permute_fwd, _permute_bwd)


def permute(x: jax.Array, src: jax.Array, readers: jax.Array,
            platform: Optional[str] = None) -> jax.Array:
  """Rows into expert order: out[m] = x[src[m]] (zeros where src[m] is out of
  range, e.g. padding rows).

  Args:
    x: [T, d] tokens.
    src: [M] int token of each grouped row.
    readers: [T, K] int grouped rows that read each token (the inverse map;
      out of range = none): the gradient is dx[t] = sum_k dout[readers[t, k]].
  Returns:
    [M, d] in x's dtype.
  """
  checks.check_rows("x", x, "[T, d] tokens")
  checks.check_index("src", src, 1, "[M] token of each row")
  checks.check_index("readers", readers, 2, "[T, K] rows that read each token")
  return _permute(x, src.astype(jnp.int32), readers.astype(jnp.int32),
                  resolve_platform(platform))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _unpermute(y, slot, weight, assignment, platform):
  del assignment
  return _weighted_gather(y, slot, weight, platform)


def _unpermute_fwd(y, slot, weight, assignment, platform):
  return _unpermute(y, slot, weight, assignment, platform), (y, slot, weight, assignment)


def _unpermute_bwd(platform, residual, dout):
  y, slot, weight, assignment = residual
  num_tokens, k = slot.shape
  valid = assignment < num_tokens * k
  a = jnp.where(valid, assignment, 0)
  token = jnp.where(valid, a // k, num_tokens)
  dy = _weighted_gather(dout, token[:, None], weight.reshape(-1)[a][:, None], platform)
  picked = jnp.take(y, slot.reshape(-1), axis=0, mode="fill", fill_value=0)
  picked = picked.reshape(num_tokens, k, -1).astype(jnp.float32)
  d_weight = jnp.einsum("tkd,td->tk", picked, dout.astype(jnp.float32)).astype(weight.dtype)
  return dy.astype(y.dtype), None, d_weight, None


_unpermute.defvjp(_unpermute_fwd, _unpermute_bwd)


def unpermute(y: jax.Array, slot: jax.Array, weight: jax.Array, assignment: jax.Array,
              platform: Optional[str] = None) -> jax.Array:
  """Expert outputs back to tokens, gate-weighted: out[t] = sum_k weight[t, k]
  * y[slot[t, k]] (out-of-range slots, i.e. dropped assignments, add 0).

  Args:
    y: [M, d] expert outputs in grouped order.
    slot: [T, K] int row of each token's k-th assignment.
    weight: [T, K] gate weights (float; differentiable).
    assignment: [M] int assignment t*K + k in each row (>= T*K for padding):
      the inverse of slot, used by the gradient.
  Returns:
    [T, d] in y's dtype.
  """
  checks.check_rows("y", y, "[M, d] grouped expert outputs")
  checks.check_index("slot", slot, 2, "[T, K] row of each assignment")
  if weight.shape != slot.shape:
    raise ValueError(f"weight.shape={tuple(weight.shape)} is invalid: expected slot's shape "
                     f"{tuple(slot.shape)}")
  checks.check_int("assignment", assignment)
  if assignment.shape != (y.shape[0],):
    raise ValueError(f"assignment.shape={tuple(assignment.shape)} is invalid: expected "
                     f"({y.shape[0]},), one entry per row of y")
  return _unpermute(y, slot.astype(jnp.int32), weight, assignment.astype(jnp.int32),
                    resolve_platform(platform))
