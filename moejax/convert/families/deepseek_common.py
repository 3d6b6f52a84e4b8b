"""What DeepSeek-V2 and V3 share: MLA, first-k dense layers, shared experts,
group-limited routing, and their config.json fields."""

from typing import Any, Dict

from moejax.convert.families.common import EXPERT_COUNT_KEYS, backbone, get, get_first, moe_model
from moejax.convert.layout import moe_plan
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


def deepseek_export(cfg, hf: dict, topk_method: str) -> None:
  if cfg.moe is None:
    return
  moe, r = cfg.moe, cfg.moe.router
  hf.update(n_routed_experts=r.num_experts, moe_intermediate_size=moe.d_ff,
            first_k_dense_replace=cfg.first_dense_layers, n_group=r.num_expert_groups,
            topk_group=r.top_k_groups, norm_topk_prob=r.normalize_top_k,
            routed_scaling_factor=r.routed_scaling_factor, topk_method=topk_method,
            n_shared_experts=moe.num_shared_experts)


def deepseek_moe_plan(cfg, at: str, ours: tuple):
  return moe_plan(cfg, at, ours, shared="shared_experts")
