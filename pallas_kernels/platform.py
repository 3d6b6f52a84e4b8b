"""Which Pallas lowering a kernel call uses, and the per-platform knobs.

  'cpu'          interpret mode (the kernel body runs as ordinary JAX ops):
                 how CI tests every kernel; correct but not fast.
  'gpu' / 'cuda' / 'rocm'
                 Triton (num_warps / num_stages from the Triton params).
  'tpu'          Mosaic; scalar tables (group offsets, gather indices) live
                 in SMEM, blocks in VMEM.

`platform=None` means JAX's default backend. Passing another platform lowers
for it without its hardware (tests use jax.export to check the GPU and TPU
lowerings on CPU).
"""

from __future__ import annotations

from typing import Optional

import jax
from jax.experimental import pallas as pl

PLATFORMS = ("cpu", "gpu", "cuda", "rocm", "tpu")


def resolve_platform(platform: Optional[str]) -> str:
  """'cpu', 'gpu' or 'tpu' for `platform` (None: the default backend)."""
  platform = platform or jax.default_backend()
  if platform not in PLATFORMS:
    raise ValueError(f"pallas_kernels platform={platform!r} is invalid: valid values are "
                     + ", ".join(repr(p) for p in PLATFORMS) + " (or None for the default)")
  return "gpu" if platform in ("cuda", "rocm") else platform


def scalar_table_spec(platform: str) -> pl.BlockSpec:
  """Spec of a small int table read one scalar at a time inside a kernel:
  the whole array, in SMEM on TPU (Mosaic reads scalars only from SMEM)."""
  if platform == "tpu":
    from jax.experimental.pallas import tpu as pltpu
    return pl.BlockSpec(memory_space=pltpu.SMEM)
  return pl.BlockSpec()


def call_options(platform: str, parallel_dims: int, num_warps: int = 4,
                 num_stages: int = 2) -> dict:
  """pallas_call keyword arguments for `platform`; every grid dimension of
  these kernels writes disjoint output tiles, so all are parallel."""
  if platform == "cpu":
    return dict(interpret=True)
  if platform == "gpu":
    from jax.experimental.pallas import triton as pl_triton
    return dict(compiler_params=pl_triton.CompilerParams(num_warps=num_warps,
                                                         num_stages=num_stages))
  from jax.experimental.pallas import tpu as pltpu
  return dict(compiler_params=pltpu.CompilerParams(
      dimension_semantics=("parallel",) * parallel_dims))
