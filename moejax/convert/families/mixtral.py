"""Mixtral: top-k of the logits, softmax over the chosen (normalize_top_k);
experts as w1 / w3 / w2; no attention biases."""

from moejax.convert.families.common import (EXPERT_COUNT_KEYS, NO_BIAS, backbone, get,
                                            get_first, moe_model)
from moejax.convert.families.spec import FamilySpec
from moejax.convert.layout import moe_plan


def to_model(hf: dict):
  return moe_model(hf, backbone(hf, **NO_BIAS), num_experts=get_first(hf, EXPERT_COUNT_KEYS),
                   d_ff=get(hf, "intermediate_size"), router=dict(normalize_top_k=True))


def export(cfg, hf: dict) -> None:
  if cfg.moe is not None:
    hf.update(num_local_experts=cfg.moe.router.num_experts, intermediate_size=cfg.moe.d_ff)


SPEC = FamilySpec(
    model_type="mixtral", architecture="MixtralForCausalLM", to_model=to_model, export=export,
    moe_plan=lambda cfg, at, ours: moe_plan(cfg, at, ours, mixtral_style=True))
