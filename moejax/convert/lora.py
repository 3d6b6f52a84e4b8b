"""Merging LoRA expert adapters (model.moe.lora_rank) into the expert weights.

HuggingFace export merges them (the families have no adapter tensors): each
routed expert matrix becomes W + (lora_alpha / lora_rank) A B, exactly what
the adapted layer computes, and the config loses lora_rank. moejax model
folders and workdirs keep the adapters separate.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

from flax.traverse_util import flatten_dict, unflatten_dict

from moejax.experts import LORA_A, LORA_B, is_adapter_name, merge_adapters
from moejax.models.config import ModelConfig


def merge_lora(config: ModelConfig, variables: dict) -> Tuple[ModelConfig, dict]:
  """(config without adapters, variables with them merged); unchanged when
  the model has none."""
  if config.moe is None or not config.moe.lora_rank:
    return config, variables
  scale = config.moe.lora_alpha / config.moe.lora_rank
  flat = flatten_dict(variables["params"])
  merged = {k: v for k, v in flat.items() if not is_adapter_name(k[-1])}
  for key in [k for k in flat if k[-1].endswith(LORA_A)]:
    name = key[-1][:-len(LORA_A)]
    owner = key[:-1]
    adapters = {name: (flat[key], flat[owner + (name + LORA_B,)])}
    merged[owner + (name,)] = merge_adapters({name: flat[owner + (name,)]}, adapters,
                                             scale)[name]
  moe = dataclasses.replace(config.moe, lora_rank=0, lora_shared_base=False)
  return dataclasses.replace(config, moe=moe), {**variables, "params": unflatten_dict(merged)}
