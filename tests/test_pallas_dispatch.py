"""The Pallas kernels inside MoE: dropless dispatch with the fused permute /
unpermute and the Pallas grouped matmul equals the one-hot einsum reference
(forward and gradients); the MoE layer's 'pallas' backend equals 'blocked';
the kernels lower for GPU (Triton) and TPU (Mosaic) without that hardware."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import pallas_kernels
from moejax import MoEConfig, MoELayer, RouterConfig
from moejax.dispatch import get_strategy
from moejax.experts import expert_ffn
from moejax.grouped_matmul import RowLayout
from moejax.routing import route
from tests.helpers import ROUTER_CASES, make_params

D, F, BLOCK = 8, 12, 16
# Routers whose Routing has invalid assignments (null experts), weights that
# do not sum to one (sigmoid + scaling) or plain top-k.
CASES = ["top_k_dropless", "null_experts", "deepseek"]


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _loss_and_out(params, x, router_cfg, dispatch, pallas):
  out = route(router_cfg, x @ params["router"])
  backend = "pallas" if pallas else "einsum"
  expert_fn = lambda b: expert_ffn(params["experts"], b, "swiglu", backend, BLOCK)
  strategy = get_strategy(dispatch, RowLayout(BLOCK, True) if pallas else RowLayout())
  y = strategy(x, out.routing, expert_fn)
  return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape))), y


@pytest.mark.parametrize("case", CASES)
def test_pallas_dropless_equals_einsum_reference(case):
  cfg = ROUTER_CASES[case]
  params = make_params(jax.random.key(0), D, F, cfg.num_experts, cfg.num_router_outputs)
  x = jax.random.normal(jax.random.key(1), (13, D))
  grad = jax.jit(jax.grad(_loss_and_out, argnums=(0, 1), has_aux=True), static_argnums=(2, 3, 4))
  (g_params, g_x), y = grad(params, x, cfg, "dropless", True)
  (r_params, r_x), y_ref = grad(params, x, cfg, "einsum", False)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_x, r_x, rtol=1e-4, atol=1e-5)
  for path, a, b in zip(jax.tree.leaves_with_path(g_params), jax.tree.leaves(g_params),
                        jax.tree.leaves(r_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path[0]))


def test_unpermute_weight_gradient_and_dropped_slots():
  """out[t] = sum_k w[t,k] y[slot[t,k]], slots past the rows (dropped) add
  nothing; gradients w.r.t. y and w against a numpy loop."""
  rng = np.random.default_rng(0)
  y = jnp.asarray(rng.normal(size=(10, 5)), jnp.float32)
  slot = jnp.array([[0, 3], [9, 10], [10, 10], [4, 1]], jnp.int32)  # 10 = dropped
  assignment = jnp.full((10,), 8, jnp.int32)
  for a, s in enumerate(np.asarray(slot).reshape(-1)):
    if s < 10:
      assignment = assignment.at[s].set(a)
  w = jnp.asarray(rng.random(size=(4, 2)), jnp.float32)
  dout = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  out, vjp = jax.vjp(lambda y, w: pallas_kernels.unpermute(y, slot, w, assignment), y, w)
  dy, dw = vjp(dout)
  yn, sn, wn, dn = map(np.asarray, (y, slot, w, dout))
  want, want_dy, want_dw = np.zeros((4, 5)), np.zeros((10, 5)), np.zeros((4, 2))
  for t in range(4):
    for k in range(2):
      if sn[t, k] < 10:
        want[t] += wn[t, k] * yn[sn[t, k]]
        want_dy[sn[t, k]] += wn[t, k] * dn[t]
        want_dw[t, k] = dn[t] @ yn[sn[t, k]]
  for got, ref in ((out, want), (dy, want_dy), (dw, want_dw)):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_moe_layer_pallas_backend_equals_blocked():
  """The config wiring: gmm_backend='pallas' reaches the kernels (gradients
  through them are checked above, at the dispatch level)."""
  rc = RouterConfig(num_experts=4, top_k=2, normalize_top_k=True)
  x = jax.random.normal(jax.random.key(0), (2, 12, 16))
  outputs = []
  for backend in ("blocked", "pallas"):
    layer = MoELayer(MoEConfig(router=rc, d_model=16, d_ff=24, dispatch="dropless",
                               gmm_backend=backend, gmm_block_size=16, activation="swiglu"))
    variables = jax.jit(layer.init)(jax.random.key(1), x)
    forward = lambda v, x: layer.apply(v, x)[0]
    outputs.append(jax.jit(forward)(variables, x))
    uses_kernels = "pallas_call" in str(jax.make_jaxpr(forward)(variables, x))
    assert uses_kernels == (backend == "pallas")
  np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gmm_block_size,dtype,message", [
    (24, "float32", "gmm_block_size=24 is invalid: gmm_backend='pallas' needs a power of two"),
    (16, "float64", "dtype='float64' is invalid: gmm_backend='pallas' computes in"),
])
def test_config_refuses_what_the_kernels_cannot_run(gmm_block_size, dtype, message):
  with pytest.raises(ValueError, match=message):
    MoEConfig(dispatch="dropless", gmm_backend="pallas", gmm_block_size=gmm_block_size,
              dtype=dtype)


# The Triton kernels are XLA custom calls without export compatibility
# guarantees; exporting here only checks that they lower.
_UNSTABLE_OK = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernels_lower_for_gpu_and_tpu(platform, dtype):
  """gmm forward + both gradient kernels and permute / unpermute forward +
  backward, lowered through Triton (GPU) and Mosaic (TPU) on this CPU
  machine. Catches ops a backend cannot lower; compiling for the device
  (PTX / libtpu) still needs the hardware."""
  m, k, n, g, tokens, top_k = 256, 128, 256, 4, 128, 2

  def step(lhs, rhs, sizes, x, src, slot, weight, assignment):
    def loss(lhs, rhs, x, weight):
      h = pallas_kernels.gmm(lhs, rhs, sizes, platform=platform)
      rows = pallas_kernels.permute(x, src, slot, platform=platform)
      back = pallas_kernels.unpermute(rows, slot, weight, assignment, platform=platform)
      return jnp.sum(h.astype(jnp.float32)) + jnp.sum(back.astype(jnp.float32))
    return jax.value_and_grad(loss, (0, 1, 2, 3))(lhs, rhs, x, weight)

  s = jax.ShapeDtypeStruct
  args = (s((m, k), dtype), s((g, k, n), dtype), s((g,), jnp.int32), s((tokens, k), dtype),
          s((m,), jnp.int32), s((tokens, top_k), jnp.int32), s((tokens, top_k), jnp.float32),
          s((m,), jnp.int32))
  exported = export.export(jax.jit(step), platforms=[platform],
                           disabled_checks=_UNSTABLE_OK)(*args)
  target = "__gpu$xla.gpu.triton" if platform == "cuda" else "tpu_custom_call"
  # gmm, transposed gmm, tgmm, permute + its gradient, unpermute + its gradient.
  assert exported.mlir_module().count(f"custom_call @{target}(") == 7
