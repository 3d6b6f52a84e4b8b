"""Load a model from any of the places moejax keeps one:

- a HuggingFace folder (config.json + safetensors): imported;
- a moejax model folder (model_config.json; what experiments/convert.py writes);
- a training workdir (checkpoints/ from experiments/train.py): its latest step.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Tuple

from moejax.convert.families import model_config_from_hf
from moejax.convert.hf_import import load_hf
from moejax.convert.model_dir import is_model_dir, load_model_dir, read_model_config
from moejax.convert.safetensors_io import read_hf_config
from moejax.models.config import ModelConfig


def _kind(path: str) -> str:
  """'model_dir', 'workdir' or 'hf' (FileNotFoundError for no folder)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no such folder (want a HuggingFace folder, a moejax "
                            "model folder or a training workdir)")
  if is_model_dir(path):
    return "model_dir"
  return "workdir" if os.path.isdir(os.path.join(path, "checkpoints")) else "hf"


def load_any(path: str) -> Tuple[ModelConfig, dict, Optional[dict]]:
  """(config, variables {'params', 'router_state'?}, original HF config or None)."""
  kind = _kind(path)
  if kind == "model_dir":
    return load_model_dir(path)
  if kind == "workdir":
    return _load_workdir(path)
  model = load_hf(path)
  return model.config, model.variables, model.hf_config


def tokenizer_folder(path: str) -> str:
  """Where the tokenizer of the model at `path` lives: `path` itself, or for a
  training workdir the data.tokenizer it was trained with (if any)."""
  config_file = os.path.join(path, "config.json")
  if os.path.isdir(os.path.join(path, "checkpoints")) and os.path.isfile(config_file):
    with open(config_file) as f:
      tokenizer = json.load(f).get("data", {}).get("tokenizer")
    if tokenizer:
      return tokenizer
  return path


def load_model_config(path: str) -> ModelConfig:
  """The ModelConfig of what load_any(path) would load, without reading weights."""
  kind = _kind(path)
  if kind == "model_dir":
    return read_model_config(path)
  if kind == "workdir":
    from moejax.train.checkpoint import Checkpointer
    from moejax.train.config import experiment_from_config
    checkpointer = Checkpointer(path, keep=1, async_save=False)
    try:
      step = checkpointer.latest_step()
      if step is None:
        raise FileNotFoundError(f"{path}/checkpoints holds no finished checkpoint")
      return experiment_from_config(checkpointer.saved_config(step)).model
    finally:
      checkpointer.close()
  return model_config_from_hf(read_hf_config(path))


def _load_workdir(workdir: str) -> Tuple[ModelConfig, dict, None]:
  from moejax.train.checkpoint import Checkpointer
  from moejax.train.config import experiment_from_config
  checkpointer = Checkpointer(workdir, keep=1, async_save=False)
  try:
    if checkpointer.latest_step() is None:
      raise FileNotFoundError(f"{workdir}/checkpoints holds no finished checkpoint")
    step, state = checkpointer.restore_as_saved()
    config = experiment_from_config(checkpointer.saved_config(step)).model
  finally:
    checkpointer.close()
  variables = {"params": state["params"]}
  if state.get("router_state"):
    variables["router_state"] = state["router_state"]
  return config, variables, None
