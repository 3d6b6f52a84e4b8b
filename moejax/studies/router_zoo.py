"""The router zoo: one entry per router family, each a set of overrides on a
base experiment (lm_tiny) that keeps active parameters per token equal.

Used by experiments/router_zoo.py and colabs/03_compare_routers.ipynb.
"""

from __future__ import annotations

from typing import Iterable, List, Sequence, Tuple

import ml_collections

from moejax.studies.comparison import apply_override

_DROPLESS = ["model.moe.dispatch=dropless", "model.moe.router.capacity_factor=None"]
_CAPACITY = ["model.moe.dispatch=gather", "model.moe.router.capacity_factor=1.25"]

# name -> (what it is, overrides). Top-1 routers get experts twice as wide so
# that a token uses the same parameters as under top-2.
ZOO = {
    "top2_capacity": ("softmax top-2, capacity 1.25, capacity-gather (Switch/GShard/Mixtral)",
                      _CAPACITY),
    "top2_dropless": ("softmax top-2, dropless, blocked grouped matmul", _DROPLESS),
    "aux_loss_free": ("sigmoid top-2 + selection-only expert bias, no balance loss (DeepSeek-V3)",
                      _DROPLESS + ["model.moe.router.score_fn=sigmoid",
                                   "model.moe.router.use_expert_bias=true",
                                   "train.load_balance_weight=0.0"]),
    "null_experts": ("top-2 over 8 experts + 8 zero-compute null experts (AdaMoE / MoE++)",
                     _DROPLESS + ["model.moe.router.num_null_experts=8"]),
    "moe_plus_plus": ("top-2 over 8 experts + 1 zero, 1 copy and 2 constant experts, gating "
                      "residual (MoE++)",
                      _DROPLESS + ["model.moe.router.num_null_experts=1",
                                   "model.moe.router.num_copy_experts=1",
                                   "model.moe.router.num_constant_experts=2",
                                   "model.moe.router.gating_residual=true"]),
    "expert_choice": ("each expert picks its top tokens, 2 per token on average (Zhou et al.)",
                      ["model.moe.router.name=expert_choice", "model.moe.dispatch=gather",
                       "model.moe.router.capacity_factor=2.0"]),
    "expert_threshold": ("causal expert choice: each expert takes the tokens above its "
                         "running threshold, 2 per token on average",
                         _DROPLESS + ["model.moe.router.name=expert_threshold"]),
    "peer": ("PEER: 2304 single-neuron experts, 8 heads x top-16 by product keys (a quarter "
             "of the active expert parameters)",
             ["model.moe.router.name=product_key", "model.moe.router.num_experts=2304",
              "model.moe.router.top_k=16", "model.moe.router.product_key.heads=8",
              "model.moe.router.product_key.key_dim=32", "model.moe.router.capacity_factor=None",
              "model.moe.d_ff=1", "model.moe.dispatch=retrieval",
              "train.load_balance_weight=0.0"]),
    "soft_moe": ("Soft MoE, slots per sequence: 32 per expert = 2 per token (Puigcerver et al.)",
                 ["model.moe.router.name=soft_moe", "model.moe.router.top_k=1",
                  "model.moe.router.capacity_factor=None", "model.moe.router.soft_moe.num_slots=32",
                  "model.moe.dispatch=einsum"]),
    "sinkhorn_top1": ("balanced assignment by Sinkhorn (BASE-like), top-1, 2x wider experts",
                      ["model.moe.router.name=sinkhorn", "model.moe.router.top_k=1",
                       "model.moe.d_ff=512"] + _CAPACITY),
    "hash_top1": ("fixed token-id hash (Roller et al.), top-1, 2x wider experts",
                  ["model.moe.router.name=hash", "model.moe.router.top_k=1"] + _DROPLESS
                  + ["model.moe.d_ff=512"]),
}


# Entries left out unless named: PEER's CPU steps are ~9x top-2's (retrieval's top-k
# and the backward's scatter-adds into all 2304 experts, on XLA:CPU).
SLOW_ON_CPU = ("peer",)
DEFAULT_ROUTERS = tuple(name for name in ZOO if name not in SLOW_ON_CPU)


def zoo_configs(base: ml_collections.ConfigDict, routers: Sequence[str],
                extra: Iterable[str] = ()) -> List[Tuple[str, ml_collections.ConfigDict]]:
  """[(name, config)] for the chosen entries: a copy of `base` with the
  entry's overrides, then `extra` ('field=value'). Raises ValueError."""
  unknown = [r for r in routers if r not in ZOO]
  if unknown:
    raise ValueError(f"--routers={unknown[0]!r} is invalid: valid values are {', '.join(ZOO)}")
  runs = []
  for name in routers:
    config = ml_collections.ConfigDict(base.to_dict())
    for assignment in list(ZOO[name][1]) + list(extra):
      apply_override(config, assignment)
    runs.append((name, config))
  return runs


def plot_zoo(rows, path: str) -> None:
  """Eval loss and throughput per run, side by side; † marks non-causal routers."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = [r["config"] + ("" if r["causal"] else " †") for r in rows]
  losses = [r["eval_loss"] for r in rows]
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.5 * len(rows) + 1.5))
  left.barh(names, losses, color="tab:blue")
  left.set_xlabel("eval loss (nats/byte)" if rows[0]["item"] == "tokens" else "eval loss")
  left.set_xlim(min(losses) * 0.95, max(losses) * 1.02)
  right.barh(names, [r["items_per_second"] / 1e3 for r in rows], color="tab:orange")
  right.set_xlabel(f"thousand {rows[0]['item']}/s")
  right.set_yticklabels([])
  for ax in (left, right):
    ax.invert_yaxis()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
