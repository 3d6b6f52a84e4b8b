"""Loss, one training step and one evaluation step (pure; jit them).

A TrainState is a plain dict so orbax saves and restores it as a pytree:
  {'step': [] int32, 'params': ..., 'opt_state': ..., 'router_state': ...}
router_state holds the aux-loss-free expert biases ({} when unused).
"""

from __future__ import annotations

from typing import Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from moejax.routing.losses import LOSS_NAMES
from moejax.train.config import TrainConfig

# Per-MoE-block routing metrics logged by the trainer (each [num_moe_blocks]),
# plus 'expert_load' [num_moe_blocks, E]: each expert's share of assignments.
LAYER_METRICS = ("balance", "fraction_dropped", "fraction_null", "router_entropy",
                 "experts_per_token")
# Per-expert loads go into every metrics line up to this many experts (PEER's
# pools of 10^5-10^6 would make each line megabytes).
MAX_LOGGED_EXPERTS = 4096


def init_state(model: nn.Module, optimizer: optax.GradientTransformation, rng: jax.Array,
               example_inputs: jax.Array) -> dict:
  variables = model.init({"params": rng, "router": rng}, example_inputs)
  params = variables["params"]
  return {"step": jnp.zeros((), jnp.int32), "params": params,
          "opt_state": optimizer.init(params),
          "router_state": variables.get("router_state", {})}


def _variables(state: dict, params) -> dict:
  if state["router_state"]:
    return {"params": params, "router_state": state["router_state"]}
  return {"params": params}


def _task_loss(logits: jax.Array, batch: dict) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Masked mean cross-entropy. Returns (loss, summed CE, summed correct)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
  mask = batch["mask"]
  count = jnp.maximum(mask.sum(), 1.0)
  return (ce * mask).sum() / count, (ce * mask).sum(), (correct * mask).sum()


def _aux_summary(aux: Dict) -> Tuple[Dict[str, jax.Array], Dict[str, jax.Array]]:
  """Aux losses averaged over MoE blocks; per-block metrics stacked in block order."""
  blocks = sorted(aux, key=lambda name: int(name.split("_")[-1]))
  if not blocks:
    return {name: jnp.zeros(()) for name in LOSS_NAMES}, {}
  losses = {name: jnp.mean(jnp.stack([aux[b].losses[name] for b in blocks]))
            for name in LOSS_NAMES}
  metrics = {name: jnp.stack([aux[b].metrics[name] for b in blocks]) for name in LAYER_METRICS}
  load = jnp.stack([aux[b].metrics["tokens_per_expert"] for b in blocks])
  if load.shape[-1] <= MAX_LOGGED_EXPERTS:
    metrics["expert_load"] = load / jnp.maximum(load.sum(-1, keepdims=True), 1e-9)
  return losses, metrics


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    config: TrainConfig, seed: int):
  """(state, batch) -> (state, metrics). Router noise uses fold_in(seed, step)."""
  weights = {"load_balance": config.load_balance_weight, "z_loss": config.z_loss_weight,
             "importance": config.importance_weight,
             "mutual_information": config.mutual_information_weight,
             "family": 1.0}  # a router family's own loss carries its own coefficient

  def loss_fn(params, state, batch):
    rng = jax.random.fold_in(jax.random.key(seed), state["step"])
    (logits, aux), updated = model.apply(
        _variables(state, params), batch["inputs"], deterministic=False,
        rngs={"router": rng}, mutable=["router_state"])
    loss, _, correct = _task_loss(logits, batch)
    aux_losses, layer_metrics = _aux_summary(aux)
    total = loss + sum(weights[name] * aux_losses[name] for name in LOSS_NAMES)
    metrics = {"loss": loss, "total_loss": total,
               "accuracy": correct / jnp.maximum(batch["mask"].sum(), 1.0),
               **{f"aux/{k}": v for k, v in aux_losses.items()}, **layer_metrics}
    return total, (metrics, updated.get("router_state", {}))

  def train_step(state, batch):
    grads, (metrics, router_state) = jax.grad(loss_fn, has_aux=True)(
        state["params"], state, batch)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    metrics["grad_norm"] = optax.tree.norm(grads)
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                 "opt_state": opt_state, "router_state": router_state}
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module):
  """(state, batch) -> {'ce_sum', 'correct_sum', 'count'}: sums to pool over batches."""

  def eval_step(state, batch):
    logits, _ = model.apply(_variables(state, state["params"]), batch["inputs"])
    _, ce_sum, correct = _task_loss(logits, batch)
    return {"ce_sum": ce_sum, "correct_sum": correct, "count": batch["mask"].sum()}

  return eval_step


def all_finite(tree) -> jax.Array:
  """True when every float leaf of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
