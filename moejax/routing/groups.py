"""Routing in independent groups of tokens (GShard's groups).

The T tokens of a call are cut into G contiguous groups of T/G; each group is
routed on its own (capacity, expert choice and drops are per group), and the
results are merged back into one Routing over all T tokens whose positions
are offset by group: group g owns slots [g*C, (g+1)*C) of every expert, so
the merged Routing has capacity G*C and any dispatch strategy handles it
unchanged. Expert-parallel dispatch relies on that layout: a device holding
groups [a, b) owns exactly the slots [a*C, b*C).

Dense routing (Soft MoE per example) merges the same way: group g's tokens
dispatch to and combine from slots [g*n, (g+1)*n) of every expert only, so
the merged dispatch / combine weights are block-diagonal over groups.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from moejax.routing.config import RouterConfig
from moejax.routing.router import check_inputs, route
from moejax.routing.types import DenseRouting, Routing, RouterOutput


def route_in_groups(config: RouterConfig, logits: Optional[jax.Array], *,
                    groups: Optional[int] = None, **inputs) -> RouterOutput:
  """`route` applied to `groups` (default config.routing_groups) groups of
  consecutive tokens (logits and inputs as for route; the family's
  per_token_inputs are split with the tokens, the others shared).

  Group g uses rng fold_in(rng, g). With one group this is exactly `route`.
  """
  groups = config.routing_groups if groups is None else groups
  inputs = {k: v for k, v in inputs.items() if v is not None}
  if groups == 1:
    return route(config, logits, **inputs)
  check_inputs(config, logits, inputs)
  if "token_ids" not in config.family.inputs:
    inputs.pop("token_ids", None)
  per_token = {k: inputs.pop(k) for k in config.family.per_token_inputs if k in inputs}
  if logits is not None:
    per_token["logits"] = logits
  rng = inputs.pop("rng", None)
  num_tokens = next(iter(per_token.values())).shape[0]
  if num_tokens % groups:
    raise ValueError(f"router.routing_groups={groups} is invalid: it must divide the "
                     f"{num_tokens} tokens of this call")
  split = {k: v.reshape(groups, num_tokens // groups, *v.shape[1:]) for k, v in per_token.items()}
  keys = None if rng is None else jax.vmap(lambda g: jax.random.fold_in(rng, g))(
      jnp.arange(groups))

  def one_group(args, key):
    args = dict(args)
    return route(config, args.pop("logits", None), rng=key, **args, **inputs)

  out = jax.vmap(one_group)(split, keys)
  r = out.routing
  flat = lambda a: a.reshape(num_tokens, *a.shape[2:])
  if isinstance(r, DenseRouting):
    return RouterOutput(routing=_block_diagonal(r), probs=flat(out.probs),
                        choice_counts=out.choice_counts.sum(0), logits=flat(out.logits))
  # Slots per expert and group: the capacity, or (dropless) the group's tokens.
  slots = r.capacity if r.capacity is not None else num_tokens // groups
  offset = (jnp.arange(groups, dtype=r.position.dtype) * slots)[:, None, None]
  routing = Routing(expert_index=flat(r.expert_index), weight=flat(r.weight),
                    position=flat(r.position + offset), valid=flat(r.valid),
                    num_experts=r.num_experts,
                    capacity=None if r.capacity is None else groups * r.capacity)
  maybe_flat = lambda a: None if a is None else flat(a)
  return RouterOutput(routing=routing, probs=maybe_flat(out.probs),
                      choice_counts=out.choice_counts.sum(0), logits=maybe_flat(out.logits),
                      zero_computation_weight=maybe_flat(out.zero_computation_weight),
                      family_loss=None if out.family_loss is None else out.family_loss.mean())


def _block_diagonal(r: DenseRouting) -> DenseRouting:
  """[G, S, E, n] per-group weights -> [G*S, E, G*n], zero across groups."""
  groups, per_group, experts, slots = r.dispatch.shape
  eye = jnp.eye(groups, dtype=r.dispatch.dtype)

  def merge(w):
    return jnp.einsum("gsen,gh->gsehn", w, eye).reshape(groups * per_group, experts,
                                                        groups * slots)
  return DenseRouting(dispatch=merge(r.dispatch), combine=merge(r.combine))
