"""ERNIE 4.5 MoE: softmax scores, selection by scores + a correction bias
(the aux-loss-free form), renormalised top-k; MoE blocks from
moe_layer_start_index to moe_layer_end_index; shared experts; RoPE on
adjacent channel pairs (reordered on import)."""

from moejax.convert.families.common import backbone, get, moe_model, refuse
from moejax.convert.families.spec import FamilySpec
from moejax.convert.layout import expert_bias_entry, moe_plan


def to_model(hf: dict):
  if hf.get("use_bias"):
    refuse(hf, "use_bias", True, "only bias-free projections are implemented")
  hf = {**hf, "num_experts_per_tok": get(hf, "moe_k")}
  layers = get(hf, "num_hidden_layers")
  interval = int(hf.get("moe_layer_interval") or 1)
  if interval != 1:
    refuse(hf, "moe_layer_interval", interval, "only 1 is implemented")
  start = int(hf.get("moe_layer_start_index") or 0)
  end = int(hf.get("moe_layer_end_index", -1))
  end = layers - 1 if end < 0 else end
  fields = backbone(hf, first_dense_layers=start, dense_layers=tuple(range(end + 1, layers)))
  return moe_model(hf, fields, num_experts=get(hf, "moe_num_experts"),
                   d_ff=get(hf, "moe_intermediate_size"),
                   router=dict(normalize_top_k=True, use_expert_bias=True),
                   num_shared_experts=int(hf.get("moe_num_shared_experts") or 0))


def export(cfg, hf: dict) -> None:
  if cfg.moe is None:
    return
  moe, r = cfg.moe, cfg.moe.router
  hf.update(moe_num_experts=r.num_experts, moe_intermediate_size=moe.d_ff, moe_k=r.top_k,
            moe_layer_start_index=cfg.moe_layers[0], moe_layer_end_index=cfg.moe_layers[-1],
            moe_layer_interval=1, moe_num_shared_experts=moe.num_shared_experts,
            use_bias=False)


def plan(cfg, at: str, ours: tuple):
  return moe_plan(cfg, at, ours, shared="shared_experts") + [expert_bias_entry(
      f"{at}.mlp.moe_statics.e_score_correction_bias", ours,
      hf_shape=(1, cfg.moe.router.num_experts))]


SPEC = FamilySpec(model_type="ernie4_5_moe", architecture="Ernie4_5_MoeForCausalLM",
                  to_model=to_model, export=export, moe_plan=plan, interleaved_rope=True)
