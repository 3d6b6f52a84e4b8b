"""Training from existing weights: `train.init_from=<folder>`.

The folder is anything moejax.train.sources.load_any reads: a HuggingFace
checkpoint, a moejax model folder (imported or upcycled) or a training
workdir (its latest checkpoint). The source defines the model:

- its ModelConfig replaces the config's model section (the config file's
  model fields are not used);
- model fields given on the command line (`--config.model.x=y`) are applied
  on top where they leave every weight's shape and name unchanged (router
  rule, dispatch, capacity, aux-loss-free bias rate, ...) or only add LoRA
  adapters (model.moe.lora_rank); one that changes a weight is refused in
  one line naming the field and the weight;
- the parameters (and router state, where the new router keeps its shape)
  start as the source's; the optimizer state and the step start fresh;
- a source with a tokenizer.json sets data.tokenizer to itself unless the
  config names one: its model reads that tokenizer's ids, not bytes.

A workdir that already ran resumes from its checkpoint: the model then comes
from the config.json the first run wrote, and the source is not read again
(it may be gone).
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from moejax.models import abstract_variables
from moejax.models.config import ModelConfig, model_config_from_mapping
from moejax.train.compatibility import migrate_saved_config
from moejax.train.optim import is_adapter
from moejax.validation import fail


class InitFromError(ValueError):
  """train.init_from's weights cannot start this run."""


def param_shapes(model: ModelConfig) -> Dict[Tuple[str, ...], Tuple[Tuple[int, ...], Any]]:
  """{(module, ..., name): (shape, dtype)} of a freshly initialised model's
  params (traced only: nothing is allocated)."""
  params = abstract_variables(model)["params"]
  return {k: (tuple(v.shape), v.dtype) for k, v in flatten_dict(params).items()}


def _first_difference(a: dict, b: dict, adapters_may_appear: bool = False) -> Optional[str]:
  """'params/x/kernel [32, 64] -> [32, 128]' for the first weight that differs;
  adapters_may_appear: LoRA adapters that only `b` has are additions."""
  for key in sorted(set(a) | set(b)):
    if adapters_may_appear and key not in a and is_adapter(key):
      continue
    if a.get(key, (None,))[0] != b.get(key, (None,))[0]:
      shape = lambda v: "absent" if v is None else list(v[0])
      return f"{'/'.join(key)} {shape(a.get(key))} -> {shape(b.get(key))}"
  return None


def _set_field(mapping: dict, path: str, value: Any) -> None:
  *parents, leaf = path.split(".")
  node = mapping
  for part in parents:
    if not isinstance(node.get(part), dict):
      fail(f"model.{path}", value, "is not a model field of train.init_from's model")
    node = node[part]
  if leaf not in node:
    fail(f"model.{path}", value, "is not a model field of train.init_from's model")
  node[leaf] = value


def model_with_overrides(source: ModelConfig, overrides: Dict[str, Any]) -> ModelConfig:
  """`source` with the given model fields ({'moe.router.top_k': 4, ...}: paths
  under model.) changed; ValueError (one line) for a field that changes a
  weight's shape or name."""
  if not overrides:
    return source
  from moejax.convert.model_dir import model_config_to_mapping
  base = model_config_to_mapping(source)
  if base.get("moe") is None and any(p.startswith("moe.") for p in overrides):
    path = next(p for p in overrides if p.startswith("moe."))
    fail(f"model.{path}", overrides[path], "train.init_from's model is dense (it has no MoE "
         "layers); upcycle it first (experiments/convert.py --mode=upcycle)")
  reference = param_shapes(source)
  merged = copy.deepcopy(base)
  for path, value in sorted(overrides.items()):
    _set_field(merged, path, value)
  config = model_config_from_mapping(merged)   # validation errors name their field
  changed = _first_difference(reference, param_shapes(config), adapters_may_appear=True)
  if not changed:
    return config
  for path, value in sorted(overrides.items()):  # name the field that does it
    single = copy.deepcopy(base)
    _set_field(single, path, value)
    try:
      alone = _first_difference(reference, param_shapes(model_config_from_mapping(single)),
                                adapters_may_appear=True)
    except ValueError:   # valid only together with another override
      continue
    if alone:
      fail(f"model.{path}", value, f"changes a weight of train.init_from's model ({alone}); "
           "only fields that keep every weight's shape can be overridden")
  fail("model", ", ".join(f"{k}={v!r}" for k, v in sorted(overrides.items())),
       f"together these change a weight of train.init_from's model ({changed})")


def _model_of_earlier_run(workdir: Optional[str], source: str) -> Optional[ModelConfig]:
  """The resolved model a previous run of `workdir` from `source` recorded."""
  path = os.path.join(workdir, "config.json") if workdir else None
  if not path or not os.path.isfile(path):
    return None
  with open(path) as f:
    saved = migrate_saved_config(json.load(f))
  if saved.get("train", {}).get("init_from") != source:
    return None
  return model_config_from_mapping(saved["model"])


def resolve_model(config, overrides: Dict[str, Any], workdir: Optional[str] = None):
  """The ConfigDict `config` (train.init_from set) with its model section
  replaced by the source's model plus `overrides` ({'model.x': value}); the
  one-line description of where the model came from. A `workdir` that already
  ran from the same source gives its recorded model instead of the source's."""
  from moejax.convert.model_dir import model_config_to_mapping
  from moejax.train.sources import load_model_config
  from moejax.data.tokenizer import has_tokenizer
  source = config.train.init_from
  model_overrides = {k[len("model."):]: v for k, v in overrides.items() if k.startswith("model.")}
  model = _model_of_earlier_run(workdir, source)
  if model is not None:
    source_text = f"{workdir}/config.json (a run from {source})"
  else:
    source_text = source
    try:
      model = load_model_config(source)
    except (ValueError, FileNotFoundError) as err:
      fail("train.init_from", source, str(err).splitlines()[0])
  tokenizer_note = ""
  if (os.path.isdir(source) and has_tokenizer(source) and model.kind == "lm"
      and config.data.tokenizer is None):
    # The model was trained on this tokenizer's ids: byte-level text would
    # train without error and mean nothing.
    config = copy.deepcopy(config)
    config.data.tokenizer = source
    tokenizer_note = f"; data.tokenizer={source} (its tokenizer)"
  model = model_with_overrides(model, model_overrides)
  resolved = copy.deepcopy(config)
  with resolved.unlocked():
    resolved.model = model_config_to_mapping(model)
  shown = ", ".join(f"model.{k}={v!r}" for k, v in sorted(model_overrides.items()))
  return resolved, (f"model from {source_text}" +
                    (f" with {shown}" if shown else "") +
                    f" (the config file's model section is not used){tokenizer_note}")


def initial_variables(model: ModelConfig, source: str, target: dict) -> dict:
  """The source's {'params', 'router_state'} cast to `target`'s dtypes (the
  freshly initialised variables of `model`). Router state the new router does
  not share (another router rule) keeps its fresh value."""
  from moejax.train.sources import load_any
  try:
    _, variables, _ = load_any(source)
  except (ValueError, FileNotFoundError) as err:
    raise InitFromError(f"train.init_from={source}: {str(err).splitlines()[0]}") from None
  # LoRA adapters the source lacks (model.moe.lora_rank set on top of it) keep
  # their fresh values: B = 0, so the adapted model starts as the source.
  loaded = flatten_dict(variables.get("params", {}))
  for key, value in flatten_dict(target["params"]).items():
    if key not in loaded and is_adapter(key):
      loaded[key] = value
  params = _matching("params", unflatten_dict(loaded), target["params"], source)
  router_state = target.get("router_state") or {}
  loaded = variables.get("router_state") or {}
  if router_state and _same_shapes(loaded, router_state):
    router_state = _matching("router_state", loaded, router_state, source)
  return {"params": params, "router_state": router_state}


def _same_shapes(a: dict, b: dict) -> bool:
  shapes = lambda tree: {k: tuple(np.shape(v)) for k, v in flatten_dict(tree).items()}
  return shapes(a) == shapes(b)


def _matching(what: str, loaded: dict, target: dict, source: str) -> dict:
  a = {k: (tuple(np.shape(v)),) for k, v in flatten_dict(loaded).items()}
  b = {k: (tuple(np.shape(v)),) for k, v in flatten_dict(target).items()}
  changed = _first_difference(b, a)
  if changed:
    raise InitFromError(f"train.init_from={source}: its {what} do not fit the model "
                        f"({changed}); was the folder changed since the run started?")
  return jax.tree.map(lambda v, t: jnp.asarray(v, t.dtype), loaded, target)
