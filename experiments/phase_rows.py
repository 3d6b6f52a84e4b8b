"""Where an MoE layer's time goes: the per-phase rows of experts/benchmark.py.

The layer is cut into its four phases, and each prefix is timed as its own
jitted function, forward and forward + backward, on the same parameters and
input as the full layer:

  routing    router logits, top-k, gate weights, load-balance loss
  dispatch   + sort by expert, gather of the rows into expert groups
  experts    + the expert FFNs on the grouped rows
  combine    + gather back to tokens, gate-weighted sum (= the whole layer)

A phase's time is its prefix minus the previous prefix. The prefixes end in
0.5·‖out‖² of their last output (a dense cotangent, as in the full rows), so
the backward pass of every phase runs too. XLA optimises each prefix on its
own, so phases may not add up exactly to the layer; the last prefix is the
layer, and is timed again here to keep every row from one round-robin.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax import MoELayer
from moejax.dispatch import get_strategy
from moejax.experts import ExpertBank
from moejax.moe import Router
from moejax.routing import aux_losses
from timing import round_robin_ms

PHASES = ("routing", "dispatch", "experts", "combine")


def _prefix_output(layer: MoELayer, params, x, upto: str):
  """(last output of the layer cut after phase `upto`, load-balance loss)."""
  cfg = layer.config
  out = Router(cfg.router).apply({"params": params["router"]}, x)
  balance = aux_losses(out)["load_balance"]
  if upto == "routing":
    return out.routing.weight, balance
  experts = ExpertBank.from_config(cfg)
  strategy = get_strategy(cfg.dispatch, experts.row_layout())
  batch, residual = strategy.dispatch(x.astype(jnp.dtype(cfg.dtype)), out.routing)
  if upto == "dispatch":
    return batch.x, balance
  y = experts.pure_fn()(params["experts"], batch)
  if upto == "experts":
    return y.x, balance
  return strategy.combine(y, out.routing, residual), balance


def _jobs(layer, variables, x, upto):
  def loss(params, x):
    out, balance = _prefix_output(layer, params, x, upto)
    return 0.5 * jnp.sum(jnp.square(out.astype(jnp.float32))) + 1e-2 * balance

  fwd = jax.jit(lambda params, x: _prefix_output(layer, params, x, upto)[0])
  return {"fwd": (fwd, (variables["params"], x)),
          "fwd_bwd": (jax.jit(jax.grad(loss, argnums=(0, 1))), (variables["params"], x))}


def phase_rows(name: str, layer: MoELayer, x, repeats: int, warmup: int, common: dict):
  """Rows (one per phase) for `layer`, a sparse MoELayer without shared
  experts; prints the breakdown."""
  variables = layer.init(jax.random.key(0), x)
  jobs = {}
  for phase in PHASES:
    jobs.update({(phase, p): job for p, job in _jobs(layer, variables, x, phase).items()})
  ms = round_robin_ms(jobs, repeats, warmup)
  rows, before = [], {"fwd": 0.0, "fwd_bwd": 0.0}
  for phase in PHASES:
    rows.append(dict(name=f"{name}:{phase}", variant=name, phase=phase,
                     fwd_ms=ms[phase, "fwd"] - before["fwd"],
                     fwd_bwd_ms=ms[phase, "fwd_bwd"] - before["fwd_bwd"],
                     prefix_fwd_ms=ms[phase, "fwd"], prefix_fwd_bwd_ms=ms[phase, "fwd_bwd"],
                     **common))
    before = {"fwd": ms[phase, "fwd"], "fwd_bwd": ms[phase, "fwd_bwd"]}
  total = ms[PHASES[-1], "fwd_bwd"]
  header = f"{'phase of ' + name:28s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'share':>7s}"
  print(header)
  print("-" * len(header))
  for r in rows:
    print(f"{r['phase']:28s} {r['fwd_ms']:9.2f} {r['fwd_bwd_ms']:11.2f} "
          f"{r['fwd_bwd_ms'] / total:7.0%}")
  return rows
