"""Tiny random HuggingFace models for the conversion tests (transformers + CPU
torch are test-only dependencies). Weights are redrawn at a scale where a
wrong mapping cannot hide inside small logits."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM

VOCAB = 64
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
FAMILY_KWARGS = {
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                      shared_expert_intermediate_size=40, norm_topk_prob=False),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                      head_dim=16, norm_topk_prob=True, num_hidden_layers=3,
                      mlp_only_layers=[1]),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2),
    "deepseek_v3": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=24,
                        n_shared_experts=1, first_k_dense_replace=1, n_group=4, topk_group=2,
                        q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                        qk_rope_head_dim=8, v_head_dim=12, num_key_value_heads=4,
                        num_hidden_layers=3),
    # V2-Lite's form: no query compression; groups ranked by their best score.
    "deepseek_v2": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=24,
                        n_shared_experts=1, first_k_dense_replace=1, n_group=4, topk_group=2,
                        topk_method="group_limited_greedy", routed_scaling_factor=1.5,
                        q_lora_rank=None, kv_lora_rank=16, qk_nope_head_dim=8,
                        qk_rope_head_dim=8, v_head_dim=12, num_key_value_heads=4,
                        num_hidden_layers=3),
    "phimoe": dict(num_local_experts=4, num_experts_per_tok=2, attention_bias=True,
                   lm_head_bias=True),
    "granitemoe": dict(num_local_experts=4, num_experts_per_tok=2, embedding_multiplier=3.0,
                       attention_multiplier=0.2, residual_multiplier=0.5, logits_scaling=2.5),
    "ernie4_5_moe": dict(moe_num_experts=4, moe_k=2, moe_intermediate_size=24,
                         moe_num_shared_experts=1, moe_layer_start_index=1, num_hidden_layers=3,
                         moe_layer_end_index=1),
    # Three layers: windowed, full, windowed (a 4-key window, 13 tokens); yarn RoPE.
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2, head_dim=8, sliding_window=4,
                    num_hidden_layers=3),
    # Clipping at 2 bites: the fused q / k / v projections reach about 5. DBRX's
    # own size names: its FFN config copies d_model before hidden_size is mapped.
    "dbrx": dict(d_model=32, n_heads=4, n_layers=2,
                 attn_config=dict(kv_n_heads=2, clip_qkv=2.0, rope_theta=10000.0),
                 ffn_config=dict(ffn_hidden_size=24, moe_num_experts=4, moe_top_k=2)),
    "llama": dict(),
}
MOE_FAMILIES = [f for f in FAMILY_KWARGS if f != "llama"]


def tiny_hf_model(family: str, seed: int = 0, **overrides):
  """A transformers model of `family` with random weights (eager attention):
  COMMON sizes, then FAMILY_KWARGS[family] (if listed), then `overrides`."""
  torch.manual_seed(seed)
  config = AutoConfig.for_model(family, **{**COMMON, **FAMILY_KWARGS.get(family, {}), **overrides})
  model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
  with torch.no_grad():
    for param in model.parameters():
      param.normal_(0.0, 0.3 if param.dim() > 1 else 1.0)
    for name, buffer in model.named_buffers():
      if "e_score_correction_bias" in name:
        buffer.uniform_(0.0, 0.1)
  return model


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.as_tensor(ids)).logits.numpy()


def hf_router_choices(model, ids: np.ndarray) -> dict:
  """{layer index: sorted top-k expert indices [tokens, k]} from the HF routers."""
  choices = {}
  hooks = []
  layers = model.transformer.blocks if hasattr(model, "transformer") else model.model.layers
  for i, layer in enumerate(layers):
    if hasattr(layer, "ffn"):  # DBRX: the router gives logits; its experts get the choice

      def pre_hook(module, args, i=i):
        choices[i] = np.sort(args[1].numpy(), axis=-1)
      hooks.append(layer.ffn.experts.register_forward_pre_hook(pre_hook))
      continue
    mlp = getattr(layer, "mlp", None) or getattr(layer, "block_sparse_moe")
    router = getattr(mlp, "gate", None) or getattr(mlp, "router", None)
    if router is None or not hasattr(mlp, "experts"):
      continue

    def hook(module, inputs, output, i=i):
      choices[i] = np.sort(output[2].numpy(), axis=-1)
    hooks.append(router.register_forward_hook(hook))
  try:
    hf_logits(model, ids)
  finally:
    for h in hooks:
      h.remove()
  return choices
