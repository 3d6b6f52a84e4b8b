"""Trains one MoE layer to imitate a teacher MoE function, next to a dense FFN
with the same active parameters, and prints what the router learned.

  python experiments/layer_demo.py [--config=configs/layer_demo.py] [--config.x=y ...]

The task: y = teacher(x) where the teacher is a random top-1 MoE with sharp,
input-dependent routing, so a model that routes well can beat a dense FFN of
equal active size. Prints a progress line every `log_every` steps, then a
summary: final losses, per-expert load, drops, and a check that every
dispatch strategy gives the same output on the trained layer.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from moejax import DenseFFNLayer, MoELayer
from moejax.cli import config_value, define_config, fail, run
from moejax.config import MoEConfig, RouterConfig, moe_config_from_mapping

_CONFIG = define_config("configs/layer_demo.py", "ml_collections config file (see configs/).")


def _teacher(config, key):
  """A fixed random top-1 MoE with sharp routing: the function to learn."""
  cfg = MoEConfig(router=RouterConfig(num_experts=config.teacher_experts, top_k=1,
                                      normalize_top_k=True),
                  d_model=config.moe.d_model, d_ff=config.moe.d_ff, activation="gelu")
  layer = MoELayer(cfg)
  variables = layer.init(key, jnp.zeros((1, cfg.d_model)))
  variables = jax.tree.map(lambda p: p * 3.0, variables)  # sharper routing, larger outputs
  return lambda x: layer.apply(variables, x)[0]


def _train(layer, config, teacher, key):
  """Adam on MSE + weighted aux losses. Returns (variables, loss history)."""
  init_key, data_key = jax.random.split(key)
  x0 = jnp.zeros((config.batch_tokens, config.moe.d_model))
  variables = layer.init(init_key, x0)
  opt = optax.adam(config.learning_rate)
  opt_state = opt.init(variables["params"])

  def loss_fn(params, x):
    y, aux = layer.apply({**variables, "params": params}, x)
    mse = jnp.mean(jnp.square(y - teacher(x)))
    total = mse + config.load_balance_weight * aux.losses["load_balance"] \
        + config.z_loss_weight * aux.losses["z_loss"]
    return total, (mse, aux)

  @jax.jit
  def step(params, opt_state, key):
    x = jax.random.normal(key, (config.batch_tokens, config.moe.d_model))
    grads, (mse, aux) = jax.grad(loss_fn, has_aux=True)(params, x)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, mse, aux

  params, history = variables["params"], []
  start = time.perf_counter()
  for i in range(config.steps):
    params, opt_state, mse, aux = step(params, opt_state, jax.random.fold_in(data_key, i))
    history.append(float(mse))
    if (i + 1) % config.log_every == 0 or i + 1 == config.steps:
      rate = (i + 1) / (time.perf_counter() - start)
      extra = ""
      if aux.metrics:
        extra = (f"  balance {float(aux.metrics['balance']):.2f}"
                 f"  dropped {float(aux.metrics['fraction_dropped']):.1%}")
      print(f"  step {i + 1:5d}/{config.steps}  mse {float(mse):.4f}{extra}"
            f"  {rate:.0f} steps/s  eta {(config.steps - i - 1) / rate:.0f}s", flush=True)
  return {**variables, "params": params}, history


def main(argv):
  del argv
  config = config_value(_CONFIG)
  try:
    moe_cfg = moe_config_from_mapping(config.moe.to_dict())
  except ValueError as err:
    fail(2, f"config.moe.{err}")
  key = jax.random.key(config.seed)
  teacher = _teacher(config, jax.random.fold_in(key, 1))
  r = moe_cfg.router
  active = r.top_k * moe_cfg.d_ff if r.name not in ("expert_choice", "soft_moe") else moe_cfg.d_ff
  dense = DenseFFNLayer(moe_cfg.d_model, active, moe_cfg.activation)

  print(f"moejax layer demo on {jax.devices()[0].platform}: router={r.name} E={r.num_experts} "
        f"k={r.top_k} dispatch={moe_cfg.dispatch} capacity_factor={r.capacity_factor}")
  print(f"MoE layer ({r.num_experts} experts x d_ff {moe_cfg.d_ff}):")
  moe_vars, moe_hist = _train(MoELayer(moe_cfg), config, teacher, jax.random.fold_in(key, 2))
  print(f"dense FFN with equal active width (d_ff {active}):")
  _, dense_hist = _train(dense, config, teacher, jax.random.fold_in(key, 2))

  x = jax.random.normal(jax.random.fold_in(key, 3), (config.batch_tokens, moe_cfg.d_model))
  _, aux = MoELayer(moe_cfg).apply(moe_vars, x)
  tail = max(1, config.steps // 10)
  moe_final, dense_final = np.mean(moe_hist[-tail:]), np.mean(dense_hist[-tail:])
  print("\nsummary")
  print(f"  final mse (mean of last {tail} steps): MoE {moe_final:.4f}   dense {dense_final:.4f}"
        f"   ratio {moe_final / dense_final:.2f}")
  print("  aux losses: " + "  ".join(f"{k} {float(v):.3f}" for k, v in aux.losses.items()))
  load = np.asarray(aux.metrics["tokens_per_expert"])
  print(f"  tokens per expert on a fresh batch of {config.batch_tokens}:")
  for e, n in enumerate(load):
    print(f"    expert {e:2d} {'#' * int(round(40 * n / max(load.max(), 1)))} {n:.0f}")
  print(f"  balance (max/mean) {float(aux.metrics['balance']):.2f}   dropped "
        f"{float(aux.metrics['fraction_dropped']):.1%}   router entropy "
        f"{float(aux.metrics['router_entropy']):.2f} nats")
  if r.is_sparse:
    outs = {}
    for name in ("einsum", "gather", "dropless"):
      if name == "gather" and r.capacity(1) is None:
        continue
      outs[name] = MoELayer(dataclasses.replace(moe_cfg, dispatch=name)).apply(moe_vars, x)[0]
    ref = outs.pop("einsum")
    diffs = ", ".join(f"{n} {float(jnp.abs(o - ref).max()):.1e}" for n, o in outs.items())
    print(f"  dispatch strategies vs einsum reference (max abs diff): {diffs}")


if __name__ == "__main__":
  run(main)
