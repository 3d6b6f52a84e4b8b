"""Which HuggingFace tensor holds which moejax variable, per model family.

A plan is a list of entries, each tying HF tensor names to one moejax
variable path (('params', 'block_0', 'attention', 'query', 'kernel'), ...):

- `Linear`: a torch Linear weight [out, in] <-> a Flax kernel whose first
  `in_axes` axes are inputs (Dense [in, out], DenseGeneral [in, heads, dim],
  output projections [heads, dim, out]).
- `Vector`: norm scales and biases, reshaped only.
- `Experts`: a stacked [E, ...] expert weight <-> either one tensor per expert
  (`...experts.{e}.up_proj.weight`, Mixtral's w1/w3/w2) or the fused
  transformers-5 layout (`...experts.gate_up_proj` [E, 2 * f, d], gate half
  first, and `...experts.down_proj` [E, d, f]). Families that store only
  the fused layout (GraniteMoE) have no per-expert names.

Names are tried in order on import (older and newer transformers spell some
differently); export writes the first.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import numpy as np

from moejax.models.config import ModelConfig

Path = Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Linear:
  names: Tuple[str, ...]
  path: Path
  in_axes: int = 1
  # Permutes the kernel's last axis on import (DeepSeek's interleaved RoPE).
  perm: Optional[Tuple[int, ...]] = None


@dataclasses.dataclass(frozen=True)
class Vector:
  names: Tuple[str, ...]
  path: Path
  flat: bool = True   # HF stores it flattened (biases of [heads, dim] kernels)
  # Permutes the last axis on import, like the kernel it is the bias of.
  perm: Optional[Tuple[int, ...]] = None
  hf_shape: Optional[Tuple[int, ...]] = None  # HF's own shape, where it is neither ours nor flat


@dataclasses.dataclass(frozen=True)
class Experts:
  per_expert: Tuple[str, ...]   # templates with {e}
  fused: Tuple[str, ...]        # fused tensor names
  part: str                     # 'gate', 'up' (-> w_gate, w_in) or 'down' (-> w_out)
  path: Path


# Multi-head-attention families whose RoPE rotates adjacent channel pairs.
INTERLEAVED_ROPE_MHA = ("ernie4_5_moe",)


def rope_deinterleave(nope: int, rope: int) -> Tuple[int, ...]:
  """Channel order that turns DeepSeek's interleaved RoPE pairs (0,1), (2,3)
  into moejax's split halves: nope channels, then even, then odd rope ones."""
  return tuple(range(nope)) + tuple(nope + i for i in range(0, rope, 2)) + tuple(
      nope + i for i in range(1, rope, 2))


def _attention(cfg: ModelConfig, model_type: str, hf: dict, at: str, ours: Path) -> List:
  p = lambda *names: ours + names
  if cfg.attention == "mla":
    interleave = hf.get("rope_interleave", True)
    q_perm = rope_deinterleave(cfg.mla.nope_dim, cfg.mla.rope_dim) if interleave else None
    kv_perm = rope_deinterleave(cfg.mla.kv_rank, cfg.mla.rope_dim) if interleave else None
    entries = []
    if cfg.mla.q_rank:
      entries += [Linear((f"{at}.q_a_proj.weight",), p("q_down", "kernel")),
                  Vector((f"{at}.q_a_layernorm.weight",), p("q_norm", "scale")),
                  Linear((f"{at}.q_b_proj.weight",), p("q_up", "kernel"), perm=q_perm)]
      if cfg.attention_bias:
        entries.append(Vector((f"{at}.q_a_proj.bias",), p("q_down", "bias")))
    else:
      entries.append(Linear((f"{at}.q_proj.weight",), p("query", "kernel"), perm=q_perm))
    entries += [Linear((f"{at}.kv_a_proj_with_mqa.weight",), p("kv_down", "kernel"),
                       perm=kv_perm),
                Vector((f"{at}.kv_a_layernorm.weight",), p("kv_norm", "scale")),
                Linear((f"{at}.kv_b_proj.weight",), p("kv_up", "kernel"))]
    if cfg.attention_bias:
      entries.append(Vector((f"{at}.kv_a_proj_with_mqa.bias",), p("kv_down", "bias"),
                            perm=kv_perm))
  else:
    # Families that rotate adjacent channel pairs (0, 1), (2, 3) get their query
    # and key channels reordered into moejax's halves, per head.
    perm = (rope_deinterleave(0, cfg.head_size) if model_type in INTERLEAVED_ROPE_MHA
            else None)
    perms = {"query": perm, "key": perm, "value": None}
    entries = [Linear((f"{at}.{hf_name}_proj.weight",), p(name, "kernel"), perm=perms[name])
               for hf_name, name in (("q", "query"), ("k", "key"), ("v", "value"))]
    if cfg.attention_bias:
      entries += [Vector((f"{at}.{hf_name}_proj.bias",), p(name, "bias"), perm=perms[name])
                  for hf_name, name in (("q", "query"), ("k", "key"), ("v", "value"))]
    if cfg.qk_norm != "none":
      entries += [Vector((f"{at}.q_norm.weight",), p("query_norm", "scale")),
                  Vector((f"{at}.k_norm.weight",), p("key_norm", "scale"))]
  entries.append(Linear((f"{at}.o_proj.weight",), p("out", "kernel"), in_axes=2))
  if cfg.attention_out_bias:
    entries.append(Vector((f"{at}.o_proj.bias",), p("out", "bias")))
  return entries


def _norm(cfg: ModelConfig, hf_name: str, ours: Path) -> List:
  entries = [Vector((f"{hf_name}.weight",), ours + ("scale",))]
  if cfg.norm == "layer":
    entries.append(Vector((f"{hf_name}.bias",), ours + ("bias",)))
  return entries


def _glu(at: str, ours: Path, names=("gate_proj", "up_proj", "down_proj")) -> List:
  """A dense SwiGLU FFN (gate, up, down) -> FeedForward's w_gate, w_in, w_out."""
  gate, up, down = names
  return [Linear((f"{at}.{gate}.weight",), ours + ("w_gate", "kernel")),
          Linear((f"{at}.{up}.weight",), ours + ("w_in", "kernel")),
          Linear((f"{at}.{down}.weight",), ours + ("w_out", "kernel"))]


def _granite_moe(at: str, ours: Path) -> List:
  """GraniteMoE: a router Linear and fused experts only (input_linear [E, 2f,
  d], gate half first; output_linear [E, d, f])."""
  moe = f"{at}.block_sparse_moe"
  names = {"gate": "input_linear", "up": "input_linear", "down": "output_linear"}
  return [Linear((f"{moe}.router.layer.weight",), ours + ("router", "kernel"))] + [
      Experts(per_expert=(), fused=(f"{moe}.{names[part]}.weight",), part=part,
              path=ours + ("experts", ours_name))
      for part, ours_name in (("gate", "w_gate"), ("up", "w_in"), ("down", "w_out"))]


def _moe(cfg: ModelConfig, model_type: str, at: str, ours: Path) -> List:
  if model_type == "granitemoe":
    return _granite_moe(at, ours)
  mixtral_style = model_type in ("mixtral", "phimoe")
  # Per-expert checkpoints of Mixtral / PhiMoE live under block_sparse_moe;
  # transformers 5 keeps them under mlp in memory.
  prefixes = (f"{at}.block_sparse_moe", f"{at}.mlp") if mixtral_style else (f"{at}.mlp",)
  gate_names = tuple(f"{pre}.{g}.weight" for pre in prefixes for g in ("gate", "router"))
  entries = [Linear(gate_names, ours + ("router", "kernel"))]
  expert_names = {"gate": "w1", "up": "w3", "down": "w2"} if mixtral_style else {
      "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
  ours_names = {"gate": "w_gate", "up": "w_in", "down": "w_out"}
  for part in ("gate", "up", "down"):
    fused = "down_proj" if part == "down" else "gate_up_proj"
    entries.append(Experts(
        per_expert=tuple(f"{pre}.experts.{{e}}.{expert_names[part]}.weight" for pre in prefixes),
        fused=tuple(f"{pre}.experts.{fused}" for pre in reversed(prefixes)), part=part,
        path=ours + ("experts", ours_names[part])))
  moe = cfg.moe
  if model_type == "deepseek_v3":
    entries.append(Vector((f"{at}.mlp.gate.e_score_correction_bias",),
                          ("router_state",) + ours[1:] + ("router", "expert_bias")))
  if model_type == "ernie4_5_moe":
    entries.append(Vector((f"{at}.mlp.moe_statics.e_score_correction_bias",),
                          ("router_state",) + ours[1:] + ("router", "expert_bias"),
                          hf_shape=(1, moe.router.num_experts)))
  if moe.num_shared_experts:
    shared = ("shared_experts" if model_type.startswith("deepseek") or model_type == "ernie4_5_moe"
              else "shared_expert")
    entries += _glu(f"{at}.mlp.{shared}", ours + ("shared",))
    if moe.shared_expert_gate:
      entries.append(Linear((f"{at}.mlp.shared_expert_gate.weight",),
                            ours + ("shared_gate", "kernel")))
  return entries


def tensor_plan(cfg: ModelConfig, model_type: str, hf: dict) -> List:
  """Every entry of a model of this family (see module docstring)."""
  entries: List = [Vector(("model.embed_tokens.weight",), ("params", "embed", "embedding"),
                               flat=False)]
  for i in range(cfg.num_layers):
    at, ours = f"model.layers.{i}", ("params", f"block_{i}")
    entries += _norm(cfg, f"{at}.input_layernorm", ours + ("attention_norm",))
    entries += _attention(cfg, model_type, hf, f"{at}.self_attn", ours + ("attention",))
    entries += _norm(cfg, f"{at}.post_attention_layernorm", ours + ("ffn_norm",))
    if cfg.is_moe_layer(i):
      entries += _moe(cfg, model_type, at, ours + ("moe",))
    else:
      entries += _glu(f"{at}.mlp", ours + ("ffn", "ffn"))
  entries += _norm(cfg, "model.norm", ("params", "final_norm"))
  entries.append(Linear(("lm_head.weight",), ("params", "unembed", "kernel")))
  if cfg.lm.unembed_bias:
    entries.append(Vector(("lm_head.bias",), ("params", "unembed", "bias")))
  return entries


def hf_linear_shape(shape: Tuple[int, ...], in_axes: int) -> Tuple[int, int]:
  return int(np.prod(shape[in_axes:])), int(np.prod(shape[:in_axes]))
