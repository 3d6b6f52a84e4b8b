"""Times the MoE layer for each dispatch strategy / grouped-matmul backend
against a dense FFN of equal active FLOPs, in one process.

  python experiments/benchmark.py --preset=default --json_out=/tmp/bench.json

The dense baseline has d_ff = top_k * d_ff_expert (same active FLOPs per
token, router excluded). Each variant is jitted, warmed up, then timed
`--repeats` times; the median is reported for the forward pass and for
forward + backward (grads w.r.t. params and input). ratio_vs_dense =
variant time / dense time for the same pass.
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
    "einsum": ("einsum", "ragged_dot", True),
    "gather": ("gather", "ragged_dot", True),
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
_VARIANTS = flags.DEFINE_list("variants", "einsum,gather,dropless_ragged_dot",
                              f"Which MoE variants to time; any of {', '.join(VARIANTS)}.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats per pass (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls after compilation.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the rows as JSON here.")


def _median_ms(fn, args, repeats, warmup):
  jax.block_until_ready(fn(*args))  # compile
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def _time_layer(layer, x, repeats, warmup):
  """(fwd_ms, fwd_bwd_ms) of layer.apply at input x."""
  variables = layer.init(jax.random.key(0), x)
  fwd = jax.jit(lambda v, x: layer.apply(v, x)[0])

  def loss(params, x):
    y, aux = layer.apply({**variables, "params": params}, x)
    return jnp.sum(y.astype(jnp.float32)) + 1e-2 * aux.losses["load_balance"]

  fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return (_median_ms(fwd, (variables, x), repeats, warmup),
          _median_ms(fwd_bwd, (variables["params"], x), repeats, warmup))


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

  dense_ff = shape["top_k"] * shape["d_ff"]
  dense = DenseFFNLayer(shape["d_model"], dense_ff, _ACTIVATION.value, dtype=_DTYPE.value)
  dense_fwd, dense_fb = _time_layer(dense, x, _REPEATS.value, _WARMUP.value)
  common = dict(tokens=shape["tokens"], d_model=shape["d_model"], d_ff=shape["d_ff"],
                experts=shape["experts"], top_k=shape["top_k"], dtype=_DTYPE.value,
                activation=_ACTIVATION.value, platform=device.platform,
                device_kind=device.device_kind)
  rows = [dict(name="dense", dispatch="none", backend="xla", capacity_factor=None,
               fwd_ms=dense_fwd, fwd_bwd_ms=dense_fb, ratio_vs_dense=1.0,
               fwd_ratio_vs_dense=1.0, **common, d_ff_dense=dense_ff)]
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
    fwd, fb = _time_layer(MoELayer(cfg), x, _REPEATS.value, _WARMUP.value)
    rows.append(dict(name=name, dispatch=dispatch, backend=backend, capacity_factor=cf,
                     fwd_ms=fwd, fwd_bwd_ms=fb, ratio_vs_dense=fb / dense_fb,
                     fwd_ratio_vs_dense=fwd / dense_fwd, **common))

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
