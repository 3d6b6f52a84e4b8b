"""DBRX: its own field names (attention and FFN settings nested), a fused
Wqkv with optional clipping, LayerNorms without biases, softmax routing with
the top-k weights renormalised (moe_normalize_expert_weights = 1, an L1
norm), separate gate (w1), up (v1) and down (w2) expert tensors of [E * f, d]
rows. moe_jitter_eps (training-time noise) is not carried over."""

from moejax.convert.families.common import backbone, get, moe_model, refuse, rope_parameters
from moejax.convert.families.spec import FamilySpec, UnsupportedModelError
from moejax.convert.layout import BackboneNames, Experts, Linear, norm_plan

ARCHITECTURE = "DbrxForCausalLM"


def to_model(hf: dict):
  attn, ffn = hf.get("attn_config") or {}, hf.get("ffn_config") or {}
  act = (ffn.get("ffn_act_fn") or {}).get("name", "silu")
  norm_p = ffn.get("moe_normalize_expert_weights", 1.0)
  if norm_p not in (None, 1, 1.0):
    refuse(hf, "ffn_config.moe_normalize_expert_weights", norm_p,
           "implemented: 1 (sum to one) or None")
  # The Llama-style names backbone() reads.
  view = {**hf, "hidden_size": get(hf, "d_model"), "num_attention_heads": get(hf, "n_heads"),
          "num_hidden_layers": get(hf, "n_layers"),
          "num_key_value_heads": attn.get("kv_n_heads", 1),
          "intermediate_size": get(ffn, "ffn_hidden_size"), "hidden_act": act,
          "num_experts_per_tok": ffn.get("moe_top_k", 1),
          "rope_theta": attn.get("rope_theta", 10000.0), "head_dim": None}
  clip = attn.get("clip_qkv")
  fields = backbone(view, norm="layer_no_bias", norm_eps=1e-5,
                    clip_qkv=None if clip is None else float(clip))
  return moe_model(view, fields, num_experts=get(ffn, "moe_num_experts"),
                   d_ff=get(ffn, "ffn_hidden_size"),
                   router=dict(normalize_top_k=norm_p is not None))


def export_config(cfg, hf: dict) -> dict:
  """DBRX's config.json on top of `hf`: its own names, attention and FFN
  fields nested."""
  if cfg.moe is None:
    raise UnsupportedModelError("cannot export as dbrx: DBRX models are MoE in every block; "
                                "this model has none (model.moe_every=0)")
  r = cfg.moe.router
  hf.update(
      model_type="dbrx", architectures=[ARCHITECTURE], vocab_size=cfg.lm.vocab_size,
      d_model=cfg.d_model, n_heads=cfg.num_heads, n_layers=cfg.num_layers,
      max_seq_len=hf.get("max_seq_len", 2048), rope_parameters=rope_parameters(cfg.lm),
      attn_config=dict(kv_n_heads=cfg.kv_heads, clip_qkv=cfg.clip_qkv,
                       rope_theta=cfg.lm.rope_theta),
      ffn_config=dict(ffn_hidden_size=cfg.moe.d_ff, moe_num_experts=r.num_experts,
                      moe_top_k=r.top_k, ffn_act_fn={"name": "silu"},
                      moe_normalize_expert_weights=1.0 if r.normalize_top_k else None),
      tie_word_embeddings=False, dtype="float32")
  return hf


def block_plan(cfg, at: str, ours: tuple):
  """One Wqkv whose rows are [query; key; value]; w2's rows are inputs."""
  n = f"{at}.norm_attn_norm"
  q, kv = cfg.num_heads * cfg.head_size, cfg.kv_heads * cfg.head_size
  bounds = {"query": (0, q), "key": (q, q + kv), "value": (q + kv, q + 2 * kv)}
  attention = ours + ("attention",)
  entries = norm_plan(cfg, f"{n}.norm_1", ours + ("attention_norm",))
  entries += [Linear((f"{n}.attn.Wqkv.weight",), attention + (name, "kernel"),
                     rows=(start, stop, q + 2 * kv))
              for name, (start, stop) in bounds.items()]
  entries.append(Linear((f"{n}.attn.out_proj.weight",), attention + ("out", "kernel"),
                        in_axes=2))
  entries += norm_plan(cfg, f"{n}.norm_2", ours + ("ffn_norm",))
  moe = ours + ("moe",)
  entries.append(Linear((f"{at}.ffn.router.layer.weight",), moe + ("router", "kernel")))
  for part, name, ours_name in (("gate", "w1", "w_gate"), ("up", "v1", "w_in"),
                                ("down", "w2", "w_out")):
    entries.append(Experts(per_expert=(), fused=(f"{at}.ffn.experts.mlp.{name}",), part=part,
                           path=moe + ("experts", ours_name), in_out=part == "down",
                           gate_up="separate", stacked_rows=True))
  return entries


SPEC = FamilySpec(
    model_type="dbrx", architecture=ARCHITECTURE, to_model=to_model,
    export_config=export_config, block_plan=block_plan,
    names=BackboneNames("transformer.wte.weight", "transformer.blocks.{i}", "transformer.norm_f"))
