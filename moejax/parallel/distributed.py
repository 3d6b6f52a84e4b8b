"""Multi-host start-up through jax.distributed (the engine JAX already has).

Call `initialize` before anything touches a JAX backend. On a TPU pod slice,
under SLURM, or with Open MPI, `jax.distributed.initialize()` finds the
coordinator and the process ids by itself; elsewhere pass them explicitly
(every process: the same coordinator host:port and num_processes, its own
process_id). CPU processes talk through gloo collectives.
"""

from __future__ import annotations

from typing import Optional

import jax


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """Joins this process to a multi-process JAX job.

  With no arguments JAX auto-detects the cluster (TPU pod, SLURM, MPI); with
  coordinator_address all three must be given.
  Raises ValueError (one line) for an inconsistent combination.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise ValueError(
        f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
        f"process_id={process_id!r} is invalid: give all three (explicit start) or none "
        "(auto-detect on TPU pods / SLURM / MPI)")
  if num_processes is not None:
    if num_processes < 1:
      raise ValueError(f"num_processes={num_processes} is invalid: must be >= 1")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"process_id={process_id} is invalid: must be in [0, {num_processes})")
  # Only the CPU client reads this; harmless on GPU/TPU, needed for CPU jobs.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address is None:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
