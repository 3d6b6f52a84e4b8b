"""Import a HuggingFace safetensors checkpoint as a moejax TransformerLM.

    model = load_hf("path/to/folder")          # config.json + safetensors
    logits, _ = TransformerLM(model.config).apply(model.variables, tokens)

Every moejax variable must come from the checkpoint (a missing tensor or a
shape that config.json does not imply is one clear error), and every
checkpoint tensor must be used: a tensor the plan does not read would be a
part of the original model that moejax silently leaves out. The only
exceptions (`ignored_tensor`, reported in `ImportedModel.unused`) are
tensors that do not take part in the forward pass: DeepSeek-V3's
multi-token-prediction layers (past num_hidden_layers) and the RoPE
`inv_freq` buffers older transformers saved.

The sizes config.json gives (layers, experts, vocabulary, width) are checked
against the tensors before the model is built, so an absurd config.json
fails at once instead of tracing a model of a million layers.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import warnings
from typing import Dict, List, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from moejax.convert.families import family_spec, model_config_from_hf
from moejax.convert.layout import (BackboneNames, Experts, Linear, Vector, hf_linear_shape,
                                   tensor_plan)
from moejax.convert.mxfp4 import dequantize_checkpoint
from moejax.convert.safetensors_io import read_checkpoint_dir
from moejax.models import abstract_variables
from moejax.models.config import ModelConfig


class CheckpointMismatchError(ValueError):
  """Checkpoint tensors that do not fit the model config.json describes."""


_EXPERT = re.compile(r"\.experts\.(\d+)\.")


@functools.lru_cache(maxsize=None)
def _block_pattern(names: BackboneNames) -> re.Pattern:
  """Matches a tensor of block i, capturing i."""
  return re.compile("^" + re.escape(names.block).replace(re.escape("{i}"), r"(\d+)") + r"\.")


def ignored_tensor(name: str, config: ModelConfig,
                   names: BackboneNames = BackboneNames()) -> bool:
  """Whether a checkpoint tensor may go unused (see module docstring)."""
  if name.endswith("rotary_emb.inv_freq"):
    return True
  layer = _block_pattern(names).match(name)
  return bool(layer) and int(layer.group(1)) >= config.num_layers


def check_sizes(config: ModelConfig, tensors: Mapping[str, np.ndarray], model_type: str,
                hf: dict) -> None:
  """CheckpointMismatchError when config.json's layer count, vocabulary,
  width or expert count disagrees with the tensors (cheap: names and shapes,
  and the layout plan only once the layer count is known to be real)."""
  spec = family_spec(model_type)
  names = spec.names
  embed = tensors.get(names.embed)
  if embed is None:
    raise CheckpointMismatchError(f"checkpoint has no tensor {names.embed!r}")
  if tuple(embed.shape) != (config.lm.vocab_size, config.d_model):
    raise CheckpointMismatchError(
        f"tensor {names.embed!r} has shape {tuple(embed.shape)}; config.json's "
        f"vocab_size={config.lm.vocab_size}, hidden_size={config.d_model} imply "
        f"{(config.lm.vocab_size, config.d_model)}")
  block = _block_pattern(names)
  layers = {int(m.group(1)) for m in map(block.match, tensors) if m}
  missing = next((i for i in range(config.num_layers) if i not in layers), None)
  if missing is not None:
    raise CheckpointMismatchError(
        f"config.json num_hidden_layers={config.num_layers}, but the checkpoint has no tensors "
        f"of layer {missing} (it has {len(layers)} layers)")
  if config.moe is None or not config.moe_layers:
    return
  fused_down = [e for e in tensor_plan(config, spec, hf)
                if isinstance(e, Experts) and e.part == "down"]
  first = names.block.format(i=config.moe_layers[0]) + "."
  layer_tensors = [n for n in tensors if n.startswith(first)]
  per_expert = {int(m.group(1)) for m in map(_EXPERT.search, layer_tensors) if m}
  # Fused tensors lead with the expert axis, or with experts x d_ff rows (DBRX).
  fused = [tensors[n].shape[0] // (config.moe.d_ff if e.stacked_rows else 1)
           for e in fused_down for n in e.fused if n.startswith(first) and n in tensors]
  found = max(per_expert) + 1 if per_expert else (fused[0] if fused else 0)
  if found != config.moe.router.num_experts:
    raise CheckpointMismatchError(
        f"config.json gives {config.moe.router.num_experts} experts per MoE layer, but layer "
        f"{config.moe_layers[0]} of the checkpoint has {found}")


@dataclasses.dataclass
class ImportedModel:
  config: ModelConfig
  variables: dict            # {'params': ..., 'router_state': ...} as TransformerLM wants
  hf_config: dict            # the original config.json
  unused: List[str]          # tensors left out by ignored_tensor (MTP layers, inv_freq)


def variable_shapes(config: ModelConfig) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """{variable path: shape} of TransformerLM(config), without allocating it."""
  return {path: tuple(leaf.shape)
          for path, leaf in flatten_dict(abstract_variables(config, seq_len=1)).items()}


class _Reader:
  """Looks tensors up by candidate names and records which were read."""

  def __init__(self, tensors: Mapping[str, np.ndarray]):
    self.tensors, self.used = tensors, set()

  def find(self, names) -> str:
    for name in names:
      if name in self.tensors:
        return name
    return ""

  def take(self, names, expected: Tuple[int, ...], what: str) -> np.ndarray:
    name = self.find(names)
    if not name:
      raise CheckpointMismatchError(f"checkpoint has no tensor {names[0]!r} (needed for {what})")
    array = self.tensors[name]
    if tuple(array.shape) != tuple(expected):
      raise CheckpointMismatchError(f"tensor {name!r} has shape {tuple(array.shape)}; "
                                    f"config.json implies {tuple(expected)}")
    self.used.add(name)
    return np.asarray(array, dtype=np.float32)


def _expert_stack(reader: _Reader, entry: Experts, shape: Tuple[int, ...]) -> np.ndarray:
  """[E, in, out] stacked moejax weight (or [E, out] bias) from per-expert or
  fused tensors."""
  fused = reader.find(entry.fused)
  what = "/".join(entry.path)
  if fused and not reader.find([t.format(e=0) for t in entry.per_expert]):
    return entry.from_fused(reader.take((fused,), entry.fused_shape(shape), what), shape)
  num_experts, a, b = shape
  template = next((t for t in entry.per_expert if t.format(e=0) in reader.tensors),
                  entry.per_expert[0])
  return np.stack([reader.take((template.format(e=e),), (b, a), what).T
                   for e in range(num_experts)])


def import_tensors(config: ModelConfig, model_type: str, hf: dict,
                   tensors: Mapping[str, np.ndarray]) -> Tuple[dict, List[str]]:
  """(variables, ignored tensor names) for `config` from HF-named tensors.
  CheckpointMismatchError for a tensor that is missing, mis-shaped or unused."""
  check_sizes(config, tensors, model_type, hf)
  spec = family_spec(model_type)
  plan = tensor_plan(config, spec, hf)
  names = spec.names
  shapes = variable_shapes(config)
  if hf.get("tie_word_embeddings"):
    plan = [dataclasses.replace(e, names=e.names + (names.embed,))
            if isinstance(e, Linear) and e.names == ("lm_head.weight",) else e for e in plan]
  reader = _Reader(tensors)
  flat = {}
  for entry in plan:
    if entry.path not in shapes:
      raise AssertionError(f"layout names {entry.path}, which the model does not have")
    shape = shapes[entry.path]
    what = "/".join(entry.path)
    if isinstance(entry, Linear):
      out_rows, in_width = hf_linear_shape(shape, entry.in_axes)
      if entry.rows is None:
        weight = reader.take(entry.names, (out_rows, in_width), what)
      else:  # a slice of a fused weight's rows
        start, stop, total = entry.rows
        weight = reader.take(entry.names, (total, in_width), what)[start:stop]
      kernel = weight.T.reshape(shape)
      if entry.perm is not None:
        kernel = kernel[..., list(entry.perm)]
      flat[entry.path] = kernel
    elif isinstance(entry, Vector):
      hf_shape = entry.hf_shape or ((int(np.prod(shape)),) if entry.flat else shape)
      vector = reader.take(entry.names, hf_shape, what).reshape(shape)
      flat[entry.path] = vector if entry.perm is None else vector[..., list(entry.perm)]
    else:
      flat[entry.path] = _expert_stack(reader, entry, shape)
  uncovered = sorted(set(shapes) - set(flat))
  if uncovered:
    raise AssertionError(f"no checkpoint tensor maps to {'/'.join(uncovered[0])}")
  unused = sorted(set(tensors) - reader.used)
  unexpected = [name for name in unused if not ignored_tensor(name, config, names)]
  if unexpected:
    raise CheckpointMismatchError(
        f"checkpoint tensor {unexpected[0]!r} ({len(unexpected)} in all) is not used by the "
        f"moejax model that config.json describes: importing without it would compute "
        f"something else. The config option it belongs to is not supported")
  variables = jax.tree.map(jnp.asarray, unflatten_dict(flat))
  return variables, unused


def load_hf(directory: str) -> ImportedModel:
  """Reads config.json + safetensors from `directory` into an ImportedModel.

  Parameters are float32 whatever the checkpoint's dtype; MXFP4 experts
  (gpt-oss) are dequantized (moejax.convert.mxfp4).
  """
  hf, tensors = read_checkpoint_dir(directory)
  config = model_config_from_hf(hf)
  if (hf.get("quantization_config") or {}).get("quant_method") == "mxfp4":
    tensors = dequantize_checkpoint(tensors)
  variables, unused = import_tensors(config, hf["model_type"], hf, tensors)
  if unused:
    warnings.warn(f"{len(unused)} checkpoint tensors take no part in the forward pass and are "
                  f"not imported, e.g. {', '.join(unused[:3])}", stacklevel=2)
  return ImportedModel(config, variables, hf, unused)
