"""PEER (router 'product_key' + dispatch 'retrieval'): retrieval equals brute
force over all N keys, the layer equals a per-token NumPy loop of the paper's
equations and every other dispatch (values and gradients), no [tokens, N]
array exists, and the LM with it is causal and generates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.config import MoEConfig, RouterConfig
from moejax.dispatch.retrieval import DENSE_MAX_EXPERTS_PER_CHOICE, retrieval_ffn
from moejax.models import ModelConfig, TransformerLM
from moejax.models.config import LMConfig
from moejax.moe import MoELayer
from moejax.routing.product_keys import product_key_top_k
from moejax.routing.config import router_config_from_mapping
from moejax.routing.product_keys import ProductKeyOptions
from moejax.routing.types import Routing
from lm_checks import assert_causal, assert_generates_like_recomputation

D = 16


def _config(num_experts=64, top_k=4, heads=3, key_dim=8, dispatch="retrieval", d_ff=1,
            activation="gelu", **moe):
  router = RouterConfig(name="product_key", num_experts=num_experts, top_k=top_k,
                        options=ProductKeyOptions(heads=heads, key_dim=key_dim))
  return MoEConfig(router=router, d_model=D, d_ff=d_ff, activation=activation,
                   dispatch=dispatch, gmm_block_size=4, **moe)


def _brute_force(queries, sub_keys, k):
  """Scores of all n^2 experts, then top-k: [T, H, k] (scores, indices)."""
  t, h, dk = queries.shape
  n = sub_keys.shape[2]
  q = queries.reshape(t, h, 2, dk // 2)
  s1 = np.einsum("thd,hnd->thn", q[:, :, 0], sub_keys[:, 0])
  s2 = np.einsum("thd,hnd->thn", q[:, :, 1], sub_keys[:, 1])
  full = (s1[..., :, None] + s2[..., None, :]).reshape(t, h, n * n)
  index = np.argsort(-full, axis=-1, kind="stable")[..., :k]
  return np.take_along_axis(full, index, -1), index


@pytest.mark.parametrize("n, k", [(5, 3), (8, 8), (16, 4)])
def test_retrieval_equals_brute_force_top_k(n, k):
  rng = np.random.default_rng(n)
  queries = rng.normal(size=(20, 2, 6)).astype(np.float32)
  sub_keys = rng.normal(size=(2, 2, n, 3)).astype(np.float32)
  scores, index = product_key_top_k(jnp.asarray(queries), jnp.asarray(sub_keys), k)
  want_scores, want_index = _brute_force(queries, sub_keys, k)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.sort(index, -1), np.sort(want_index, -1))


def test_layer_equals_the_per_token_loop_of_the_papers_equations():
  """f(x) = sum_h sum_{i in top-k_h} softmax_i(s_h) * gelu(u_i . x) v_i, with
  u_i = w_in[i, :, 0], v_i = w_out[i, 0, :], top-k_h by brute force."""
  cfg = _config()
  layer = MoELayer(cfg)
  x = jax.random.normal(jax.random.key(0), (2, 5, D))
  variables = jax.jit(layer.init)(jax.random.key(1), x)
  y, aux = jax.jit(layer.apply)(variables, x)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  xs = np.asarray(x, np.float64).reshape(-1, D)
  queries = (xs @ p["router"]["kernel"]).reshape(len(xs), 3, 8)
  scores, index = _brute_force(queries, p["router"]["sub_keys"], 4)
  u, v = p["experts"]["w_in"][:, :, 0], p["experts"]["w_out"][:, 0, :]
  gelu = lambda a: np.asarray(jax.nn.gelu(jnp.asarray(a)))
  expected = np.zeros_like(xs)
  for t in range(len(xs)):
    for h in range(3):
      g = np.exp(scores[t, h] - scores[t, h].max())
      g /= g.sum()
      for weight, i in zip(g, index[t, h]):
        expected[t] += weight * gelu(u[i] @ xs[t]) * v[i]
  np.testing.assert_allclose(np.asarray(y).reshape(-1, D), expected, atol=1e-5)
  assert int(aux.metrics["tokens_per_expert"].sum()) == 10 * 3 * 4


@pytest.mark.parametrize("cfg", [
    _config(),
    _config(num_experts=16, top_k=2, heads=2, d_ff=6, activation="swiglu", use_bias=True),
], ids=["peer_single_neuron", "product_keys_glu_experts_with_biases"])
def test_retrieval_equals_dropless_and_einsum_values_and_gradients(cfg):
  import dataclasses
  x = jax.random.normal(jax.random.key(2), (12, D))
  probe = jax.random.normal(jax.random.key(3), (12, D))
  variables = jax.jit(MoELayer(cfg).init)(jax.random.key(4), x)

  def value_and_grads(dispatch):
    layer = MoELayer(dataclasses.replace(cfg, dispatch=dispatch))
    loss = lambda p, x: jnp.sum(layer.apply({"params": p}, x)[0] * probe)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(variables["params"], x)
  ref = value_and_grads("retrieval")
  for dispatch in ("dropless", "einsum"):
    got = value_and_grads(dispatch)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
      np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
  assert float(jnp.abs(ref[1][0]["router"]["sub_keys"]).max()) > 0  # keys get gradients


@pytest.mark.parametrize("activation, use_bias", [("gelu", False), ("swiglu", True)])
def test_gathering_the_chosen_experts_equals_scoring_every_expert(activation, use_bias):
  """retrieval_ffn's two methods, values and gradients, on a Routing where one
  token picks an expert twice (two heads) and some choices are invalid."""
  num_tokens, k, experts, d_ff = 9, 6, 11, 3
  keys = jax.random.split(jax.random.key(9), 9)
  index = jax.random.randint(keys[0], (num_tokens, k), 0, experts).at[0, 1].set(0).at[0, 0].set(0)
  valid = jax.random.uniform(keys[1], (num_tokens, k)) > 0.2
  routing = Routing(expert_index=index, weight=jax.random.uniform(keys[2], (num_tokens, k)),
                    position=jnp.zeros_like(index), valid=valid, num_experts=experts,
                    capacity=None)
  shapes = {"w_in": (experts, D, d_ff), "w_out": (experts, d_ff, D)}
  if activation == "swiglu":
    shapes["w_gate"] = (experts, D, d_ff)
  if use_bias:
    shapes.update(b_in=(experts, d_ff), b_gate=(experts, d_ff), b_out=(experts, D))
  params = {name: jax.random.normal(key, shape)
            for key, (name, shape) in zip(keys[3:], shapes.items())}
  x = jax.random.normal(keys[8], (num_tokens, D))
  probe = jnp.sin(jnp.arange(num_tokens * D, dtype=jnp.float32).reshape(num_tokens, D))

  def value_and_grads(method):
    loss = lambda p, x: jnp.sum(retrieval_ffn(x, routing, p, activation, method) * probe)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
  gathered, dense = value_and_grads("gather"), value_and_grads("dense")
  for a, b in zip(jax.tree.leaves(gathered), jax.tree.leaves(dense)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
  # the weight gradient of an expert no valid choice reaches is zero in both
  unused = sorted(set(range(experts)) - set(np.asarray(index)[np.asarray(valid)].tolist()))
  for e in unused:
    assert float(jnp.abs(dense[1][0]["w_in"][e]).max()) == 0.0


def test_auto_scores_every_expert_only_for_a_small_pool():
  """'auto' takes the dense method at E <= k * DENSE_MAX_EXPERTS_PER_CHOICE
  (a [T, E, f] value appears) and the gathers above it (none does)."""
  num_tokens, k, limit = 4, 2, DENSE_MAX_EXPERTS_PER_CHOICE

  def largest_value(experts):
    routing = Routing(expert_index=jnp.zeros((num_tokens, k), jnp.int32),
                      weight=jnp.ones((num_tokens, k)), position=jnp.zeros((num_tokens, k),
                      jnp.int32), valid=jnp.ones((num_tokens, k), bool),
                      num_experts=experts, capacity=None)
    params = {"w_in": jnp.ones((experts, 3, 1)), "w_out": jnp.ones((experts, 1, 3))}
    jaxpr = jax.make_jaxpr(lambda x: retrieval_ffn(x, routing, params, "gelu"))(
        jnp.ones((num_tokens, 3)))
    return max(int(np.prod(v.aval.shape)) for e in jaxpr.jaxpr.eqns for v in e.outvars)
  assert largest_value(k * limit) == num_tokens * k * limit              # [T, E, 1]
  assert largest_value(k * limit + 1) == num_tokens * k * 3              # [T, k, d, 1]


def test_retrieval_dispatch_equals_dropless_for_token_choice_routing():
  router = RouterConfig(num_experts=6, top_k=2, capacity_factor=1.0)
  x = jax.random.normal(jax.random.key(5), (20, D))
  outs = []
  for dispatch in ("retrieval", "gather"):
    layer = MoELayer(MoEConfig(router=router, d_model=D, d_ff=8, dispatch=dispatch,
                               activation="geglu", use_bias=True))
    variables = jax.jit(layer.init)(jax.random.key(6), x)
    outs.append(jax.jit(layer.apply)(variables, x))
  np.testing.assert_allclose(outs[0][0], outs[1][0], atol=1e-5)
  assert float(outs[0][1].metrics["fraction_dropped"]) > 0  # drops are honoured too


def test_no_tokens_by_experts_array_is_built():
  """N = 256^2 experts, 64 tokens: no value in the forward or backward pass
  has as many elements as the [T, N] score matrix brute force needs."""
  cfg = _config(num_experts=256 ** 2, top_k=8, heads=2, key_dim=16)
  layer = MoELayer(cfg)
  x = jnp.ones((64, D))
  variables = jax.eval_shape(layer.init, jax.random.key(0), x)
  loss = lambda p, x: jnp.sum(layer.apply({"params": p}, x)[0])
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)
  from jax.extend.core import jaxprs_in_params
  sizes = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      sizes.extend(int(np.prod(v.aval.shape)) for v in eqn.outvars if hasattr(v.aval, "shape"))
      for sub in jaxprs_in_params(eqn.params):  # inside jit, custom_vjp, scan, ...
        walk(sub)
  walk(jaxpr.jaxpr)
  assert max(sizes) < 64 * 256 ** 2, max(sizes)
  assert max(sizes) >= 256 ** 2 * D  # the weight gradients are there: the walk sees values


def test_lm_with_peer_is_causal_and_generates():
  model = TransformerLM(ModelConfig(num_layers=2, d_model=D, num_heads=2, dense_d_ff=32,
                                    moe_every=1, moe=_config(),
                                    lm=LMConfig(vocab_size=256, tie_embeddings=False)))
  tokens = jax.random.randint(jax.random.key(7), (2, 10), 0, 256)
  variables = jax.jit(model.init)(jax.random.key(8), tokens)
  assert_causal(jax.jit(lambda t: model.apply(variables, t)[0]), tokens, 6)
  assert_generates_like_recomputation(model, variables, np.asarray(tokens[:, :3], np.int32), 4)


@pytest.mark.parametrize("make, message", [
    (lambda: _config(num_experts=50), "router.num_experts=50 is invalid: router.name="
                                      "'product_key' needs a perfect square"),
    (lambda: _config(top_k=9), "router.top_k=9 is invalid: .* must be <= 8"),
    (lambda: _config(key_dim=7), "router.product_key.key_dim=7 is invalid: must be even"),
    (lambda: _config(dispatch="gather"), "dispatch='gather' is invalid: router.name="
                                         "'product_key' never drops"),
    (lambda: RouterConfig(name="product_key", num_experts=16, capacity_factor=1.0),
     "router.capacity_factor=1.0 is invalid: router.name='product_key' never drops"),
    (lambda: router_config_from_mapping({"product_key": {"heads": 2}}),
     "router.product_key.heads=2 is invalid: only used by router.name='product_key'"),
    (lambda: router_config_from_mapping({"peer_heads": 2}),
     "router.peer_heads=2 is invalid: moved to router.product_key.heads"),
])
def test_impossible_combinations_are_refused_in_one_line(make, message):
  with pytest.raises(ValueError, match=message):
    make()
