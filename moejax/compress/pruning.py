"""Expert pruning: keep, per MoE layer, the experts calibration data uses most.

  stats = expert_statistics(config, variables, batches, "frequency")  # [L, E]
  config, variables = prune_experts(config, variables, keep_most_used(stats, 6))

Statistics per MoE layer and expert, summed over calibration batches:
  frequency      assignments the expert received (after capacity drops);
  router_weight  the gate weight those assignments carried.

Pruning keeps rows of each expert bank's stacked weights, columns of the
router's projection (null-expert columns stay, after the kept experts) and
entries of the aux-loss-free expert biases (remap.py); the router then only
scores the kept experts. Every MoE layer keeps the same number of experts
(ModelConfig has one MoE config), each its own. With renormalize=True the
router's top-k weights are renormalised to sum to one
(router.normalize_top_k), so a token keeps its full gate mass when an expert
it used to pick is gone.

No pruning library fits moejax's stacked expert banks, so this is written
here: it is indexing, not numerics.
"""

from __future__ import annotations

from typing import Iterable, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from moejax.compress.remap import check_remappable, check_target, moe_blocks, remap_experts
from moejax.models import build_model
from moejax.models.config import ModelConfig

STATISTICS = ("frequency", "router_weight")
_METRIC = {"frequency": "tokens_per_expert", "router_weight": "weight_per_expert"}


def expert_statistics(config: ModelConfig, variables: dict, batches: Iterable,
                      statistic: str = "frequency") -> np.ndarray:
  """[MoE layers, E] float64 statistic summed over `batches` (model inputs:
  token ids [B, S] for an LM, images for a ViT), in block order."""
  if statistic not in STATISTICS:
    raise ValueError(f"statistic={statistic!r} is invalid: valid values are "
                     + ", ".join(repr(s) for s in STATISTICS))
  model = build_model(config)
  blocks = moe_blocks(config)

  @jax.jit
  def stats(variables, inputs):  # weights as arguments, not baked-in constants
    _, aux = model.apply(variables, inputs)
    return jnp.stack([aux[b].metrics[_METRIC[statistic]] for b in blocks])

  total = None
  for inputs in batches:
    value = np.asarray(stats(variables, jnp.asarray(inputs)), np.float64)
    total = value if total is None else total + value
  if total is None:
    raise ValueError("no calibration batches: the calibration data is empty")
  return total


def keep_most_used(stats: np.ndarray, target: int) -> np.ndarray:
  """[L, target] int indices of each layer's `target` highest-statistic
  experts, ascending (ties keep the lower index)."""
  check_target(target, stats.shape[1])
  order = np.argsort(-stats, axis=1, kind="stable")[:, :target]
  return np.sort(order, axis=1)


def prune_experts(config: ModelConfig, variables: dict, keep,
                  renormalize: bool = False) -> Tuple[ModelConfig, dict]:
  """(config, variables) with only the `keep` experts of each MoE layer.

  Args:
    config: the model's ModelConfig.
    variables: its variables ({'params': ..., 'router_state': ...}).
    keep: [MoE layers, E'] expert indices per layer, e.g. keep_most_used.
    renormalize: set router.normalize_top_k (the kept top-k weights of a
      token then sum to one).
  Returns:
    The new ModelConfig (router.num_experts = E') and variables; the inputs
    are not modified.
  """
  num_experts = check_remappable(config)
  keep = np.asarray(keep)
  layers = len(config.moe_layers)
  if keep.ndim != 2 or keep.shape[0] != layers:
    raise ValueError(f"keep has shape {keep.shape}: expected [{layers} MoE layers, experts]")
  target = keep.shape[1]
  check_target(target, num_experts)
  for row in keep:
    if len(set(row.tolist())) != target or row.min() < 0 or row.max() >= num_experts:
      raise ValueError(f"keep={row.tolist()} is invalid: distinct expert indices in "
                       f"[0, {num_experts}) expected")
  mix = np.zeros((layers, target, num_experts))
  for layer, row in enumerate(keep):
    mix[layer, np.arange(target), row] = 1.0
  return remap_experts(config, variables, mix, renormalize)
