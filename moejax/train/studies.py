"""Seeded studies: the MoE literature's headline claims, reproduced at small
scale with error bars and a verdict per claim (experiments/study.py).

A study is a base config (a preset), rows (name -> overrides of the base)
and claims. Every row trains once per seed in <workdir>/<row>/seed_<s>; a
row's metric is the mean and (sample) standard deviation over seeds. A claim
"`better` has a lower `metric` than `worse`" is judged on the intervals
mean ± std: it *holds* when better's interval lies wholly below worse's, *does
not hold* when it lies wholly above, and is *inconclusive* when they overlap.

A row may start from an earlier row's weights: in its overrides, `{row}`
stands for that row's workdir (same seed) and `{kind:row}` for a sparse
upcycle of it made as Study.upcycles[kind] says (moejax.convert.upcycle),
e.g. `train.init_from={upcycled:dense_pretrained}`. Such a row's model is
the source's (moejax.train.init_from) plus its own `model.*` overrides.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from moejax.train.comparison import apply_override, train_row
from moejax.train.presets import lm_tiny, vit_tiny

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclasses.dataclass(frozen=True)
class Claim:
  text: str           # the claim, with its source
  metric: str         # a row field: 'eval_loss', 'balance', ...
  better: str         # row expected to have the lower metric
  worse: str


@dataclasses.dataclass(frozen=True)
class Study:
  description: str
  base: Callable                                 # () -> ConfigDict
  rows: Dict[str, Tuple[str, ...]]               # row -> 'field=value' overrides
  claims: Tuple[Claim, ...]
  # kind -> MoEConfig fields of the upcycle `{kind:row}` (num_experts, top_k
  # and any MoEConfig field: lora_rank, lora_shared_base, ...)
  upcycles: Dict[str, Dict] = dataclasses.field(default_factory=dict)
  curve_rows: Tuple[str, ...] = ()               # rows whose train-loss curves are tabled


def lm_study():
  """lm_tiny cut to 2 blocks, so that a 3-seed study of 4 rows fits ~20 minutes
  on 2 cores: 500 steps (1M training bytes, no byte seen twice), eval on
  262K held-out bytes."""
  c = lm_tiny()
  c.model.num_layers = 2
  c.train.checkpoint_every = c.train.num_steps
  return c


_DENSE = ("model.moe_every=0",)
_DROPLESS = ("model.moe.dispatch=dropless", "model.moe.router.capacity_factor=None")


def _capacity(factor: float) -> Tuple[str, ...]:
  return ("model.moe.dispatch=gather", f"model.moe.router.capacity_factor={factor}")

# Sparse upcycling (Komatsuzaki et al. 2023): a dense model trained 500 steps,
# then 500 more steps as itself, as its upcycle (8 copies of its FFN, top-2,
# equal to it at step 0), or as the same MoE from scratch (500 and 1000 steps).
# Rows that continue a model read the data in another order (shuffle_seed=1),
# so they do not replay the pretraining's batches (~9% of their windows were
# seen before, by chance).
_CONTINUED = ("data.shuffle_seed=1",)
_SCRATCH_8X512 = _DROPLESS + ("model.moe.d_ff=512",)

# MoLoRA (Zadouri et al. 2023): the same pretrained dense model fine-tuned 500
# more steps with all weights, or frozen under LoRA adapters on its FFNs
# (adapters and routers trained): 8 LoRA experts over each FFN, top-2, vs one
# adapter of the experts' rank and one with as many parameters as all 8.
_ADAPTERS_ONLY = _CONTINUED + ("train.trainable=lora_and_router",)


def _lora_experts(experts: int, top_k: int, rank: int) -> Dict:
  return dict(num_experts=experts, top_k=top_k, lora_rank=rank, lora_shared_base=True)


STUDIES: Dict[str, Study] = {
    "moe_vs_dense": Study(
        "lm_tiny (8 experts, top-2, dropless; and with capacity 1.25) vs its dense twin (d_ff "
        "512 = 2 x 256) at equal active parameters, stdlib_bytes", lm_tiny,
        {"dense": _DENSE, "moe_8x_top2": (), "moe_8x_top2_capacity_1.25": _capacity(1.25)},
        (Claim("MoE reaches a lower eval loss than dense at equal active parameters and steps "
               "(Switch Transformer, GShard)", "eval_loss", "moe_8x_top2", "dense"),
         Claim("... also with capacity 1.25 (tokens over capacity skip the experts)",
               "eval_loss", "moe_8x_top2_capacity_1.25", "dense"))),
    "num_experts": Study(
        "dense vs 4 / 8 / 16 / 32 experts, top-2, d_ff 256 each (equal active parameters), "
        "dropless, 2 blocks", lm_study,
        {"dense": _DENSE, **{f"experts_{n}": _DROPLESS + (f"model.moe.router.num_experts={n}",)
                             for n in (4, 8, 16, 32)}},
        (Claim("8 experts beat dense at equal active parameters (Switch Transformer)",
               "eval_loss", "experts_8", "dense"),
         Claim("more experts, lower loss at fixed active compute (Switch Transformer): 8 < 4",
               "eval_loss", "experts_8", "experts_4"),
         Claim("... 16 < 8", "eval_loss", "experts_16", "experts_8"),
         Claim("... 32 < 16", "eval_loss", "experts_32", "experts_16"))),
    "granularity": Study(
        "8 experts x 256 top-2 vs 32 experts x 64 top-8 vs 31 x 64 top-7 + 1 shared expert "
        "(equal total and active parameters), dropless, 2 blocks", lm_study,
        {"coarse_8x256_top2": _DROPLESS,
         "fine_32x64_top8": _DROPLESS + ("model.moe.router.num_experts=32",
                                         "model.moe.router.top_k=8", "model.moe.d_ff=64"),
         "fine_shared_31x64_top7": _DROPLESS + (
             "model.moe.router.num_experts=31", "model.moe.router.top_k=7", "model.moe.d_ff=64",
             "model.moe.num_shared_experts=1")},
        (Claim("fine-grained + shared experts beat coarse experts (DeepSeekMoE)", "eval_loss",
               "fine_shared_31x64_top7", "coarse_8x256_top2"),)),
    "balancing": Study(
        "load-balance aux loss (1e-2, 1e-3) vs aux-loss-free bias vs none, dropless, 2 blocks",
        lm_study,
        {"aux_1e-2": _DROPLESS, "aux_1e-3": _DROPLESS + ("train.load_balance_weight=0.001",),
         "bias": _DROPLESS + ("train.load_balance_weight=0.0",
                              "model.moe.router.use_expert_bias=True"),
         "none": _DROPLESS + ("train.load_balance_weight=0.0",)},
        (Claim("the aux-loss-free bias balances better than no balancing (DeepSeek-V3)",
               "balance", "bias", "none"),
         Claim("the bias reaches an eval loss at least as good as the aux loss (loss-free "
               "balancing, Wang et al. 2024): bias < aux 1e-2", "eval_loss", "bias",
               "aux_1e-2"))),
    "capacity": Study(
        "capacity factor 1.0 / 1.25 / 2.0 vs dropless, top-2, 2 blocks", lm_study,
        {"capacity_1.0": _capacity(1.0), "capacity_1.25": _capacity(1.25),
         "capacity_2.0": _capacity(2.0), "dropless": _DROPLESS},
        (Claim("dropless beats capacity 1.0 at equal steps (tokens are not dropped)",
               "eval_loss", "dropless", "capacity_1.0"),)),
    "vit_routers": Study(
        "ViT on the digits (1-pixel shift augmentation): dense vs top-2 (batch-prioritised) vs "
        "expert choice vs Soft MoE",
        vit_tiny,
        {"dense": _DENSE, "top2_bpr": (),
         "expert_choice": ("model.moe.router.name=expert_choice", "model.moe.router.top_k=1",
                           "model.moe.router.capacity_factor=2.0",
                           "model.moe.router.drop_policy=position"),
         "soft_moe": ("model.moe.router.name=soft_moe", "model.moe.router.top_k=1",
                      "model.moe.router.capacity_factor=None", "model.moe.router.num_slots=2",
                      "model.moe.router.drop_policy=position", "model.moe.dispatch=einsum")},
        (Claim("Soft MoE beats sparse top-k routing (Puigcerver et al.)", "eval_loss",
               "soft_moe", "top2_bpr"),)),
    "mh_moe": Study(
        "top-2 over 8 experts x (128 -> 256) vs MH-MoE: 4 sub-tokens of width 32, top-2 over "
        "32 experts x (32 -> 256) (equal expert parameters and active expert FLOPs, + split / "
        "merge projections), dropless, 2 blocks", lm_study,
        {"top2_8x256": _DROPLESS,
         "mh4_32x256": _DROPLESS + ("model.moe.mh_heads=4", "model.moe.router.num_experts=32")},
        (Claim("MH-MoE beats the plain top-2 layer at equal expert parameters and compute "
               "(Wu et al. 2024)", "eval_loss", "mh4_32x256", "top2_8x256"),)),
    "causal_expert_choice": Study(
        "top-2 token choice vs expert choice (capacity factor 2, non-causal: a token's experts "
        "depend on later tokens) vs causal expert choice by per-expert thresholds (2 experts per "
        "token on average), 8 experts x 256, 2 blocks", lm_study,
        {"top2": _DROPLESS,
         "expert_choice": ("model.moe.router.name=expert_choice", "model.moe.dispatch=gather",
                           "model.moe.router.capacity_factor=2.0"),
         "expert_threshold": _DROPLESS + ("model.moe.router.name=expert_threshold",)},
        (Claim("expert choice's gain over top-2 token choice (Zhou et al. 2022) survives making "
               "it causal: expert_threshold < top2", "eval_loss", "expert_threshold", "top2"),)),
    "upcycling": Study(
        "sparse upcycling: a dense 2-block model pretrained 500 steps, then 500 steps more "
        "as itself or upcycled to 8 experts x d_ff 512 (copies of its FFN), top-2, dropless; "
        "vs that MoE from scratch at 500 and 1000 steps", lm_study,
        {"dense_pretrained": _DENSE,
         "dense_continued": _CONTINUED + ("train.init_from={dense_pretrained}",),
         "upcycled": _CONTINUED + ("train.init_from={upcycled:dense_pretrained}",),
         "scratch": _SCRATCH_8X512,
         "scratch_1000_steps": _SCRATCH_8X512 + ("train.num_steps=1000",)},
        (Claim("the upcycled model beats the same MoE trained from scratch for as many steps "
               "(sparse upcycling)", "eval_loss", "upcycled", "scratch"),
         Claim("... and beats continuing the dense model for as many steps (it computes 2x "
               "the FFN per token)", "eval_loss", "upcycled", "dense_continued"),
         Claim("... and beats the MoE from scratch given the dense pretraining's steps too "
               "(1000)", "eval_loss", "upcycled", "scratch_1000_steps")),
        upcycles={"upcycled": dict(num_experts=8, top_k=2)},
        curve_rows=("upcycled", "scratch", "dense_continued")),
    "molora": Study(
        "fine-tuning a dense 2-block model pretrained 500 steps, 500 steps more on the same "
        "corpus (another order): all weights vs LoRA adapters on its frozen FFNs (adapters and "
        "routers trained): 8 LoRA experts of rank 8 over each FFN, top-2 (MoLoRA) vs one "
        "adapter of rank 8, or of rank 64 (as many adapter parameters as the 8 experts)",
        lm_study,
        {"dense_pretrained": _DENSE,
         "full_finetune": _CONTINUED + ("train.init_from={dense_pretrained}",),
         "lora_r8": _ADAPTERS_ONLY + ("train.init_from={lora_r8:dense_pretrained}",),
         "lora_r64": _ADAPTERS_ONLY + ("train.init_from={lora_r64:dense_pretrained}",),
         "molora_8x_r8": _ADAPTERS_ONLY + ("train.init_from={molora_8x_r8:dense_pretrained}",)},
        (Claim("a mixture of LoRA experts beats one adapter with as many parameters (MoLoRA, "
               "Zadouri et al. 2023): molora_8x_r8 < lora_r64", "eval_loss", "molora_8x_r8",
               "lora_r64"),
         Claim("... and one adapter of its experts' rank", "eval_loss", "molora_8x_r8",
               "lora_r8"),
         Claim("MoLoRA, its base frozen, ends below fine-tuning every weight (MoLoRA reports "
               "it on par or better): molora_8x_r8 < full_finetune", "eval_loss",
               "molora_8x_r8", "full_finetune")),
        upcycles={"lora_r8": _lora_experts(1, 1, 8), "lora_r64": _lora_experts(1, 1, 64),
                  "molora_8x_r8": _lora_experts(8, 2, 8)},
        curve_rows=("molora_8x_r8", "lora_r64", "full_finetune")),
    "ds_moe": Study(
        "top-2 over 8 experts x 256 trained sparsely vs DS-MoE: trained with all 8 experts "
        "(4x the expert FLOPs), evaluated top-2 (equal inference parameters), with and without "
        "the mutual-information loss (1e-2), dropless, 2 blocks", lm_study,
        {"top2": _DROPLESS,
         "ds_moe_top2": _DROPLESS + ("model.moe.router.dense_training=True",
                                     "train.mutual_information_weight=0.01"),
         "ds_moe_top2_no_mi": _DROPLESS + ("model.moe.router.dense_training=True",)},
        (Claim("dense training makes a better sparse model at equal inference active parameters "
               "(DS-MoE, Pan et al. 2024): ds_moe_top2 < top2", "eval_loss", "ds_moe_top2",
               "top2"),
         Claim("the mutual-information loss helps DS-MoE's sparse inference: with < without",
               "eval_loss", "ds_moe_top2", "ds_moe_top2_no_mi"))),
    "peer": Study(
        "PEER: 48^2 = 2304 single-neuron experts, 8 heads x top-16 by product keys (128 expert "
        "neurons per token) vs top-2 of 8 experts x 64 (equal active expert parameters) and "
        "top-2 of 8 x 256 (about equal total expert parameters), 2 blocks", lm_study,
        {"top2_8x64": _DROPLESS + ("model.moe.d_ff=64",),
         "top2_8x256": _DROPLESS,
         "peer_2304x1": ("model.moe.router.name=product_key",
                         "model.moe.router.num_experts=2304", "model.moe.router.top_k=16",
                         "model.moe.router.peer_heads=8", "model.moe.router.peer_key_dim=32",
                         "model.moe.router.capacity_factor=None", "model.moe.d_ff=1",
                         "model.moe.dispatch=retrieval", "train.load_balance_weight=0.0")},
        (Claim("PEER beats a coarse MoE at equal active expert parameters (He 2024)",
               "eval_loss", "peer_2304x1", "top2_8x64"),
         Claim("... and at equal total expert parameters, with a quarter of the active ones",
               "eval_loss", "peer_2304x1", "top2_8x256"))),
    "moe_plus_plus": Study(
        "top-2 over 8 experts x 256 vs MoE++: the same 8 FFN experts plus 1 zero, 1 copy and 2 "
        "constant experts, top-2 over all 12, gating residual (fewer FFN rows per token), "
        "dropless, 2 blocks", lm_study,
        {"top2": _DROPLESS,
         "moe_plus_plus": _DROPLESS + ("model.moe.router.num_null_experts=1",
                                       "model.moe.router.num_copy_experts=1",
                                       "model.moe.router.num_constant_experts=2",
                                       "model.moe.router.gating_residual=True")},
        (Claim("MoE++ beats the plain MoE while running fewer FFN experts per token (Jin et al. "
               "2024)", "eval_loss", "moe_plus_plus", "top2"),)),
    "switchhead": Study(
        "attention: 4 dense heads of 32 vs 2 dense heads of 32 vs SwitchHead: 2 heads of 32, "
        "each with 4 value and 4 output experts, top-2 (value / output FLOPs of the 4 dense "
        "heads, half their attention-matrix FLOPs); MoE FFN top-2 dropless, 2 blocks", lm_study,
        {"dense_4_heads": _DROPLESS,
         "dense_2_heads": _DROPLESS + ("model.num_heads=2", "model.head_dim=32"),
         "switchhead_2_heads": _DROPLESS + ("model.num_heads=2", "model.head_dim=32",
                                            "model.attention_experts=4",
                                            "model.attention_top_k=2")},
        (Claim("SwitchHead with half the heads beats the same heads without experts "
               "(Csordás et al. 2023)", "eval_loss", "switchhead_2_heads", "dense_2_heads"),
         Claim("... and matches the dense model with twice the heads: switchhead < dense 4 "
               "heads", "eval_loss", "switchhead_2_heads", "dense_4_heads"))),
}


def verdict(better: Sequence[float], worse: Sequence[float]) -> str:
  """Judges 'better < worse' on mean ± std intervals (see module docstring)."""
  (mb, sb), (mw, sw) = _mean_std(better), _mean_std(worse)
  if mb + sb < mw - sw:
    return HOLDS
  if mw + sw < mb - sb:
    return FAILS
  return INCONCLUSIVE


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def run_study(name: str, seeds: int, workdir: str, overrides: Sequence[str] = (),
              verbose: bool = True) -> Dict:
  """Trains every row of STUDIES[name] for seeds 0..seeds-1 and writes
  results.json, results.md and results.png to workdir; returns the results."""
  study = STUDIES[name]
  runs: Dict[str, List[Dict]] = {}
  for row, row_overrides in study.rows.items():
    for seed in range(seeds):
      config = study.base()
      row_dirs = {r: os.path.join(workdir, r, f"seed_{seed}") for r in study.rows}
      own = [_sources(a, row_dirs, study, workdir, seed) for a in row_overrides]
      for assignment in (*own, *overrides, f"seed={seed}"):
        apply_override(config, assignment)
      if config.train.init_from:
        config = _from_source(config, own)
      out = row_dirs[row]
      if verbose:
        print(f"\n=== {name}: {row}, seed {seed} -> {out}", flush=True)
      runs.setdefault(row, []).append(train_row(row, config, out, verbose=verbose))
  results = {"study": name, "description": study.description, "seeds": seeds,
             "overrides": list(overrides), "rows": {}, "claims": []}
  for row, rows in runs.items():
    summary = {"params": rows[0]["params"], "active_params": rows[0]["active_params"],
               "steps": rows[0]["steps"]}
    for metric in ("eval_loss", "train_loss", "balance", "fraction_dropped"):
      values = [r[metric] for r in rows]
      if all(v is not None for v in values):
        summary[metric] = dict(zip(("mean", "std"), _mean_std(values)), values=values)
    curves = [r["balance_curve"] for r in rows]
    if curves[0]:  # MoE rows: max/mean load over training, mean over seeds
      steps = [step for step, _ in curves[0]]
      summary["balance_curve"] = {"steps": steps, "mean": np.mean(
          [[b for _, b in c[:len(steps)]] for c in curves], axis=0).tolist()}
    if row in study.curve_rows:
      steps = [step for step, _ in rows[0]["loss_curve"]]
      summary["loss_curve"] = {"steps": steps, "mean": np.mean(
          [[loss for _, loss in r["loss_curve"][:len(steps)]] for r in rows], axis=0).tolist()}
    results["rows"][row] = summary
  for claim in study.claims:
    better = results["rows"][claim.better][claim.metric]
    worse = results["rows"][claim.worse][claim.metric]
    results["claims"].append({**dataclasses.asdict(claim), "better_mean": better["mean"],
                              "better_std": better["std"], "worse_mean": worse["mean"],
                              "worse_std": worse["std"],
                              "verdict": verdict(better["values"], worse["values"])})
  _write(results, workdir)
  return results


_SOURCE = re.compile(r"\{(?:(\w+):)?(\w+)\}")


def _sources(assignment: str, row_dirs: Dict[str, str], study: Study, workdir: str,
             seed: int) -> str:
  """`assignment` with {row} / {kind:row} replaced by folders (made on
  first use: an upcycle is written once per seed)."""
  def folder(match):
    kind, row = match.groups()
    if row not in row_dirs:
      raise ValueError(f"{assignment!r} names {row!r}, which is not a row of the study")
    if kind is None:
      return row_dirs[row]
    if kind not in study.upcycles:
      raise ValueError(f"{assignment!r} names the upcycle {kind!r}; the study has "
                       f"{sorted(study.upcycles)}")
    out = os.path.join(workdir, f"{row}_{kind}", f"seed_{seed}")
    if not os.path.isdir(out):
      _upcycle(row_dirs[row], out, seed, **study.upcycles[kind])
    return out
  return _SOURCE.sub(folder, assignment)


def _upcycle(source: str, out: str, seed: int, num_experts: int, top_k: int,
             **moe_fields) -> None:
  """Every FFN of the dense model in workdir `source` becomes num_experts
  copies of itself, top_k of them per token, renormalised (equal to the
  dense model at step 0); moe_fields: further MoEConfig fields (LoRA)."""
  import jax
  from moejax.config import MoEConfig, RouterConfig
  from moejax.convert.model_dir import save_model_dir
  from moejax.convert.sources import load_any
  from moejax.convert.upcycle import upcycle
  config, variables, _ = load_any(source)
  moe = MoEConfig(router=RouterConfig(num_experts=num_experts, top_k=top_k,
                                      normalize_top_k=True),
                  d_model=config.d_model, d_ff=config.dense_d_ff, activation=config.activation,
                  dispatch="dropless", **moe_fields)
  config, variables = upcycle(config, variables, moe, rng=jax.random.PRNGKey(seed))
  save_model_dir(out, config, variables)


def _from_source(config, own: Sequence[str]):
  """The row's config with the model of its train.init_from, plus the row's
  own model.* overrides (--set's model fields shaped the source already)."""
  from moejax.train.init_from import resolve_model
  model = {}
  for assignment in own:
    key = assignment.partition("=")[0]
    if key.startswith("model."):
      node = config
      for part in key.split("."):
        node = node[part]
      model[key] = node
  return resolve_model(config, model)[0]


def markdown(results: Dict) -> str:
  """The rows (mean ± std over seeds) and one claim -> measured -> verdict line each."""
  n = results["seeds"]
  lines = [f"{results['description']}; {n} seed(s), mean ± std.", "",
           "| row | params | active | steps | eval loss | train loss | balance | dropped |",
           "|---" * 8 + "|"]
  fmt = lambda s, key, f: f"{s[key]['mean']:{f}} ± {s[key]['std']:{f}}" if key in s else "–"
  for row, s in results["rows"].items():
    lines.append(f"| {row} | {s['params'] / 1e6:.2f}M | {s['active_params'] / 1e6:.2f}M | "
                 f"{s['steps']} | {fmt(s, 'eval_loss', '.4f')} | {fmt(s, 'train_loss', '.4f')} "
                 f"| {fmt(s, 'balance', '.2f')} | {fmt(s, 'fraction_dropped', '.1%')} |")
  lines.append("")
  for c in results["claims"]:
    lines.append(f"- **Claim**: {c['text']}. **Measured** ({c['metric']}): {c['better']} "
                 f"{c['better_mean']:.4f} ± {c['better_std']:.4f} vs {c['worse']} "
                 f"{c['worse_mean']:.4f} ± {c['worse_std']:.4f}. **Verdict: {c['verdict']}**.")
  curves = {r: s["loss_curve"] for r, s in results["rows"].items() if "loss_curve" in s}
  if curves:
    names = list(curves)
    lines += ["", f"Train loss (mean over seeds) by step: {', '.join(names)}.", "",
              "| step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i, step in enumerate(curves[names[0]]["steps"]):
      lines.append(f"| {step} | " + " | ".join(f"{curves[n]['mean'][i]:.4f}" for n in names)
                   + " |")
  return "\n".join(lines)


def _write(results: Dict, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(markdown(results) + "\n")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = list(results["rows"])
  means = [results["rows"][r]["eval_loss"]["mean"] for r in rows]
  stds = [results["rows"][r]["eval_loss"]["std"] for r in rows]
  curves = {r: results["rows"][r]["balance_curve"] for r in rows
            if "balance_curve" in results["rows"][r]}
  width = 1.6 * len(rows) + 2
  fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(width + (5 if curves else 0), 3.5),
                           squeeze=False)
  ax = axes[0, 0]
  ax.bar(rows, means, yerr=stds, capsize=4, color="tab:blue")
  ax.set_ylim(min(means) - 3 * max(max(stds), 1e-3), max(means) + 3 * max(max(stds), 1e-3))
  ax.set_ylabel(f"eval loss (mean ± std, {results['seeds']} seeds)")
  ax.set_title(results["study"])
  if curves:
    ax = axes[0, 1]
    for row, curve in curves.items():
      ax.plot(curve["steps"], curve["mean"], label=row)
    ax.set_xlabel("step")
    ax.set_ylabel("max / mean expert load (1 = balanced)")
    ax.set_title("load balance during training, mean over seeds")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "results.png"), dpi=120)
  plt.close(fig)
