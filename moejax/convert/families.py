"""HuggingFace config.json <-> moejax ModelConfig, per model family.

Each family reads the fields its transformers class reads, and refuses the
options moejax does not implement (RoPE scaling, non-SiLU activations, ...)
with one line naming the field, so an imported model either computes what
the original computes or is not built at all.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

from moejax.config import MoEConfig
from moejax.routing.config import router_config_from_mapping
from moejax.experts import CLAMPED_SWIGLU_ALPHA, CLAMPED_SWIGLU_LIMIT
from moejax.models.config import LMConfig, MLAConfig, ModelConfig

MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3",
                "phimoe", "granitemoe", "ernie4_5_moe", "gpt_oss", "dbrx")
DENSE_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
FAMILIES = MOE_FAMILIES + DENSE_FAMILIES
_MISSING = object()
_EXPERTS = ("num_local_experts", "num_experts")


class UnsupportedModelError(ValueError):
  """A config.json that moejax cannot reproduce exactly."""


def _get(hf: dict, key: str, default: Any = _MISSING) -> Any:
  value = hf.get(key, default)
  if value is _MISSING:
    raise UnsupportedModelError(f"config.json ({hf.get('model_type')}) has no {key!r}")
  return value


def _get_first(hf: dict, keys: Tuple[str, ...]) -> Any:
  """The first of `keys` that config.json has (field names moved between
  transformers versions, e.g. num_experts -> num_local_experts)."""
  for key in keys:
    if hf.get(key) is not None:
      return hf[key]
  return _get(hf, keys[0])


def _refuse(hf: dict, key: str, value: Any, valid: str) -> None:
  raise UnsupportedModelError(f"config.json {key}={value!r} ({hf.get('model_type')}) is not "
                              f"supported: {valid}")


def rope_fields(hf: dict) -> dict:
  """LMConfig's RoPE fields from rope_parameters (transformers >= 5) or
  rope_theta / rope_scaling. Types without a parity test are refused."""
  params = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
  kind = params.get("rope_type") or params.get("type") or "default"
  fields = {"rope_theta": float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))}
  if kind == "default":
    return fields
  if kind not in ("linear", "llama3", "yarn", "longrope", "dynamic"):
    _refuse(hf, "rope_type", kind,
            "implemented: 'default', 'linear', 'llama3', 'yarn', 'longrope', 'dynamic'")
  factor = params.get("factor")
  if factor is None and kind in ("yarn", "longrope"):  # the ratio of the two contexts
    factor = hf["max_position_embeddings"] / params["original_max_position_embeddings"]
  fields.update(rope_scaling=kind, rope_factor=float(1.0 if factor is None else factor))
  if kind == "llama3":
    fields.update(rope_low_freq_factor=float(params["low_freq_factor"]),
                  rope_high_freq_factor=float(params["high_freq_factor"]),
                  rope_original_max_positions=int(params["original_max_position_embeddings"]))
  elif kind == "yarn":
    optional = lambda key, default: default if params.get(key) is None else params[key]
    fields.update(rope_original_max_positions=int(params["original_max_position_embeddings"]),
                  rope_beta_fast=float(optional("beta_fast", 32.0)),
                  rope_beta_slow=float(optional("beta_slow", 1.0)),
                  rope_truncate=bool(optional("truncate", True)),
                  rope_mscale=float(optional("mscale", 0.0)),
                  rope_mscale_all_dim=float(optional("mscale_all_dim", 0.0)))
    if params.get("attention_factor") is not None:
      fields["rope_attention_factor"] = float(params["attention_factor"])
  elif kind == "longrope":
    fields.update(rope_original_max_positions=int(params["original_max_position_embeddings"]),
                  rope_long_factor=tuple(float(v) for v in params["long_factor"]),
                  rope_short_factor=tuple(float(v) for v in params["short_factor"]))
    if params.get("attention_factor") is not None:
      fields["rope_attention_factor"] = float(params["attention_factor"])
    if hf.get("model_type") == "phimoe":
      # PhiMoE scales by short_mscale / long_mscale instead (equal in Phi-3.5-MoE).
      short, long = params.get("short_mscale"), params.get("long_mscale")
      if short != long:
        _refuse(hf, "rope_parameters.long_mscale", long,
                f"only long_mscale = short_mscale ({short}) is implemented")
      fields["rope_attention_factor"] = float(short)
  elif kind == "dynamic":
    fields["rope_max_positions"] = int(_get(hf, "max_position_embeddings"))
  return fields


def rope_parameters(lm) -> dict:
  """config.json's rope_parameters for an LMConfig (the inverse of rope_fields)."""
  if lm.rope_scaling == "none":
    return {"rope_theta": lm.rope_theta, "rope_type": "default"}
  out = {"rope_theta": lm.rope_theta, "rope_type": lm.rope_scaling, "factor": lm.rope_factor}
  if lm.rope_scaling == "llama3":
    out.update(low_freq_factor=lm.rope_low_freq_factor, high_freq_factor=lm.rope_high_freq_factor,
               original_max_position_embeddings=lm.rope_original_max_positions)
  elif lm.rope_scaling == "yarn":
    out.update(original_max_position_embeddings=lm.rope_original_max_positions,
               beta_fast=lm.rope_beta_fast, beta_slow=lm.rope_beta_slow,
               truncate=lm.rope_truncate)
    out.update({k: v for k, v in (("mscale", lm.rope_mscale),
                                  ("mscale_all_dim", lm.rope_mscale_all_dim)) if v})
    if lm.rope_attention_factor is not None:
      out["attention_factor"] = lm.rope_attention_factor
  elif lm.rope_scaling == "longrope":
    out.update(original_max_position_embeddings=lm.rope_original_max_positions,
               long_factor=list(lm.rope_long_factor), short_factor=list(lm.rope_short_factor))
    if lm.rope_attention_factor is not None:
      out["attention_factor"] = lm.rope_attention_factor
  return out


def _window(hf: dict, per_layer: bool = False) -> Dict[str, Any]:
  """attention_window and full_attention_layers. per_layer: the family's
  transformers code reads layer_types per layer (else a mix is refused)."""
  window = int(hf.get("sliding_window") or 0)
  layer_types = hf.get("layer_types") or []
  if hf.get("use_sliding_window") is False or not window or (
      layer_types and "sliding_attention" not in layer_types):
    return dict(attention_window=0)
  full = tuple(i for i, kind in enumerate(layer_types) if kind != "sliding_attention")
  if full and not per_layer:
    _refuse(hf, "layer_types", sorted(set(layer_types)),
            "sliding-window attention must be on every layer or none")
  return dict(attention_window=window, full_attention_layers=full)


def _backbone(hf: dict, unembed_bias: bool = False, lm_fields: Optional[Dict[str, Any]] = None,
              per_layer_windows: bool = False, **overrides) -> Dict[str, Any]:
  """ModelConfig fields shared by the Llama-style families."""
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    _refuse(hf, "hidden_act", act, "only 'silu' (SwiGLU feed-forwards) is implemented")
  heads = _get(hf, "num_attention_heads")
  d_model = _get(hf, "hidden_size")
  fields = dict(
      kind="lm", num_layers=_get(hf, "num_hidden_layers"), d_model=d_model, num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or d_model // heads,
      # transformers' Llama-style attention puts the bias on q, k, v and o alike
      attention_bias=bool(hf.get("attention_bias", False)),
      attention_out_bias=bool(hf.get("attention_bias", False)),
      **_window(hf, per_layer_windows), dense_d_ff=_get(hf, "intermediate_size"),
      activation="swiglu", norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      lm=LMConfig(vocab_size=_get(hf, "vocab_size"), **rope_fields(hf),
                  tie_embeddings=False, unembed_bias=unembed_bias, **(lm_fields or {})),
      moe_every=0)
  fields.update(overrides)
  return fields


def _moe(hf: dict, fields: dict, *, num_experts: int, d_ff: int, router: Dict[str, Any],
         **moe_fields) -> ModelConfig:
  router = router_config_from_mapping({"num_experts": num_experts,
                                       "top_k": _get(hf, "num_experts_per_tok"), **router})
  moe = MoEConfig(router=router, d_model=fields["d_model"], d_ff=d_ff,
                  **{"activation": "swiglu", "dispatch": "dropless", **moe_fields})
  return ModelConfig(**{**fields, "moe": moe, "moe_every": fields.get("moe_every") or 1})


# Mistral and Mixtral attention has no biases, whatever config.json says.
_NO_BIAS = dict(attention_bias=False, attention_out_bias=False)
# Qwen2 / Qwen2-MoE: biases on q, k, v only.
_QKV_BIAS_ONLY = dict(attention_out_bias=False)


def _mixtral(hf: dict) -> ModelConfig:
  return _moe(hf, _backbone(hf, **_NO_BIAS), num_experts=_get_first(hf, _EXPERTS),
              d_ff=_get(hf, "intermediate_size"), router=dict(normalize_top_k=True))


def _phimoe(hf: dict) -> ModelConfig:
  fields = _backbone(hf, norm="layer", unembed_bias=bool(hf.get("lm_head_bias", False)))
  return _moe(hf, fields, num_experts=_get_first(hf, _EXPERTS),
              d_ff=_get(hf, "intermediate_size"),
              router=dict(name="sparsemixer",
                          sparsemixer=dict(eps=float(hf.get("router_jitter_noise", 0.01)))))


def _granitemoe(hf: dict) -> ModelConfig:
  """Mixtral's routing (top-k logits, then softmax) with Granite's four
  multipliers: embeddings, attention scores, residual branches, logits."""
  fields = _backbone(
      hf, attention_multiplier=float(_get(hf, "attention_multiplier")),
      residual_multiplier=float(_get(hf, "residual_multiplier")),
      lm_fields=dict(embedding_multiplier=float(_get(hf, "embedding_multiplier")),
                     logits_scaling=float(_get(hf, "logits_scaling"))))
  return _moe(hf, fields, num_experts=_get_first(hf, _EXPERTS),
              d_ff=_get(hf, "intermediate_size"), router=dict(normalize_top_k=True))


def _ernie4_5_moe(hf: dict) -> ModelConfig:
  """Softmax scores, selection by scores + a correction bias (the aux-loss-free
  form), renormalised top-k; MoE blocks from moe_layer_start_index to
  moe_layer_end_index; shared experts; RoPE on adjacent channel pairs (the
  import reorders them, moejax.convert.layout)."""
  if hf.get("use_bias"):
    _refuse(hf, "use_bias", True, "only bias-free projections are implemented")
  hf = {**hf, "num_experts_per_tok": _get(hf, "moe_k")}
  layers = _get(hf, "num_hidden_layers")
  interval = int(hf.get("moe_layer_interval") or 1)
  if interval != 1:
    _refuse(hf, "moe_layer_interval", interval, "only 1 is implemented")
  start = int(hf.get("moe_layer_start_index") or 0)
  end = int(hf.get("moe_layer_end_index", -1))
  end = layers - 1 if end < 0 else end
  fields = _backbone(hf, first_dense_layers=start, dense_layers=tuple(range(end + 1, layers)))
  return _moe(hf, fields, num_experts=_get(hf, "moe_num_experts"),
              d_ff=_get(hf, "moe_intermediate_size"),
              router=dict(normalize_top_k=True, use_expert_bias=True),
              num_shared_experts=int(hf.get("moe_num_shared_experts") or 0))


def _gpt_oss(hf: dict) -> ModelConfig:
  """Attention sinks, biases everywhere, windowed and full layers as
  layer_types says; a router with a bias choosing by logits (softmax over
  the chosen), experts with biases and the clamped SwiGLU."""
  limits = (float(hf.get("swiglu_limit", 7.0)), float(hf.get("swiglu_alpha", 1.702)))
  if limits != (CLAMPED_SWIGLU_LIMIT, CLAMPED_SWIGLU_ALPHA):
    _refuse(hf, "swiglu_limit, swiglu_alpha", limits,
            f"only ({CLAMPED_SWIGLU_LIMIT}, {CLAMPED_SWIGLU_ALPHA}) is implemented")
  quant = (hf.get("quantization_config") or {}).get("quant_method")
  if quant not in (None, "mxfp4"):
    _refuse(hf, "quantization_config.quant_method", quant,
            "implemented: float checkpoints and 'mxfp4' experts")
  bias = bool(hf.get("attention_bias", True))
  fields = _backbone(hf, per_layer_windows=True, attention_bias=bias, attention_out_bias=bias,
                     attention_sinks=True)
  return _moe(hf, fields, num_experts=_get_first(hf, _EXPERTS),
              d_ff=_get(hf, "intermediate_size"),
              router=dict(normalize_top_k=True, logit_bias=True),
              activation="clamped_swiglu", use_bias=True)


def _dbrx(hf: dict) -> ModelConfig:
  """DBRX: its own field names (attention and FFN settings nested), a fused
  Wqkv with optional clipping, LayerNorms without biases, softmax routing
  with the top-k weights renormalised (moe_normalize_expert_weights = 1, an
  L1 norm). moe_jitter_eps (training-time noise) is not carried over."""
  attn, ffn = hf.get("attn_config") or {}, hf.get("ffn_config") or {}
  act = (ffn.get("ffn_act_fn") or {}).get("name", "silu")
  norm_p = ffn.get("moe_normalize_expert_weights", 1.0)
  if norm_p not in (None, 1, 1.0):
    _refuse(hf, "ffn_config.moe_normalize_expert_weights", norm_p,
            "implemented: 1 (sum to one) or None")
  # The Llama-style names _backbone reads.
  view = {**hf, "hidden_size": _get(hf, "d_model"), "num_attention_heads": _get(hf, "n_heads"),
          "num_hidden_layers": _get(hf, "n_layers"),
          "num_key_value_heads": attn.get("kv_n_heads", 1),
          "intermediate_size": _get(ffn, "ffn_hidden_size"), "hidden_act": act,
          "num_experts_per_tok": ffn.get("moe_top_k", 1),
          "rope_theta": attn.get("rope_theta", 10000.0), "head_dim": None}
  clip = attn.get("clip_qkv")
  fields = _backbone(view, norm="layer_no_bias", norm_eps=1e-5,
                     clip_qkv=None if clip is None else float(clip))
  return _moe(view, fields, num_experts=_get(ffn, "moe_num_experts"),
              d_ff=_get(ffn, "ffn_hidden_size"), router=dict(normalize_top_k=norm_p is not None))


def _qwen_moe(hf: dict, **overrides) -> ModelConfig:
  fields = _backbone(hf, moe_every=_get(hf, "decoder_sparse_step", 1),
                     dense_layers=tuple(hf.get("mlp_only_layers") or ()), **overrides)
  shared = int(hf.get("shared_expert_intermediate_size") or 0)
  shared_fields = dict(num_shared_experts=1, shared_d_ff=shared,
                       shared_expert_gate=True) if shared else {}
  return _moe(hf, fields, num_experts=_get_first(hf, _EXPERTS),
              d_ff=_get(hf, "moe_intermediate_size"),
              router=dict(normalize_top_k=bool(hf.get("norm_topk_prob", False))),
              **shared_fields)


def _olmoe(hf: dict) -> ModelConfig:
  clip = hf.get("clip_qkv")
  fields = _backbone(hf, qk_norm="full", clip_qkv=None if clip is None else float(clip))
  return _moe(hf, fields, num_experts=_get_first(hf, _EXPERTS),
              d_ff=_get(hf, "intermediate_size"),
              router=dict(normalize_top_k=bool(hf.get("norm_topk_prob", False))))


def _deepseek(hf: dict, router: Dict[str, Any]) -> ModelConfig:
  """DeepSeek-V2 / V3: MLA, first-k dense layers, shared experts, `router`."""
  mla = MLAConfig(q_rank=int(hf.get("q_lora_rank") or 0), kv_rank=_get(hf, "kv_lora_rank"),
                  nope_dim=_get(hf, "qk_nope_head_dim"), rope_dim=_get(hf, "qk_rope_head_dim"),
                  v_dim=_get(hf, "v_head_dim"))
  fields = _backbone(hf, attention="mla", mla=mla,
                     first_dense_layers=int(hf.get("first_k_dense_replace", 0)),
                     num_kv_heads=0, head_dim=0)
  groups = int(hf.get("n_group") or 1)
  router.update(routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
                num_expert_groups=groups, top_k_groups=int(hf.get("topk_group") or 1))
  shared = int(hf.get("n_shared_experts") or 0)
  return _moe(hf, fields, num_experts=_get_first(hf, ("n_routed_experts",) + _EXPERTS),
              d_ff=_get(hf, "moe_intermediate_size"), router=router, num_shared_experts=shared)


def _deepseek_v3(hf: dict) -> ModelConfig:
  if hf.get("topk_method", "noaux_tc") != "noaux_tc":
    _refuse(hf, "topk_method", hf["topk_method"], "only 'noaux_tc' is implemented")
  return _deepseek(hf, dict(score_fn="sigmoid", use_expert_bias=True,
                            normalize_top_k=bool(hf.get("norm_topk_prob", True))))


def _deepseek_v2(hf: dict) -> ModelConfig:
  """Softmax scores, top-k without renormalising (transformers ignores
  norm_topk_prob here); 'group_limited_greedy' ranks groups by their best."""
  method = hf.get("topk_method", "greedy")
  if method not in ("greedy", "group_limited_greedy"):
    _refuse(hf, "topk_method", method, "implemented: 'greedy', 'group_limited_greedy'")
  if method == "greedy":
    hf = {**hf, "n_group": 1, "topk_group": 1}
  return _deepseek(hf, dict(score_fn="softmax", normalize_top_k=False, group_score="max"))


def _dense(**overrides) -> Callable[[dict], ModelConfig]:
  def build(hf: dict) -> ModelConfig:
    if hf.get("mlp_bias"):
      _refuse(hf, "mlp_bias", True, "only bias-free feed-forwards are implemented")
    return ModelConfig(**_backbone(hf, **overrides))
  return build


_BUILDERS = {
    "mixtral": _mixtral, "phimoe": _phimoe, "granitemoe": _granitemoe,
    "ernie4_5_moe": _ernie4_5_moe, "gpt_oss": _gpt_oss, "dbrx": _dbrx,
    "qwen2_moe": lambda hf: _qwen_moe(
        hf, attention_bias=bool(hf.get("qkv_bias", True)), **_QKV_BIAS_ONLY),
    "qwen3_moe": lambda hf: _qwen_moe(hf, qk_norm="head"), "olmoe": _olmoe,
    "deepseek_v2": _deepseek_v2, "deepseek_v3": _deepseek_v3, "llama": _dense(), "mistral": _dense(**_NO_BIAS),
    "qwen2": _dense(attention_bias=True, **_QKV_BIAS_ONLY), "qwen3": _dense(qk_norm="head"),
}


def model_config_from_hf(hf: dict) -> ModelConfig:
  """The moejax ModelConfig that computes what this config.json describes."""
  model_type = hf.get("model_type")
  if model_type not in _BUILDERS:
    raise UnsupportedModelError(
        f"config.json model_type={model_type!r} is not supported; supported: "
        f"{', '.join(FAMILIES)}")
  try:
    return _BUILDERS[model_type](hf)
  except (TypeError, ValueError) as err:
    if isinstance(err, UnsupportedModelError):
      raise
    raise UnsupportedModelError(f"config.json ({model_type}) gives an invalid moejax model: "
                                f"{err}") from None
