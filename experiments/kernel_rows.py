"""The grouped-matmul kernel benchmark of experiments/benchmark.py --kernels.

The routed experts' first matmul at a preset: lhs [tokens * top_k, d_model]
sorted into `experts` groups (sizes from uniformly random expert choices, so
groups are unequal and straddle row blocks) times rhs [experts, d_model, d_ff].
Each gmm backend is timed forward and forward + backward (d_lhs and d_rhs),
against one dense [tokens * top_k, d_model] x [d_model, d_ff] matmul of the
same FLOPs. TFLOP/s counts 2·M·K·N per pass (3x that for fwd+bwd).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.grouped_matmul import gmm, resolve_backend
from timing import round_robin_ms


def _jobs(fn, lhs, rhs):
  """{'fwd', 'fwd_bwd'} jobs of fn(lhs, rhs) -> [M, N]."""
  # A non-constant cotangent (y itself): with sum(y) XLA skips the forward
  # matmul and turns the dense backward into reductions (see benchmark.py).
  loss = lambda a, b: 0.5 * jnp.sum(jnp.square(fn(a, b).astype(jnp.float32)))
  return {"fwd": (jax.jit(fn), (lhs, rhs)),
          "fwd_bwd": (jax.jit(jax.grad(loss, argnums=(0, 1))), (lhs, rhs))}


def kernel_rows(shape: dict, dtype: str, backends, block_size: int, repeats: int,
                warmup: int, common: dict):
  """Rows for the dense baseline and each backend in `backends`."""
  m, k, n, g = shape["tokens"] * shape["top_k"], shape["d_model"], shape["d_ff"], shape["experts"]
  keys = jax.random.split(jax.random.key(0), 3)
  lhs = jax.random.normal(keys[0], (m, k), dtype)
  rhs = (jax.random.normal(keys[1], (g, k, n)) / k**0.5).astype(dtype)
  sizes = jnp.bincount(jax.random.randint(keys[2], (m,), 0, g), length=g).astype(jnp.int32)
  jobs = {("dense", p): j for p, j in _jobs(lambda a, b: a @ b[0], lhs, rhs).items()}
  for backend in backends:
    fn = lambda a, b, backend=backend: gmm(a, b, sizes, backend, block_size)
    jobs.update({(backend, p): j for p, j in _jobs(fn, lhs, rhs).items()})
  ms = round_robin_ms(jobs, repeats, warmup)
  flops = 2 * m * k * n
  rows = []
  for name in ["dense"] + list(backends):
    used = "xla_dot" if name == "dense" else resolve_backend(name)
    rows.append(dict(
        name=name, backend=used, gmm_rows=m, gmm_k=k, gmm_n=n, groups=g,
        block_size=block_size, fwd_ms=ms[name, "fwd"], fwd_bwd_ms=ms[name, "fwd_bwd"],
        fwd_tflops=flops / ms[name, "fwd"] / 1e9,
        fwd_bwd_tflops=3 * flops / ms[name, "fwd_bwd"] / 1e9,
        fwd_ratio_vs_dense=ms[name, "fwd"] / ms["dense", "fwd"],
        ratio_vs_dense=ms[name, "fwd_bwd"] / ms["dense", "fwd_bwd"], **common))
  header = (f"{'backend':12s} {'fwd ms':>9s} {'fwd TFLOP/s':>12s} {'fwd+bwd ms':>11s} "
            f"{'fwd+bwd TFLOP/s':>16s} {'fwd x dense':>12s} {'fwd+bwd x dense':>16s}")
  print(f"grouped matmul [{m}, {k}] x [{g}, {k}, {n}], group sizes {sizes.tolist()}")
  print(header)
  print("-" * len(header))
  for r in rows:
    print(f"{r['name']:12s} {r['fwd_ms']:9.2f} {r['fwd_tflops']:12.3f} {r['fwd_bwd_ms']:11.2f} "
          f"{r['fwd_bwd_tflops']:16.3f} {r['fwd_ratio_vs_dense']:12.2f} "
          f"{r['ratio_vs_dense']:16.2f}")
  return rows
