"""Dispatch / combine strategies behind one interface."""

from moejax.dispatch.base import DispatchStrategy, ExpertBatch, ExpertFn
from moejax.dispatch.dropless import DroplessDispatch
from moejax.dispatch.einsum import EinsumDispatch
from moejax.dispatch.gather import GatherDispatch

STRATEGIES = {s.name: s for s in (EinsumDispatch, GatherDispatch, DroplessDispatch)}


def get_strategy(name: str) -> DispatchStrategy:
  """A dispatch strategy by its config name ('einsum', 'gather', 'dropless')."""
  if name not in STRATEGIES:
    raise ValueError(f"dispatch={name!r} is invalid: valid values are "
                     + ", ".join(repr(n) for n in STRATEGIES))
  return STRATEGIES[name]()


__all__ = ["DispatchStrategy", "ExpertBatch", "ExpertFn", "DroplessDispatch",
           "EinsumDispatch", "GatherDispatch", "STRATEGIES", "get_strategy"]
