"""Validated configuration for routers and MoE layers.

Every field is checked in `__post_init__`, so a bad value fails with one
`ValueError` naming the field, the value and what is valid — at construction,
before anything is traced or compiled. The dataclasses are frozen (hashable),
so they can be attributes of Flax modules and static arguments of `jax.jit`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, Optional

from moejax.grouped_matmul import BACKENDS as GMM_BACKENDS, backend_problem, block_size_problem
from moejax.validation import check_choice, check_float, check_int, fail, from_mapping


@dataclasses.dataclass(frozen=True)
class RouterFamily:
  """What the rest of moejax needs to know about a router family; its route
  function is registered under the same name in moejax/routing/router.py.

  sparse: gives a sparse Routing of (token, expert) assignments, which every
    dispatch takes; otherwise dense dispatch/combine weights (Soft MoE), which
    only 'einsum' dispatch takes.
  causal: a token's experts depend on that token alone, so the router can
    generate token by token and an LM's loss with it is honest; expert choice,
    Soft MoE and Sinkhorn look at the other tokens of the call, later ones too.
  experts_per_token: how many experts' parameters a token uses on average
    (for active-parameter counts): top_k, capacity_factor for expert choice,
    1 for Soft MoE (a slot mixes many tokens).
  """

  name: str
  sparse: bool = True
  causal: bool = True
  experts_per_token: Callable[["RouterConfig"], float] = lambda r: r.top_k


ROUTER_FAMILIES: Dict[str, RouterFamily] = {f.name: f for f in (
    RouterFamily("top_k"),
    RouterFamily("threshold"),
    RouterFamily("sparsemixer"),
    RouterFamily("hash"),
    RouterFamily("expert_choice", causal=False, experts_per_token=lambda r: r.capacity_factor),
    RouterFamily("expert_threshold"),
    RouterFamily("product_key", experts_per_token=lambda r: r.top_k * r.peer_heads),
    RouterFamily("sinkhorn", causal=False),
    RouterFamily("soft_moe", sparse=False, causal=False, experts_per_token=lambda r: 1),
)}
ROUTERS = tuple(ROUTER_FAMILIES)
GROUP_SCORES = ("top2_sum", "max")
SCORE_FNS = ("softmax", "sigmoid")
SOFT_MOE_GROUPINGS = ("example", "call")
DROP_POLICIES = ("position", "probability")
DISPATCHES = ("einsum", "gather", "dropless", "retrieval")
# How expert-parallel dropless dispatch moves rows between devices
# (moejax/dispatch/expert_parallel.py).
EP_EXCHANGES = ("auto", "padded", "ragged")
# Weight-only quantization of the routed experts (moejax/compress/quantize.py).
EXPERT_QUANTIZATIONS = (None, "int8", "int4")
ACTIVATIONS = ("relu", "gelu", "silu", "swiglu", "geglu", "clamped_swiglu")


@dataclasses.dataclass(frozen=True)
class RouterConfig:
  """How tokens are assigned to experts.

  Attributes:
    name: router family: 'top_k' (token choice: Switch, GShard, Mixtral,
      DeepSeek-V3), 'expert_choice' (each expert takes its top-C tokens),
      'soft_moe' (slots are softmax mixtures of all tokens), 'sinkhorn'
      (BASE-style balanced assignment), 'hash' (fixed token-id hash, needs
      token ids), 'threshold' (XMoE dynamic-k: experts until the cumulative
      probability reaches `threshold`, at most `top_k`), 'sparsemixer'
      (Phi-3.5-MoE: experts picked one by one, each weighted by a softmax over
      the near-tied logits; moejax.routing.sparsemixer), 'expert_threshold'
      (causal expert choice: each expert takes the tokens whose probability
      reaches its threshold, a running estimate of expert choice's cutoff for
      top_k experts per token on average; moejax.routing.expert_threshold),
      'product_key' (PEER: top_k of num_experts = n^2 experts per head by
      product-key retrieval, never scoring all of them; pair with tiny
      experts (d_ff 1) and dispatch='retrieval'; moejax.routing.product_keys).
    num_experts: routed experts E (null experts are extra, see below).
    top_k: experts per token (an upper bound for 'threshold'; the average
      for 'expert_threshold'; per head for 'product_key').
    score_fn: 'softmax' or 'sigmoid' (DeepSeek-V3) scores over experts.
    normalize_top_k: renormalise the chosen weights to sum to one. With
      softmax scores this is Mixtral's top-k-then-softmax; without it,
      Switch/GShard's softmax-then-top-k.
    routed_scaling_factor: multiplies the chosen weights (DeepSeek-V3: 2.5).
    num_expert_groups: experts are split into this many equal groups; only the
      `top_k_groups` best groups (by `group_score`) may be chosen from
      (DeepSeek-V2 / V3 group-limited routing). 1 = off.
    top_k_groups: groups kept per token when group-limited.
    group_score: how a group is ranked: 'top2_sum' (the sum of its two best
      selection scores; DeepSeek-V3) or 'max' (its best; DeepSeek-V2).
    logit_bias: a trained per-output bias on the router logits (gpt-oss's
      router is a Linear with a bias). It moves the weights as well as the
      choice, unlike use_expert_bias.
    use_expert_bias: add a non-trained per-expert bias to the scores for
      *selection only* (aux-loss-free balancing); see
      `moejax.routing.losses.update_expert_bias`.
    expert_bias_update_rate: step size of that bias update (DeepSeek-V3's
      gamma). MoELayer applies it itself on every training call that has the
      'router_state' collection mutable; 0 = keep the bias fixed.
    jitter_noise: Switch input jitter: multiply router inputs by U(1-eps, 1+eps)
      during training. 0 = off.
    noisy_top_k: Shazeer et al. noisy top-k gating: add N(0, softplus(x W_noise))
      to the logits during training.
    second_expert_sampling: GShard: keep the second expert with probability
      min(1, 2 * w2) where w2 is its weight normalised over the top two.
    num_null_experts: extra "null" experts (AdaMoE / MoE++ zero-computation
      experts): choosing one costs nothing and contributes zero output.
    num_copy_experts: MoE++ copy experts: choosing one adds weight * x (the
      token itself); no FFN, never dispatched.
    num_constant_experts: MoE++ constant experts: expert j adds weight *
      (a1 x + a2 v_j) with a trained vector v_j and [a1, a2] = softmax(x W_j);
      no FFN, never dispatched.
    gating_residual: MoE++ gating residual: a layer's router logits add the
      previous MoE layer's logits times a trained [outputs, outputs] matrix
      (initialised to zero, so the layer starts as without it).
    threshold: cumulative-probability threshold in (0, 1] for 'threshold'.
    capacity_factor: slots per expert = ceil(capacity_factor * tokens * top_k /
      num_experts); tokens beyond it are dropped. None = dropless. For
      'expert_choice' it is the average number of experts per token.
    min_capacity: lower bound on slots per expert.
    drop_policy: which tokens win the slots when an expert overflows:
      'position' (earlier tokens first; GShard/Switch) or 'probability'
      (higher router confidence first; V-MoE batch-prioritised routing).
      First choices always come before second choices.
    num_slots: Soft MoE slots per expert (per example, with
      soft_moe_grouping='example').
    soft_moe_grouping: which tokens share a set of Soft MoE slots.
      'example' (the paper's and vmoe's definition; the default): each
      sequence / image of the batch (the leading axis of the layer's input)
      has its own slots, so its output does not depend on its batch
      neighbours. 'call': all tokens of the call share one set of slots.
    soft_moe_normalize: vmoe's normalised Soft MoE: tokens and the slot
      parameters are L2-normalised over d_model and the logits multiplied by
      a learned scalar scale (initialised to 1), which keeps the softmaxes
      from saturating as d_model grows.
    sinkhorn_iterations: Sinkhorn iterations for the balanced router.
    sparsemixer_eps: relative logit gap (x2) inside which experts share a
      'sparsemixer' pick's weight (Phi-3.5-MoE's router_jitter_noise, 0.01).
    hash_seed: seed of the fixed token-id -> expert hash.
    peer_heads: 'product_key' retrieval heads H, each with its own query and
      sub-keys, sharing the experts (a token visits H * top_k experts).
    peer_key_dim: 'product_key' query / key width per head (even; each
      sub-key table holds sqrt(num_experts) keys of peer_key_dim / 2).
    dense_training: DS-MoE (moejax.routing.dense_training): training calls
      (deterministic=False) send every token to every routed expert weighted
      by its score; inference calls route sparsely as configured ('top_k' or
      'threshold'). Pair with train.mutual_information_weight.
    expert_threshold_rate: 'expert_threshold': the thresholds are the running
      mean of the training calls' cutoffs for the first 1 / rate calls, then
      an exponential moving average with this rate (0 = keep them fixed).
    routing_groups: the tokens of a call are split into this many equal,
      contiguous groups that are routed independently (capacity, expert
      choice and drop decisions are per group, as in GShard). 1 = all tokens
      together. On a mesh, a multiple of the number of token shards
      (data x fsdp x expert) lets capacity dispatch run expert-parallel with
      all_to_all; the numbers do not depend on the mesh, only on this value.
  """

  name: str = "top_k"
  num_experts: int = 8
  top_k: int = 2
  score_fn: str = "softmax"
  normalize_top_k: bool = False
  routed_scaling_factor: float = 1.0
  num_expert_groups: int = 1
  top_k_groups: int = 1
  group_score: str = "top2_sum"
  logit_bias: bool = False
  use_expert_bias: bool = False
  expert_bias_update_rate: float = 1e-3
  jitter_noise: float = 0.0
  noisy_top_k: bool = False
  second_expert_sampling: bool = False
  num_null_experts: int = 0
  num_copy_experts: int = 0
  num_constant_experts: int = 0
  gating_residual: bool = False
  threshold: float = 0.5
  capacity_factor: Optional[float] = None
  min_capacity: int = 1
  drop_policy: str = "position"
  num_slots: int = 1
  soft_moe_grouping: str = "example"
  soft_moe_normalize: bool = False
  sinkhorn_iterations: int = 8
  sparsemixer_eps: float = 0.01
  hash_seed: int = 0
  peer_heads: int = 1
  peer_key_dim: int = 32
  dense_training: bool = False
  expert_threshold_rate: float = 0.01
  routing_groups: int = 1

  def __post_init__(self):
    check_choice("router.name", self.name, ROUTERS)
    check_int("router.num_experts", self.num_experts, 1)
    check_int("router.top_k", self.top_k, 1)
    for field in ("num_null_experts", "num_copy_experts", "num_constant_experts"):
      check_int(f"router.{field}", getattr(self, field), 0)
    if self.top_k > self.num_experts + self.num_zero_computation_experts:
      fail("router.top_k", self.top_k,
           f"must be <= num_experts + zero-computation (null, copy, constant) experts = "
           f"{self.num_experts + self.num_zero_computation_experts}")
    check_choice("router.score_fn", self.score_fn, SCORE_FNS)
    check_float("router.routed_scaling_factor", self.routed_scaling_factor, 0.0, False)
    check_int("router.num_expert_groups", self.num_expert_groups, 1)
    if self.num_experts % self.num_expert_groups:
      fail("router.num_expert_groups", self.num_expert_groups,
           f"must divide num_experts={self.num_experts}")
    check_int("router.top_k_groups", self.top_k_groups, 1)
    check_choice("router.group_score", self.group_score, GROUP_SCORES)
    if self.num_expert_groups > 1:
      if self.top_k_groups > self.num_expert_groups:
        fail("router.top_k_groups", self.top_k_groups,
             f"must be <= num_expert_groups={self.num_expert_groups}")
      per_group = self.num_experts // self.num_expert_groups
      if self.top_k > self.top_k_groups * per_group:
        fail("router.top_k", self.top_k,
             f"must be <= top_k_groups * experts per group = "
             f"{self.top_k_groups * per_group} when group-limited")
      for field in ("num_null_experts", "num_copy_experts", "num_constant_experts"):
        if getattr(self, field):
          fail(f"router.{field}", getattr(self, field), "zero-computation (null, copy, "
               "constant) experts must be 0 when num_expert_groups > 1")
    check_float("router.expert_bias_update_rate", self.expert_bias_update_rate, 0.0, True)
    check_float("router.jitter_noise", self.jitter_noise, 0.0, True)
    if self.jitter_noise >= 1:
      fail("router.jitter_noise", self.jitter_noise, "must be in [0, 1)")
    if self.second_expert_sampling and self.top_k != 2:
      fail("router.second_expert_sampling", True, f"needs top_k=2, got top_k={self.top_k}")
    check_float("router.threshold", self.threshold, 0.0, False)
    if self.threshold > 1:
      fail("router.threshold", self.threshold, "must be in (0, 1]")
    if self.capacity_factor is not None:
      check_float("router.capacity_factor", self.capacity_factor, 0.0, False)
    check_int("router.min_capacity", self.min_capacity, 1)
    check_choice("router.drop_policy", self.drop_policy, DROP_POLICIES)
    check_int("router.num_slots", self.num_slots, 1)
    check_int("router.sinkhorn_iterations", self.sinkhorn_iterations, 1)
    check_float("router.sparsemixer_eps", self.sparsemixer_eps, 0.0, True)
    check_float("router.expert_threshold_rate", self.expert_threshold_rate, 0.0, True)
    if self.expert_threshold_rate > 1:
      fail("router.expert_threshold_rate", self.expert_threshold_rate, "must be in [0, 1]")
    check_int("router.routing_groups", self.routing_groups, 1)
    check_choice("router.soft_moe_grouping", self.soft_moe_grouping, SOFT_MOE_GROUPINGS)
    if self.name == "soft_moe" and self.routing_groups > 1:
      fail("router.routing_groups", self.routing_groups,
           "router.name='soft_moe' groups tokens by router.soft_moe_grouping; leave it 1")
    self._check_family_options()

  def _check_family_options(self):
    """Options that only some router families understand."""
    token_choice_only = {
        "score_fn": (self.score_fn, "softmax"),
        "num_expert_groups": (self.num_expert_groups, 1),
        "use_expert_bias": (self.use_expert_bias, False),
        "noisy_top_k": (self.noisy_top_k, False),
        "second_expert_sampling": (self.second_expert_sampling, False),
        "num_null_experts": (self.num_null_experts, 0),
        "num_copy_experts": (self.num_copy_experts, 0),
        "num_constant_experts": (self.num_constant_experts, 0),
        "gating_residual": (self.gating_residual, False),
        "dense_training": (self.dense_training, False),
    }
    if self.name not in ("top_k", "threshold"):
      for field, (value, default) in token_choice_only.items():
        if value != default:
          fail(f"router.{field}", value,
                f"only used by router.name='top_k' or 'threshold' (name={self.name!r}); "
                f"leave it at {default!r}")
    if self.name == "threshold" and self.score_fn != "softmax":
      fail("router.score_fn", self.score_fn, "router.name='threshold' needs 'softmax'")
    if self.name == "expert_choice" and self.capacity_factor is None:
      fail("router.capacity_factor", None,
           "router.name='expert_choice' needs a number > 0 (average experts per token)")
    if self.name in ("hash", "sinkhorn") and self.top_k != 1:
      fail("router.top_k", self.top_k, f"router.name={self.name!r} routes each token to 1 expert")
    if self.logit_bias and self.name in ("hash", "product_key"):
      fail("router.logit_bias", True, f"router.name={self.name!r} has no logits to bias; "
           "leave it False")
    if self.name != "soft_moe" and self.soft_moe_normalize:
      fail("router.soft_moe_normalize", True, f"only used by router.name='soft_moe' "
           f"(name={self.name!r}); leave it False")
    check_int("router.peer_heads", self.peer_heads, 1)
    check_int("router.peer_key_dim", self.peer_key_dim, 2)
    if self.name == "product_key":
      n = math.isqrt(self.num_experts)
      if n * n != self.num_experts:
        fail("router.num_experts", self.num_experts,
             "router.name='product_key' needs a perfect square (n^2 experts, n sub-keys per "
             f"half), e.g. {n * n} or {(n + 1) ** 2}")
      if self.top_k > n:
        fail("router.top_k", self.top_k, f"router.name='product_key' picks top_k of each "
             f"half's sqrt(num_experts)={n} sub-keys: must be <= {n}")
      if self.peer_key_dim % 2:
        fail("router.peer_key_dim", self.peer_key_dim, "must be even (two sub-key halves)")
      if self.capacity_factor is not None:
        fail("router.capacity_factor", self.capacity_factor,
             "router.name='product_key' is dropless; leave it None")
      if self.routing_groups != 1:
        fail("router.routing_groups", self.routing_groups,
             "router.name='product_key' routes each token alone; leave it 1")
    else:
      for field, default in (("peer_heads", 1), ("peer_key_dim", 32)):
        if getattr(self, field) != default:
          fail(f"router.{field}", getattr(self, field), "only used by router.name="
               f"'product_key' (name={self.name!r}); leave it {default}")
    if self.dense_training and self.num_copy_experts + self.num_constant_experts:
      fail("router.dense_training", True, "trains only the routed experts densely; leave "
           "num_copy_experts and num_constant_experts at 0")
    if self.name == "expert_threshold" and self.capacity_factor is not None:
      fail("router.capacity_factor", self.capacity_factor,
           "router.name='expert_threshold' never drops; leave it None (top_k = average "
           "experts per token)")
    if self.name == "soft_moe" and self.capacity_factor is not None:
      fail("router.capacity_factor", self.capacity_factor,
           "router.name='soft_moe' never drops; leave it None (slots via num_slots)")

  @property
  def family(self) -> RouterFamily:
    return ROUTER_FAMILIES[self.name]

  @property
  def is_sparse(self) -> bool:
    return self.family.sparse

  @property
  def num_router_outputs(self) -> int:
    """Width of the router projection: one logit per routed or
    zero-computation expert, or slot (for 'product_key', the heads' queries)."""
    if self.name == "soft_moe":
      return self.num_experts * self.num_slots
    if self.name == "product_key":  # the queries of every head
      return self.peer_heads * self.peer_key_dim
    return self.num_experts + self.num_zero_computation_experts

  @property
  def num_zero_computation_experts(self) -> int:
    """Router outputs past the routed experts: null, then copy, then constant."""
    return self.num_null_experts + self.num_copy_experts + self.num_constant_experts

  def capacity(self, num_tokens: int) -> Optional[int]:
    """Slots per expert for `num_tokens` tokens; None when dropless."""
    if self.name == "soft_moe":
      return self.num_slots
    if self.capacity_factor is None:
      return None
    k = 1 if self.name == "expert_choice" else self.top_k
    slots = -(-self.capacity_factor * num_tokens * k // self.num_experts)  # ceil
    cap = max(int(slots), self.min_capacity)
    return min(cap, num_tokens) if self.name == "expert_choice" else cap


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
    if self.router.name == "product_key" and self.dispatch == "gather":
      fail("dispatch", "gather", "router.name='product_key' is dropless; use 'retrieval' (or "
           "'dropless' / 'einsum' for small num_experts)")
    if self.dispatch == "gather" and self.router.dense_training:
      fail("dispatch", "gather", "router.dense_training sends every token to every expert; "
           "use 'dropless' or 'einsum'")
    if self.dispatch == "gather" and self.router.name == "expert_threshold":
      fail("dispatch", "gather", "router.name='expert_threshold' never drops; use "
           "'dropless' or 'einsum'")
    if self.dispatch == "gather" and self.router.capacity(1) is None:
      fail("dispatch", "gather",
           "needs router.capacity_factor (a number > 0); for dropless use dispatch='dropless'")


def moe_config_from_mapping(values) -> MoEConfig:
  """MoEConfig from a (nested) mapping, e.g. an ml_collections ConfigDict.

  The 'router' entry is itself a mapping of RouterConfig fields. Unknown
  fields fail with the same one-line ValueError as bad values.
  """
  values = dict(values)
  router = from_mapping(RouterConfig, dict(values.pop("router", {})), "router.")
  return from_mapping(MoEConfig, {**values, "router": router}, "")
