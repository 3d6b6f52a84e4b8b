"""Times the MoE layer for each dispatch strategy / grouped-matmul backend
against a dense FFN of equal active FLOPs, in one process.

  python experiments/benchmark.py --preset=default --json_out=/tmp/bench.json

The dense baseline has d_ff = top_k * d_ff_expert (same active FLOPs per
token, router excluded). Every variant is jitted and warmed up, then all are
timed in turn for `--repeats` rounds (so drifts of the machine hit all rows
alike); the median is reported for the forward pass and for
forward + backward (grads w.r.t. params and input). ratio_vs_dense =
variant time / dense time for the same pass. The 'dense_expert_shape' row runs
the experts' matmul shapes ([tokens * top_k, d] x [d, d_ff]) with no routing:
the part of any MoE row's ratio that comes from narrower matmuls, not from
routing or dispatch.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from absl import flags

from moejax import DenseFFNLayer, MoEConfig, MoELayer, RouterConfig
from moejax.cli import run
from moejax.grouped_matmul import resolve_backend

PRESETS = {
    # The shape from issue 5: tokens=4096, d=512, d_ff=1024, 8 experts, top-2.
    "default": dict(tokens=4096, d_model=512, d_ff=1024, experts=8, top_k=2),
    # Fine-grained MoE (DeepSeek-style): many small experts.
    "fine_grained": dict(tokens=4096, d_model=512, d_ff=128, experts=64, top_k=8),
    # Seconds on a laptop: for smoke tests.
    "tiny": dict(tokens=256, d_model=64, d_ff=128, experts=8, top_k=2),
}
# name -> (dispatch, gmm backend, uses capacity)
VARIANTS = {
    "einsum": ("einsum", "auto", True),
    "gather": ("gather", "auto", True),
    "dropless_blocked": ("dropless", "blocked", False),
    "dropless_ragged_dot": ("dropless", "ragged_dot", False),
    "dropless_einsum": ("dropless", "einsum", False),
}
# The one-hot einsum materialises [tokens, experts, capacity]; past this many
# elements it is skipped rather than allowed to exhaust memory.
MAX_ONE_HOT = 2e8

_PRESET = flags.DEFINE_enum("preset", "default", list(PRESETS), "Shape preset.")
_TOKENS = flags.DEFINE_integer("tokens", None, "Tokens per step (overrides the preset).")
_D_MODEL = flags.DEFINE_integer("d_model", None, "Model width (overrides the preset).")
_D_FF = flags.DEFINE_integer("d_ff", None, "Expert hidden width (overrides the preset).")
_EXPERTS = flags.DEFINE_integer("experts", None, "Routed experts (overrides the preset).")
_TOP_K = flags.DEFINE_integer("top_k", None, "Experts per token (overrides the preset).")
_CAPACITY = flags.DEFINE_float("capacity_factor", 1.25, "Capacity factor of capacity variants.")
_ACTIVATION = flags.DEFINE_enum("activation", "gelu", ["relu", "gelu", "silu", "swiglu", "geglu"],
                                "Expert and dense FFN activation.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_VARIANTS = flags.DEFINE_list("variants", "einsum,gather,dropless_blocked,dropless_ragged_dot",
                              f"Which MoE variants to time; any of {', '.join(VARIANTS)}.")
_SHAPE_BOUND = flags.DEFINE_bool(
    "shape_bound", True, "Also time tokens*top_k rows through one d_ff-wide dense FFN: the "
    "experts' matmul shapes with no routing, a floor for the MoE rows.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats per pass (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls after compilation.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the rows as JSON here.")


def _round_robin_ms(jobs, repeats, warmup):
  """Median ms of each (fn, args) in `jobs` (a dict). All are compiled and
  warmed up first, then timed in turn, `repeats` rounds: slow drifts of the
  machine (clock, other tenants) hit every job alike instead of whichever ran
  first. Each timed call follows an untimed call of the same job, so it does
  not pay for the memory and caches the previous job left behind (measured:
  up to 1.5x on a dense FFN following a one-hot einsum)."""
  for fn, args in jobs.values():
    for _ in range(1 + warmup):
      jax.block_until_ready(fn(*args))
  times = {name: [] for name in jobs}
  for _ in range(repeats):
    for name, (fn, args) in jobs.items():
      jax.block_until_ready(fn(*args))
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append((time.perf_counter() - start) * 1e3)
  return {name: statistics.median(t) for name, t in times.items()}


def _layer_jobs(layer, x):
  """{'fwd': (fn, args), 'fwd_bwd': (fn, args)} for layer.apply at input x."""
  variables = layer.init(jax.random.key(0), x)
  fwd = jax.jit(lambda v, x: layer.apply(v, x)[0])

  def loss(params, x):
    y, aux = layer.apply({**variables, "params": params}, x)
    return jnp.sum(y.astype(jnp.float32)) + 1e-2 * aux.losses["load_balance"]

  fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return {"fwd": (fwd, (variables, x)), "fwd_bwd": (fwd_bwd, (variables["params"], x))}


def main(argv):
  del argv
  shape = dict(PRESETS[_PRESET.value])
  for key, flag in (("tokens", _TOKENS), ("d_model", _D_MODEL), ("d_ff", _D_FF),
                    ("experts", _EXPERTS), ("top_k", _TOP_K)):
    if flag.value is not None:
      shape[key] = flag.value
  unknown = [v for v in _VARIANTS.value if v not in VARIANTS]
  if unknown:
    sys.exit(f"error: --variants={unknown[0]!r} is invalid: valid values are "
             + ", ".join(VARIANTS))
  try:
    base = MoEConfig(router=RouterConfig(num_experts=shape["experts"], top_k=shape["top_k"],
                                         normalize_top_k=True),
                     d_model=shape["d_model"], d_ff=shape["d_ff"],
                     activation=_ACTIVATION.value, dtype=_DTYPE.value)
    RouterConfig(capacity_factor=_CAPACITY.value)
  except ValueError as err:
    sys.exit(f"error: {err}")
  x = jax.random.normal(jax.random.key(1), (shape["tokens"], shape["d_model"]),
                        jnp.dtype(_DTYPE.value))
  device = jax.devices()[0]
  print(f"moejax benchmark on {device.platform} ({device.device_kind}), jax {jax.__version__}, "
        f"{_DTYPE.value}: {shape}, repeats={_REPEATS.value}")

  common = dict(tokens=shape["tokens"], d_model=shape["d_model"], d_ff=shape["d_ff"],
                experts=shape["experts"], top_k=shape["top_k"], dtype=_DTYPE.value,
                activation=_ACTIVATION.value, platform=device.platform,
                device_kind=device.device_kind)
  dense_ff = shape["top_k"] * shape["d_ff"]
  ffn = lambda width: DenseFFNLayer(shape["d_model"], width, _ACTIVATION.value,
                                    dtype=_DTYPE.value)
  # name -> (row fields, layer, input)
  variants = {"dense": (dict(dispatch="none", backend="xla", capacity_factor=None,
                             d_ff_dense=dense_ff), ffn(dense_ff), x)}
  if _SHAPE_BOUND.value:
    # The experts' matmul shapes without routing: tokens * top_k rows through
    # one d_ff-wide FFN. Same FLOPs as the dense row; the gap between the two
    # is what narrower matmuls cost on this backend, a floor for every MoE row.
    variants["dense_expert_shape"] = (
        dict(dispatch="none", backend="xla", capacity_factor=None, d_ff_dense=shape["d_ff"]),
        ffn(shape["d_ff"]), jnp.tile(x, (shape["top_k"], 1)))
  for name in _VARIANTS.value:
    dispatch, backend, uses_capacity = VARIANTS[name]
    cf = _CAPACITY.value if uses_capacity else None
    router = dataclasses.replace(base.router, capacity_factor=cf)
    cfg = dataclasses.replace(base, router=router, dispatch=dispatch, gmm_backend=backend)
    capacity = router.capacity(shape["tokens"]) or shape["tokens"]
    if dispatch == "einsum" and shape["tokens"] * shape["experts"] * capacity > MAX_ONE_HOT:
      print(f"  {name}: skipped, its one-hot tensor would hold "
            f"{shape['tokens'] * shape['experts'] * capacity:.2e} elements")
      continue
    # Capacity buckets always run as one batched einsum (moejax/experts.py).
    used = resolve_backend(backend) if dispatch == "dropless" else "batched_einsum"
    variants[name] = (dict(dispatch=dispatch, backend=used, capacity_factor=cf), MoELayer(cfg), x)

  jobs = {}
  for name, (_, layer, inputs) in variants.items():
    for pass_name, job in _layer_jobs(layer, inputs).items():
      jobs[name, pass_name] = job
  ms = _round_robin_ms(jobs, _REPEATS.value, _WARMUP.value)
  rows = [dict(name=name, **fields, fwd_ms=ms[name, "fwd"], fwd_bwd_ms=ms[name, "fwd_bwd"],
               ratio_vs_dense=ms[name, "fwd_bwd"] / ms["dense", "fwd_bwd"],
               fwd_ratio_vs_dense=ms[name, "fwd"] / ms["dense", "fwd"], **common)
          for name, (fields, _, _) in variants.items()]

  header = f"{'variant':22s} {'cap.f':>6s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} " \
           f"{'fwd x dense':>11s} {'fwd+bwd x dense':>15s}"
  print(header)
  print("-" * len(header))
  for r in rows:
    cf = "-" if r["capacity_factor"] is None else f"{r['capacity_factor']:.2f}"
    print(f"{r['name']:22s} {cf:>6s} {r['fwd_ms']:9.2f} {r['fwd_bwd_ms']:11.2f} "
          f"{r['fwd_ratio_vs_dense']:11.2f} {r['ratio_vs_dense']:15.2f}")
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "w") as f:
      json.dump(rows, f, indent=1)
    print(f"wrote {_JSON_OUT.value}")


if __name__ == "__main__":
  run(main)
