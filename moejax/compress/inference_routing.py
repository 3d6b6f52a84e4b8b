"""Sparser routing at inference: the same trained weights run with fewer (or
more) experts per token, and what it costs in held-out loss.

The point of DS-MoE (router.dense_training): a layer trained with every
expert active is run with top-k or a probability threshold. The sweep also
applies to any token-choice model (a top-2 model run with top-1). Each
variant replaces only the router's inference rule:

  'dense'        every routed expert (top_k = E; not with zero-computation
                 experts)
  'top-k'        the k best experts
  'threshold p'  XMoE dynamic-k: best experts until their probability
                 reaches p (softmax routers)

Rows: eval loss / accuracy (the trainer's eval step), the measured mean
experts per token over the eval batches, and active parameters from it.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import jax
import numpy as np

from moejax.compress.measure import evaluate
from moejax.models import build_model
from moejax.models.config import ModelConfig
from moejax.models.params import active_params
from moejax.routing.threshold import ThresholdOptions

TOKEN_CHOICE = ("top_k", "threshold")


def routing_variants(config: ModelConfig, top_ks: Sequence[int] = (),
                     thresholds: Sequence[float] = ()) -> List[Tuple[str, ModelConfig]]:
  """[(name, config)]: 'dense', then top-k per k, then threshold per p.
  Raises ValueError (one line) for a model they cannot apply to."""
  moe = config.moe
  if moe is None or not config.moe_layers:
    raise ValueError("the model has no MoE layers: nothing to route")
  router = moe.router
  if router.name not in TOKEN_CHOICE:
    raise ValueError(f"model.moe.router.name={router.name!r}: inference routing sweeps need a "
                     f"token-choice router ({', '.join(TOKEN_CHOICE)})")
  experts = router.num_experts
  for k in top_ks:
    if not 1 <= k <= experts:
      raise ValueError(f"top_k={k} is invalid: must be in [1, {experts}] (experts per layer)")
  for p in thresholds:
    if not 0 < p <= 1:
      raise ValueError(f"threshold={p} is invalid: must be in (0, 1]")

  def variant(**fields):
    r = dataclasses.replace(router, **{"capacity_factor": None, "options": None, **fields})
    return dataclasses.replace(config, moe=dataclasses.replace(moe, router=r))
  # 'dense' = every routed expert; with zero-computation experts top-E is not that.
  zero = router.num_zero_computation_experts
  rows = [("dense", variant(name="top_k", top_k=experts))] if not zero else []
  rows += [(f"top-{k}", variant(name="top_k", top_k=k)) for k in top_ks]
  rows += [(f"threshold {p:g}", variant(name="threshold", top_k=experts + zero,
                                                      options=ThresholdOptions(probability=p)))
           for p in thresholds]
  return rows


def experts_per_token(config: ModelConfig, variables: dict, batches: Sequence[dict]) -> float:
  """Mean routed experts a token visits, over the MoE layers and `batches`."""
  model = build_model(config)
  apply = jax.jit(lambda inputs: model.apply(variables, inputs)[1])
  assignments = tokens = 0.0
  for batch in batches:
    aux = apply(batch["inputs"])
    for layer in aux.values():
      assignments += float(layer.metrics["tokens_per_expert"].sum())
      tokens += float(np.prod(batch["inputs"].shape[:2] if config.kind == "lm"
                              else batch["inputs"].shape[:1]))
  return assignments / max(tokens, 1.0)


def sweep(variants: Sequence[Tuple[str, ModelConfig]], variables: dict,
          batches: Sequence[dict]) -> List[Dict]:
  """One row per variant: routing, experts_per_token, active_params,
  active_fraction (of all parameters), eval_loss, eval_accuracy."""
  params = variables["params"]
  total = sum(np.size(x) for x in jax.tree.leaves(params))
  rows = []
  for name, config in variants:
    per_token = experts_per_token(config, variables, batches)
    active = active_params(config, params, experts_per_token=per_token)
    rows.append({"routing": name, "experts_per_token": per_token, "active_params": int(active),
                 "active_fraction": active / total, **evaluate(config, variables, batches)})
  return rows
