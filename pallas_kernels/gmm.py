"""Grouped matmul kernels: gmm (forward) and tgmm (weight gradient).

  gmm:   out[m] = lhs[m] @ rhs[group(m)]          lhs [M, K], rhs [G, K, N] -> [M, N]
         (transpose_rhs: rhs is [G, N, K] and used as rhs[g]ᵀ; the input
         gradient dy @ rhs[g]ᵀ needs no transposed copy of the weights)
  tgmm:  out[g] = lhs[rows of g]ᵀ @ dy[rows of g]  lhs [M, K], dy [M, N] -> [G, K, N]

Each kernel instance owns one output tile and loops over what feeds it, so
no two instances write the same tile: that keeps the kernels correct under
GPU grids that run in parallel, without atomics.

  gmm grid (row block i, column tile j): loop over the groups that touch
    row block i (GroupTable.block_first/stop; empty groups skipped), and
    inside that over K tiles; rows of other groups are masked to zero before
    the dot. Row blocks holding one group (MoE dropless pads groups to
    block_m) run exactly one group.
  tgmm grid (group g, K tile a, N tile b): loop over the row blocks holding
    group g's rows, masking rows outside the group. Empty groups write zeros.

Both accumulate in float32 and cast to the output dtype once. Inputs arrive
zero-padded to whole tiles (ops.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.platform import call_options, scalar_table_spec
from pallas_kernels.tiling import GroupTable, TileSizes, group_blocks

_ACC = jnp.float32


def _rows_in(row0, size: int, start, end):
  """[size, 1] mask of rows row0 + i inside [start, end)."""
  rows = row0 + jax.lax.broadcasted_iota(jnp.int32, (size, 1), 0)
  return (rows >= start) & (rows < end)


def _gmm_kernel(first_ref, stop_ref, starts_ref, ends_ref, lhs_ref, rhs_ref, out_ref, *,
                block_m: int, block_k: int, num_k: int, transpose_rhs: bool):
  i = pl.program_id(0)
  block_n = out_ref.shape[1]

  def group(g, acc):
    start, end = starts_ref[g], ends_ref[g]
    keep = _rows_in(i * block_m, block_m, start, end)

    def k_step(kb, acc):
      k0 = pl.multiple_of(kb * block_k, block_k)
      x = jnp.where(keep, lhs_ref[:, pl.ds(k0, block_k)], 0)
      if transpose_rhs:  # rhs block [G, block_n, K]: contract its last dim
        w = rhs_ref[g, :, pl.ds(k0, block_k)]
        dims = (((1,), (1,)), ((), ()))
      else:
        w = rhs_ref[g, pl.ds(k0, block_k), :]
        dims = (((1,), (0,)), ((), ()))
      return acc + jax.lax.dot_general(x, w, dims, preferred_element_type=_ACC)

    return jax.lax.cond(end > start, lambda a: jax.lax.fori_loop(0, num_k, k_step, a),
                        lambda a: a, acc)

  acc = jnp.zeros((block_m, block_n), _ACC)
  acc = jax.lax.fori_loop(first_ref[i], stop_ref[i], group, acc)
  out_ref[...] = acc.astype(out_ref.dtype)


def gmm_padded(lhs, rhs, table: GroupTable, tiles: TileSizes, platform: str,
               transpose_rhs: bool = False):
  """The gmm kernel on tile-padded operands.

  lhs: [Mp, Kp]; rhs: [G, Kp, Np] ([G, Np, Kp] if transpose_rhs); Mp, Kp, Np
  multiples of the tiles. Returns [Mp, Np] in lhs's dtype.
  """
  bm, bk, bn = tiles.block_m, tiles.block_k, tiles.block_n
  mp, kp = lhs.shape
  g = rhs.shape[0]
  np_ = rhs.shape[1] if transpose_rhs else rhs.shape[2]
  if transpose_rhs:
    rhs_spec = pl.BlockSpec((g, bn, kp), lambda i, j: (0, j, 0))
  else:
    rhs_spec = pl.BlockSpec((g, kp, bn), lambda i, j: (0, 0, j))
  table_spec = scalar_table_spec(platform)
  kernel = functools.partial(_gmm_kernel, block_m=bm, block_k=bk, num_k=kp // bk,
                             transpose_rhs=transpose_rhs)
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((mp, np_), lhs.dtype),
      grid=(mp // bm, np_ // bn),
      in_specs=[table_spec] * 4 + [pl.BlockSpec((bm, kp), lambda i, j: (i, 0)), rhs_spec],
      out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
      name="moejax_gmm_t" if transpose_rhs else "moejax_gmm",
      **call_options(platform, 2),
  )(table.block_first, table.block_stop, table.starts, table.ends, lhs, rhs)


def _tgmm_kernel(first_ref, count_ref, starts_ref, ends_ref, lhs_ref, dy_ref, out_ref, *,
                 block_m: int):
  g = pl.program_id(0)
  start, end, first = starts_ref[g], ends_ref[g], first_ref[g]

  def row_block(r, acc):
    row0 = pl.multiple_of((first + r) * block_m, block_m)
    keep = _rows_in(row0, block_m, start, end)
    x = jnp.where(keep, lhs_ref[pl.ds(row0, block_m), :], 0)
    dy = dy_ref[pl.ds(row0, block_m), :]
    return acc + jax.lax.dot_general(x, dy, (((0,), (0,)), ((), ())),
                                     preferred_element_type=_ACC)

  acc = jnp.zeros(out_ref.shape, _ACC)
  out_ref[...] = jax.lax.fori_loop(0, count_ref[g], row_block, acc).astype(out_ref.dtype)


def tgmm_padded(lhs, dy, table: GroupTable, num_groups: int, tiles: TileSizes, platform: str,
                out_dtype=jnp.float32):
  """The tgmm kernel on tile-padded operands.

  lhs: [Mp, Kp]; dy: [Mp, Np]. Returns [G, Kp, Np] in out_dtype.
  """
  bm, bk, bn = tiles.block_m, tiles.block_k, tiles.block_n
  mp, kp = lhs.shape
  np_ = dy.shape[1]
  first, count = group_blocks(table, bm)
  table_spec = scalar_table_spec(platform)
  return pl.pallas_call(
      functools.partial(_tgmm_kernel, block_m=bm),
      out_shape=jax.ShapeDtypeStruct((num_groups, kp, np_), out_dtype),
      grid=(num_groups, kp // bk, np_ // bn),
      in_specs=[table_spec] * 4 + [pl.BlockSpec((mp, bk), lambda g, a, b: (0, a)),
                                   pl.BlockSpec((mp, bn), lambda g, a, b: (0, b))],
      out_specs=pl.BlockSpec((None, bk, bn), lambda g, a, b: (g, a, b)),
      name="moejax_tgmm",
      **call_options(platform, 3),
  )(first, count, table.starts, table.ends, lhs, dy)
