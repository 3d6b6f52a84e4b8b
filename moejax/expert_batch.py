"""ExpertBatch: the expert inputs (and outputs) that dispatch hands the
experts, in its own module so that dispatch and the experts both import it
without importing each other."""

from __future__ import annotations

from typing import Callable, Optional

import jax
from flax import struct


@struct.dataclass
class ExpertBatch:
  """Expert inputs (or outputs) in one of two layouts.

  Attributes:
    x: bucketed [E, C, d] (slot c of expert e), or grouped [M, d] with rows
      sorted by expert.
    group_sizes: None for bucketed; [E] int32 rows per expert for grouped
      (rows past sum(group_sizes) are padding).
  """

  x: jax.Array
  group_sizes: Optional[jax.Array] = None

  @property
  def is_grouped(self) -> bool:
    return self.group_sizes is not None

  def replace_x(self, x: jax.Array) -> "ExpertBatch":
    return ExpertBatch(x=x, group_sizes=self.group_sizes)


ExpertFn = Callable[[ExpertBatch], ExpertBatch]
