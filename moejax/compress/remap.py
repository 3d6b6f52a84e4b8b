"""The one operation behind pruning and merging: each MoE layer's E experts
become E' linear mixtures of them.

  new[j] = sum_e mix[layer, j, e] * old[e]

for every per-expert array: the stacked expert weights [E, ...], the
router's projection columns (null-expert columns are kept as they are, after
the new experts) and the aux-loss-free expert biases. Pruning mixes with
one-hot rows (a selection, exact in floating point), merging with a group's
normalised frequencies.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import numpy as np

from moejax.config import ROUTER_FAMILIES
from moejax.models.config import ModelConfig

# Routers whose decision is a learned score per expert (RouterFamily.remappable):
# an expert's column can be dropped or mixed. Hash routing maps token ids to
# expert indices and Soft MoE mixes slots, so changing the experts there would
# change every decision.
REMAPPABLE_ROUTERS = tuple(name for name, family in ROUTER_FAMILIES.items() if family.remappable)


def moe_blocks(config: ModelConfig):
  """Names of the MoE blocks' variables, in block order."""
  return [f"block_{i}" for i in config.moe_layers]


def check_remappable(config: ModelConfig) -> int:
  """The model's expert count; ValueError when its experts cannot be remapped."""
  if config.moe is None or not config.moe_layers:
    raise ValueError("the model has no MoE layers")
  router = config.moe.router
  if config.moe.mh_heads > 1:
    raise ValueError(f"model.moe.mh_heads={config.moe.mh_heads}: MH-MoE layers cannot be pruned, "
                     "merged or quantized yet")
  if router.gating_residual:
    raise ValueError("router.gating_residual=True: layers with MoE++'s gating residual cannot "
                     "be pruned or merged yet (its [outputs, outputs] matrix is not remapped)")
  if not router.family.remappable:
    raise ValueError(f"router.name={router.name!r} cannot be pruned or merged: valid routers "
                     "are " + ", ".join(REMAPPABLE_ROUTERS))
  return router.num_experts


def check_target(target: int, num_experts: int) -> None:
  if not 1 <= target <= num_experts:
    raise ValueError(f"target={target} experts is invalid: must be between 1 and "
                     f"{num_experts}")


def _mix(mix: np.ndarray, array, axis: int):
  """Mixes `array` along `axis` (its E experts) into mix.shape[0] entries."""
  moved = np.moveaxis(np.asarray(array, np.float64), axis, 0)
  out = np.tensordot(mix, moved, axes=(1, 0))
  return np.moveaxis(out, 0, axis).astype(np.asarray(array).dtype)


def remap_experts(config: ModelConfig, variables: dict, mix,
                  renormalize: bool = False) -> Tuple[ModelConfig, dict]:
  """(config, variables) with each MoE layer's experts replaced by mixtures.

  Args:
    config: the model's ModelConfig.
    variables: its variables ({'params': ..., 'router_state': ...}); not
      modified.
    mix: [MoE layers, E', E] mixing weights.
    renormalize: also set router.normalize_top_k.
  Returns:
    The new ModelConfig (router.num_experts = E') and variables (numpy).
  """
  num_experts = check_remappable(config)
  mix = np.asarray(mix, np.float64)
  router = config.moe.router
  if mix.ndim != 3 or mix.shape[0] != len(config.moe_layers) or mix.shape[2] != num_experts:
    raise ValueError(f"mix has shape {mix.shape}: expected [{len(config.moe_layers)} MoE "
                     f"layers, new experts, {num_experts}]")
  target = mix.shape[1]
  check_target(target, num_experts)
  try:
    new_router = dataclasses.replace(router, num_experts=target,
                                     normalize_top_k=router.normalize_top_k or renormalize)
    new_config = dataclasses.replace(config, moe=dataclasses.replace(config.moe,
                                                                     router=new_router))
  except ValueError as err:
    raise ValueError(f"{target} experts: {err}") from None

  params = dict(variables["params"])
  state = dict(variables.get("router_state", {}))
  for name, layer_mix in zip(moe_blocks(config), mix):
    block = dict(params[name])
    moe = dict(block["moe"])
    moe["experts"] = {k: _mix(layer_mix, v, 0) for k, v in moe["experts"].items()}

    def columns(kernel):
      kernel = np.asarray(kernel)
      return np.concatenate([_mix(layer_mix, kernel[:, :num_experts], 1),
                             kernel[:, num_experts:]], axis=1)
    moe["router"] = {k: (columns(v) if k in ("kernel", "noise_kernel") else v)
                     for k, v in moe["router"].items()}
    block["moe"] = moe
    params[name] = block
    if name in state:
      bias = state[name]["moe"]["router"]["expert_bias"]
      state[name] = {"moe": {"router": {"expert_bias": _mix(layer_mix, bias, 0)}}}
  new_variables = {**variables, "params": params}
  if state:
    new_variables["router_state"] = state
  return new_config, new_variables
