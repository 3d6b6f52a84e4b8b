"""GraniteMoE: Mixtral's routing (top-k logits, then softmax) with Granite's
four multipliers (embeddings, attention scores, residual branches, logits);
a router Linear and fused experts only (input_linear [E, 2f, d], gate half
first; output_linear [E, d, f])."""

from moejax.convert.families.common import EXPERT_COUNT_KEYS, backbone, get, get_first, moe_model
from moejax.convert.families.spec import FamilySpec
from moejax.convert.layout import Experts, Linear


def to_model(hf: dict):
  fields = backbone(
      hf, attention_multiplier=float(get(hf, "attention_multiplier")),
      residual_multiplier=float(get(hf, "residual_multiplier")),
      lm_fields=dict(embedding_multiplier=float(get(hf, "embedding_multiplier")),
                     logits_scaling=float(get(hf, "logits_scaling"))))
  return moe_model(hf, fields, num_experts=get_first(hf, EXPERT_COUNT_KEYS),
                   d_ff=get(hf, "intermediate_size"), router=dict(normalize_top_k=True))


def export(cfg, hf: dict) -> None:
  if cfg.moe is not None:
    hf.update(num_local_experts=cfg.moe.router.num_experts, intermediate_size=cfg.moe.d_ff)
  hf.update(embedding_multiplier=cfg.lm.embedding_multiplier,
            logits_scaling=cfg.lm.logits_scaling, residual_multiplier=cfg.residual_multiplier,
            attention_multiplier=cfg.attention_multiplier or cfg.head_size ** -0.5)


def plan(cfg, at: str, ours: tuple):
  moe = f"{at}.block_sparse_moe"
  names = {"gate": "input_linear", "up": "input_linear", "down": "output_linear"}
  return [Linear((f"{moe}.router.layer.weight",), ours + ("router", "kernel"))] + [
      Experts(per_expert=(), fused=(f"{moe}.{names[part]}.weight",), part=part,
              path=ours + ("experts", ours_name))
      for part, ours_name in (("gate", "w_gate"), ("up", "w_in"), ("down", "w_out"))]


SPEC = FamilySpec(model_type="granitemoe", architecture="GraniteMoeForCausalLM",
                  to_model=to_model, export=export, moe_plan=plan)
