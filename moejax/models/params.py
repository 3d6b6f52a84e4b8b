"""Parameter counts of a model: all of them, and those one token uses."""

from __future__ import annotations

import re
from typing import Optional

import jax


def active_params(model_config, params, experts_per_token: Optional[float] = None) -> int:
  """Parameters a token uses: everything minus the experts it does not visit:
  top_k of num_experts (an upper bound with null experts; a base FFN the
  experts share, MoLoRA's, counts whole); for expert choice
  the average, capacity_factor; for Soft MoE 1 (a slot mixes many tokens);
  times mh_heads for MH-MoE (each sub-token visits its own experts); of
  SwitchHead's attention experts, attention_top_k per head.
  model_config: the ModelConfig of `params`; experts_per_token: a measured
  average to use instead of the router's (dynamic-k routers)."""
  total = (sum(x.size for x in jax.tree.leaves(params))
           - _inactive_attention_experts(model_config, params))
  if not model_config.moe_layers:
    return total
  r = model_config.moe.router
  if experts_per_token is None:
    experts_per_token = r.family.experts_per_token(r)
  per_token = experts_per_token * model_config.moe.mh_heads
  # A base FFN shared by all experts (MoLoRA's [1, in, out]) serves every token.
  shared_base = re.compile(r"\['w_(in|gate|out)'\]$" if model_config.moe.lora_shared_base
                           else r"(?!)")
  expert_leaves = [x for path, x in jax.tree_util.tree_leaves_with_path(params)
                   if "experts" in jax.tree_util.keystr(path)
                   and not shared_base.search(jax.tree_util.keystr(path))]
  expert_total = sum(x.size for x in expert_leaves)
  return total - expert_total + int(expert_total * per_token // r.num_experts)


def _inactive_attention_experts(model_config, params) -> int:
  """SwitchHead's expert kernels [heads, experts, in, out] a token skips."""
  experts = model_config.attention_experts
  if not experts:
    return 0
  kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(params)
             if x.ndim == 4 and re.search(r"'attention'\]\['(value|out)'\]\['kernel'",
                                          jax.tree_util.keystr(path))]
  size = sum(x.size for x in kernels)
  return size - size * model_config.attention_top_k // experts
