"""RouterConfig: how tokens are assigned to experts, validated.

The fields here are the ones every router family shares, plus the
token-choice options (score function, groups, expert bias, noise,
zero-computation experts, ...) that several families read. What only one
family uses is that family's `options` (moejax/routing/family.py): in a
ConfigDict or mapping the section `router.<family name>`, e.g.
`router.soft_moe.num_slots`. A family refuses a token-choice field it does
not read at a non-default value, so nothing configured is silently ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional

from moejax.routing.family import NoOptions, RouterFamily, router_families, router_family
from moejax.validation import check_choice, check_float, check_int, fail, from_mapping

GROUP_SCORES = ("top2_sum", "max")
SCORE_FNS = ("softmax", "sigmoid")
DROP_POLICIES = ("position", "probability")

# The token-choice fields a family may read (RouterFamily.reads); any other
# family refuses them at a value other than the default. normalize_top_k is not
# among them: it says how to weight a top-k choice, the presets set it for the
# token-choice default, and families that weight their choice their own way
# (expert choice, Soft MoE, SparseMixer, ...) document that they do not use
# it, so that changing router.name alone keeps a preset valid.
TOKEN_CHOICE_FIELDS = (
    "score_fn", "routed_scaling_factor", "num_expert_groups",
    "top_k_groups", "group_score", "use_expert_bias", "expert_bias_update_rate", "noisy_top_k",
    "second_expert_sampling", "num_null_experts", "num_copy_experts", "num_constant_experts",
    "gating_residual", "dense_training", "zero_computation_balance_weight")

# Flat RouterConfig fields of earlier layouts -> (family section, option).
MOVED_FIELDS = {
    "threshold": ("threshold", "probability"),
    "num_slots": ("soft_moe", "num_slots"),
    "soft_moe_grouping": ("soft_moe", "grouping"),
    "soft_moe_normalize": ("soft_moe", "normalize"),
    "sinkhorn_iterations": ("sinkhorn", "iterations"),
    "sparsemixer_eps": ("sparsemixer", "eps"),
    "hash_seed": ("hash", "seed"),
    "peer_heads": ("product_key", "heads"),
    "peer_key_dim": ("product_key", "key_dim"),
    "expert_threshold_rate": ("expert_threshold", "rate"),
}


@dataclasses.dataclass(frozen=True)
class RouterConfig:
  """How tokens are assigned to experts.

  Attributes:
    name: the router family (moejax.routing.family.router_families(); each
      family's module documents it): 'top_k' (token choice: Switch, GShard,
      Mixtral, DeepSeek-V3), 'threshold' (XMoE dynamic-k), 'sparsemixer'
      (Phi-3.5-MoE), 'hash', 'sinkhorn' (BASE), 'expert_choice',
      'expert_threshold' (causal expert choice), 'product_key' (PEER),
      'soft_moe'.
    num_experts: routed experts E (zero-computation experts are extra).
    top_k: experts per token (an upper bound for 'threshold'; the average
      for 'expert_threshold'; per head for 'product_key').
    options: the family's own options (a frozen dataclass of its module;
      None = its defaults). In a mapping: the section `<name>`.
    capacity_factor: slots per expert = ceil(capacity_factor * tokens * top_k /
      num_experts); tokens beyond it are dropped. None = dropless. For
      'expert_choice' it is the average number of experts per token.
    min_capacity: lower bound on slots per expert.
    drop_policy: which tokens win the slots when an expert overflows:
      'position' (earlier tokens first; GShard/Switch) or 'probability'
      (higher router confidence first; V-MoE batch-prioritised routing).
      First choices always come before second choices.
    routing_groups: the tokens of a call are split into this many equal,
      contiguous groups that are routed independently (capacity, expert
      choice and drop decisions are per group, as in GShard). 1 = all tokens
      together. On a mesh, a multiple of the number of token shards
      (data x fsdp x expert) lets capacity dispatch run expert-parallel with
      all_to_all; the numbers do not depend on the mesh, only on this value.
    logit_bias: a trained per-output bias on the router logits (gpt-oss's
      router is a Linear with a bias). It moves the weights as well as the
      choice, unlike use_expert_bias.
    jitter_noise: Switch input jitter: multiply router inputs by U(1-eps, 1+eps)
      during training. 0 = off.

  Token-choice fields (each family reads some of them: RouterFamily.reads):
    score_fn: 'softmax' or 'sigmoid' (DeepSeek-V3) scores over experts.
    normalize_top_k: renormalise the chosen weights to sum to one. With
      softmax scores this is Mixtral's top-k-then-softmax; without it,
      Switch/GShard's softmax-then-top-k. Used by 'top_k' and 'threshold'
      (and dense_training); the other families weight their choice their own
      way and do not read it.
    routed_scaling_factor: multiplies the chosen weights (DeepSeek-V3: 2.5).
    num_expert_groups: experts are split into this many equal groups; only the
      `top_k_groups` best groups (by `group_score`) may be chosen from
      (DeepSeek-V2 / V3 group-limited routing). 1 = off.
    top_k_groups: groups kept per token when group-limited.
    group_score: how a group is ranked: 'top2_sum' (the sum of its two best
      selection scores; DeepSeek-V3) or 'max' (its best; DeepSeek-V2).
    use_expert_bias: add a non-trained per-expert bias to the scores for
      *selection only* (aux-loss-free balancing); see
      `moejax.routing.losses.update_expert_bias`.
    expert_bias_update_rate: step size of that bias update (DeepSeek-V3's
      gamma). MoELayer applies it itself on every training call that has the
      'router_state' collection mutable; 0 = keep the bias fixed.
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
    zero_computation_balance_weight: MoE++'s tau: the load-balance loss
      weights the term of each zero-computation (null, copy, constant)
      expert by tau and each routed expert's by 1 (its heterogeneous load
      balance loss, sum_i eta_i f_i P_i). tau < 1 penalises crowding on the
      cheap experts less, so more choices go to them (MoE++'s default 0.75);
      1 = the plain loss over all outputs.
    gating_residual: MoE++ gating residual: a layer's router logits add the
      previous MoE layer's logits times a trained [outputs, outputs] matrix
      (initialised to zero, so the layer starts as without it).
    dense_training: DS-MoE (moejax.routing.dense_training): training calls
      (deterministic=False) send every token to every routed expert weighted
      by its score; inference calls route sparsely as configured. Pair with
      train.mutual_information_weight.
  """

  name: str = "top_k"
  num_experts: int = 8
  top_k: int = 2
  options: Any = None
  capacity_factor: Optional[float] = None
  min_capacity: int = 1
  drop_policy: str = "position"
  routing_groups: int = 1
  logit_bias: bool = False
  jitter_noise: float = 0.0
  score_fn: str = "softmax"
  normalize_top_k: bool = False
  routed_scaling_factor: float = 1.0
  num_expert_groups: int = 1
  top_k_groups: int = 1
  group_score: str = "top2_sum"
  use_expert_bias: bool = False
  expert_bias_update_rate: float = 1e-3
  noisy_top_k: bool = False
  second_expert_sampling: bool = False
  num_null_experts: int = 0
  num_copy_experts: int = 0
  num_constant_experts: int = 0
  gating_residual: bool = False
  dense_training: bool = False
  zero_computation_balance_weight: float = 1.0

  def __post_init__(self):
    family = router_family(self.name)
    object.__setattr__(self, "options", self._family_options(family))
    check_int("router.num_experts", self.num_experts, 1)
    check_int("router.top_k", self.top_k, 1)
    for field in TOKEN_CHOICE_FIELDS:
      value, default = getattr(self, field), _DEFAULTS[field]
      if field not in family.reads and value != default:
        users = [n for n, f in router_families().items() if field in f.reads]
        fail(f"router.{field}", value, f"only used by router.name in {users} (name="
             f"{self.name!r}); leave it at {default!r}")
    for field in ("num_null_experts", "num_copy_experts", "num_constant_experts"):
      check_int(f"router.{field}", getattr(self, field), 0)
    check_float("router.zero_computation_balance_weight",
                self.zero_computation_balance_weight, 0.0, False)
    if self.zero_computation_balance_weight != 1.0 and not self.num_zero_computation_experts:
      fail("router.zero_computation_balance_weight", self.zero_computation_balance_weight,
           "weights the zero-computation experts' balance terms; leave it at 1.0 without "
           "num_null_experts, num_copy_experts or num_constant_experts")
    if self.top_k > self.num_experts + self.num_zero_computation_experts:
      fail("router.top_k", self.top_k,
           f"must be <= num_experts + zero-computation (null, copy, constant) experts = "
           f"{self.num_experts + self.num_zero_computation_experts}")
    check_choice("router.score_fn", self.score_fn, SCORE_FNS)
    check_float("router.routed_scaling_factor", self.routed_scaling_factor, 0.0, False)
    self._check_groups()
    check_float("router.expert_bias_update_rate", self.expert_bias_update_rate, 0.0, True)
    check_float("router.jitter_noise", self.jitter_noise, 0.0, True)
    if self.jitter_noise >= 1:
      fail("router.jitter_noise", self.jitter_noise, "must be in [0, 1)")
    if self.second_expert_sampling and self.top_k != 2:
      fail("router.second_expert_sampling", True, f"needs top_k=2, got top_k={self.top_k}")
    if self.capacity_factor is not None:
      check_float("router.capacity_factor", self.capacity_factor, 0.0, False)
      if not family.may_drop:
        fail("router.capacity_factor", self.capacity_factor,
             f"router.name={self.name!r} never drops; leave it None")
    check_int("router.min_capacity", self.min_capacity, 1)
    check_choice("router.drop_policy", self.drop_policy, DROP_POLICIES)
    check_int("router.routing_groups", self.routing_groups, 1)
    if self.logit_bias and not family.uses_logits:
      fail("router.logit_bias", True, f"router.name={self.name!r} has no logits to bias; "
           "leave it False")
    if self.dense_training and self.num_copy_experts + self.num_constant_experts:
      fail("router.dense_training", True, "trains only the routed experts densely; leave "
           "num_copy_experts and num_constant_experts at 0")
    family.check(self)

  def _family_options(self, family: RouterFamily):
    """The options instance for `family`: its defaults for None, or for
    another family's options left at their defaults (dataclasses.replace of
    the name); refuses another family's options that were set."""
    options = self.options
    if options is None or isinstance(options, family.options):
      return family.options() if options is None else options
    if options == type(options)():
      return family.options()
    fail("router.options", options, f"router.name={self.name!r} takes "
         f"{family.options.__name__}; set options=None (its defaults) or one of those")

  def _check_groups(self) -> None:
    check_int("router.num_expert_groups", self.num_expert_groups, 1)
    if self.num_experts % self.num_expert_groups:
      fail("router.num_expert_groups", self.num_expert_groups,
           f"must divide num_experts={self.num_experts}")
    check_int("router.top_k_groups", self.top_k_groups, 1)
    check_choice("router.group_score", self.group_score, GROUP_SCORES)
    if self.num_expert_groups == 1:
      return
    if self.top_k_groups > self.num_expert_groups:
      fail("router.top_k_groups", self.top_k_groups,
           f"must be <= num_expert_groups={self.num_expert_groups}")
    per_group = self.num_experts // self.num_expert_groups
    if self.top_k > self.top_k_groups * per_group:
      fail("router.top_k", self.top_k, f"must be <= top_k_groups * experts per group = "
           f"{self.top_k_groups * per_group} when group-limited")
    for field in ("num_null_experts", "num_copy_experts", "num_constant_experts"):
      if getattr(self, field):
        fail(f"router.{field}", getattr(self, field), "zero-computation (null, copy, "
             "constant) experts must be 0 when num_expert_groups > 1")

  @property
  def family(self) -> RouterFamily:
    return router_family(self.name)

  @property
  def is_sparse(self) -> bool:
    return self.family.sparse

  @property
  def num_router_outputs(self) -> int:
    """Width of the router projection (one logit per routed or
    zero-computation expert, or slot, or the retrieval queries)."""
    return self.family.num_outputs(self)

  @property
  def num_zero_computation_experts(self) -> int:
    """Router outputs past the routed experts: null, then copy, then constant."""
    return self.num_null_experts + self.num_copy_experts + self.num_constant_experts

  @property
  def balance_weights(self) -> Optional[tuple]:
    """Per router output weight of the load-balance loss (1 per routed
    expert, zero_computation_balance_weight per zero-computation expert), or
    None where every weight is 1."""
    tau = self.zero_computation_balance_weight
    if tau == 1.0 or not self.num_zero_computation_experts:
      return None
    return (1.0,) * self.num_experts + (tau,) * self.num_zero_computation_experts

  def capacity(self, num_tokens: int) -> Optional[int]:
    """Slots per expert for `num_tokens` tokens; None when dropless."""
    return self.family.capacity(self, num_tokens)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RouterConfig)}


def option_sections() -> Dict[str, type]:
  """{family name: options dataclass} of the families that have options."""
  return {name: f.options for name, f in router_families().items()
          if f.options is not NoOptions}


def router_config_from_mapping(values: Mapping[str, Any], prefix: str = "router.") -> RouterConfig:
  """RouterConfig from a mapping of its fields plus one section per family
  with options ({'name': 'soft_moe', 'soft_moe': {'num_slots': 4}}). A
  section of a family other than `name` must hold that family's defaults.
  A flat field of an earlier layout is refused in one line naming its new
  place (saved configs go through `migrate_flat_router_fields` first)."""
  values = dict(values)
  for old, (section, option) in MOVED_FIELDS.items():
    if old in values and not (old == section and isinstance(values[old], Mapping)):
      fail(f"{prefix}{old}", values[old], f"moved to {prefix}{section}.{option}; set that "
           "instead")
  if "options" in values:
    fail(f"{prefix}options", values["options"], "in a mapping, a family's options are the "
         f"section {prefix}<family name>, e.g. {prefix}soft_moe.num_slots")
  name = values.get("name", RouterConfig.name)
  family = router_family(name) if isinstance(name, str) else None
  options = None
  for section, cls in option_sections().items():
    given = values.pop(section, None)
    if given is None:
      continue
    made = from_mapping(cls, dict(given), f"{prefix}{section}.")
    if family is not None and section == family.name:
      options = made
    elif made != cls():
      changed = next(f.name for f in dataclasses.fields(cls)
                     if getattr(made, f.name) != f.default)
      fail(f"{prefix}{section}.{changed}", getattr(made, changed),
           f"only used by {prefix}name={section!r} (name={name!r}); leave it at its default")
  return from_mapping(RouterConfig, {**values, "options": options}, prefix)


def router_config_to_mapping(config: RouterConfig) -> Dict[str, Any]:
  """The mapping router_config_from_mapping reads back: the family's options
  as its section, the other sections absent."""
  values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name != "options"}
  if config.family.options is not NoOptions:
    values[config.name] = dataclasses.asdict(config.options)
  return values


def migrate_flat_router_fields(values: Mapping[str, Any]) -> Dict[str, Any]:
  """A router mapping written by an earlier layout (flat family fields, e.g.
  'num_slots') with those fields moved to their family sections. Used where
  saved configs are read back (checkpoints, config.json, model folders)."""
  values = dict(values)
  for old, (section, option) in MOVED_FIELDS.items():
    if old not in values or (old == section and isinstance(values[old], Mapping)):
      continue
    moved = values.pop(old)
    target = dict(values.get(section) or {})
    if target.get(option, moved) != moved:
      fail(f"router.{old}", moved, f"and router.{section}.{option}={target[option]!r} "
           "disagree; the saved config is inconsistent")
    target[option] = moved
    values[section] = target
  return values
