"""What the HF family specs share: reading config.json fields with one-line
refusals, the Llama-style backbone, RoPE parameters both ways, and the MoE
layer's config.

Each family (one module of this package) reads the fields its transformers
class reads and refuses the options moejax does not implement (RoPE scaling,
non-SiLU activations, ...) with one line naming the field, so an imported
model either computes what the original computes or is not built at all.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from moejax.config import MoEConfig
from moejax.convert.families.spec import UnsupportedModelError
from moejax.models.config import LMConfig, ModelConfig
from moejax.routing.config import router_config_from_mapping

_MISSING = object()
# config.json's expert count, by the names transformers versions gave it.
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts")
# Mistral and Mixtral attention has no biases, whatever config.json says.
NO_BIAS = dict(attention_bias=False, attention_out_bias=False)
# Qwen2 / Qwen2-MoE: biases on q, k, v only.
QKV_BIAS_ONLY = dict(attention_out_bias=False)


def get(hf: dict, key: str, default: Any = _MISSING) -> Any:
  value = hf.get(key, default)
  if value is _MISSING:
    raise UnsupportedModelError(f"config.json ({hf.get('model_type')}) has no {key!r}")
  return value


def get_first(hf: dict, keys: Tuple[str, ...]) -> Any:
  """The first of `keys` that config.json has (field names moved between
  transformers versions, e.g. num_experts -> num_local_experts)."""
  for key in keys:
    if hf.get(key) is not None:
      return hf[key]
  return get(hf, keys[0])


def refuse(hf: dict, key: str, value: Any, valid: str) -> None:
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
    refuse(hf, "rope_type", kind,
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
  elif kind == "dynamic":
    fields["rope_max_positions"] = int(get(hf, "max_position_embeddings"))
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


def window(hf: dict, per_layer: bool = False) -> Dict[str, Any]:
  """attention_window and full_attention_layers. per_layer: the family's
  transformers code reads layer_types per layer (else a mix is refused)."""
  window = int(hf.get("sliding_window") or 0)
  layer_types = hf.get("layer_types") or []
  if hf.get("use_sliding_window") is False or not window or (
      layer_types and "sliding_attention" not in layer_types):
    return dict(attention_window=0)
  full = tuple(i for i, kind in enumerate(layer_types) if kind != "sliding_attention")
  if full and not per_layer:
    refuse(hf, "layer_types", sorted(set(layer_types)),
            "sliding-window attention must be on every layer or none")
  return dict(attention_window=window, full_attention_layers=full)


def backbone(hf: dict, unembed_bias: bool = False, lm_fields: Optional[Dict[str, Any]] = None,
             per_layer_windows: bool = False, **overrides) -> Dict[str, Any]:
  """ModelConfig fields shared by the Llama-style families (lm_fields:
  LMConfig fields that replace or add to config.json's)."""
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    refuse(hf, "hidden_act", act, "only 'silu' (SwiGLU feed-forwards) is implemented")
  heads = get(hf, "num_attention_heads")
  d_model = get(hf, "hidden_size")
  fields = dict(
      kind="lm", num_layers=get(hf, "num_hidden_layers"), d_model=d_model, num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or d_model // heads,
      # transformers' Llama-style attention puts the bias on q, k, v and o alike
      attention_bias=bool(hf.get("attention_bias", False)),
      attention_out_bias=bool(hf.get("attention_bias", False)),
      **window(hf, per_layer_windows), dense_d_ff=get(hf, "intermediate_size"),
      activation="swiglu", norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      lm=LMConfig(**{"vocab_size": get(hf, "vocab_size"), **rope_fields(hf),
                     "tie_embeddings": False, "unembed_bias": unembed_bias,
                     **(lm_fields or {})}),
      moe_every=0)
  fields.update(overrides)
  return fields


def moe_model(hf: dict, fields: dict, *, num_experts: int, d_ff: int, router: Dict[str, Any],
              **moe_fields) -> ModelConfig:
  """The ModelConfig of backbone `fields` with MoE blocks: SwiGLU experts,
  dropless, router fields `router` (a RouterConfig mapping)."""
  router = router_config_from_mapping({"num_experts": num_experts,
                                       "top_k": get(hf, "num_experts_per_tok"), **router})
  moe = MoEConfig(router=router, d_model=fields["d_model"], d_ff=d_ff,
                  **{"activation": "swiglu", "dispatch": "dropless", **moe_fields})
  return ModelConfig(**{**fields, "moe": moe, "moe_every": fields.get("moe_every") or 1})


def dense_model(hf: dict, **overrides) -> ModelConfig:
  """A Llama-style dense model (no MoE blocks)."""
  if hf.get("mlp_bias"):
    refuse(hf, "mlp_bias", True, "only bias-free feed-forwards are implemented")
  return ModelConfig(**backbone(hf, **overrides))
