"""Grouped matmul: rows sorted by group, each group times its own matrix.

    out[m] = lhs[m] @ rhs[group(m)],   group(m) from `group_sizes`

One front door, several backends; rows past sum(group_sizes) are padding and
come out as zeros in every backend:

  'blocked'     fixed row blocks, a loop over (block, group) tiles with a
                custom VJP (blocked.py). Near dense speed on XLA:CPU.
  'gathered'    'blocked', and under dropless dispatch the whole expert FFN
                reads its token rows by index and adds its weighted outputs
                back by index inside the loop (gathered_ffn.py): no grouped
                [T·k, d] copy of the tokens, forward or backward.
  'ragged_dot'  jax.lax.ragged_dot (ragged.py): XLA's own kernel.
  'tokamax'     tokamax.ragged_dot (ragged.py; the optional tokamax package,
                installed by the [gpu] and [tpu] extras): tokamax's autotuned
                Triton / Mosaic kernels on GPU and TPU, XLA's ragged dot on CPU.
  'einsum'      every row against every group's matrix, then a one-hot pick:
                G times the FLOPs. The readable reference.
  'pallas'      the Pallas kernels in pallas_kernels/ (gmm forward, tgmm weight
                gradient): Triton on GPU, Mosaic on TPU, interpret mode on CPU
                (correct but slow there: for tests, not for training).
                block_size is the kernel's row block (a power of two >= 16).
  'auto'        'gathered' on CPU; on GPU and TPU 'tokamax' when it is installed,
                else 'ragged_dot' (see resolve_backend).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

import pallas_kernels
from moejax.grouped_matmul.blocked import DEFAULT_BLOCK_SIZE, blocked_gmm
from moejax.grouped_matmul.ragged import ragged_gmm, tokamax_available, tokamax_gmm

BACKENDS = ("auto", "blocked", "gathered", "ragged_dot", "tokamax", "einsum", "pallas")


@dataclasses.dataclass(frozen=True)
class RowLayout:
  """How a dispatch must lay out the expert rows it hands to a grouped-matmul
  backend: each expert's rows padded to a multiple of block_size, and moved
  with the fused Pallas permute / unpermute kernels when fused_permute."""

  block_size: int = 1
  fused_permute: bool = False
  # The experts read token rows by index themselves ('gathered'): dropless
  # dispatch hands them the row -> token map instead of a grouped copy.
  gathered: bool = False


def row_layout(backend: str, block_size: int, platform: str | None = None) -> RowLayout:
  """The RowLayout backend (after 'auto' is resolved on platform) wants: the
  blocked loop and the Pallas kernels take block-aligned groups; ragged_dot and
  the einsum reference take any row layout."""
  backend = resolve_backend(backend, platform)
  if backend in ("blocked", "gathered", "pallas"):
    return RowLayout(block_size, fused_permute=backend == "pallas",
                     gathered=backend == "gathered")
  return RowLayout()


def backend_problem(backend: str) -> str | None:
  """Why backend cannot run here (None when it can): tokamax is optional."""
  if backend == "tokamax" and not tokamax_available():
    return "needs the tokamax package (pip install 'moejax[gpu]', '[tpu]' or tokamax)"
  return None


def block_size_problem(backend: str, block_size: int) -> str | None:
  """What is wrong with block_size for backend (None when it is fine): the
  Pallas kernels need a power-of-two row block of at least their minimum tile;
  the XLA backends take any positive size."""
  if backend == "pallas":
    from pallas_kernels.tiling import MIN_TILE, is_power_of_two
    if block_size < MIN_TILE or not is_power_of_two(block_size):
      return f"gmm_backend='pallas' needs a power of two >= {MIN_TILE}"
  return None


def resolve_backend(backend: str, platform: str | None = None) -> str:
  """The concrete backend 'auto' stands for on `platform` (default: JAX's
  default backend). Measured by experiments/benchmark.py: on XLA:CPU
  'blocked' is ~1.1x a dense matmul of equal FLOPs where 'ragged_dot' is ~7x,
  and 'gathered' (blocked, reading token rows by index) takes the dropless
  layer from 1.30x to 1.22x dense at the default shape and 2.70x to 2.11x at
  fine-grained, in half the dense FFN's temporary memory (docs/benchmarks.md).
  On accelerators tokamax's kernels where installed: on CPU it would only run
  XLA's ragged dot."""
  if backend != "auto":
    return backend
  platform = platform or jax.default_backend()
  if platform == "cpu":
    return "gathered"
  return "tokamax" if tokamax_available() else "ragged_dot"


def group_ids(group_sizes: jax.Array, num_rows: int) -> jax.Array:
  """[num_rows] int32 group of each row; padding rows get len(group_sizes)."""
  ends = jnp.cumsum(group_sizes)
  return jnp.searchsorted(ends, jnp.arange(num_rows), side="right").astype(jnp.int32)


def _einsum_gmm(lhs, rhs, group_sizes):
  onehot = jax.nn.one_hot(group_ids(group_sizes, lhs.shape[0]), rhs.shape[0], dtype=lhs.dtype)
  return jnp.einsum("mk,gkn,mg->mn", lhs, rhs, onehot)


def _pallas_gmm(lhs, rhs, group_sizes, block_size):
  block_m = pallas_kernels.tiling.default_tile(lhs.shape[0], block_size)
  return pallas_kernels.gmm(lhs, rhs, group_sizes, pallas_kernels.TileSizes(block_m=block_m))


def gmm(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, backend: str = "auto",
        block_size: int = DEFAULT_BLOCK_SIZE) -> jax.Array:
  """Grouped matmul.

  Args:
    lhs: [M, K] rows sorted by group.
    rhs: [G, K, N] one matrix per group.
    group_sizes: [G] int32 rows per group, summing to at most M.
    backend: one of BACKENDS (module docstring).
    block_size: rows per block of the 'blocked' and 'pallas' backends.
  Returns:
    [M, N] in lhs's dtype.
  """
  if backend not in BACKENDS:
    raise ValueError(f"gmm backend={backend!r} is invalid: valid values are "
                     + ", ".join(repr(b) for b in BACKENDS))
  group_sizes = group_sizes.astype(jnp.int32)
  backend = resolve_backend(backend)
  if backend in ("blocked", "gathered"):   # a lone grouped matmul: nothing to gather
    return blocked_gmm(lhs, rhs, group_sizes, block_size)
  if backend == "ragged_dot":
    return ragged_gmm(lhs, rhs, group_sizes)
  if backend == "tokamax":
    return tokamax_gmm(lhs, rhs, group_sizes)
  if backend == "pallas":
    return _pallas_gmm(lhs, rhs, group_sizes, block_size)
  return _einsum_gmm(lhs, rhs, group_sizes)
