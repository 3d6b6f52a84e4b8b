"""Export a moejax TransformerLM as a HuggingFace checkpoint folder
(config.json + safetensors) that transformers loads as the chosen family.

The written config.json is read back through `model_config_from_hf` and must
describe the same computation as the moejax config, so a model this family
cannot express (a GELU MLP, expert-choice routing, ...) is refused with the
first differing field instead of being written wrong. Training-only settings
(capacity, jitter, dispatch strategy, dtype) are not part of that
comparison: the exported model routes without capacity limits.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np
from flax.traverse_util import flatten_dict

from moejax.convert.families import (FAMILIES, UnsupportedModelError, family_spec,
                                     model_config_from_hf, rope_parameters)
from moejax.convert.layout import Experts, Linear, tensor_plan
from moejax.convert.lora import merge_lora
from moejax.convert.safetensors_io import write_checkpoint_dir
from moejax.models.config import ModelConfig

LAYOUTS = ("per_expert", "fused")
# Settings that change how a model trains, not what its weights compute.
_ROUTER_TRAINING = dict(capacity_factor=None, min_capacity=1, drop_policy="position",
                        jitter_noise=0.0, noisy_top_k=False, second_expert_sampling=False,
                        expert_bias_update_rate=1e-3, routing_groups=1,
                        dense_training=False)  # DS-MoE infers with the sparse rule
_MOE_TRAINING = dict(dispatch="dropless", gmm_backend="auto", gmm_block_size=128,
                     dtype="float32")


def hf_config_from_model(cfg: ModelConfig, model_type: str,
                         base: Optional[dict] = None) -> dict:
  """config.json for `cfg` as `model_type`, on top of `base` (e.g. the
  config.json it was imported from: token ids and other fields are kept):
  the Llama-style fields, then the family's own (its spec's `export`)."""
  try:
    spec = family_spec(model_type)
  except UnsupportedModelError:
    raise UnsupportedModelError(f"model_type={model_type!r} is not supported; supported: "
                                f"{', '.join(FAMILIES)}") from None
  hf = dict(base or {})
  hf.pop("quantization_config", None)  # the export is float
  if spec.export_config is not None:
    return spec.export_config(cfg, hf)
  hf.pop("rope_scaling", None)
  hf.update(
      model_type=model_type, architectures=[spec.architecture],
      vocab_size=cfg.lm.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.kv_heads,
      head_dim=cfg.head_size, intermediate_size=cfg.dense_d_ff, hidden_act="silu",
      rms_norm_eps=cfg.norm_eps, rope_theta=cfg.lm.rope_theta,
      rope_parameters=rope_parameters(cfg.lm),
      tie_word_embeddings=False, sliding_window=cfg.attention_window or None,
      use_sliding_window=bool(cfg.attention_window), attention_bias=cfg.attention_bias,
      dtype="float32")
  if cfg.attention == "mla":
    hf.update(num_key_value_heads=cfg.num_heads, head_dim=cfg.mla.rope_dim,
              q_lora_rank=cfg.mla.q_rank or None, kv_lora_rank=cfg.mla.kv_rank,
              qk_nope_head_dim=cfg.mla.nope_dim, qk_rope_head_dim=cfg.mla.rope_dim,
              qk_head_dim=cfg.mla.nope_dim + cfg.mla.rope_dim, v_head_dim=cfg.mla.v_dim,
              rope_interleave=hf.get("rope_interleave", True))
  if cfg.moe is not None:
    hf["num_experts_per_tok"] = cfg.moe.router.top_k
  if cfg.lm.rope_scaling == "dynamic":  # its unscaled context is config.json's
    hf["max_position_embeddings"] = cfg.lm.rope_max_positions
  if hf.get("layer_types") or cfg.full_attention_layers:
    hf["layer_types"] = ["sliding_attention" if cfg.window_of(i) else "full_attention"
                         for i in range(cfg.num_layers)]
  spec.export(cfg, hf)
  return hf


def _comparable(cfg: ModelConfig) -> dict:
  """cfg's fields that decide what the weights compute, as a flat dict."""
  moe = None
  if cfg.moe is not None and cfg.moe_layers:
    router = dataclasses.replace(cfg.moe.router, **_ROUTER_TRAINING)
    moe = dataclasses.replace(cfg.moe, router=router, **_MOE_TRAINING)
  dense_ff = cfg.dense_d_ff if len(cfg.moe_layers) < cfg.num_layers else None
  flat = dataclasses.asdict(dataclasses.replace(cfg, moe=moe, dtype="float32"))
  flat["vit"] = None  # an LM export: config.json has no ViT fields
  flat.update(dense_d_ff=dense_ff, moe_every=cfg.moe_every if moe else 0,
              dense_layers=tuple(i for i in cfg.dense_layers if cfg.moe_every))
  flat["num_kv_heads"], flat["head_dim"] = cfg.kv_heads, cfg.head_size
  if cfg.attention == "mla":
    flat["num_kv_heads"] = flat["head_dim"] = None
  else:
    flat["mla"] = None
  return flatten_dict(flat, sep=".")


def check_exportable(cfg: ModelConfig, model_type: str, hf: dict) -> None:
  """Raises UnsupportedModelError when `hf` (as read back) computes something
  other than `cfg`, naming the first field that differs."""
  try:
    back = model_config_from_hf(hf)
  except UnsupportedModelError as err:
    raise UnsupportedModelError(f"cannot export as {model_type}: {err}") from None
  ours, theirs = _comparable(cfg), _comparable(back)
  for field in sorted(set(ours) | set(theirs)):
    if ours.get(field) != theirs.get(field):
      raise UnsupportedModelError(
          f"model.{field}={ours.get(field)!r} cannot be exported as {model_type}: that family "
          f"gives {theirs.get(field)!r}")


def export_tensors(cfg: ModelConfig, variables: dict, model_type: str, hf: dict,
                   layout: str = "per_expert", dtype=np.float32) -> Dict[str, np.ndarray]:
  """{HF tensor name: array} for the model's variables."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r} is invalid: valid values are {', '.join(LAYOUTS)}")
  flat = {path: np.asarray(v) for path, v in flatten_dict(variables).items()}
  tensors: Dict[str, np.ndarray] = {}
  fused_parts: Dict[str, Tuple[Experts, dict]] = {}
  fused_rows: Dict[str, Dict[int, np.ndarray]] = {}   # DBRX's Wqkv: {start row: rows}
  for entry in tensor_plan(cfg, family_spec(model_type), hf):
    value = flat[entry.path]
    if not isinstance(entry, Experts) and entry.perm is not None:
      value = value[..., list(np.argsort(entry.perm))]
    if isinstance(entry, Linear):
      weight = value.reshape(int(np.prod(value.shape[:entry.in_axes])), -1).T
      if entry.rows is None:
        tensors[entry.names[0]] = weight
      else:
        fused_rows.setdefault(entry.names[0], {})[entry.rows[0]] = weight
    elif isinstance(entry, Experts):
      if layout == "per_expert" and entry.per_expert:
        for e in range(value.shape[0]):               # [out, in] like a torch Linear
          tensors[entry.per_expert[0].format(e=e)] = value[e].T
      else:
        fused_parts.setdefault(entry.fused[0], (entry, {}))[1][entry.part] = value
    else:
      tensors[entry.names[0]] = (value.reshape(entry.hf_shape) if entry.hf_shape else
                                 value.reshape(-1) if entry.flat else value)
  for name, (entry, parts) in fused_parts.items():
    tensors[name] = entry.to_fused(parts)
  for name, pieces in fused_rows.items():
    tensors[name] = np.concatenate([pieces[start] for start in sorted(pieces)])
  return {name: np.ascontiguousarray(t, dtype=dtype) for name, t in tensors.items()}


def save_hf(directory: str, cfg: ModelConfig, variables: dict, model_type: str, *,
            base: Optional[dict] = None, layout: str = "per_expert", dtype=np.float32,
            max_shard_bytes: int = 5 * 2**30, tokenizer_from: Optional[str] = None) -> dict:
  """Writes `directory` (new) as a `model_type` checkpoint, with the tokenizer
  files of folder `tokenizer_from` if given; returns its config. LoRA expert
  adapters are merged into the expert weights (moejax.convert.lora)."""
  cfg, variables = merge_lora(cfg, variables)
  if cfg.moe is not None and cfg.moe.expert_quantization is not None:
    raise UnsupportedModelError(
        f"model.moe.expert_quantization={cfg.moe.expert_quantization!r} cannot be exported: "
        "the HF families hold float experts; export the model before quantizing it")
  hf = hf_config_from_model(cfg, model_type, base)
  check_exportable(cfg, model_type, hf)
  tensors = export_tensors(cfg, variables, model_type, hf, layout, dtype)
  write_checkpoint_dir(directory, hf, tensors, max_shard_bytes, tokenizer_from)
  return hf
