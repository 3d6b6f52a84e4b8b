"""The dispatch interface: move tokens to experts and back, nothing else.

A strategy turns tokens + a Routing into an `ExpertBatch`, lets the experts
compute on it, and combines the outputs back into token order. Every strategy
gives the same numbers on the same Routing (up to float rounding).
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Optional, Tuple

import jax
from flax import struct

from moejax.routing.types import AnyRouting, Routing


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


class DispatchStrategy(abc.ABC):
  """dispatch -> experts -> combine. Subclasses implement the two moves."""

  name: str = ""

  @abc.abstractmethod
  def dispatch(self, x: jax.Array, routing: AnyRouting) -> Tuple[ExpertBatch, Any]:
    """x: [T, d] -> (ExpertBatch, residual state that combine needs)."""

  @abc.abstractmethod
  def combine(self, y: ExpertBatch, routing: AnyRouting, residual: Any) -> jax.Array:
    """Expert outputs -> [T, d] in token order, weighted by the routing."""

  def require_sparse(self, routing: AnyRouting) -> Routing:
    """Index-based strategies need (token, expert, slot) assignments."""
    if not isinstance(routing, Routing):
      raise ValueError(f"dispatch={self.name!r} needs a sparse Routing; this router gives dense "
                       "weights (Soft MoE): use dispatch='einsum'")
    return routing

  def __call__(self, x: jax.Array, routing: AnyRouting, expert_fn: ExpertFn) -> jax.Array:
    batch, residual = self.dispatch(x, routing)
    return self.combine(expert_fn(batch), routing, residual)
