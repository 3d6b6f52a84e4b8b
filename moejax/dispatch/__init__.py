"""Dispatch / combine strategies behind one interface."""

from moejax.dispatch.base import DispatchStrategy, ExpertBatch, ExpertFn
from moejax.dispatch.dropless import DroplessDispatch
from moejax.dispatch.einsum import EinsumDispatch
from moejax.dispatch.gather import GatherDispatch
from moejax.grouped_matmul import RowLayout

STRATEGIES = {s.name: s for s in (EinsumDispatch, GatherDispatch, DroplessDispatch)}


def get_strategy(name: str, layout: RowLayout = RowLayout()) -> DispatchStrategy:
  """A dispatch strategy by its config name ('einsum', 'gather', 'dropless').

  layout: the row layout the experts' grouped matmul wants (ExpertBank.
  row_layout()); 'dropless' pads each expert's rows to layout.block_size and
  moves them with the Pallas permute kernels when layout.fused_permute. The
  others ignore it.
  """
  if name not in STRATEGIES:
    raise ValueError(f"dispatch={name!r} is invalid: valid values are "
                     + ", ".join(repr(n) for n in STRATEGIES))
  if name == "dropless":
    return DroplessDispatch(layout.block_size, layout.fused_permute)
  return STRATEGIES[name]()


__all__ = ["DispatchStrategy", "ExpertBatch", "ExpertFn", "DroplessDispatch",
           "EinsumDispatch", "GatherDispatch", "STRATEGIES", "get_strategy"]
