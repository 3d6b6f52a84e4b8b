"""What a router family is, and the registry of them.

A router family is one `RouterFamily` object, defined as `FAMILY` (or
`FAMILIES`, a tuple) in one module of moejax.routing, next to its route
function. `router_families()` finds them by importing every module of the
package, so adding a family is adding a module: nothing else lists them.

A family says:
  - its options: a frozen dataclass (`RouterConfig.options`; in a ConfigDict
    the section `router.<family name>`), validated by the dataclass itself;
  - which of RouterConfig's token-choice fields it reads (`reads`): any other
    one at a non-default value is refused, never silently ignored;
  - `check(config)`: cross-field rules of its own;
  - facts the rest of moejax needs (sparse weights or dense, causal or not,
    experts per token, router outputs, slots per expert);
  - `prepare(module, config, x, project, rng, token_ids)`: its logits, the
    parameters and state its route needs (created on the Flax Router
    module), and how that state updates after a training call;
  - `route(logits, config, inputs)`: the pure routing, reading only the
    inputs it names (`inputs`).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Tuple

import jax

from moejax.validation import fail

if TYPE_CHECKING:
  from moejax.routing.types import RouterOutput


@dataclasses.dataclass(frozen=True)
class NoOptions:
  """A family without options of its own."""


@dataclasses.dataclass(frozen=True)
class Prepared:
  """What a family's `prepare` hands the route: `logits` [T, outputs] (None
  without a router projection), `inputs` (arrays by name, among the family's
  `inputs`) and `update(out)`, applied to the RouterOutput on a training call
  that may change router state."""

  logits: Optional[jax.Array] = None
  inputs: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)
  update: Optional[Callable[["RouterOutput"], None]] = None


def _top_k(config) -> float:
  return config.top_k


def _experts_and_zero_computation(config) -> int:
  return config.num_experts + config.num_zero_computation_experts


def token_choice_capacity(config, num_tokens: int) -> Optional[int]:
  """Slots per expert when each token picks top_k experts: ceil(capacity_factor
  * tokens * top_k / experts), at least min_capacity; None when dropless."""
  if config.capacity_factor is None:
    return None
  slots = -(-config.capacity_factor * num_tokens * config.top_k // config.num_experts)  # ceil
  return max(int(slots), config.min_capacity)


def project_only(module, config, x, project, rng, token_ids) -> Prepared:
  """The default `prepare`: the router projection's logits, nothing else."""
  return Prepared(logits=project(x))


def _configured_groups(config, shape) -> int:
  return config.routing_groups


@dataclasses.dataclass(frozen=True)
class RouterFamily:
  """One router family (see the module docstring).

  name: the value of router.name.
  route: (logits [T, outputs] or None, config, inputs) -> RouterOutput.
  summary: one line for docs and errors.
  options: the frozen dataclass of its own options.
  reads: the token-choice fields of RouterConfig it uses.
  inputs: the names of the arrays its route reads beside the logits
    ('rng', 'token_ids' or its own parameters and state).
  per_token_inputs: those of them that are [T, ...] (split with the routing
    groups; the others are shared by every group, 'rng' is folded per group).
  sparse: gives a sparse Routing of (token, expert) assignments, which every
    dispatch takes; otherwise dense dispatch / combine weights (Soft MoE),
    which only 'einsum' dispatch takes.
  causal: a token's experts depend on that token alone, so the router can
    generate token by token and an LM's loss with it is honest.
  uses_logits: has a router projection (False: hash routing).
  needs_token_ids: routes by token id (LMs only).
  may_drop: can use capacity_factor (False: refuses one; dropless only).
  experts_per_token: experts' parameters a token uses on average (for
    active-parameter counts).
  remappable: the decision is a learned score per expert (a router kernel
    column, an expert bias) and nothing else per expert, so experts can be
    dropped or mixed (moejax.compress): not hash routing (token id ->
    index), Soft MoE (slots), product keys, or routers with per-expert state.
  num_outputs: width of the router projection.
  capacity: (config, tokens) -> slots per expert, or None (dropless).
  check: raises the one-line error for a bad combination of fields.
  prepare: (module, config, x [T, d], project, rng, token_ids) -> Prepared;
    `project(x, normalize=False)` makes the router kernel and returns the
    logits (with logit_bias and gating_residual applied), so a family decides
    whether and when (parameter order fixes initial values) to call it.
  routing_groups: (config, layer input shape) -> groups routed independently.
  """

  name: str
  route: Callable[..., "RouterOutput"]
  summary: str
  options: type = NoOptions
  reads: Tuple[str, ...] = ()
  inputs: Tuple[str, ...] = ()
  per_token_inputs: Tuple[str, ...] = ()
  sparse: bool = True
  causal: bool = True
  uses_logits: bool = True
  needs_token_ids: bool = False
  may_drop: bool = True
  experts_per_token: Callable[[Any], float] = _top_k
  remappable: bool = False
  num_outputs: Callable[[Any], int] = _experts_and_zero_computation
  capacity: Callable[[Any, int], Optional[int]] = token_choice_capacity
  check: Callable[[Any], None] = lambda config: None
  prepare: Callable[..., Prepared] = project_only
  routing_groups: Callable[[Any, Tuple[int, ...]], int] = _configured_groups


_REGISTRY: Dict[str, RouterFamily] = {}


def router_families() -> Dict[str, RouterFamily]:
  """{name: RouterFamily} of every family module in moejax.routing."""
  if not _REGISTRY:
    import moejax.routing as package
    found = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
      module = importlib.import_module(f"{package.__name__}.{info.name}")
      families = getattr(module, "FAMILIES", ())
      if hasattr(module, "FAMILY"):
        families = (module.FAMILY,) + tuple(families)
      for family in families:
        if family.name in found:
          raise RuntimeError(f"router family {family.name!r} is defined twice "
                             f"({found[family.name][1]} and {module.__name__})")
        found[family.name] = (family, module.__name__)
    # The default family first, then by name.
    for name in sorted(found, key=lambda n: (n != "top_k", n)):
      _REGISTRY[name] = found[name][0]
  return _REGISTRY


def router_family(name: str) -> RouterFamily:
  """The family called `name`; one line naming the valid ones otherwise."""
  families = router_families()
  if name not in families:
    fail("router.name", name, "valid values are " + ", ".join(repr(n) for n in families))
  return families[name]
