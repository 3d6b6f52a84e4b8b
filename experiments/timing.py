"""Timing helpers shared by the benchmark binaries."""

from __future__ import annotations

import statistics
import time

import jax


def round_robin_ms(jobs, repeats, warmup):
  """Median ms of each (fn, args) in `jobs` (a dict). All are compiled and
  warmed up first, then timed in turn, `repeats` rounds: slow drifts of the
  machine (clock, other tenants) hit every job alike instead of whichever ran
  first. Each timed call follows an untimed call of the same job, so it does
  not pay for the memory and caches the previous job left behind (measured:
  up to 1.5x on a dense FFN following a one-hot einsum)."""
  for fn, args in jobs.values():
    for _ in range(1 + warmup):
      jax.block_until_ready(fn(*args))
  times = {name: [] for name in jobs}
  for _ in range(repeats):
    for name, (fn, args) in jobs.items():
      jax.block_until_ready(fn(*args))
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append((time.perf_counter() - start) * 1e3)
  return {name: statistics.median(t) for name, t in times.items()}


def temp_bytes(fn, args):
  """XLA's temporary buffer bytes of the compiled jitted `fn` at `args`
  (CompiledMemoryStats.temp_size_in_bytes: activations and scratch the
  program allocates, not its arguments or outputs); None where the backend
  does not report it."""
  try:
    stats = fn.lower(*args).compile().memory_analysis()
  except (AttributeError, NotImplementedError):
    return None
  return None if stats is None else int(stats.temp_size_in_bytes)
