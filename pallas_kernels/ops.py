"""Differentiable grouped matmul on the Pallas kernels.

`gmm` is the forward kernel with a custom VJP whose backward pass also runs
on kernels: d_lhs = gmm(dy, rhsᵀ) (the transposed-rhs variant, no weight
copy) and d_rhs = tgmm(lhs, dy). `tgmm` is exposed on its own as well.

Operands are checked in Python (checks.py), zero-padded to whole tiles,
run, and sliced back; rows past sum(group_sizes) come out as zeros.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from pallas_kernels import checks
from pallas_kernels.gmm import gmm_padded, tgmm_padded
from pallas_kernels.platform import resolve_platform
from pallas_kernels.tiling import LANE_TILE, TileSizes, default_tiles, group_table, padded

def _pad2(a: jax.Array, rows: int, cols: int) -> jax.Array:
  if a.shape == (rows, cols):
    return a
  return jnp.pad(a, ((0, rows - a.shape[0]), (0, cols - a.shape[1])))


def _pad_last2(a: jax.Array, rows: int, cols: int) -> jax.Array:
  if a.shape[1:] == (rows, cols):
    return a
  return jnp.pad(a, ((0, 0), (0, rows - a.shape[1]), (0, cols - a.shape[2])))


def _gmm(lhs, rhs, group_sizes, tiles: TileSizes, platform: str, transpose_rhs: bool):
  """lhs [M, K] x rhs [G, K, N] ([G, N, K] transposed) -> [M, N]; no checks."""
  m, k = lhs.shape
  g = rhs.shape[0]
  n = rhs.shape[1] if transpose_rhs else rhs.shape[2]
  t = default_tiles(m, k, n, tiles)
  mp, kp, np_ = padded(m, t.block_m), padded(k, t.block_k), padded(n, t.block_n)
  checks.check_tpu_vmem(platform, "gmm",
                        t.block_m * kp + g * kp * t.block_n + t.block_m * t.block_n,
                        lhs.dtype.itemsize, t)
  rhs_p = _pad_last2(rhs, np_, kp) if transpose_rhs else _pad_last2(rhs, kp, np_)
  table = group_table(group_sizes, m, t.block_m)
  out = gmm_padded(_pad2(lhs, mp, kp), rhs_p, table, t, platform, transpose_rhs)
  return out[:m, :n]


def _tgmm(lhs, dy, group_sizes, num_groups: int, tiles: TileSizes, platform: str, out_dtype):
  """lhs [M, K], dy [M, N] -> [G, K, N]; no checks."""
  m, k = lhs.shape
  n = dy.shape[1]
  if tiles.block_k is None:  # K is an output dim here: default its tile like N's
    tiles = TileSizes(tiles.block_m, default_tiles(m, min(k, LANE_TILE), n).block_k,
                      tiles.block_n)
  t = default_tiles(m, k, n, tiles)
  mp, kp, np_ = padded(m, t.block_m), padded(k, t.block_k), padded(n, t.block_n)
  checks.check_tpu_vmem(platform, "tgmm", mp * (t.block_k + t.block_n) + t.block_k * t.block_n,
                        lhs.dtype.itemsize, t)
  table = group_table(group_sizes, m, t.block_m)
  out = tgmm_padded(_pad2(lhs, mp, kp), _pad2(dy, mp, np_), table, num_groups, t, platform,
                    out_dtype)
  return out[:, :k, :n]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _gmm_vjp(lhs, rhs, group_sizes, tiles, platform):
  return _gmm(lhs, rhs, group_sizes, tiles, platform, False)


def _gmm_fwd(lhs, rhs, group_sizes, tiles, platform):
  return _gmm(lhs, rhs, group_sizes, tiles, platform, False), (lhs, rhs, group_sizes)


def _gmm_bwd(tiles, platform, residual, dy):
  lhs, rhs, group_sizes = residual
  dy = dy.astype(lhs.dtype)
  # Same row blocks; the contraction is now over N and the output over K
  # (output tiles capped at the default width: a wide f32 tile spills on GPU).
  out_tile = tiles.block_k if tiles.block_k is None else min(tiles.block_k, LANE_TILE)
  back = TileSizes(tiles.block_m, tiles.block_n, out_tile)
  d_lhs = _gmm(dy, rhs, group_sizes, back, platform, True)
  d_rhs = _tgmm(lhs, dy, group_sizes, rhs.shape[0], tiles, platform, rhs.dtype)
  return d_lhs, d_rhs, None


_gmm_vjp.defvjp(_gmm_fwd, _gmm_bwd)


def _check_operands(lhs, rhs_or_dy, group_sizes, num_groups, rhs_name, layout):
  checks.check_rows("lhs", lhs, "[M, K]")
  checks.check_rank(rhs_name, rhs_or_dy, len(layout.split(",")), layout)
  checks.check_float(rhs_name, rhs_or_dy)
  checks.check_same_dtype(f"lhs and {rhs_name}", lhs, rhs_or_dy)
  checks.check_group_sizes(group_sizes, num_groups, lhs.shape[0])


def gmm(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array,
        tiles: Optional[TileSizes] = None, platform: Optional[str] = None) -> jax.Array:
  """Grouped matmul on the Pallas kernel, differentiable w.r.t. lhs and rhs.

  Args:
    lhs: [M, K] rows sorted by group (float32, bfloat16 or float16).
    rhs: [G, K, N] one matrix per group, lhs's dtype.
    group_sizes: [G] int rows per group, summing to at most M.
    tiles: TileSizes; unset fields default from the shape (tiling.default_tiles).
    platform: None (default backend), 'cpu' (interpret mode), 'gpu', 'tpu'.
  Returns:
    [M, N] in lhs's dtype (float32 accumulation); rows past sum(group_sizes)
    are zero.
  """
  _check_operands(lhs, rhs, group_sizes, rhs.shape[0] if rhs.ndim == 3 else -1, "rhs",
                  "[G, K, N]")
  if rhs.shape[1] != lhs.shape[1]:
    raise ValueError(f"rhs.shape={tuple(rhs.shape)} does not match lhs.shape="
                     f"{tuple(lhs.shape)}: rhs must be [G, K={lhs.shape[1]}, N]")
  tiles = tiles or TileSizes()
  checks.check_tiles(tiles)
  return _gmm_vjp(lhs, rhs, group_sizes.astype(jnp.int32), tiles, resolve_platform(platform))


def tgmm(lhs: jax.Array, dy: jax.Array, group_sizes: jax.Array,
         tiles: Optional[TileSizes] = None, platform: Optional[str] = None,
         out_dtype=None) -> jax.Array:
  """Per-group lhsᵀ @ dy: the weight gradient of gmm.

  Args:
    lhs: [M, K] rows sorted by group; dy: [M, N] in lhs's dtype.
    group_sizes: [G] int rows per group, summing to at most M.
    out_dtype: result dtype (default lhs's); accumulation is float32.
  Returns:
    [G, K, N]; empty groups give zeros.
  """
  checks.check_index("group_sizes", group_sizes, 1, "[G] one size per group")
  _check_operands(lhs, dy, group_sizes, group_sizes.shape[0], "dy", "[M, N]")
  if dy.shape[0] != lhs.shape[0]:
    raise ValueError(f"dy.shape={tuple(dy.shape)} does not match lhs.shape="
                     f"{tuple(lhs.shape)}: both need M={lhs.shape[0]} rows")
  tiles = tiles or TileSizes()
  checks.check_tiles(tiles)
  return _tgmm(lhs, dy, group_sizes.astype(jnp.int32), group_sizes.shape[0], tiles,
               resolve_platform(platform), out_dtype or lhs.dtype)
