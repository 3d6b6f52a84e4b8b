"""gpt-oss: attention sinks, biases everywhere, windowed and full layers as
layer_types says; a router with a bias choosing by logits (softmax over the
chosen); fused [E, in, out] experts with gate and up interleaved, their
biases, and the clamped SwiGLU. MXFP4 experts are dequantized on import."""

from moejax.convert.families.common import (EXPERT_COUNT_KEYS, backbone, get, get_first,
                                            moe_model, refuse)
from moejax.convert.families.spec import FamilySpec
from moejax.convert.layout import Experts, Linear, Vector
from moejax.experts import CLAMPED_SWIGLU_ALPHA, CLAMPED_SWIGLU_LIMIT


def to_model(hf: dict):
  limits = (float(hf.get("swiglu_limit", 7.0)), float(hf.get("swiglu_alpha", 1.702)))
  if limits != (CLAMPED_SWIGLU_LIMIT, CLAMPED_SWIGLU_ALPHA):
    refuse(hf, "swiglu_limit, swiglu_alpha", limits,
           f"only ({CLAMPED_SWIGLU_LIMIT}, {CLAMPED_SWIGLU_ALPHA}) is implemented")
  quant = (hf.get("quantization_config") or {}).get("quant_method")
  if quant not in (None, "mxfp4"):
    refuse(hf, "quantization_config.quant_method", quant,
           "implemented: float checkpoints and 'mxfp4' experts")
  bias = bool(hf.get("attention_bias", True))
  fields = backbone(hf, per_layer_windows=True, attention_bias=bias, attention_out_bias=bias,
                    attention_sinks=True)
  return moe_model(hf, fields, num_experts=get_first(hf, EXPERT_COUNT_KEYS),
                   d_ff=get(hf, "intermediate_size"),
                   router=dict(normalize_top_k=True, logit_bias=True),
                   activation="clamped_swiglu", use_bias=True)


def export(cfg, hf: dict) -> None:
  if cfg.moe is not None:
    hf.update(num_local_experts=cfg.moe.router.num_experts, intermediate_size=cfg.moe.d_ff,
              swiglu_limit=CLAMPED_SWIGLU_LIMIT, swiglu_alpha=CLAMPED_SWIGLU_ALPHA)
  hf.update(layer_types=["sliding_attention" if cfg.window_of(i) else "full_attention"
                         for i in range(cfg.num_layers)])


def plan(cfg, at: str, ours: tuple):
  mlp = f"{at}.mlp"
  entries = [Linear((f"{mlp}.router.weight",), ours + ("router", "kernel")),
             Vector((f"{mlp}.router.bias",), ours + ("router", "bias"))]
  for part, name, ours_name in (("gate", "gate_up_proj", "gate"), ("up", "gate_up_proj", "in"),
                                ("down", "down_proj", "out")):
    entries += [Experts(per_expert=(), fused=(f"{mlp}.experts.{name}{suffix}",), part=part,
                        path=ours + ("experts", f"{kind}_{ours_name}"), in_out=True,
                        gate_up="interleaved")
                for suffix, kind in (("", "w"), ("_bias", "b"))]   # weight, then bias
  return entries


SPEC = FamilySpec(model_type="gpt_oss", architecture="GptOssForCausalLM", to_model=to_model,
                  export=export, moe_plan=plan)
