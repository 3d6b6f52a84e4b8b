"""Dispatch / combine strategies behind one interface."""

from moejax.dispatch.base import DispatchStrategy, ExpertBatch, ExpertFn
from moejax.dispatch.dropless import DroplessDispatch
from moejax.dispatch.einsum import EinsumDispatch
from moejax.dispatch.gather import GatherDispatch
from moejax.dispatch.retrieval import RetrievalDispatch
from moejax.grouped_matmul import RowLayout

# Every MoEConfig.dispatch value (moejax.config.DISPATCHES) -> its strategy.
STRATEGIES = {s.name: s for s in (EinsumDispatch, GatherDispatch, DroplessDispatch,
                                  RetrievalDispatch)}


def get_strategy(name: str, layout: RowLayout = RowLayout()) -> DispatchStrategy:
  """A dispatch strategy by its config name (a key of STRATEGIES), made for
  the row layout the experts' grouped matmul wants (ExpertBank.row_layout();
  see DispatchStrategy.from_layout)."""
  if name not in STRATEGIES:
    raise ValueError(f"dispatch={name!r} is invalid: valid values are "
                     + ", ".join(repr(n) for n in STRATEGIES))
  return STRATEGIES[name].from_layout(layout)


__all__ = ["DispatchStrategy", "ExpertBatch", "ExpertFn", "DroplessDispatch",
           "EinsumDispatch", "GatherDispatch", "RetrievalDispatch", "STRATEGIES", "get_strategy"]
