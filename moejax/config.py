"""Validated configuration for MoE layers (routers: moejax.routing.config).

Every field is checked in `__post_init__`, so a bad value fails with one
`ValueError` naming the field, the value and what is valid — at construction,
before anything is traced or compiled. The dataclasses are frozen (hashable),
so they can be attributes of Flax modules and static arguments of `jax.jit`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from moejax.grouped_matmul import BACKENDS as GMM_BACKENDS, backend_problem, block_size_problem
from moejax.routing.config import RouterConfig, router_config_from_mapping
from moejax.routing.family import RouterFamily, router_families
from moejax.validation import check_choice, check_float, check_int, fail, from_mapping

__all__ = ["ACTIVATIONS", "DISPATCHES", "EP_EXCHANGES", "EXPERT_QUANTIZATIONS", "MoEConfig",
           "ROUTERS", "ROUTER_FAMILIES", "RouterConfig", "RouterFamily", "moe_config_from_mapping"]


# Router families and RouterConfig live in moejax.routing (one module per
# family); these names are re-exported here for the code that configures layers.
ROUTER_FAMILIES = router_families()
ROUTERS = tuple(ROUTER_FAMILIES)
DISPATCHES = ("einsum", "gather", "dropless", "retrieval")
# How expert-parallel dropless dispatch moves rows between devices
# (moejax/dispatch/expert_parallel.py).
EP_EXCHANGES = ("auto", "padded", "ragged")
# Weight-only quantization of the routed experts (moejax/compress/quantize.py).
EXPERT_QUANTIZATIONS = (None, "int8", "int4")
ACTIVATIONS = ("relu", "gelu", "silu", "swiglu", "geglu", "clamped_swiglu")


@dataclasses.dataclass(frozen=True)
class MoEConfig:
  """An MoE feed-forward layer: router + dispatch + experts (+ shared experts).

  Attributes:
    router: the RouterConfig.
    d_model: token width.
    d_ff: hidden width of each routed expert (fine-grained MoE = more experts
      with a smaller d_ff).
    activation: 'relu', 'gelu', 'silu' (MLP) or 'swiglu', 'geglu',
      'clamped_swiglu' (GLU; the last is gpt-oss's: gate and up clipped at 7,
      (up + 1) * gate * sigmoid(1.702 gate)).
    dispatch: 'einsum' (one-hot einsum; the readable reference, and the only
      one for Soft MoE), 'gather' (index gather into capacity buckets; needs
      router.capacity_factor), 'dropless' (sort by expert + grouped matmul).
    gmm_backend: grouped-matmul backend for 'dropless': 'auto' ('gathered' on
      CPU; 'tokamax' on GPU / TPU where installed, else 'ragged_dot'),
      'blocked' (a loop over row-block tiles; near dense speed on XLA:CPU),
      'gathered' ('blocked', with dropless dispatch and combine inside the
      expert loop: token rows read by index, outputs added back by index;
      no grouped copy of the tokens), 'ragged_dot' (jax.lax.ragged_dot), 'tokamax' (tokamax.ragged_dot: its
      autotuned Triton / Mosaic kernels; the [gpu] / [tpu] extras install it),
      'einsum' (masked dense einsum; a reference) or 'pallas' (the kernels
      in pallas_kernels/: Triton on GPU, Mosaic on TPU, interpret mode on
      CPU, where it is slow; with dispatch='dropless' the token moves use
      the fused Pallas permute / unpermute too).
    ep_exchange: how expert-parallel 'dropless' dispatch moves rows between
      devices: 'padded' (all_to_all of fixed-size blocks, the worst case
      each; runs everywhere), 'ragged' (jax.lax.ragged_all_to_all: only the
      used rows; GPU and TPU, XLA:CPU lacks the op) or 'auto' (ragged on GPU
      / TPU, padded on CPU).
    gmm_block_size: rows per block of the 'blocked' and 'pallas' backends
      ('pallas': a power of two >= 16). Each expert wastes at most one
      partial block; 128 suits CPU matmul tiles.
    num_shared_experts: always-on experts, fused into one FFN of width
      num_shared_experts * shared_d_ff (DeepSeek/Qwen-MoE). 0 = none.
    shared_d_ff: hidden width of each shared expert (default d_ff).
    shared_expert_gate: scale the shared output by sigmoid(x w) (Qwen-MoE).
    use_bias: biases in the expert FFNs.
    mh_heads: MH-MoE (Wu et al. 2024, multi-head MoE): > 1 splits each token
      into mh_heads sub-tokens of d_model / mh_heads (after a d_model x
      d_model projection), routes and computes each sub-token on its own
      with experts of that width, and merges them back (concatenation and a
      second projection). 1 = the plain layer.
    mh_projections: MH-MoE's split and merge projections (False: the
      sub-tokens are plain slices of the token).
    expert_quantization: None (float expert weights), 'int8' or 'int4': the
      routed experts' weights are stored as integers with float scales and
      dequantized (qwix) when the layer runs. For inference: such a model is
      made by experiments/compress.py and cannot be trained.
    expert_quantization_group: rows of the contraction axis that share one
      scale (must divide d_model and d_ff); 0 = one scale per output channel.
    lora_rank: LoRA adapters on every routed expert's matrices: W_e +
      (lora_alpha / lora_rank) A_e B_e with A_e [in, r] random and B_e
      [r, out] zero, so a model with adapters starts equal to the one without
      (moejax/experts.py). Train only them with train.trainable='lora'.
      0 = none.
    lora_alpha: the adapters' scale numerator (scale = lora_alpha / lora_rank).
    lora_shared_base: the routed experts share one base FFN, stored once
      ([1, in, out] per matrix), and differ only by their adapters: a
      mixture of LoRA experts over one (frozen) dense FFN (MoLoRA, Zadouri
      et al. 2023). Needs lora_rank > 0. experiments/convert.py
      --mode=upcycle --lora_rank=r --lora_shared_base makes one from a
      dense LM.
    dtype: compute dtype of the experts ('float32', 'bfloat16', 'float16';
      'float64' needs jax x64 and is for numerical checks). The router
      computes in float32 (float64 under x64 with float64 inputs).
  """

  router: RouterConfig = dataclasses.field(default_factory=RouterConfig)
  d_model: int = 64
  d_ff: int = 128
  activation: str = "gelu"
  dispatch: str = "einsum"
  gmm_backend: str = "auto"
  ep_exchange: str = "auto"
  gmm_block_size: int = 128
  num_shared_experts: int = 0
  shared_d_ff: Optional[int] = None
  shared_expert_gate: bool = False
  use_bias: bool = False
  mh_heads: int = 1
  mh_projections: bool = True
  expert_quantization: Optional[str] = None
  expert_quantization_group: int = 0
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_shared_base: bool = False
  dtype: str = "float32"

  def __post_init__(self):
    if not isinstance(self.router, RouterConfig):
      fail("router", type(self.router).__name__, "must be a moejax.config.RouterConfig")
    check_int("d_model", self.d_model, 1)
    check_int("d_ff", self.d_ff, 1)
    check_choice("activation", self.activation, ACTIVATIONS)
    check_choice("dispatch", self.dispatch, DISPATCHES)
    check_choice("gmm_backend", self.gmm_backend, GMM_BACKENDS)
    problem = backend_problem(self.gmm_backend)
    if problem:
      fail("gmm_backend", self.gmm_backend, problem)
    check_choice("ep_exchange", self.ep_exchange, EP_EXCHANGES)
    check_int("gmm_block_size", self.gmm_block_size, 1)
    problem = block_size_problem(self.gmm_backend, self.gmm_block_size)
    if problem:
      fail("gmm_block_size", self.gmm_block_size, problem)
    if self.gmm_backend == "pallas":
      if self.dtype == "float64":
        fail("dtype", "float64", "gmm_backend='pallas' computes in float32, bfloat16 or "
              "float16")
    check_int("num_shared_experts", self.num_shared_experts, 0)
    if self.shared_d_ff is not None:
      check_int("shared_d_ff", self.shared_d_ff, 1)
    if self.shared_expert_gate and not self.num_shared_experts:
      fail("shared_expert_gate", True, "needs num_shared_experts >= 1")
    check_choice("dtype", self.dtype, ("float32", "bfloat16", "float16", "float64"))
    check_int("mh_heads", self.mh_heads, 1)
    if self.d_model % self.mh_heads:
      fail("mh_heads", self.mh_heads, f"must divide d_model={self.d_model}")
    check_choice("expert_quantization", self.expert_quantization, EXPERT_QUANTIZATIONS)
    check_int("expert_quantization_group", self.expert_quantization_group, 0)
    group = self.expert_quantization_group
    if group and (self.d_model % group or self.d_ff % group):
      fail("expert_quantization_group", group,
           f"must divide d_model={self.d_model} and d_ff={self.d_ff} (0 = per channel)")
    check_int("lora_rank", self.lora_rank, 0)
    if self.lora_rank > min(self.d_model, self.d_ff):
      fail("lora_rank", self.lora_rank, f"must be <= min(d_model, d_ff) = "
           f"{min(self.d_model, self.d_ff)}: a larger rank than the expert matrices have")
    check_float("lora_alpha", self.lora_alpha, 0.0, False)
    if self.lora_shared_base and not self.lora_rank:
      fail("lora_shared_base", True, "needs lora_rank > 0: without adapters every expert "
           "would be the same FFN")
    if self.lora_rank and self.expert_quantization is not None:
      fail("lora_rank", self.lora_rank, "adapters on quantized experts are not supported; "
           "quantize after merging them (experiments/compress.py)")
    if not self.router.is_sparse and self.dispatch != "einsum":
      fail("dispatch", self.dispatch,
           f"router.name={self.router.name!r} gives dense weights; use dispatch='einsum'")
    if self.dispatch == "gather" and self.router.dense_training:
      fail("dispatch", "gather", "router.dense_training sends every token to every expert; "
           "use 'dropless' or 'einsum'")
    if self.dispatch == "gather" and not self.router.family.may_drop:
      fail("dispatch", "gather", f"router.name={self.router.name!r} never drops; use "
           "'dropless' or 'einsum'")
    if self.dispatch == "gather" and self.router.capacity(1) is None:
      fail("dispatch", "gather",
           "needs router.capacity_factor (a number > 0); for dropless use dispatch='dropless'")


def moe_config_from_mapping(values) -> MoEConfig:
  """MoEConfig from a (nested) mapping, e.g. an ml_collections ConfigDict.

  The 'router' entry is itself a mapping of RouterConfig fields and family
  sections (moejax.routing.config.router_config_from_mapping). Unknown
  fields fail with the same one-line ValueError as bad values.
  """
  values = dict(values)
  router = values.pop("router", {})
  if not isinstance(router, RouterConfig):
    router = router_config_from_mapping(router)
  return from_mapping(MoEConfig, {**values, "router": router}, "")
