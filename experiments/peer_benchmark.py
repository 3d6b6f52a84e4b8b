"""PEER's scaling: time and memory of product-key retrieval and of the whole
PEER layer as the expert pool grows, against brute-force scoring of every
expert.

  python experiments/peer_benchmark.py --json_out=/tmp/peer.json

For each N of --experts (perfect squares; default 16K, 65K, 262K, 1M) at a
small d_model, one process measures:

  routing        product-key top-k (moejax/routing/product_keys.py): 2 sqrt(N)
                 sub-key scores and k^2 candidates per token and head
  brute force    scores of all N keys per token and head, then top-k
  layer          the PEER layer (router 'product_key', single-neuron experts,
                 dispatch 'retrieval'), forward and forward + backward
  experts        the experts alone (moejax/dispatch/retrieval.py), forward +
                 backward, by each method: 'gather' (the chosen experts'
                 weights moved to each token) and 'dense' (every expert
                 scored, then the chosen kept; run where its [T, N] hidden
                 units fit --brute_force_max_gb). The layer takes 'dense' at
                 N <= heads * top_k * DENSE_MAX_EXPERTS_PER_CHOICE.

Memory is XLA's compiled temporary buffer size (memory_analysis), so the
brute-force row is sized without running it; it is timed only when that
fits --brute_force_max_gb. Times are medians over --repeats rounds
(experiments/timing.py). Retrieval memory grows with sqrt(N), brute force
with N; the layer's backward writes gradients for all N experts, so its time
and memory also grow with N, like any dense optimizer step over the pool.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from absl import flags

from moejax import MoEConfig, MoELayer, RouterConfig
from moejax.cli import fail, run, write_rows
from moejax.dispatch.retrieval import retrieval_ffn
from moejax.routing.product_keys import ProductKeyOptions, product_key_route, product_key_top_k
from timing import round_robin_ms

_EXPERTS = flags.DEFINE_list("experts", ["16384", "65536", "262144", "1048576"],
                             "Expert pool sizes N (perfect squares).")
_D_MODEL = flags.DEFINE_integer("d_model", 64, "Token width.", lower_bound=2)
_TOKENS = flags.DEFINE_integer("tokens", 1024, "Tokens per call.", lower_bound=1)
_HEADS = flags.DEFINE_integer("heads", 8, "Retrieval heads.", lower_bound=1)
_TOP_K = flags.DEFINE_integer("top_k", 16, "Experts per head.", lower_bound=1)
_KEY_DIM = flags.DEFINE_integer("key_dim", 32, "Query / key width per head (even).",
                                lower_bound=2)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed calls before timing.", lower_bound=0)
_BRUTE_MAX_GB = flags.DEFINE_float("brute_force_max_gb", 4.0, "Time brute force only when "
                                   "its temporary buffers fit this many GB.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the rows as JSON here.")


def _brute_force_top_k(queries, sub_keys, k):
  """Scores every one of the n^2 experts: [T, H, N] — what product keys avoid."""
  num_tokens, heads, key_dim = queries.shape
  q = queries.reshape(num_tokens, heads, 2, key_dim // 2)
  first = jnp.einsum("thd,hnd->thn", q[:, :, 0], sub_keys[:, 0])
  second = jnp.einsum("thd,hnd->thn", q[:, :, 1], sub_keys[:, 1])
  scores = (first[..., :, None] + second[..., None, :]).reshape(num_tokens, heads, -1)
  return jax.lax.top_k(scores, k)


def _temp_mb(fn, *args) -> float:
  return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes / 2**20


def _row(num_experts: int) -> dict:
  n = math.isqrt(num_experts)
  d, heads, k, key_dim = _D_MODEL.value, _HEADS.value, _TOP_K.value, _KEY_DIM.value
  keys = jax.random.split(jax.random.key(num_experts), 3)
  queries = jax.random.normal(keys[0], (_TOKENS.value, heads, key_dim))
  sub_keys = jax.random.normal(keys[1], (heads, 2, n, key_dim // 2))
  config = MoEConfig(router=RouterConfig(name="product_key", num_experts=num_experts, top_k=k,
                                         options=ProductKeyOptions(heads=heads,
                                                                   key_dim=key_dim)),
                     d_model=d, d_ff=1, activation="gelu", dispatch="retrieval")
  layer = MoELayer(config)
  x = jax.random.normal(keys[2], (_TOKENS.value, d))
  params = jax.jit(layer.init)(jax.random.key(0), x)["params"]
  routing = jax.jit(lambda q, s: product_key_top_k(q, s, k))
  brute = jax.jit(lambda q, s: _brute_force_top_k(q, s, k))
  forward = jax.jit(lambda p, x: layer.apply({"params": p}, x)[0])
  backward = jax.jit(jax.grad(lambda p, x: jnp.sum(layer.apply({"params": p}, x)[0]),
                              argnums=(0, 1)))
  row = {"experts": num_experts, "sub_keys_per_half": n, "tokens": _TOKENS.value,
         "d_model": d, "heads": heads, "top_k": k,
         "expert_param_mb": num_experts * 2 * d * 4 / 2**20,
         "routing_temp_mb": _temp_mb(routing, queries, sub_keys),
         "brute_force_temp_mb": _temp_mb(brute, queries, sub_keys),
         "layer_fwd_bwd_temp_mb": _temp_mb(backward, params, x)}
  jobs = {"routing": (routing, (queries, sub_keys)), "layer_fwd": (forward, (params, x)),
          "layer_fwd_bwd": (backward, (params, x))}
  if row["brute_force_temp_mb"] <= _BRUTE_MAX_GB.value * 1024:
    jobs["brute_force"] = (brute, (queries, sub_keys))
  # The experts alone, on the routing of these queries (k = heads * top_k per token).
  expert_routing = product_key_route(queries.reshape(_TOKENS.value, -1), sub_keys,
                                     config.router).routing
  methods = ["gather"]
  if _TOKENS.value * num_experts * 4 <= _BRUTE_MAX_GB.value * 2**30:
    methods.append("dense")
  for method in methods:
    ffn = lambda p, x, r, method=method: jnp.sum(retrieval_ffn(x, r, p, "gelu", method) ** 2)
    jobs[f"experts_{method}_fwd_bwd"] = (jax.jit(jax.grad(ffn, argnums=(0, 1))),
                                         (params["experts"], x, expert_routing))
  ms = round_robin_ms(jobs, _REPEATS.value, _WARMUP.value)
  row.update({f"{name}_ms": value for name, value in ms.items()})
  row.setdefault("brute_force_ms", None)
  row.setdefault("experts_dense_fwd_bwd_ms", None)
  if "brute_force" in jobs:  # the two retrievals agree (scores; ties aside)
    agree = jnp.allclose(routing(queries, sub_keys)[0], brute(queries, sub_keys)[0], atol=1e-4)
    row["brute_force_agrees"] = bool(agree)
  return row


def _table(rows) -> str:
  lines = ["| experts N | sqrt N | expert params MB | routing ms | routing temp MB | "
           "brute-force ms | brute-force temp MB | layer fwd ms | layer fwd+bwd ms | "
           "layer fwd+bwd temp MB | experts fwd+bwd ms: gather | dense |", "|---" * 12 + "|"]
  for r in rows:
    brute_ms = f"{r['brute_force_ms']:.1f}" if r["brute_force_ms"] is not None else "not run"
    dense_ms = (f"{r['experts_dense_fwd_bwd_ms']:.1f}" if r["experts_dense_fwd_bwd_ms"]
                is not None else "not run")
    lines.append(
        f"| {r['experts']:,} | {r['sub_keys_per_half']} | {r['expert_param_mb']:.0f} | "
        f"{r['routing_ms']:.2f} | {r['routing_temp_mb']:.1f} | {brute_ms} | "
        f"{r['brute_force_temp_mb']:,.0f} | {r['layer_fwd_ms']:.1f} | "
        f"{r['layer_fwd_bwd_ms']:.1f} | {r['layer_fwd_bwd_temp_mb']:.0f} | "
        f"{r['experts_gather_fwd_bwd_ms']:.1f} | {dense_ms} |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    fail(2, f"unexpected arguments {argv[1:]}")
  try:
    sizes = [int(v) for v in _EXPERTS.value]
  except ValueError:
    fail(2, f"--experts={','.join(_EXPERTS.value)} is invalid: want integers")
  for size in sizes:
    n = math.isqrt(max(size, 0))
    if size < 1 or n * n != size:
      fail(2, f"--experts={size} is invalid: needs a perfect square (n^2), e.g. {n * n} or "
              f"{(n + 1) ** 2}")
    if _TOP_K.value > n:
      fail(2, f"--top_k={_TOP_K.value} is invalid: must be <= sqrt({size}) = {n}")
  if _KEY_DIM.value % 2:
    fail(2, f"--key_dim={_KEY_DIM.value} is invalid: must be even")
  print(f"PEER: {_TOKENS.value} tokens, d_model {_D_MODEL.value}, {_HEADS.value} heads x top-"
        f"{_TOP_K.value}, key dim {_KEY_DIM.value}; {jax.devices()[0].device_kind}", flush=True)
  rows = []
  for size in sizes:
    rows.append(_row(size))
    print(f"  N = {size:,}: routing {rows[-1]['routing_ms']:.2f} ms, layer fwd+bwd "
          f"{rows[-1]['layer_fwd_bwd_ms']:.1f} ms", flush=True)
  print(_table(rows))
  write_rows(_JSON_OUT.value, rows)


if __name__ == "__main__":
  run(main)
