"""The compression pipeline of experiments/compress.py, and its study.

compress_model runs prune -> merge -> quantize (each optional) on a model,
each step on the previous one's result, calling on_step after each.
run_study compresses one trained model every way of STUDY and measures each
result: the table and plot of eval loss against weight bytes.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence

from moejax.compress.measure import evaluate, size_row
from moejax.compress.merging import group_experts, logit_similarity, merge_experts, router_logits
from moejax.compress.pruning import expert_statistics, keep_most_used, prune_experts
from moejax.compress.quantize import quantize_experts

# (row name, compress_model options; prune_to / merge_to as fractions of E,
# group None = run_study's int4 group).
STUDY = (
    ("prune to 75%", dict(prune_to=0.75)),
    ("prune to 50%", dict(prune_to=0.5)),
    ("prune to 25%", dict(prune_to=0.25)),
    ("merge to 75%", dict(merge_to=0.75)),
    ("merge to 50%", dict(merge_to=0.5)),
    ("merge to 25%", dict(merge_to=0.25)),
    ("int8", dict(quantize="int8")),
    ("int4 (grouped)", dict(quantize="int4", group=None)),
    ("prune to 75% + int8", dict(prune_to=0.75, quantize="int8")),
)


def compress_model(config, variables, calibration: Sequence, *, prune_to: Optional[int] = None,
                   merge_to: Optional[int] = None, quantize: Optional[str] = None,
                   group: int = 0, statistic: str = "frequency", renormalize: bool = False,
                   on_step: Optional[Callable] = None):
  """(config, variables) after the requested steps. calibration: model
  inputs; on_step(step name, config, variables) after each step."""
  if prune_to:
    stats = expert_statistics(config, variables, calibration, statistic)
    config, variables = prune_experts(config, variables, keep_most_used(stats, prune_to),
                                      renormalize)
    if on_step:
      on_step(f"prune to {prune_to} ({statistic})", config, variables)
  if merge_to:
    groups = group_experts(logit_similarity(router_logits(config, variables, calibration)),
                           merge_to)
    frequency = expert_statistics(config, variables, calibration, "frequency")
    config, variables = merge_experts(config, variables, groups, frequency, renormalize)
    if on_step:
      on_step(f"merge to {merge_to}", config, variables)
  if quantize:
    config, variables = quantize_experts(config, variables, quantize, group)
    if on_step:
      on_step(f"{quantize} ({f'groups of {group}' if group else 'per channel'})", config,
              variables)
  return config, variables


def run_study(config, variables, calibration: Sequence, eval_batches: Sequence,
              int4_group: int = 32, log: Callable[[str], None] = print) -> List[Dict]:
  """One row per STUDY entry (plus the original): size and eval loss.
  int4_group: contraction rows per int4 scale."""
  experts = config.moe.router.num_experts
  rows = [{"method": "original", **size_row(config, variables),
           **evaluate(config, variables, eval_batches)}]
  log(f"original: eval loss {rows[0]['eval_loss']:.4f}")
  for name, options in STUDY:
    options = {k: (max(1, round(v * experts)) if k in ("prune_to", "merge_to") else v)
               for k, v in options.items()}
    if options.get("group", 0) is None:
      options["group"] = int4_group
      name = name.replace("grouped", f"groups of {int4_group}")
    small_config, small = compress_model(config, variables, calibration, **options)
    rows.append({"method": name, **size_row(small_config, small),
                 **evaluate(small_config, small, eval_batches)})
    log(f"{name}: eval loss {rows[-1]['eval_loss']:.4f}")
  return rows


def plot_study(rows: List[Dict], path: str) -> None:
  """Eval loss against weight MB, one labelled point per row."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in rows:
    mb = r["weight_bytes"] / 2**20
    ax.scatter(mb, r["eval_loss"], color="tab:red" if r["method"] == "original" else "tab:blue")
    ax.annotate(r["method"], (mb, r["eval_loss"]), fontsize=7, xytext=(4, 2),
                textcoords="offset points")
  ax.set_xlabel("weights (MB; int4 counted at 4 bits)")
  ax.set_ylabel("eval loss (nats / byte)")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
