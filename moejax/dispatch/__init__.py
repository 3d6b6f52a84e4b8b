"""Dispatch / combine strategies behind one interface."""

from moejax.dispatch.base import DispatchStrategy, ExpertBatch, ExpertFn
from moejax.dispatch.dropless import DroplessDispatch
from moejax.dispatch.einsum import EinsumDispatch
from moejax.dispatch.gather import GatherDispatch

STRATEGIES = {s.name: s for s in (EinsumDispatch, GatherDispatch, DroplessDispatch)}


def get_strategy(name: str, block_size: int = 1, pallas: bool = False) -> DispatchStrategy:
  """A dispatch strategy by its config name ('einsum', 'gather', 'dropless').

  block_size: 'dropless' pads each expert's rows to a multiple of this (the
  'blocked' grouped matmul's block); ignored by the others.
  pallas: 'dropless' moves rows with the fused Pallas permute / unpermute
  kernels; ignored by the others.
  """
  if name not in STRATEGIES:
    raise ValueError(f"dispatch={name!r} is invalid: valid values are "
                     + ", ".join(repr(n) for n in STRATEGIES))
  if name == "dropless":
    return DroplessDispatch(block_size, pallas)
  return STRATEGIES[name]()


__all__ = ["DispatchStrategy", "ExpertBatch", "ExpertFn", "DroplessDispatch",
           "EinsumDispatch", "GatherDispatch", "STRATEGIES", "get_strategy"]
