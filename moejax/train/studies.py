"""Seeded studies: the MoE literature's headline claims, reproduced at small
scale with a paired verdict per claim (experiments/study.py).

A study is a base config (a preset), rows (name -> overrides of the base)
and claims. Every row trains once per seed in <workdir>/<row>[/<tuned>]/
seed_<s>; rows of one seed share their initialisation seed and data order
(data.shuffle_seed is not a study variable), so a claim "`better` has a
lower `metric` than `worse`" is judged on the per-seed differences with a
95% Student-t interval (moejax/train/study_stats.py).

Before its seeds, each row is tuned (Study.tune; study.py --tune): its peak
learning rate over {0.5x, 1x, 2x} its default, then, where Study.tune has
'balance' and the row trains with a load-balance loss, that loss's weight
over {1e-3, 1e-2}, each judged at seed 0 on a held-out slice of the *train*
split (the last tune_holdout percent, never trained on in the sweep, never
the eval split the claims are judged on). The chosen values train every seed.

A second scale (Study.large; study.py --scale=large) reruns the study with
4x the training steps (4x the compute, 4M bytes of text that never repeat) in
<workdir>/large; with both scales' results, <workdir>/scales.md tables each
claim's gap at both and says whether it shrank, grew or flipped.

A row may start from an earlier row's weights: in its overrides, `{row}`
stands for that row's workdir (same seed) and `{kind:row}` for a sparse
upcycle of it made as Study.upcycles[kind] says (moejax.convert.upcycle),
e.g. `train.init_from={upcycled:dense_pretrained}`. Such a row's model is
the source's (moejax.train.init_from) plus its own `model.*` overrides; it
trains (and is tuned) after its source.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from moejax.train.comparison import apply_override
from moejax.train.presets import lm_tiny, vit_tiny
from moejax.train.study_report import write_results, write_scales
from moejax.train.study_jobs import Job, estimated_seconds, finished_row, run_jobs
from moejax.train.study_stats import (FAILS, HOLDS, INCONCLUSIVE, choose, mean_std,
                                      paired_difference, trend)


@dataclasses.dataclass(frozen=True)
class Claim:
  text: str           # the claim, with its source
  metric: str         # a row field: 'eval_loss', 'balance', ...
  better: str         # row expected to have the lower metric
  worse: str


# The second scale of the LM studies: 4x the steps of their base (500 ->
# 2000), i.e. 4x the training compute and 4M bytes of the 10.6M-byte corpus,
# none seen twice.
LARGE_LM = ("train.num_steps=2000",)


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
  # the sweeps each row gets before its seeds (see the module docstring)
  tune: Tuple[str, ...] = ("lr",)
  tune_holdout: int = 10                         # percent of the train split held out
  large: Tuple[str, ...] = LARGE_LM              # overrides of the second scale; () none


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
         Claim("... 32 < 16", "eval_loss", "experts_32", "experts_16")), tune=("lr", "balance")),
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
               "fine_shared_31x64_top7", "coarse_8x256_top2"),), tune=("lr", "balance")),
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
               "soft_moe", "top2_bpr"),),
        # 1,500 training images: a 20% slice (300) is held out for tuning
        tune_holdout=20, large=("train.num_steps=1600",)),
    "mh_moe": Study(
        "top-2 over 8 experts x (128 -> 256) vs MH-MoE: 4 sub-tokens of width 32, top-2 over "
        "32 experts x (32 -> 256) (equal expert parameters and active expert FLOPs, + split / "
        "merge projections), dropless, 2 blocks", lm_study,
        {"top2_8x256": _DROPLESS,
         "mh4_32x256": _DROPLESS + ("model.moe.mh_heads=4", "model.moe.router.num_experts=32")},
        (Claim("MH-MoE beats the plain top-2 layer at equal expert parameters and compute "
               "(Wu et al. 2024)", "eval_loss", "mh4_32x256", "top2_8x256"),), tune=("lr", "balance")),
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
        curve_rows=("upcycled", "scratch", "dense_continued"), large=()),
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
        curve_rows=("molora_8x_r8", "lora_r64", "full_finetune"), large=()),
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
               "eval_loss", "peer_2304x1", "top2_8x256")), tune=("lr", "balance")),
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
               "2024)", "eval_loss", "moe_plus_plus", "top2"),), tune=("lr", "balance")),
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


# What a tuning sweep varies: name -> (config field, candidates given the
# row's own value). The learning rate is scaled; the balance coefficient is
# swept only on rows that train with one (an MoE with a load-balance weight).
TUNABLE = {
    "lr": ("train.learning_rate", lambda value: [value * 0.5, value, value * 2.0]),
    "balance": ("train.load_balance_weight", lambda value: [1e-3, 1e-2]),
}
SCALES = ("base", "large")


def _field(config, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def _sweeps(config, tune: Sequence[str]) -> List[str]:
  """The sweeps of `tune` that apply to a row of this config."""
  moe_balanced = config.model.moe_every > 0 and config.train.load_balance_weight > 0
  return [name for name in tune if name != "balance" or moe_balanced]


def _setting_name(settings: Dict[str, float]) -> str:
  """'lr0.003_lb0.01': the folder of a row's runs at these tuned values."""
  short = {"train.learning_rate": "lr", "train.load_balance_weight": "lb"}
  return "_".join(f"{short[key]}{value:g}" for key, value in settings.items())


def _levels(study: Study) -> List[List[str]]:
  """The rows in the order their sources allow: a row trains after every row
  its overrides name ({row} / {kind:row})."""
  needs = {}
  for row, overrides in study.rows.items():
    needs[row] = {m.group(2) for a in overrides for m in _SOURCE.finditer(a)}
    unknown = needs[row] - set(study.rows)
    if unknown:
      raise ValueError(f"row {row!r} names {sorted(unknown)}, which are not rows of the study")
  done, levels = set(), []
  while len(done) < len(needs):
    level = [row for row in study.rows if row not in done and needs[row] <= done]
    if not level:
      raise ValueError(f"the rows {sorted(set(needs) - done)} name each other in a circle")
    levels.append(level)
    done |= set(level)
  return levels


def study_workdir(workdir: str, scale: str) -> str:
  """Where a scale's runs and results live: workdir itself for 'base',
  workdir/large for 'large'."""
  return workdir if scale == "base" else os.path.join(workdir, scale)


class _Runner:
  """Runs (or, planning, only lists) a study's jobs: tuning sweeps on a
  held-out slice of the train split at seed 0, then every seed at the chosen
  values, level by level (rows that start from other rows come after them)."""

  def __init__(self, name: str, workdir: str, overrides: Sequence[str], tune: Sequence[str],
               workers: int, verbose: bool, planning: bool):
    self.name, self.study, self.workdir = name, STUDIES[name], workdir
    self.overrides, self.tune, self.workers = list(overrides), list(tune), workers
    self.verbose, self.planning = verbose, planning
    self.row_dir: Dict[str, str] = {}     # row -> folder of its seed_<s> runs
    self.plan: List[Tuple[str, int, int, float]] = []   # (phase, runs, to train, seconds)
    self.planned = set()                  # folders of the runs planned so far

  def jobs_rows(self, phase: str, jobs: Sequence[Job]) -> List[Optional[Dict]]:
    if not self.planning:
      return run_jobs(self.name, self.study.base, jobs, self.workers, self.verbose)
    rows = [finished_row(job) for job in jobs]
    todo = [job for job, row in zip(jobs, rows) if row is None and job.out not in self.planned]
    self.planned.update(job.out for job in todo)
    seconds = sum(estimated_seconds(self.study.base, job) for job in todo)
    self.plan.append((phase, len(jobs), len(todo), seconds))
    return rows

  def own(self, row: str, seed: int) -> Tuple[str, ...]:
    dirs = {r: os.path.join(d, f"seed_{seed}") for r, d in self.row_dir.items()}
    return tuple(_sources(a, dirs, self.study, self.workdir, seed, create=not self.planning)
                 for a in self.study.rows[row])

  def probe(self, row: str):
    """The row's config before tuning (its sources' models not loaded)."""
    config = self.study.base()
    for assignment in (*self.study.rows[row], *self.overrides):
      if "{" not in assignment:
        apply_override(config, assignment)
    return config

  def tune_level(self, level: Sequence[str]) -> Dict[str, Dict]:
    """Sweeps each row's tunables one after the other (the learning rate
    first, then the balance coefficient at the chosen rate); returns row ->
    {'settings': {field: chosen}, 'sweeps': {field: {...}}}."""
    tuned = {}
    for row in level:
      config = self.probe(row)
      sweeps = _sweeps(config, self.tune)
      tuned[row] = {"settings": {TUNABLE[s][0]: _field(config, TUNABLE[s][0]) for s in sweeps},
                    "sweeps": {}}
    for sweep in self.tune:
      key, candidates_of = TUNABLE[sweep]
      jobs, owners = [], []
      for row in level:
        settings = tuned[row]["settings"]
        if key not in settings:
          continue
        candidates = candidates_of(_field(self.probe(row), key))
        tuned[row]["sweeps"][key] = {"candidates": candidates}
        for value in candidates:
          trial = {**settings, key: value}
          jobs.append(self.tuning_job(row, trial))
          owners.append((row, value))
      rows = self.jobs_rows(f"tune {sweep}", jobs)
      for row in level:
        if key not in tuned[row]["settings"]:
          continue
        sweep_info = tuned[row]["sweeps"][key]
        losses = [r["eval_loss"] if r is not None else None
                  for (owner, _), r in zip(owners, rows) if owner == row]
        sweep_info["held_out_loss"] = losses
        if all(loss is None for loss in losses) and self.planning:
          continue   # not trained yet: plan with the row's own value
        sweep_info["chosen"] = choose(sweep_info["candidates"], losses)
        tuned[row]["settings"][key] = sweep_info["chosen"]
    return tuned

  def tuning_job(self, row: str, settings: Dict[str, float]) -> Job:
    split = self.probe(row).data.train_split
    if "[" in split:
      raise ValueError(f"data.train_split={split!r} is already a slice: tuning holds out "
                       f"the last {self.study.tune_holdout}% of an unsliced train split")
    keep = 100 - self.study.tune_holdout
    extra = (*self.overrides, *(f"{k}={v!r}" for k, v in settings.items()),
             f"data.train_split={split}[:{keep}%]", f"data.eval_split={split}[{keep}%:]",
             "seed=0")
    out = os.path.join(self.workdir, row, "tune", _setting_name(settings))
    return Job(row, self.own(row, 0), extra, out)

  def run(self, seeds: int) -> Tuple[Dict[str, List[Dict]], Dict[str, Dict]]:
    runs, tuning = {}, {}
    for level in _levels(self.study):
      tuned = self.tune_level(level) if self.tune else {}
      jobs = []
      for row in level:
        settings = tuned.get(row, {}).get("settings", {})
        tuning[row] = tuned.get(row, {})
        self.row_dir[row] = os.path.join(self.workdir, row, *(
            [_setting_name(settings)] if settings else []))
        for seed in range(seeds):
          extra = (*self.overrides, *(f"{k}={v!r}" for k, v in settings.items()), f"seed={seed}")
          jobs.append(Job(row, self.own(row, seed), extra,
                          os.path.join(self.row_dir[row], f"seed_{seed}")))
      rows = self.jobs_rows("seeds", jobs)
      for job, row in zip(jobs, rows):
        runs.setdefault(job.row, []).append(row)
    return runs, tuning


def plan_study(name: str, seeds: int, workdir: str, overrides: Sequence[str] = (),
               tune: Optional[Sequence[str]] = None, scale: str = "base") -> List[Tuple]:
  """What run_study would train: (phase, runs, runs left to train, estimated
  seconds of those on a 2-core CPU, one at a time). Before a sweep has run,
  the seeds are planned at the row's own values."""
  runner = _Runner(name, study_workdir(workdir, scale), _scaled(name, scale, overrides),
                   _tune(name, tune), 1, False, planning=True)
  runner.run(seeds)
  return runner.plan


def _tune(name: str, tune: Optional[Sequence[str]]) -> Tuple[str, ...]:
  tune = STUDIES[name].tune if tune is None else tuple(tune)
  unknown = [t for t in tune if t not in TUNABLE]
  if unknown:
    raise ValueError(f"--tune={','.join(tune)} is invalid: {unknown} are not sweeps; use "
                     f"any of {', '.join(TUNABLE)} or 'none'")
  return tuple(t for t in TUNABLE if t in tune)   # the learning rate first


def _scaled(name: str, scale: str, overrides: Sequence[str]) -> List[str]:
  if scale not in SCALES:
    raise ValueError(f"--scale={scale!r} is invalid: use one of {', '.join(SCALES)}")
  if scale == "large" and not STUDIES[name].large:
    raise ValueError(f"--scale=large is not defined for the study {name!r}: its rows set "
                     f"their own step counts (studies with a large scale: "
                     f"{', '.join(n for n, s in STUDIES.items() if s.large)})")
  return [*(STUDIES[name].large if scale == "large" else ()), *overrides]


def run_study(name: str, seeds: int, workdir: str, overrides: Sequence[str] = (),
              verbose: bool = True, tune: Optional[Sequence[str]] = None,
              scale: str = "base", workers: int = 1) -> Dict:
  """Trains every row of STUDIES[name] for seeds 0..seeds-1 (after tuning
  each row, see _Runner) and writes results.json, results.md and results.png
  to the scale's folder (study_workdir); returns the results. tune: sweeps
  to run (None: the study's own; () none)."""
  study = STUDIES[name]
  out_dir = study_workdir(workdir, scale)
  runner = _Runner(name, out_dir, _scaled(name, scale, overrides), _tune(name, tune),
                   workers, verbose, planning=False)
  runs, tuning = runner.run(seeds)
  results = {"study": name, "description": study.description, "seeds": seeds,
             "scale": scale, "overrides": runner.overrides, "tuned": list(runner.tune),
             "tune_holdout_percent": study.tune_holdout, "rows": {}, "claims": []}
  for row, rows in runs.items():
    summary = {"params": rows[0]["params"], "active_params": rows[0]["active_params"],
               "steps": rows[0]["steps"], **tuning[row]}
    for metric in ("eval_loss", "train_loss", "balance", "fraction_dropped"):
      values = [r[metric] for r in rows]
      if all(v is not None for v in values):
        summary[metric] = dict(zip(("mean", "std"), mean_std(values)), values=values)
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
  results["claims"] = judge(study.claims, results["rows"])
  write_results(results, out_dir)
  write_scales(workdir)
  return results


def judge(claims: Sequence[Claim], rows: Dict[str, Dict]) -> List[Dict]:
  """Each claim with both rows' mean ± std, the paired difference over seeds
  and its verdict (rows: results['rows'], with per-seed 'values')."""
  out = []
  for claim in claims:
    better, worse = rows[claim.better][claim.metric], rows[claim.worse][claim.metric]
    paired = paired_difference(better["values"], worse["values"])
    out.append({**dataclasses.asdict(claim), "better_mean": better["mean"],
                "better_std": better["std"], "worse_mean": worse["mean"],
                "worse_std": worse["std"], "paired": paired, "verdict": paired["verdict"]})
  return out


def rejudge(name: str, workdir: str, scale: str = "base") -> Dict:
  """Judges the claims of the results.json in the scale's folder again from
  its per-seed values (no training: after the claims or the statistics
  changed) and rewrites its results files. The claims are matched to the
  study's current ones by their rows and metric."""
  path = os.path.join(study_workdir(workdir, scale), "results.json")
  if not os.path.exists(path):
    raise ValueError(f"--rejudge needs {path}, which does not exist: run the study first")
  with open(path) as f:
    results = json.load(f)
  if results.get("study") != name:
    raise ValueError(f"--rejudge: {path} holds the study {results.get('study')!r}, not {name!r}")
  results["claims"] = judge(STUDIES[name].claims, results["rows"])
  results.setdefault("scale", scale)
  results.setdefault("tuned", [])
  write_results(results, study_workdir(workdir, scale))
  write_scales(workdir)
  return results


_SOURCE = re.compile(r"\{(?:(\w+):)?(\w+)\}")


def _sources(assignment: str, row_dirs: Dict[str, str], study: Study, workdir: str,
             seed: int, create: bool = True) -> str:
  """`assignment` with {row} / {kind:row} replaced by folders (an upcycle is
  made on first use, once per seed and source folder, unless not `create`)."""
  def folder(match):
    kind, row = match.groups()
    if row not in row_dirs:
      raise ValueError(f"{assignment!r} names {row!r}, which is not a row of the study")
    if kind is None:
      return row_dirs[row]
    if kind not in study.upcycles:
      raise ValueError(f"{assignment!r} names the upcycle {kind!r}; the study has "
                       f"{sorted(study.upcycles)}")
    source = row_dirs[row]
    tag = os.path.relpath(os.path.dirname(source), workdir).replace(os.sep, "_")
    out = os.path.join(workdir, f"{tag}_{kind}", f"seed_{seed}")
    if create and not os.path.isdir(out):
      _upcycle(source, out, seed, **study.upcycles[kind])
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
