"""A moejax model folder: what convert.py writes and generate.py reads.

    <dir>/model_config.json       ModelConfig as nested JSON
    <dir>/variables.safetensors   every variable, named by its path
                                  ('params/block_0/attention/query/kernel')
    <dir>/hf_config.json          (imports only) the original config.json
    <dir>/tokenizer.json, ...     the source's tokenizer files, where it has them
                                  (moejax.data.tokenizer)

Written into a temporary folder and renamed, so a failed write leaves nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Tuple

import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from moejax.convert.safetensors_io import read_safetensors, staged_dir, write_safetensors
from moejax.data.tokenizer import copy_tokenizer_files
from moejax.models.config import ModelConfig, model_config_from_mapping
from moejax.routing.config import migrate_flat_router_fields, router_config_to_mapping

CONFIG_FILE = "model_config.json"
VARIABLES_FILE = "variables.safetensors"
HF_CONFIG_FILE = "hf_config.json"


def model_config_to_mapping(config: ModelConfig) -> dict:
  """A JSON-able nested dict that model_config_from_mapping reads back."""
  values = dataclasses.asdict(config)
  values["dense_layers"] = list(config.dense_layers)
  if config.moe is not None:
    values["moe"]["router"] = router_config_to_mapping(config.moe.router)
  return values


def save_model_dir(directory: str, config: ModelConfig, variables: dict,
                   hf_config: Optional[dict] = None, tokenizer_from: Optional[str] = None) -> None:
  """Writes a new model folder; `tokenizer_from`: a folder whose tokenizer files
  are copied along."""
  with staged_dir(directory) as staging:
    copy_tokenizer_files(tokenizer_from, staging)
    with open(os.path.join(staging, CONFIG_FILE), "w") as f:
      json.dump(model_config_to_mapping(config), f, indent=2)
    flat = {"/".join(path): np.asarray(v) for path, v in flatten_dict(variables).items()}
    write_safetensors(os.path.join(staging, VARIABLES_FILE), flat)
    if hf_config is not None:
      with open(os.path.join(staging, HF_CONFIG_FILE), "w") as f:
        json.dump(hf_config, f, indent=2)


def is_model_dir(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, CONFIG_FILE))


def read_model_config(directory: str) -> ModelConfig:
  if not is_model_dir(directory):
    raise FileNotFoundError(f"{directory} is not a moejax model folder (no {CONFIG_FILE})")
  with open(os.path.join(directory, CONFIG_FILE)) as f:
    values = json.load(f)
  if isinstance(values.get("moe"), dict) and isinstance(values["moe"].get("router"), dict):
    values["moe"]["router"] = migrate_flat_router_fields(values["moe"]["router"])
  return model_config_from_mapping(values)


def load_model_dir(directory: str) -> Tuple[ModelConfig, dict, Optional[dict]]:
  """(config, variables, original HF config or None) of a model folder."""
  config = read_model_config(directory)
  flat = read_safetensors(os.path.join(directory, VARIABLES_FILE))
  variables = unflatten_dict({tuple(k.split("/")): jnp.asarray(v) for k, v in flat.items()})
  hf_config = None
  if os.path.isfile(os.path.join(directory, HF_CONFIG_FILE)):
    with open(os.path.join(directory, HF_CONFIG_FILE)) as f:
      hf_config = json.load(f)
  return config, variables, hf_config
