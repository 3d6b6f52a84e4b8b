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

from moejax.config import MoEConfig, RouterConfig
from moejax.convert.families import (FAMILIES, UnsupportedModelError, model_config_from_hf,
                                     rope_parameters)
from moejax.convert.layout import Experts, Linear, tensor_plan
from moejax.convert.lora import merge_lora
from moejax.convert.safetensors_io import write_checkpoint_dir
from moejax.experts import CLAMPED_SWIGLU_ALPHA, CLAMPED_SWIGLU_LIMIT
from moejax.models.attention import rope_attention_factor
from moejax.models.config import ModelConfig

LAYOUTS = ("per_expert", "fused")
ARCHITECTURES = {
    "mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM", "olmoe": "OlmoeForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM",
    "phimoe": "PhimoeForCausalLM", "granitemoe": "GraniteMoeForCausalLM",
    "ernie4_5_moe": "Ernie4_5_MoeForCausalLM", "gpt_oss": "GptOssForCausalLM",
    "dbrx": "DbrxForCausalLM",
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
}
# Settings that change how a model trains, not what its weights compute.
_ROUTER_TRAINING = dict(capacity_factor=None, min_capacity=1, drop_policy="position",
                        jitter_noise=0.0, noisy_top_k=False, second_expert_sampling=False,
                        expert_bias_update_rate=1e-3, routing_groups=1,
                        dense_training=False)  # DS-MoE infers with the sparse rule
_MOE_TRAINING = dict(dispatch="dropless", gmm_backend="auto", gmm_block_size=128,
                     dtype="float32")


def _moe_fields(cfg: ModelConfig, model_type: str) -> dict:
  moe: MoEConfig = cfg.moe
  r: RouterConfig = moe.router
  shared = moe.num_shared_experts * (moe.shared_d_ff or moe.d_ff)
  if model_type in ("mixtral", "phimoe", "granitemoe", "gpt_oss"):
    out = dict(num_local_experts=r.num_experts, intermediate_size=moe.d_ff)
    if model_type == "gpt_oss":
      out.update(swiglu_limit=CLAMPED_SWIGLU_LIMIT, swiglu_alpha=CLAMPED_SWIGLU_ALPHA)
    if model_type == "granitemoe":
      out.update(embedding_multiplier=cfg.lm.embedding_multiplier,
                 logits_scaling=cfg.lm.logits_scaling,
                 residual_multiplier=cfg.residual_multiplier,
                 attention_multiplier=cfg.attention_multiplier or cfg.head_size ** -0.5)
    if model_type == "phimoe":
      out.update(router_jitter_noise=r.options.eps, lm_head_bias=cfg.lm.unembed_bias,
                 attention_bias=cfg.attention_bias)
    return out
  if model_type == "ernie4_5_moe":
    moe_layers = cfg.moe_layers
    return dict(moe_num_experts=r.num_experts, moe_intermediate_size=moe.d_ff,
                moe_k=r.top_k, moe_layer_start_index=moe_layers[0],
                moe_layer_end_index=moe_layers[-1], moe_layer_interval=1,
                moe_num_shared_experts=moe.num_shared_experts, use_bias=False)
  if model_type == "olmoe":
    return dict(num_experts=r.num_experts, intermediate_size=moe.d_ff,
                norm_topk_prob=r.normalize_top_k, clip_qkv=cfg.clip_qkv)
  if model_type.startswith("deepseek"):
    out = dict(n_routed_experts=r.num_experts, moe_intermediate_size=moe.d_ff,
               first_k_dense_replace=cfg.first_dense_layers, n_group=r.num_expert_groups,
               topk_group=r.top_k_groups, norm_topk_prob=r.normalize_top_k,
               routed_scaling_factor=r.routed_scaling_factor, topk_method="noaux_tc",
               n_shared_experts=moe.num_shared_experts)
    if model_type == "deepseek_v2":
      out["topk_method"] = "group_limited_greedy" if r.num_expert_groups > 1 else "greedy"
    return out
  out = dict(num_experts=r.num_experts, num_local_experts=r.num_experts,
             moe_intermediate_size=moe.d_ff, decoder_sparse_step=cfg.moe_every,
             mlp_only_layers=list(cfg.dense_layers), norm_topk_prob=r.normalize_top_k)
  if model_type == "qwen2_moe":
    out.update(shared_expert_intermediate_size=shared, qkv_bias=cfg.attention_bias)
  return out


def _dbrx_config(cfg: ModelConfig, hf: dict) -> dict:
  """DBRX's config.json: its own names, attention and FFN fields nested."""
  r = cfg.moe.router
  hf.update(
      model_type="dbrx", architectures=[ARCHITECTURES["dbrx"]], vocab_size=cfg.lm.vocab_size,
      d_model=cfg.d_model, n_heads=cfg.num_heads, n_layers=cfg.num_layers,
      max_seq_len=hf.get("max_seq_len", 2048), rope_parameters=rope_parameters(cfg.lm),
      attn_config=dict(kv_n_heads=cfg.kv_heads, clip_qkv=cfg.clip_qkv,
                       rope_theta=cfg.lm.rope_theta),
      ffn_config=dict(ffn_hidden_size=cfg.moe.d_ff, moe_num_experts=r.num_experts,
                      moe_top_k=r.top_k, ffn_act_fn={"name": "silu"},
                      moe_normalize_expert_weights=1.0 if r.normalize_top_k else None),
      tie_word_embeddings=False, dtype="float32")
  return hf


def hf_config_from_model(cfg: ModelConfig, model_type: str,
                         base: Optional[dict] = None) -> dict:
  """config.json for `cfg` as `model_type`, on top of `base` (e.g. the
  config.json it was imported from: token ids and other fields are kept)."""
  if model_type not in FAMILIES:
    raise UnsupportedModelError(f"model_type={model_type!r} is not supported; supported: "
                                f"{', '.join(FAMILIES)}")
  hf = dict(base or {})
  hf.pop("quantization_config", None)  # the export is float
  if model_type == "dbrx":
    if cfg.moe is None:
      raise UnsupportedModelError("cannot export as dbrx: DBRX models are MoE in every block; "
                                  "this model has none (model.moe_every=0)")
    return _dbrx_config(cfg, hf)
  hf.pop("rope_scaling", None)
  hf.update(
      model_type=model_type, architectures=[ARCHITECTURES[model_type]],
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
    hf.update(num_experts_per_tok=cfg.moe.router.top_k, **_moe_fields(cfg, model_type))
  if cfg.lm.rope_scaling == "longrope" and model_type == "phimoe":
    factor = rope_attention_factor(cfg.lm)
    hf["rope_parameters"].update(short_mscale=factor, long_mscale=factor)
  if cfg.lm.rope_scaling == "dynamic":  # its unscaled context is config.json's
    hf["max_position_embeddings"] = cfg.lm.rope_max_positions
  if hf.get("layer_types") or cfg.full_attention_layers or model_type == "gpt_oss":
    hf["layer_types"] = ["sliding_attention" if cfg.window_of(i) else "full_attention"
                         for i in range(cfg.num_layers)]
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
  for entry in tensor_plan(cfg, model_type, hf):
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
