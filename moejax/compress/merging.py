"""Expert merging: group similar experts and replace each group by one
expert, their frequency-weighted average (the M-SMoE / HC-SMoE family).

  logits = router_logits(config, variables, batches)          # per layer [N, E]
  freq = expert_statistics(config, variables, batches)        # [L, E]
  groups = group_experts(logit_similarity(logits), target)    # per layer
  config, variables = merge_experts(config, variables, groups, freq)

Similarity of two experts is the cosine of their router-logit columns over
the calibration tokens (experts the router scores alike see alike tokens).
Groups come from average-linkage agglomerative clustering down to `target`
groups per layer. A group's expert weights, router column and expert bias
become its members' average weighted by calibration frequency (uniform
when no member was used). Merging a group of identical experts therefore
gives that expert back exactly.

Written here rather than taken from a library: scipy's clustering would be
a new dependency for twenty lines, and the mixing itself is remap.py.
"""

from __future__ import annotations

from typing import Iterable, List, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from moejax.compress.remap import check_remappable, check_target, moe_blocks, remap_experts
from moejax.models import build_model
from moejax.models.config import ModelConfig
from moejax.moe import Router


def router_logits(config: ModelConfig, variables: dict, batches: Iterable) -> List[np.ndarray]:
  """Per MoE layer, [calibration tokens, E] float32 router logits of the real
  experts (null-expert columns dropped), over all `batches`."""
  num_experts = check_remappable(config)
  model = build_model(config)

  @jax.jit
  def capture(variables, inputs):
    _, state = model.apply(variables, inputs, capture_intermediates=lambda m, _: isinstance(
        m, Router), mutable=["intermediates"])
    found = nn.unbox(state["intermediates"])
    return [found[b]["moe"]["router"]["__call__"][0].logits[:, :num_experts]
            for b in moe_blocks(config)]

  per_layer = None
  for inputs in batches:
    logits = [np.asarray(x) for x in capture(variables, jnp.asarray(inputs))]
    per_layer = logits if per_layer is None else [
        np.concatenate([a, b]) for a, b in zip(per_layer, logits)]
  if per_layer is None:
    raise ValueError("no calibration batches: the calibration data is empty")
  return per_layer


def logit_similarity(logits: Sequence[np.ndarray]) -> np.ndarray:
  """[L, E, E] cosine similarity of the router-logit columns per layer."""
  sims = []
  for layer in logits:
    cols = np.asarray(layer, np.float64)
    cols = cols / np.maximum(np.linalg.norm(cols, axis=0, keepdims=True), 1e-12)
    sims.append(cols.T @ cols)
  return np.stack(sims)


def group_experts(similarity: np.ndarray, target: int) -> List[List[List[int]]]:
  """Per layer, `target` groups of expert indices (each sorted, groups ordered
  by their first member): average-linkage clustering on `similarity`."""
  layers, num_experts, _ = similarity.shape
  check_target(target, num_experts)
  result = []
  for sim in similarity:
    groups = [[e] for e in range(num_experts)]
    while len(groups) > target:
      best, pair = -np.inf, None
      for i in range(len(groups)):
        for j in range(i + 1, len(groups)):
          linkage = sim[np.ix_(groups[i], groups[j])].mean()
          if linkage > best:
            best, pair = linkage, (i, j)
      i, j = pair
      groups[i] = sorted(groups[i] + groups[j])
      del groups[j]
    result.append(sorted(groups))
  return result


def merge_experts(config: ModelConfig, variables: dict, groups, frequency,
                  renormalize: bool = False) -> Tuple[ModelConfig, dict]:
  """(config, variables) with each layer's groups merged into one expert.

  Args:
    groups: per MoE layer, a partition of range(E) into E' groups (the same
      E' in every layer), e.g. group_experts.
    frequency: [L, E] calibration frequencies (expert_statistics).
    renormalize: also set router.normalize_top_k.
  """
  num_experts = check_remappable(config)
  frequency = np.asarray(frequency, np.float64)
  if len(groups) != len(config.moe_layers) or frequency.shape != (len(groups), num_experts):
    raise ValueError(f"groups for {len(groups)} layers and frequency {frequency.shape}: "
                     f"expected {len(config.moe_layers)} MoE layers of {num_experts} experts")
  target = len(groups[0])
  mix = np.zeros((len(groups), target, num_experts))
  for layer, layer_groups in enumerate(groups):
    members = sorted(e for g in layer_groups for e in g)
    if len(layer_groups) != target or members != list(range(num_experts)):
      raise ValueError(f"groups={layer_groups} of MoE layer {layer} are invalid: a partition "
                       f"of the {num_experts} experts into {target} groups expected")
    for j, group in enumerate(layer_groups):
      weights = frequency[layer, group]
      weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(group),
                                                                           1 / len(group))
      mix[layer, j, group] = weights
  return remap_experts(config, variables, mix, renormalize)
