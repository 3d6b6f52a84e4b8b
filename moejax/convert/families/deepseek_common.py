"""What DeepSeek-V2 and V3 (and dots1, whose MoE is V3's) share: MLA,
first-k dense layers, shared experts, group-limited routing, their MoE
config.json fields and tensors."""

from typing import Any, Dict, Optional

from moejax.convert.families.common import EXPERT_COUNT_KEYS, backbone, get, get_first, moe_model
from moejax.convert.layout import expert_bias_entry, moe_plan
from moejax.models.config import MLAConfig


def deepseek_model(hf: dict, router: Dict[str, Any]):
  """The model of a DeepSeek config.json with the family's `router` fields."""
  mla = MLAConfig(q_rank=int(hf.get("q_lora_rank") or 0), kv_rank=get(hf, "kv_lora_rank"),
                  nope_dim=get(hf, "qk_nope_head_dim"), rope_dim=get(hf, "qk_rope_head_dim"),
                  v_dim=get(hf, "v_head_dim"))
  fields = backbone(hf, attention="mla", mla=mla,
                    first_dense_layers=int(hf.get("first_k_dense_replace", 0)),
                    num_kv_heads=0, head_dim=0)
  groups = int(hf.get("n_group") or 1)
  router.update(routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
                num_expert_groups=groups, top_k_groups=int(hf.get("topk_group") or 1))
  shared = int(hf.get("n_shared_experts") or 0)
  experts = get_first(hf, ("n_routed_experts",) + EXPERT_COUNT_KEYS)
  return moe_model(hf, fields, num_experts=experts,
                   d_ff=get(hf, "moe_intermediate_size"), router=router,
                   num_shared_experts=shared)


def deepseek_export(cfg, hf: dict, topk_method: Optional[str]) -> None:
  """The MoE fields of config.json (topk_method only where the family has it)."""
  if cfg.moe is None:
    return
  moe, r = cfg.moe, cfg.moe.router
  hf.update(n_routed_experts=r.num_experts, moe_intermediate_size=moe.d_ff,
            first_k_dense_replace=cfg.first_dense_layers, n_group=r.num_expert_groups,
            topk_group=r.top_k_groups, norm_topk_prob=r.normalize_top_k,
            routed_scaling_factor=r.routed_scaling_factor,
            n_shared_experts=moe.num_shared_experts)
  if topk_method is not None:
    hf["topk_method"] = topk_method


def deepseek_moe_plan(cfg, at: str, ours: tuple, correction_bias: bool = False):
  """Experts, shared experts and (V3's form) the selection bias of the gate."""
  entries = moe_plan(cfg, at, ours, shared="shared_experts")
  if correction_bias:
    entries.append(expert_bias_entry(f"{at}.mlp.gate.e_score_correction_bias", ours))
  return entries
