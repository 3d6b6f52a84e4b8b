"""One entry point from a RouterConfig to its family's route function
(moejax/routing/family.py)."""

from __future__ import annotations

from typing import Optional

import jax

from moejax.routing.config import RouterConfig
from moejax.routing.types import RouterOutput


def check_inputs(config: RouterConfig, logits: Optional[jax.Array], inputs) -> None:
  """One line for logits or inputs the family cannot use or lacks."""
  family = config.family
  if logits is None and family.uses_logits:
    raise ValueError(f"router.name={config.name!r} needs logits; none were given")
  # token_ids are data every family may be given (a layer passes them along).
  unknown = sorted(set(inputs) - set(family.inputs) - {"token_ids"})
  if unknown:
    raise ValueError(f"router.name={config.name!r} does not use {unknown[0]!r}; it reads "
                     f"{', '.join(family.inputs) or 'nothing but the logits'}")
  if family.needs_token_ids and inputs.get("token_ids") is None:
    raise ValueError(f"router.name={config.name!r} needs token_ids=[tokens] ints; none were "
                     "given")


def route(config: RouterConfig, logits: Optional[jax.Array], **inputs) -> RouterOutput:
  """Routes T tokens.

  Args:
    config: the RouterConfig.
    logits: [T, config.num_router_outputs] (None for families without a
      router projection: 'hash').
    **inputs: what the family reads beside the logits (its `inputs`), e.g.
      token_ids [T] ('hash'), expert_bias [E] and noise_std [T, outputs]
      ('top_k'), rng (stochastic routing while training; absent or None =
      deterministic), sub_keys ('product_key'), expert_threshold
      ('expert_threshold'). None values count as absent; token_ids are
      dropped for families that do not route by them.
  """
  inputs = {k: v for k, v in inputs.items() if v is not None}
  check_inputs(config, logits, inputs)
  if "token_ids" not in config.family.inputs:
    inputs.pop("token_ids", None)
  return config.family.route(logits, config, inputs)
