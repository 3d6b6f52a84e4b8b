"""Which HuggingFace tensor holds which moejax variable: the entry types, the
Llama-style backbone's plan and the MoE blocks' common plans. What differs
per family comes from its spec (moejax/convert/families/<model_type>.py).

A plan is a list of entries, each tying HF tensor names to one moejax
variable path (('params', 'block_0', 'attention', 'query', 'kernel'), ...):

- `Linear`: a torch Linear weight [out, in] <-> a Flax kernel whose first
  `in_axes` axes are inputs (Dense [in, out], DenseGeneral [in, heads, dim],
  output projections [heads, dim, out]); `rows` takes a slice of the
  weight's output rows (DBRX's fused Wqkv holds query, key and value).
- `Vector`: norm scales and biases, reshaped only.
- `Experts`: a stacked [E, in, out] expert weight (or [E, out] bias) <->
  either one tensor per expert (`...experts.{e}.up_proj.weight`, Mixtral's
  w1/w3/w2) or a fused tensor over all experts. The fused form of
  transformers 5 is `...experts.gate_up_proj` [E, 2 * f, d] (gate half
  first) and `...experts.down_proj` [E, d, f]; the entry's fields describe
  the others: gpt-oss's [E, in, out] with gate and up interleaved, DBRX's
  separate gate / up / down tensors of [E * f, d] rows. Families that store
  only a fused form (GraniteMoE, gpt-oss, DBRX) have no per-expert names.

Names are tried in order on import (older and newer transformers spell some
differently); export writes the first.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, List, Optional, Tuple

import numpy as np

from moejax.models.config import ModelConfig

if TYPE_CHECKING:
  from moejax.convert.families.spec import FamilySpec

Path = Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Linear:
  names: Tuple[str, ...]
  path: Path
  in_axes: int = 1
  # Permutes the kernel's last axis on import (DeepSeek's interleaved RoPE).
  perm: Optional[Tuple[int, ...]] = None
  rows: Optional[Tuple[int, int, int]] = None  # (start, stop, total) output rows


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
  in_out: bool = False          # fused matrices are [E, in, out], not torch's [E, out, in]
  gate_up: str = "halves"       # gate and up share a fused tensor as 'halves' (gate
                                # first) or 'interleaved' (gpt-oss), or are 'separate'
  stacked_rows: bool = False    # fused matrices are stored [E * rows, cols] (DBRX)

  @property
  def joined(self) -> bool:
    """Whether this part shares its fused tensor with another."""
    return self.part != "down" and self.gate_up != "separate"

  def out_axis(self, ndim: int) -> int:
    """The fused tensor's output axis (where gate and up are joined)."""
    return -1 if ndim == 2 or self.in_out else 1

  def fused_shape(self, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """The fused tensor's shape for our weight's `shape`."""
    out = shape[-1] * (2 if self.joined else 1)
    if len(shape) == 2:                                      # a bias [E, out]
      return (shape[0], out)
    hf = (shape[0], shape[1], out) if self.in_out else (shape[0], out, shape[1])
    return (hf[0] * hf[1], hf[2]) if self.stacked_rows else hf

  def from_fused(self, tensor: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """Our [E, in, out] weight (or [E, out] bias) from the fused tensor."""
    t = tensor.reshape(shape[0], -1, tensor.shape[-1]) if self.stacked_rows else tensor
    if self.joined:
      axis = self.out_axis(t.ndim) % t.ndim
      n = t.shape[axis] // 2
      first = self.part == "gate"
      if self.gate_up == "interleaved":
        t = np.take(t, np.arange(0 if first else 1, 2 * n, 2), axis=axis)
      else:
        t = np.take(t, np.arange(0, n) if first else np.arange(n, 2 * n), axis=axis)
    return t if t.ndim == 2 or self.in_out else np.swapaxes(t, 1, 2)

  def to_fused(self, parts: dict) -> np.ndarray:
    """The fused tensor from our weights {part: array} (gate and up when
    joined, else this entry's part)."""
    hf = {part: a if a.ndim == 2 or self.in_out else np.swapaxes(a, 1, 2)
          for part, a in parts.items()}
    if self.joined:
      gate, up = hf["gate"], hf["up"]
      axis = self.out_axis(gate.ndim) % gate.ndim
      if self.gate_up == "interleaved":
        t = np.stack([gate, up], axis=axis + 1)
        t = t.reshape(*gate.shape[:axis], 2 * gate.shape[axis], *gate.shape[axis + 1:])
      else:
        t = np.concatenate([gate, up], axis=axis)
    else:
      t = hf[self.part]
    return t.reshape(-1, t.shape[-1]) if self.stacked_rows else t


def rope_deinterleave(nope: int, rope: int) -> Tuple[int, ...]:
  """Channel order that turns DeepSeek's interleaved RoPE pairs (0,1), (2,3)
  into moejax's split halves: nope channels, then even, then odd rope ones."""
  return tuple(range(nope)) + tuple(nope + i for i in range(0, rope, 2)) + tuple(
      nope + i for i in range(1, rope, 2))


def _attention(cfg: ModelConfig, interleaved_rope: bool, hf: dict, at: str, ours: Path) -> List:
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
    perm = rope_deinterleave(0, cfg.head_size) if interleaved_rope else None
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
  if cfg.attention_sinks:
    entries.append(Vector((f"{at}.sinks",), p("sinks")))
  return entries


def norm_plan(cfg: ModelConfig, hf_name: str, ours: Path) -> List:
  entries = [Vector((f"{hf_name}.weight",), ours + ("scale",))]
  if cfg.norm == "layer":
    entries.append(Vector((f"{hf_name}.bias",), ours + ("bias",)))
  return entries


def glu_plan(at: str, ours: Path, names=("gate_proj", "up_proj", "down_proj")) -> List:
  """A dense SwiGLU FFN (gate, up, down) -> FeedForward's w_gate, w_in, w_out."""
  gate, up, down = names
  return [Linear((f"{at}.{gate}.weight",), ours + ("w_gate", "kernel")),
          Linear((f"{at}.{up}.weight",), ours + ("w_in", "kernel")),
          Linear((f"{at}.{down}.weight",), ours + ("w_out", "kernel"))]


def moe_plan(cfg: ModelConfig, at: str, ours: Path, *, mixtral_style: bool = False,
             shared: str = "shared_expert") -> List:
  """The MoE feed-forward of most families: a router Linear, SwiGLU experts
  stored per expert or fused (transformers 5), and shared experts under
  `shared` (with Qwen's shared_expert_gate). mixtral_style: Mixtral / PhiMoE
  names (w1 / w3 / w2 under block_sparse_moe in checkpoints; transformers 5
  keeps them under mlp in memory)."""
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
  if cfg.moe.num_shared_experts:
    entries += glu_plan(f"{at}.mlp.{shared}", ours + ("shared",))
    if cfg.moe.shared_expert_gate:
      entries.append(Linear((f"{at}.mlp.shared_expert_gate.weight",),
                            ours + ("shared_gate", "kernel")))
  return entries


def expert_bias_entry(name: str, ours: Path, hf_shape: Optional[Tuple[int, ...]] = None) -> Vector:
  """The selection bias (router_state, not params) of MoE block `ours`."""
  return Vector((name,), ("router_state",) + ours[1:] + ("router", "expert_bias"),
                hf_shape=hf_shape)


@dataclasses.dataclass(frozen=True)
class BackboneNames:
  """Where a family keeps its embedding, blocks and final norm."""
  embed: str = "model.embed_tokens.weight"
  block: str = "model.layers.{i}"
  final_norm: str = "model.norm"


def tensor_plan(cfg: ModelConfig, spec: "FamilySpec", hf: dict) -> List:
  """Every entry of a model of family `spec` (see module docstring)."""
  names = spec.names
  entries: List = [Vector((names.embed,), ("params", "embed", "embedding"), flat=False)]
  for i in range(cfg.num_layers):
    at, ours = names.block.format(i=i), ("params", f"block_{i}")
    if spec.block_plan is not None:
      entries += spec.block_plan(cfg, at, ours)
      continue
    entries += norm_plan(cfg, f"{at}.input_layernorm", ours + ("attention_norm",))
    entries += _attention(cfg, spec.interleaved_rope, hf, f"{at}.self_attn",
                          ours + ("attention",))
    entries += norm_plan(cfg, f"{at}.post_attention_layernorm", ours + ("ffn_norm",))
    if cfg.is_moe_layer(i):
      entries += spec.moe_plan(cfg, at, ours + ("moe",))
    else:
      entries += glu_plan(f"{at}.mlp", ours + ("ffn", "ffn"))
  entries += norm_plan(cfg, names.final_norm, ("params", "final_norm"))
  entries.append(Linear(("lm_head.weight",), ("params", "unembed", "kernel")))
  if cfg.lm.unembed_bias:
    entries.append(Vector(("lm_head.bias",), ("params", "unembed", "bias")))
  return entries


def hf_linear_shape(shape: Tuple[int, ...], in_axes: int) -> Tuple[int, int]:
  return int(np.prod(shape[in_axes:])), int(np.prod(shape[:in_axes]))
