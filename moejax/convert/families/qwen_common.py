"""What Qwen2-MoE and Qwen3-MoE share: MoE every decoder_sparse_step blocks
but mlp_only_layers, softmax then top-k (renormalised with norm_topk_prob),
an optional gated shared expert."""

from moejax.convert.families.common import EXPERT_COUNT_KEYS, backbone, get, get_first, moe_model


def qwen_moe_model(hf: dict, **overrides):
  fields = backbone(hf, moe_every=get(hf, "decoder_sparse_step", 1),
                    dense_layers=tuple(hf.get("mlp_only_layers") or ()), **overrides)
  shared = int(hf.get("shared_expert_intermediate_size") or 0)
  shared_fields = dict(num_shared_experts=1, shared_d_ff=shared,
                       shared_expert_gate=True) if shared else {}
  return moe_model(hf, fields, num_experts=get_first(hf, EXPERT_COUNT_KEYS),
                   d_ff=get(hf, "moe_intermediate_size"),
                   router=dict(normalize_top_k=bool(hf.get("norm_topk_prob", False))),
                   **shared_fields)


def qwen_moe_export(cfg, hf: dict) -> None:
  if cfg.moe is None:
    return
  r = cfg.moe.router
  hf.update(num_experts=r.num_experts, num_local_experts=r.num_experts,
            moe_intermediate_size=cfg.moe.d_ff, decoder_sparse_step=cfg.moe_every,
            mlp_only_layers=list(cfg.dense_layers), norm_topk_prob=r.normalize_top_k)
