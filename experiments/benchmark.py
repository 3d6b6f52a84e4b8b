"""Times the MoE layer for each dispatch strategy / grouped-matmul backend
against a dense FFN of equal active FLOPs, in one process.

  python experiments/benchmark.py --preset=default --json_out=/tmp/bench.json

Presets: default and fine_grained (CPU-sized), tiny (smoke tests), large and
large_fine_grained (32K tokens at released models' widths: for GPU / TPU;
experiments/accelerator_report.py runs them all). After the table,
--phases breaks a variant's time into routing, dispatch, experts and combine
(experiments/phase_rows.py); --trace_dir writes a jax.profiler trace.

The dense baseline has d_ff = top_k * d_ff_expert (same active FLOPs per
token, router excluded). Every variant is jitted and warmed up, then all are
timed in turn for `--repeats` rounds (so drifts of the machine hit all rows
alike); the median is reported for the forward pass and for
forward + backward (grads w.r.t. params and input). ratio_vs_dense =
variant time / dense time for the same pass. Next to the times, each row has
XLA's temporary bytes of the compiled pass (memory_analysis(): activations
and scratch, not parameters, inputs or outputs) and temp_ratio_vs_dense, the
forward + backward bytes over the dense FFN's. The 'dense_expert_shape' row runs
the experts' matmul shapes ([tokens * top_k, d] x [d, d_ff]) with no routing:
the part of any MoE row's ratio that comes from narrower matmuls, not from
routing or dispatch. 'rows/tok' counts the token-expert pairs that reach an
FFN on the benchmark input (dropped tokens and MoE++ zero-computation choices
excluded) and 'FFN GFLOP' the forward FFN work they cost: the
dropless_moe_plus_plus variant (same 8 FFN experts and top-k, plus 1 zero, 1
copy and 2 constant experts) shows what its zero-computation experts save.

Expert-parallel mode (--expert_parallel=N): the same layer (capacity 'gather'
with router.routing_groups=N, and 'dropless' with the padded exchange and,
off CPU, the ragged one) on one device and on a mesh
with an N-way expert axis (tokens split N ways, E/N experts per device,
all_to_all between), timed in one process; ratio_vs_one_device = mesh time /
one-device time. On CPU the N devices are fake (--xla_force_host_platform_
device_count, set by the binary) and share the same cores, so the ratio is a
baseline for GPU/TPU runs, not a speed-up.

Train-step mode (--train_config=FILE): one optimizer step of an experiment
config on random batches: step time, model TFLOP/s and MFU
(experiments/train_step_rows.py).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
from absl import flags

from moejax import DenseFFNLayer, MoEConfig, MoELayer, RouterConfig
from moejax.cli import fail, run, write_rows
from moejax.grouped_matmul import BACKENDS, resolve_backend
from kernel_rows import kernel_rows
from phase_rows import phase_rows
from timing import round_robin_ms, temp_bytes

PRESETS = {
    # The shape from issue 5: tokens=4096, d=512, d_ff=1024, 8 experts, top-2.
    "default": dict(tokens=4096, d_model=512, d_ff=1024, experts=8, top_k=2),
    # Fine-grained MoE (DeepSeek-style): many small experts.
    "fine_grained": dict(tokens=4096, d_model=512, d_ff=128, experts=64, top_k=8),
    # Seconds on a laptop: for smoke tests.
    "tiny": dict(tokens=256, d_model=64, d_ff=128, experts=8, top_k=2),
    # Accelerator scale (minutes per step on a CPU): a training step's tokens
    # and the widths of released MoEs. Mixtral-like: few wide experts.
    "large": dict(tokens=32768, d_model=2048, d_ff=5632, experts=8, top_k=2),
    # Qwen-MoE / DeepSeek-like: many narrow experts.
    "large_fine_grained": dict(tokens=32768, d_model=2048, d_ff=1408, experts=64, top_k=6),
}
# name -> (dispatch, gmm backend, uses capacity, expert quantization)
VARIANTS = {
    "einsum": ("einsum", "auto", True, None),
    "gather": ("gather", "auto", True, None),
    "dropless_blocked": ("dropless", "blocked", False, None),
    # The expert loop reads token rows and writes outputs by index (no grouped copy).
    "dropless_gathered": ("dropless", "gathered", False, None),
    "dropless_ragged_dot": ("dropless", "ragged_dot", False, None),
    # tokamax's kernels on GPU / TPU (XLA's ragged dot on CPU); needs tokamax.
    "dropless_tokamax": ("dropless", "tokamax", False, None),
    "dropless_einsum": ("dropless", "einsum", False, None),
    # Pallas gmm + fused permute/unpermute; interpret mode (slow) on CPU.
    "dropless_pallas": ("dropless", "pallas", False, None),
    # int8 / int4 expert weights (experiments/compress.py), dequantized per call:
    # inference only, so forward only.
    "dropless_int8": ("dropless", "blocked", False, "int8"),
    "dropless_int4": ("dropless", "blocked", False, "int4"),
    # MoE++: + 1 zero, 1 copy and 2 constant experts (ROUTER_OVERRIDES).
    "dropless_moe_plus_plus": ("dropless", "blocked", False, None),
}
# Variants whose router differs from the others' (same E FFN experts, same top_k):
# MoE++ adds 1 zero, 1 copy and 2 constant experts, whose choices skip the FFN.
ROUTER_OVERRIDES = {
    "dropless_moe_plus_plus": dict(num_null_experts=1, num_copy_experts=1,
                                   num_constant_experts=2),
}
# The one-hot einsum materialises [tokens, experts, capacity]; past this many
# elements it is skipped rather than allowed to exhaust memory.
MAX_ONE_HOT = 2e8

_PRESET = flags.DEFINE_enum("preset", "default", list(PRESETS), "Shape preset.")
_TOKENS = flags.DEFINE_integer("tokens", None, "Tokens per step (overrides the preset).",
                                lower_bound=1)
_D_MODEL = flags.DEFINE_integer("d_model", None, "Model width (overrides the preset).",
                                 lower_bound=1)
_D_FF = flags.DEFINE_integer("d_ff", None, "Expert hidden width (overrides the preset).",
                              lower_bound=1)
_EXPERTS = flags.DEFINE_integer("experts", None, "Routed experts (overrides the preset).",
                                 lower_bound=1)
_TOP_K = flags.DEFINE_integer("top_k", None, "Experts per token (overrides the preset).",
                               lower_bound=1)
_CAPACITY = flags.DEFINE_float("capacity_factor", 1.25, "Capacity factor of capacity variants.")
_ACTIVATION = flags.DEFINE_enum("activation", "gelu", ["relu", "gelu", "silu", "swiglu", "geglu"],
                                "Expert and dense FFN activation.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_VARIANTS = flags.DEFINE_list("variants", "einsum,gather,dropless_blocked,dropless_ragged_dot",
                              f"Which MoE variants to time; any of {', '.join(VARIANTS)}.")
_SHAPE_BOUND = flags.DEFINE_bool(
    "shape_bound", True, "Also time tokens*top_k rows through one d_ff-wide dense FFN: the "
    "experts' matmul shapes with no routing, a floor for the MoE rows.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats per pass (median reported).",
                                 lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls after compilation.", lower_bound=0)
_MEMORY_ONLY = flags.DEFINE_bool(
    "memory_only", False, "Compile every row and report its temporary bytes without timing "
    "(no run: any preset fits, and the numbers do not depend on the machine's load).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the rows as JSON here.")
_EXPERT_PARALLEL = flags.DEFINE_integer(
    "expert_parallel", 0, "N > 1: time the layer expert-parallel over N devices vs one device "
    "(on CPU, N fake devices are created). 0 = the dispatch comparison.", lower_bound=0)
_KERNELS = flags.DEFINE_bool(
    "kernels", False, "Time the grouped matmul alone (forward, forward + backward) per "
    "--kernel_backends against a dense matmul of equal FLOPs, instead of the MoE layer.")
_KERNEL_BACKENDS = flags.DEFINE_list(
    "kernel_backends", None, "gmm backends for --kernels; any of "
    f"{', '.join(b for b in BACKENDS if b != 'auto')}. Default: blocked,ragged_dot,pallas "
    "(on CPU without pallas: it runs in interpret mode there, not a kernel timing).")
_BLOCK_SIZE = flags.DEFINE_integer(
    "gmm_block_size", 128, "Row block of the 'blocked' and 'pallas' backends "
    "(MoEConfig.gmm_block_size; a power of two >= 16 for pallas).", lower_bound=1)
_PHASES = flags.DEFINE_list(
    "phases", None, "Variants (of --variants) to break down into routing, dispatch, experts "
    "and combine time (experiments/phase_rows.py); empty for none. Default: dropless_blocked "
    "when it is one of --variants.")
_TRACE_DIR = flags.DEFINE_string(
    "trace_dir", None, "Write a jax.profiler trace (TensorBoard / Perfetto) of one forward + "
    "backward call of every row here, after the timing.")
_TRAIN_CONFIG = flags.DEFINE_string(
    "train_config", None, "Time one optimizer step of this experiment config file on random "
    "batches (step time, model TFLOP/s, MFU: experiments/train_step_rows.py) instead of the "
    "layer.")
_TRAIN_SET = flags.DEFINE_multi_string(
    "train_set", [], "'field=value' override of --train_config, repeatable, e.g. "
    "--train_set=data.batch_size=8.")
_PEAK_TFLOPS = flags.DEFINE_float(
    "peak_tflops", None, "Dense peak TFLOP/s of one device, for MFU (default: the table in "
    "experiments/train_step_rows.py by device kind; unknown devices get no MFU).")
# Expert-parallel rows: name -> (dispatch, gmm backend, uses capacity, exchange).
EP_VARIANTS = {
    "gather": ("gather", "auto", True, "auto"),
    "dropless_padded": ("dropless", "auto", False, "padded"),
    # jax.lax.ragged_all_to_all: GPU / TPU only (XLA:CPU lacks it).
    "dropless_ragged": ("dropless", "auto", False, "ragged"),
}


def _layer_jobs(layer, x, variables=None):
  """{'fwd': (fn, args), 'fwd_bwd': (fn, args)} for layer.apply at input x."""
  if variables is None:
    variables = layer.init(jax.random.key(0), x)
  fwd = jax.jit(lambda v, x: layer.apply(v, x)[0])

  def loss(params, x):
    # Half the squared norm: its cotangent is y itself, a dense tensor, as a
    # training step's is. With sum(y) the cotangent is a constant and XLA drops
    # the dense FFN's output matmul from the forward pass (its result is not
    # needed), which made the dense row ~13% too fast and every ratio too high.
    y, aux = layer.apply({**variables, "params": params}, x)
    return 0.5 * jnp.sum(jnp.square(y.astype(jnp.float32))) + 1e-2 * aux.losses["load_balance"]

  fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return {"fwd": (fwd, (variables, x)), "fwd_bwd": (fwd_bwd, (variables["params"], x))}


def _quantized_variables(layer, x):
  """Variables of a quantized-expert layer: the float layer's, with the expert
  matrices quantized as experiments/compress.py does."""
  from moejax.compress.quantize import quantize_bank
  cfg = layer.config
  float_layer = MoELayer(dataclasses.replace(cfg, expert_quantization=None))
  variables = float_layer.init(jax.random.key(0), x)
  experts = quantize_bank(variables["params"]["experts"], cfg.expert_quantization,
                          cfg.expert_quantization_group)
  return {**variables, "params": {**variables["params"], "experts": experts}}


def _sharded_jobs(layer, x, mesh):
  """_layer_jobs with params placed by the sharding rules and x split over
  the batch axes, traced and run under `mesh`."""
  from moejax.parallel import batch_sharding, tree_shardings

  with jax.set_mesh(mesh):
    variables = layer.init(jax.random.key(0), x)
    variables = jax.device_put(variables, tree_shardings(variables, mesh))
    jobs = _layer_jobs(layer, jax.device_put(x, batch_sharding(mesh)), variables)

  def in_mesh(fn):
    def call(*args):
      with jax.set_mesh(mesh):
        return fn(*args)
    return call
  return {name: (in_mesh(fn), args) for name, (fn, args) in jobs.items()}


def _expert_parallel_rows(base: MoEConfig, shape, x, common, n: int):
  """Rows of the expert-parallel mode: each EP_VARIANTS layer on one device
  and on an n-way expert mesh (the ragged exchange only off CPU)."""
  from moejax.parallel import MeshConfig, make_mesh
  if jax.device_count() < n:
    fail(2, f"--expert_parallel={n} is invalid: only {jax.device_count()} devices")
  if shape["experts"] % n or shape["tokens"] % n:
    fail(2, f"--expert_parallel={n} is invalid: it must divide experts="
             f"{shape['experts']} and tokens={shape['tokens']}")
  mesh = make_mesh(MeshConfig(data=1, expert=n), jax.devices()[:n])
  one = jax.devices()[0]
  jobs, fields = {}, {}
  names = [v for v in EP_VARIANTS if not (v == "dropless_ragged" and one.platform == "cpu")]
  for name in names:
    dispatch, backend, uses_capacity, exchange = EP_VARIANTS[name]
    router = dataclasses.replace(base.router, routing_groups=n,
                                 capacity_factor=_CAPACITY.value if uses_capacity else None)
    layer = MoELayer(dataclasses.replace(base, router=router, dispatch=dispatch,
                                         gmm_backend=backend, ep_exchange=exchange))
    fields[name] = dict(dispatch=dispatch, capacity_factor=router.capacity_factor,
                        routing_groups=n, expert_parallel=n, backend=resolve_backend(backend),
                        exchange=exchange)
    for pass_name, job in _layer_jobs(layer, jax.device_put(x, one)).items():
      jobs[name, "one_device", pass_name] = job
    for pass_name, job in _sharded_jobs(layer, x, mesh).items():
      jobs[name, "mesh", pass_name] = job
  ms = round_robin_ms(jobs, _REPEATS.value, _WARMUP.value)
  rows = []
  for name in names:
    for where in ("one_device", "mesh"):
      rows.append(dict(name=name, placement=where, **fields[name],
                       fwd_ms=ms[name, where, "fwd"], fwd_bwd_ms=ms[name, where, "fwd_bwd"],
                       ratio_vs_one_device=ms[name, where, "fwd_bwd"]
                       / ms[name, "one_device", "fwd_bwd"], **common))
  header = f"{'variant':18s} {'placement':>12s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} " \
           f"{'fwd+bwd x one device':>21s}"
  print(header)
  print("-" * len(header))
  for r in rows:
    where = r["placement"] if r["placement"] == "one_device" else f"expert={n}"
    print(f"{r['name']:18s} {where:>12s} {r['fwd_ms']:9.2f} {r['fwd_bwd_ms']:11.2f} "
          f"{r['ratio_vs_one_device']:21.2f}")
  return rows


def main(argv):
  del argv
  if _EXPERT_PARALLEL.value > 1 and "device_count" not in os.environ.get("XLA_FLAGS", ""):
    # Read when the CPU backend starts, which has not happened yet; ignored by GPU/TPU.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={_EXPERT_PARALLEL.value}")
  shape = dict(PRESETS[_PRESET.value])
  for key, flag in (("tokens", _TOKENS), ("d_model", _D_MODEL), ("d_ff", _D_FF),
                    ("experts", _EXPERTS), ("top_k", _TOP_K)):
    if flag.value is not None:
      shape[key] = flag.value
  unknown = [v for v in _VARIANTS.value if v not in VARIANTS]
  if unknown:
    fail(2, f"--variants={unknown[0]!r} is invalid: valid values are "
             + ", ".join(VARIANTS))
  phases = _PHASES.value
  if phases is None:
    phases = [v for v in ("dropless_blocked",) if v in _VARIANTS.value]
  unknown = [v for v in phases if v not in _VARIANTS.value or VARIANTS[v][3]]
  if unknown:
    fail(2, f"--phases={unknown[0]!r} is invalid: it must be one of --variants ("
             + ", ".join(_VARIANTS.value) + ") and not quantized")
  kernel_backends = _KERNEL_BACKENDS.value
  if kernel_backends is None:
    kernel_backends = ["blocked", "ragged_dot"] + (["pallas"] if jax.default_backend() != "cpu"
                                                   else [])
  bad = [b for b in kernel_backends if b not in BACKENDS or b == "auto"]
  if bad:
    fail(2, f"--kernel_backends={bad[0]!r} is invalid: valid values are "
             + ", ".join(b for b in BACKENDS if b != "auto"))
  try:
    base = MoEConfig(router=RouterConfig(num_experts=shape["experts"], top_k=shape["top_k"],
                                         normalize_top_k=True),
                     d_model=shape["d_model"], d_ff=shape["d_ff"],
                     activation=_ACTIVATION.value, dtype=_DTYPE.value,
                     gmm_block_size=_BLOCK_SIZE.value)
    RouterConfig(capacity_factor=_CAPACITY.value)
    if "dropless_pallas" in _VARIANTS.value or "pallas" in kernel_backends:
      MoEConfig(gmm_backend="pallas", gmm_block_size=_BLOCK_SIZE.value)
  except ValueError as err:
    fail(2, f"{err}")
  x = jax.random.normal(jax.random.key(1), (shape["tokens"], shape["d_model"]),
                        jnp.dtype(_DTYPE.value))
  device = jax.devices()[0]
  what = (f"--train_config={_TRAIN_CONFIG.value}" if _TRAIN_CONFIG.value
          else f"{_DTYPE.value}: {shape}")
  print(f"moejax benchmark on {jax.device_count()} x {device.platform} ({device.device_kind}), "
        f"jax {jax.__version__}, {what}, repeats={_REPEATS.value}")

  common = dict(tokens=shape["tokens"], d_model=shape["d_model"], d_ff=shape["d_ff"],
                experts=shape["experts"], top_k=shape["top_k"], dtype=_DTYPE.value,
                activation=_ACTIVATION.value, platform=device.platform,
                device_kind=device.device_kind)
  if _EXPERT_PARALLEL.value > 1:
    _write_json(_expert_parallel_rows(base, shape, x, common, _EXPERT_PARALLEL.value))
    return
  if _TRAIN_CONFIG.value:
    _write_json(_train_step(common))
    return
  if _KERNELS.value:
    if "pallas" in kernel_backends and device.platform == "cpu":
      print("note: pallas runs in interpret mode on CPU: its times measure the interpreter, "
            "not a kernel")
    _write_json(kernel_rows(shape, jnp.dtype(_DTYPE.value), kernel_backends, _BLOCK_SIZE.value,
                            _REPEATS.value, _WARMUP.value, common))
    return
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
    dispatch, backend, uses_capacity, quantization = VARIANTS[name]
    cf = _CAPACITY.value if uses_capacity else None
    router = dataclasses.replace(base.router, capacity_factor=cf,
                                 **ROUTER_OVERRIDES.get(name, {}))
    cfg = dataclasses.replace(base, router=router, dispatch=dispatch, gmm_backend=backend,
                              expert_quantization=quantization)
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
    quantization = getattr(layer, "config", None) and layer.config.expert_quantization
    if quantization:
      jobs[name, "fwd"] = _layer_jobs(layer, inputs, _quantized_variables(layer, inputs))["fwd"]
      continue
    for pass_name, job in _layer_jobs(layer, inputs).items():
      jobs[name, pass_name] = job
  if _MEMORY_ONLY.value:   # compile only: no timing, no run
    ms = {key: None for key in jobs}
  else:
    ms = round_robin_ms(jobs, _REPEATS.value, _WARMUP.value)
  # XLA's temporary bytes of each compiled pass (deterministic: unaffected by load).
  mem = {key: temp_bytes(fn, args) for key, (fn, args) in jobs.items()}
  ratio = lambda a, b: None if a is None or not b else a / b
  rows = []
  for name, (fields, layer, inputs) in variants.items():
    fwd_bwd = ms.get((name, "fwd_bwd"))
    rows.append(dict(name=name, **fields, fwd_ms=ms[name, "fwd"], fwd_bwd_ms=fwd_bwd,
                     ratio_vs_dense=ratio(fwd_bwd, ms["dense", "fwd_bwd"]),
                     fwd_ratio_vs_dense=ratio(ms[name, "fwd"], ms["dense", "fwd"]),
                     fwd_temp_bytes=mem[name, "fwd"],
                     fwd_bwd_temp_bytes=mem.get((name, "fwd_bwd")),
                     temp_ratio_vs_dense=ratio(mem.get((name, "fwd_bwd")),
                                               mem["dense", "fwd_bwd"]),
                     **_expert_work(name, layer, inputs, shape), **common))

  header = f"{'variant':22s} {'cap.f':>6s} {'rows/tok':>8s} {'FFN GFLOP':>9s} {'fwd ms':>9s} " \
           f"{'fwd+bwd ms':>11s} {'fwd x dense':>11s} {'fwd+bwd x dense':>15s} " \
           f"{'fwd+bwd temp MiB':>16s} {'temp x dense':>12s}"
  print(header)
  print("-" * len(header))
  for r in rows:
    cf = "-" if r["capacity_factor"] is None else f"{r['capacity_factor']:.2f}"
    both = lambda v, width: f"{'-':>{width}s}" if v is None else f"{v:{width}.2f}"
    mib = None if r["fwd_bwd_temp_bytes"] is None else r["fwd_bwd_temp_bytes"] / 2**20
    print(f"{r['name']:22s} {cf:>6s} {r['ffn_rows_per_token']:8.2f} {r['ffn_gflop']:9.2f} "
          f"{both(r['fwd_ms'], 9)} {both(r['fwd_bwd_ms'], 11)} "
          f"{both(r['fwd_ratio_vs_dense'], 11)} {both(r['ratio_vs_dense'], 15)} "
          f"{both(mib, 16)} {both(r['temp_ratio_vs_dense'], 12)}")
  for name in ([] if _MEMORY_ONLY.value else phases):
    if name in variants:
      print()
      rows += phase_rows(name, variants[name][1], x, _REPEATS.value, _WARMUP.value, common)
  if _TRACE_DIR.value:
    _trace(jobs, _TRACE_DIR.value)
  _write_json(rows)


def _expert_work(name, layer, x, shape) -> dict:
  """FFN rows per token (token-expert pairs that reach an FFN, measured on x:
  drops and zero-computation choices excluded) and the forward FFN GFLOP."""
  matrices = 3 if _ACTIVATION.value in ("swiglu", "geglu") else 2
  if name.startswith("dense"):
    width = layer.d_ff
    rows_per_token = x.shape[0] / shape["tokens"]
  else:
    width = shape["d_ff"]
    variables = layer.init(jax.random.key(0), x)
    load = jax.jit(lambda v, x: layer.apply(v, x)[1].metrics["tokens_per_expert"])(variables, x)
    rows_per_token = float(load.sum()) / shape["tokens"]
  flops = 2 * matrices * rows_per_token * shape["tokens"] * shape["d_model"] * width
  return {"ffn_rows_per_token": rows_per_token, "ffn_gflop": flops / 1e9}


def _trace(jobs, trace_dir: str) -> None:
  """One call of every fwd_bwd job inside a jax.profiler trace."""
  with jax.profiler.trace(trace_dir):
    for (name, pass_name), (fn, args) in jobs.items():
      if pass_name == "fwd_bwd":
        with jax.profiler.TraceAnnotation(name):
          jax.block_until_ready(fn(*args))
  print(f"wrote a profiler trace to {trace_dir}")


def _train_step(common):
  """Rows of --train_config: the config file with --train_set applied."""
  from moejax.studies.comparison import apply_override, load_config_file
  from moejax.train.config import experiment_from_config
  from train_step_rows import train_step_rows
  try:
    config = load_config_file(_TRAIN_CONFIG.value)
    for assignment in _TRAIN_SET.value:
      apply_override(config, assignment)
    exp = experiment_from_config(config)
  except ValueError as err:
    fail(2, f"--train_config={_TRAIN_CONFIG.value}: {err}")
  common = {k: v for k, v in common.items() if k in ("dtype", "platform", "device_kind")}
  common["dtype"] = exp.model.dtype
  name = os.path.basename(_TRAIN_CONFIG.value)[:-3]
  return train_step_rows(name, exp, _REPEATS.value, _WARMUP.value, _PEAK_TFLOPS.value, common)


def _write_json(rows) -> None:
  write_rows(_JSON_OUT.value, rows)


if __name__ == "__main__":
  run(main)
