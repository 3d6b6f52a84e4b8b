"""AdamW with warmup + decay, global-norm clipping, weight decay on matrices only."""

from __future__ import annotations

import jax
import optax

from moejax.experts import is_adapter_name
from moejax.train.config import TrainConfig


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
  """Linear warmup to the peak, then cosine / linear decay to min_lr_ratio * peak."""
  peak, final = config.learning_rate, config.learning_rate * config.min_lr_ratio
  warmup = optax.linear_schedule(0.0, peak, max(config.warmup_steps, 1))
  decay_steps = max(config.num_steps - config.warmup_steps, 1)
  if config.lr_schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.min_lr_ratio)
  elif config.lr_schedule == "linear":
    decay = optax.linear_schedule(peak, final, decay_steps)
  else:
    decay = optax.constant_schedule(peak)
  return optax.join_schedules([warmup, decay], [config.warmup_steps])


def is_adapter(path) -> bool:
  """A LoRA adapter parameter (moejax.experts), by its tree path."""
  return is_adapter_name(str(getattr(path[-1], "key", path[-1])))


def _is_router(path) -> bool:
  return any(str(getattr(k, "key", k)) == "router" for k in path)


def trained_labels(params, trainable: str):
  """'train' / 'frozen' per parameter for train.trainable."""
  def label(path, _):
    if trainable == "all" or is_adapter(path) or (
        trainable == "lora_and_router" and _is_router(path)):
      return "train"
    return "frozen"
  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """The same chain structure whatever the settings, so optimizer states of
  runs that differ only in hyper-parameters stay checkpoint-compatible.
  train.trainable other than 'all' freezes the rest: frozen parameters get no
  update and no optimizer state (optax.set_to_zero)."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  adamw = optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm or float("inf")),
      optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2, eps=config.eps,
                  weight_decay=config.weight_decay, mask=decay_mask))
  if config.trainable == "all":
    return adamw
  return optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()},
                               lambda params: trained_labels(params, config.trainable))
