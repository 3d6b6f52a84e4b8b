"""Validated training configuration and the whole-experiment config.

`experiment_from_config(config_dict)` turns the ml_collections ConfigDict of
a config file (see configs/) into frozen, validated dataclasses, failing with
one line that names the field before any work starts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

from moejax.validation import check_choice, check_float, check_int, fail, from_mapping
from moejax.data.config import DataConfig, data_config_from_mapping
from moejax.models.config import ModelConfig, model_config_from_mapping
from moejax.parallel.mesh import MeshConfig, mesh_config_from_mapping

LR_SCHEDULES = ("cosine", "linear", "constant")
TRAINABLE = ("all", "lora", "lora_and_router")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation, logging and checkpointing.

  Attributes:
    num_steps: optimizer steps in the whole run (resumes continue to it).
    learning_rate: peak learning rate of AdamW.
    warmup_steps: linear warmup from 0 to learning_rate.
    lr_schedule: after warmup: 'cosine' or 'linear' decay to
      min_lr_ratio * learning_rate at num_steps, or 'constant'.
    min_lr_ratio: final learning rate as a fraction of the peak.
    weight_decay: AdamW decoupled weight decay (applied to matrices only).
    b1, b2, eps: AdamW moments.
    grad_clip_norm: clip the global gradient norm to this; 0 = no clipping.
    load_balance_weight, z_loss_weight, importance_weight,
      mutual_information_weight: weights of the MoE aux losses (Switch load
      balance, ST-MoE z-loss, V-MoE importance, DS-MoE mutual information;
      moejax/routing/losses.py), each averaged over the MoE blocks, added to
      the loss.
    log_every: progress line + train metrics every N steps.
    eval_every: evaluation every N steps (and at the end); 0 = only at the end.
    checkpoint_every: checkpoint every N steps (and at the end / on SIGTERM).
    keep_checkpoints: how many recent checkpoints to keep.
    async_checkpointing: write checkpoints in a background thread.
    stop_at_step: stop cleanly (checkpoint saved) on reaching this step, as
      if preempted; a run resumed beyond it goes on to num_steps. None = off.
    plots: write loss and expert-load PNGs in the workdir at the end.
    profile_steps: (first, last): write a jax.profiler trace of steps first..
      last (1-based, inclusive) to <workdir>/profile, for TensorBoard's
      profile plugin or Perfetto (ui.perfetto.dev). None = off.
    init_from: start from the weights of a HuggingFace folder, a moejax model
      folder or a training workdir; that source defines the model
      (moejax/train/init_from.py). None = random initialisation.
    trainable: which parameters train: 'all', 'lora' (only the experts' LoRA
      adapters, model.moe.lora_rank > 0) or 'lora_and_router' (adapters and
      routers). Frozen parameters keep their values and get no optimizer
      state.
  """

  num_steps: int = 1000
  learning_rate: float = 3e-3
  warmup_steps: int = 50
  lr_schedule: str = "cosine"
  min_lr_ratio: float = 0.1
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  grad_clip_norm: float = 1.0
  load_balance_weight: float = 1e-2
  z_loss_weight: float = 1e-3
  importance_weight: float = 0.0
  mutual_information_weight: float = 0.0
  log_every: int = 50
  eval_every: int = 250
  checkpoint_every: int = 250
  keep_checkpoints: int = 2
  async_checkpointing: bool = True
  stop_at_step: Optional[int] = None
  plots: bool = True
  profile_steps: Optional[Tuple[int, int]] = None
  init_from: Optional[str] = None
  trainable: str = "all"

  def __post_init__(self):
    check_int("train.num_steps", self.num_steps, 1)
    check_float("train.learning_rate", self.learning_rate, 0.0, False)
    check_int("train.warmup_steps", self.warmup_steps, 0)
    check_choice("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
    check_float("train.min_lr_ratio", self.min_lr_ratio, 0.0, True)
    if self.min_lr_ratio > 1:
      fail("train.min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
    check_float("train.weight_decay", self.weight_decay, 0.0, True)
    for name in ("b1", "b2"):
      value = getattr(self, name)
      check_float(f"train.{name}", value, 0.0, True)
      if value >= 1:
        fail(f"train.{name}", value, "must be in [0, 1)")
    check_float("train.eps", self.eps, 0.0, False)
    check_float("train.grad_clip_norm", self.grad_clip_norm, 0.0, True)
    for name in ("load_balance_weight", "z_loss_weight", "importance_weight",
                 "mutual_information_weight"):
      check_float(f"train.{name}", getattr(self, name), 0.0, True)
    check_int("train.log_every", self.log_every, 1)
    check_int("train.eval_every", self.eval_every, 0)
    check_int("train.checkpoint_every", self.checkpoint_every, 1)
    check_int("train.keep_checkpoints", self.keep_checkpoints, 1)
    if self.stop_at_step is not None:
      check_int("train.stop_at_step", self.stop_at_step, 1)
    if self.profile_steps is not None:
      steps = self.profile_steps
      if (not isinstance(steps, (tuple, list)) or len(steps) != 2
          or any(isinstance(s, bool) or not isinstance(s, int) for s in steps)
          or not 1 <= steps[0] <= steps[1]):
        fail("train.profile_steps", steps, "must be (first, last) steps with 1 <= first <= last")
    check_choice("train.trainable", self.trainable, TRAINABLE)
    if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
      fail("train.init_from", self.init_from, "must be a folder path (or None)")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """seed + model + data + train + mesh. `raw` is the JSON-able original."""

  seed: int
  model: ModelConfig
  data: DataConfig
  train: TrainConfig
  mesh: MeshConfig
  raw: Dict[str, Any] = dataclasses.field(compare=False, hash=False, repr=False)


SECTIONS = ("seed", "model", "data", "train", "mesh")


def experiment_from_config(config) -> ExperimentConfig:
  """Validates a ConfigDict (or nested dict) with sections seed/model/data/train/mesh."""
  values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  unknown = sorted(set(values) - set(SECTIONS))
  if unknown:
    fail(unknown[0], values[unknown[0]], f"unknown field; valid fields are {', '.join(SECTIONS)}")
  check_int("seed", values.get("seed", 0), 0)
  model = model_config_from_mapping(values.get("model", {}))
  data = data_config_from_mapping(values.get("data", {}))
  train = from_mapping(TrainConfig, dict(values.get("train", {})), "train.")
  mesh = mesh_config_from_mapping(values.get("mesh", {}))
  if model.kind == "lm" and model.lm.vocab_size < 256 and data.tokenizer is None:
    fail("model.lm.vocab_size", model.lm.vocab_size, "must be >= 256 for byte-level text")
  if train.trainable != "all" and not (model.moe is not None and model.moe_layers
                                       and model.moe.lora_rank):
    fail("train.trainable", train.trainable, "trains LoRA adapters: set model.moe.lora_rank "
         "> 0 on a model with MoE layers (or use 'all')")
  if model.moe is not None and model.moe.expert_quantization is not None:
    fail("model.moe.expert_quantization", model.moe.expert_quantization,
         "quantized experts cannot be trained; train with None and quantize with "
         "experiments/compress.py")
  return ExperimentConfig(values.get("seed", 0), model, data, train, mesh, values)
