"""The ml_collections ConfigDict of an experiment, generated from the
validated dataclasses' defaults so that every field exists (and can be set
with --config.x=y) and there is one source of defaults.

  seed
  model: ModelConfig fields; model.moe: MoEConfig fields but d_model;
         model.moe.router: RouterConfig fields, and one section per router
         family with options (model.moe.router.soft_moe.num_slots, ...);
         model.lm, model.vit,
         model.mla: LMConfig, ViTConfig, MLAConfig fields
  data:  DataConfig fields
  train: TrainConfig fields
  mesh:  MeshConfig fields (moejax.parallel): device mesh axis sizes

Config files in configs/ start from `experiment_config()` and change what
differs. Fields whose default is None become typed placeholders.
"""

from __future__ import annotations

import dataclasses
import typing

import ml_collections
from ml_collections import config_dict

from moejax.config import MoEConfig, RouterConfig
from moejax.routing.config import option_sections
from moejax.data.config import DataConfig
from moejax.models.config import SUB_CONFIGS, ModelConfig
from moejax.parallel.mesh import MeshConfig
from moejax.train.config import TrainConfig


def _section(cls, skip=()) -> ml_collections.ConfigDict:
  hints = typing.get_type_hints(cls)
  out = ml_collections.ConfigDict()
  for field in dataclasses.fields(cls):
    if field.name in skip:
      continue
    default = field.default
    if default is None:
      inner = [t for t in typing.get_args(hints[field.name]) if t is not type(None)]
      out[field.name] = config_dict.placeholder(typing.get_origin(inner[0]) or inner[0])
    else:
      out[field.name] = default
  return out


def experiment_config() -> ml_collections.ConfigDict:
  """Every field at its default: a 4-block byte-level MoE LM on pydoc_bytes."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = _section(ModelConfig, skip=("moe",) + tuple(SUB_CONFIGS))
  for name, cls in SUB_CONFIGS.items():
    config.model[name] = _section(cls)
  config.model.moe = _section(MoEConfig, skip=("router", "d_model"))
  config.model.moe.router = _section(RouterConfig, skip=("options",))
  for family, options in option_sections().items():
    config.model.moe.router[family] = _section(options)
  config.data = _section(DataConfig)
  config.train = _section(TrainConfig)
  config.mesh = _section(MeshConfig)
  return config


def dense_baseline(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The dense model with the MoE config's active parameters: MoE blocks become
  dense FFNs of width top_k * expert d_ff (the width a token actually uses)."""
  config.model.moe_every = 0
  config.model.dense_d_ff = config.model.moe.router.top_k * config.model.moe.d_ff
  return config
