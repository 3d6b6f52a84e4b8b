"""Tile sizes and the per-tile group tables the grouped-matmul kernels read.

Rows of lhs [M, K] are sorted by group; group g owns rows
[starts[g], ends[g]). The kernels tile M into row blocks of block_m, K into
block_k and N into block_n. Every dimension is zero-padded to a multiple of
its tile by the wrappers, so tiles are powers of two (Triton's requirement)
and no kernel reads past an array.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

# Triton's dot needs every operand dimension >= 16.
MIN_TILE = 16
# On TPU a block's last dim must be a multiple of 128 lanes or the whole
# (padded) dim; capping tiles at 128 and padding past them keeps both true.
LANE_TILE = 128


def is_power_of_two(n: int) -> bool:
  return n >= 1 and n & (n - 1) == 0


def next_power_of_two(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class TileSizes:
  """Tile of each matmul dimension; powers of two >= 16 (None: default_tiles
  picks from the shape).

  block_m: rows per row block. MoE dropless dispatch pads each group to a
    multiple of this (MoEConfig.gmm_block_size), so no block holds two groups.
  block_k: contraction tile, looped inside a kernel instance.
  block_n: output column tile; one kernel instance per (row block, column tile).
  """
  block_m: Optional[int] = None
  block_k: Optional[int] = None
  block_n: Optional[int] = None


def default_tile(size: int, cap: int) -> int:
  """The power of two >= MIN_TILE covering `size`, at most `cap`."""
  return max(MIN_TILE, min(cap, next_power_of_two(size)))


def default_tiles(m: int, k: int, n: int, tiles: Optional[TileSizes] = None) -> TileSizes:
  """Fills the unset fields of `tiles` for an [m, k] x [k, n] grouped matmul:
  128-row blocks (at most the padded row count), the whole contraction up to
  512 per step, 128 output columns (the whole width below that)."""
  tiles = tiles or TileSizes()
  return TileSizes(tiles.block_m or default_tile(m, 128),
                   tiles.block_k or default_tile(k, 512),
                   tiles.block_n or default_tile(n, LANE_TILE))


def padded(size: int, tile: int) -> int:
  """`size` padded to a multiple of `tile` (at least one tile)."""
  return max(tile, round_up(size, tile))


class GroupTable(NamedTuple):
  """Where each group's rows are, clamped to the row count; all int32.

  starts, ends: [G] first and one-past-last row of each group.
  block_first, block_stop: [num_blocks] the groups a row block touches are
    block_first[i] <= g < block_stop[i] (empty when equal).
  """
  starts: jax.Array
  ends: jax.Array
  block_first: jax.Array
  block_stop: jax.Array


def group_table(group_sizes: jax.Array, num_rows: int, block_m: int) -> GroupTable:
  """Tables for `num_rows` rows (padded to whole blocks) in groups of
  `group_sizes` [G]. Ends are clamped to num_rows, so a traced group_sizes
  summing past the rows cannot make a kernel read out of bounds."""
  sizes = jnp.maximum(group_sizes.astype(jnp.int32), 0)
  ends = jnp.minimum(jnp.cumsum(sizes), num_rows).astype(jnp.int32)
  starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends[:-1]])
  num_blocks = -(-num_rows // block_m)
  row0 = jnp.arange(num_blocks, dtype=jnp.int32) * block_m
  last_row = jnp.minimum(row0 + block_m, ends[-1]) - 1
  # First group ending after the block's first row; one past the group
  # holding its last used row. Empty groups never end after a row they own.
  first = jnp.searchsorted(ends, row0, side="right").astype(jnp.int32)
  stop = jnp.searchsorted(ends, last_row, side="right").astype(jnp.int32) + 1
  stop = jnp.where(row0 < ends[-1], stop, first)
  return GroupTable(starts, ends, first, jnp.maximum(stop, first))


def group_blocks(table: GroupTable, block_m: int):
  """([G] first row block, [G] number of row blocks) of each group; 0 blocks
  for an empty group."""
  first = table.starts // block_m
  count = jnp.where(table.ends > table.starts, (table.ends - 1) // block_m - first + 1, 0)
  return first.astype(jnp.int32), count.astype(jnp.int32)
