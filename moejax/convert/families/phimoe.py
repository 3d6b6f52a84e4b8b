"""PhiMoE (Phi-3.5-MoE): SparseMixer routing (router_jitter_noise is its
eps), LayerNorms with biases, an lm_head bias, Mixtral's expert names;
longrope scaled by short_mscale / long_mscale (equal in Phi-3.5-MoE)."""

from moejax.convert.families.common import (EXPERT_COUNT_KEYS, backbone, get, get_first,
                                            moe_model, refuse)
from moejax.convert.families.spec import FamilySpec
from moejax.convert.layout import moe_plan
from moejax.models.attention import rope_attention_factor


def _longrope_mscale(hf: dict) -> dict:
  """PhiMoE's attention factor for longrope: its short_mscale, which must
  equal long_mscale."""
  params = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
  if (params.get("rope_type") or params.get("type")) != "longrope":
    return {}
  short, long = params.get("short_mscale"), params.get("long_mscale")
  if short != long:
    refuse(hf, "rope_parameters.long_mscale", long,
           f"only long_mscale = short_mscale ({short}) is implemented")
  return {"rope_attention_factor": float(short)}


def to_model(hf: dict):
  fields = backbone(hf, norm="layer", unembed_bias=bool(hf.get("lm_head_bias", False)),
                    lm_fields=_longrope_mscale(hf))
  return moe_model(hf, fields, num_experts=get_first(hf, EXPERT_COUNT_KEYS),
                   d_ff=get(hf, "intermediate_size"),
                   router=dict(name="sparsemixer",
                               sparsemixer=dict(eps=float(hf.get("router_jitter_noise", 0.01)))))


def export(cfg, hf: dict) -> None:
  if cfg.moe is not None:
    hf.update(num_local_experts=cfg.moe.router.num_experts, intermediate_size=cfg.moe.d_ff,
              router_jitter_noise=cfg.moe.router.options.eps)
  hf.update(lm_head_bias=cfg.lm.unembed_bias, attention_bias=cfg.attention_bias)
  if cfg.lm.rope_scaling == "longrope":
    factor = rope_attention_factor(cfg.lm)
    hf["rope_parameters"].update(short_mscale=factor, long_mscale=factor)


SPEC = FamilySpec(
    model_type="phimoe", architecture="PhimoeForCausalLM", to_model=to_model, export=export,
    moe_plan=lambda cfg, at, ours: moe_plan(cfg, at, ours, mixtral_style=True))
