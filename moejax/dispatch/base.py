"""The dispatch interface: move tokens to experts and back, nothing else.

A strategy turns tokens + a Routing into an `ExpertBatch`, lets the experts
compute on it, and combines the outputs back into token order. Every strategy
gives the same numbers on the same Routing (up to float rounding).
"""

from __future__ import annotations

import abc
from typing import Any, Tuple

import jax

from moejax.expert_batch import ExpertBatch, ExpertFn
from moejax.routing.types import AnyRouting, Routing


class DispatchStrategy(abc.ABC):
  """dispatch -> experts -> combine. Subclasses implement the two moves.

  Every `dispatch` value of MoEConfig is one subclass, registered in
  moejax.dispatch.STRATEGIES under its `name`; the MoE layer makes it with
  `from_layout` and calls it as strategy(x, routing, experts).
  """

  name: str = ""
  # Whether moejax.dispatch.expert_parallel can run this strategy's moves
  # inside shard_map over the 'expert' mesh axis.
  expert_parallel: bool = False

  @classmethod
  def from_layout(cls, layout) -> "DispatchStrategy":
    """The strategy for the experts' row layout (grouped_matmul.RowLayout:
    block size, fused Pallas permute); most strategies ignore it."""
    del layout
    return cls()

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
    """x: [T, d] -> [T, d]; expert_fn: ExpertBatch -> ExpertBatch (an
    ExpertBank is one)."""
    batch, residual = self.dispatch(x, routing)
    return self.combine(expert_fn(batch), routing, residual)
