"""What a compressed model is measured on: size and held-out loss.

One row per model: experts per MoE layer, total and active parameters,
bytes of weights (quantize.weight_bytes) and eval loss / accuracy over fixed
batches, computed by the trainer's own eval step.
"""

from __future__ import annotations

from typing import Dict, Iterable

import jax
import numpy as np

from moejax.compress.quantize import weight_bytes
from moejax.models import build_model
from moejax.models.config import ModelConfig
from moejax.models.params import active_params
from moejax.train.step import make_eval_step


def evaluate(config: ModelConfig, variables: dict, batches: Iterable[dict]) -> Dict[str, float]:
  """{'eval_loss', 'eval_accuracy'}: mean per target over `batches`
  ({'inputs', 'targets', 'mask'} numpy dicts, as the data pipeline gives)."""
  step = jax.jit(make_eval_step(build_model(config)))
  state = {"params": variables["params"], "router_state": variables.get("router_state", {})}
  ce = correct = count = 0.0
  for batch in batches:
    sums = step(state, batch)
    ce += float(sums["ce_sum"])
    correct += float(sums["correct_sum"])
    count += float(sums["count"])
  if not count:
    raise ValueError("no evaluation batches: the eval data is empty")
  return {"eval_loss": ce / count, "eval_accuracy": correct / count}


def size_row(config: ModelConfig, variables: dict) -> Dict[str, int]:
  """{'experts', 'total_params', 'active_params', 'weight_bytes'}."""
  params = variables["params"]
  return {"experts": config.moe.router.num_experts if config.moe else 0,
          "total_params": int(sum(np.size(x) for x in jax.tree.leaves(params))),
          "active_params": int(active_params(config, params)),
          "weight_bytes": int(weight_bytes(config, variables))}
