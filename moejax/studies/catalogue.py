"""The studies: the MoE literature's headline claims as rows (name -> overrides
of a base config) and claims ("`better` has a lower metric than `worse`"),
run and judged by moejax/studies/runner.py (experiments/study.py).

Row overrides may name other rows: `{row}` stands for that row's workdir
(same seed) and `{kind:row}` for a sparse upcycle of it made as
Study.upcycles[kind] says, e.g. `train.init_from={upcycled:dense_pretrained}`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Tuple

from moejax.train.presets import lm_tiny, vit_tiny


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
# MoE++'s 8 + 4 experts (its 0.6B/(8+4)E: 1 zero, 1 copy, 2 constant) and gating residual.
_MOE_PLUS_PLUS = _DROPLESS + ("model.moe.router.num_null_experts=1",
                              "model.moe.router.num_copy_experts=1",
                              "model.moe.router.num_constant_experts=2",
                              "model.moe.router.gating_residual=True")


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
        "load-balance aux loss (1e-1, 1e-2, 1e-3) vs aux-loss-free bias vs none, dropless, "
        "2 blocks",
        lm_study,
        {"aux_1e-1": _DROPLESS + ("train.load_balance_weight=0.1",),
         "aux_1e-2": _DROPLESS, "aux_1e-3": _DROPLESS + ("train.load_balance_weight=0.001",),
         "bias": _DROPLESS + ("train.load_balance_weight=0.0",
                              "model.moe.router.use_expert_bias=True"),
         "none": _DROPLESS + ("train.load_balance_weight=0.0",)},
        (Claim("the aux-loss-free bias balances better than no balancing (DeepSeek-V3)",
               "balance", "bias", "none"),
         Claim("the bias reaches an eval loss at least as good as the aux loss (loss-free "
               "balancing, Wang et al. 2024): bias < aux 1e-2", "eval_loss", "bias",
               "aux_1e-2"),
         # 1e-1 is the weight granularity's and num_experts' sweeps chose for this 8x256 layer:
         # the bias against the aux loss at its best weight, not only at the usual one
         Claim("... and at the aux loss's best weight for this model: bias < aux 1e-1",
               "eval_loss", "bias", "aux_1e-1"))),
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
                      "model.moe.router.capacity_factor=None", "model.moe.router.soft_moe.num_slots=2",
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
               "it causal: expert_threshold < top2", "eval_loss", "expert_threshold", "top2"),),
        # every row trains with the balance loss: each at its best weight, top-2 included
        tune=("lr", "balance")),
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
               "eval_loss", "ds_moe_top2", "ds_moe_top2_no_mi")),
        tune=("lr", "balance")),   # each row at its best balance weight, top-2 included
    "peer": Study(
        "PEER: 48^2 = 2304 single-neuron experts, 8 heads x top-16 by product keys (128 expert "
        "neurons per token) vs top-2 of 8 experts x 64 (equal active expert parameters) and "
        "top-2 of 8 x 256 (about equal total expert parameters), 2 blocks", lm_study,
        {"top2_8x64": _DROPLESS + ("model.moe.d_ff=64",),
         "top2_8x256": _DROPLESS,
         "peer_2304x1": ("model.moe.router.name=product_key",
                         "model.moe.router.num_experts=2304", "model.moe.router.top_k=16",
                         "model.moe.router.product_key.heads=8",
                         "model.moe.router.product_key.key_dim=32",
                         "model.moe.router.capacity_factor=None", "model.moe.d_ff=1",
                         "model.moe.dispatch=retrieval", "train.load_balance_weight=0.0")},
        (Claim("PEER beats a coarse MoE at equal active expert parameters (He 2024)",
               "eval_loss", "peer_2304x1", "top2_8x64"),
         Claim("... and at equal total expert parameters, with a quarter of the active ones",
               "eval_loss", "peer_2304x1", "top2_8x256")), tune=("lr", "balance")),
    "moe_plus_plus": Study(
        "top-2 over 8 experts x 256 vs MoE++: the same 8 FFN experts plus 1 zero, 1 copy and 2 "
        "constant experts, top-2 over all 12, gating residual (fewer FFN rows per token), "
        "heterogeneous load balance with tau 0.75 (the paper's default) or 1 (the plain "
        "loss), dropless, 2 blocks", lm_study,
        {"top2": _DROPLESS,
         "moe_plus_plus": _MOE_PLUS_PLUS + ("model.moe.router.zero_computation_balance_weight"
                                            "=0.75",),
         "moe_plus_plus_tau_1": _MOE_PLUS_PLUS},
        (Claim("MoE++ beats the plain MoE while running fewer FFN experts per token (Jin et al. "
               "2024)", "eval_loss", "moe_plus_plus", "top2"),
         Claim("... also with tau 1, which sends fewer choices to the zero-computation experts",
               "eval_loss", "moe_plus_plus_tau_1", "top2")), tune=("lr", "balance")),
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
               "heads", "eval_loss", "switchhead_2_heads", "dense_4_heads")),
        tune=("lr", "balance")),   # every row's MoE FFN at its best balance weight
    "remoe": Study(
        "top-2 token choice vs ReMoE's ReLU routing over the same 8 experts x 256 (2 experts "
        "per token on average, held there by its adaptive L1 penalty; no load-balance loss, "
        "as in the paper), dropless, 2 blocks", lm_study,
        {"top2": _DROPLESS,
         "remoe": _DROPLESS + ("model.moe.router.name=remoe", "train.load_balance_weight=0.0")},
        (Claim("ReLU routing beats top-k routing at the same average active experts (ReMoE, "
               "Wang et al. 2025): remoe < top2", "eval_loss", "remoe", "top2"),),
        # top-2's balance weight is swept too: the claim is against top-k at its best
        # (ReMoE has no balance loss to sweep)
        tune=("lr", "balance")),
}
