"""SwitchHead (model.attention_experts): attention equals a per-token NumPy
loop of the paper's equations, the routed projection's gradients equal a
dense masked reference's, and the LM stays causal and generates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.models import ModelConfig, TransformerLM
from moejax.models.attention import Attention
from moejax.models.config import LMConfig
from moejax.models.switchhead import RoutedProjection
from lm_checks import assert_causal, assert_generates_like_recomputation

D, HEADS, E, K = 16, 2, 4, 2


def _config(**fields):
  base = dict(num_layers=2, d_model=D, num_heads=HEADS, dense_d_ff=32, moe_every=0,
              attention_experts=E, attention_top_k=K,
              lm=LMConfig(vocab_size=256, tie_embeddings=False))
  return ModelConfig(**{**base, **fields})


def _top_k_sigmoid(logits):
  gates = 1 / (1 + np.exp(-logits))
  chosen = np.argsort(-gates, kind="stable")[:K]
  return chosen, gates[chosen]


def test_attention_equals_the_per_token_loop_of_the_papers_equations():
  """v[s, h] = sum_{e in top-k} sigmoid(x_s R_V[h])_e x_s W_V[h, e];
  y[t] = sum_h sum_{e in top-k} sigmoid(x_t R_O[h])_e o[t, h] W_O[h, e]."""
  cfg = _config()
  layer = Attention(cfg, causal=True)
  x = jax.random.normal(jax.random.key(0), (2, 6, D))
  variables = jax.jit(layer.init)(jax.random.key(1), x)
  y = jax.jit(layer.apply)(variables, x)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  xs = np.asarray(x, np.float64)
  dh = D // HEADS
  expected = np.zeros_like(xs)
  for b in range(2):
    q = np.einsum("td,dhk->thk", xs[b], p["query"]["kernel"])
    k = np.einsum("td,dhk->thk", xs[b], p["key"]["kernel"])
    v = np.zeros((6, HEADS, dh))
    for s in range(6):
      for h in range(HEADS):
        experts, gates = _top_k_sigmoid(xs[b, s] @ p["value"]["router"][h])
        for e, g in zip(experts, gates):
          v[s, h] += g * xs[b, s] @ p["value"]["kernel"][h, e]
    for t in range(6):
      for h in range(HEADS):
        scores = np.array([q[t, h] @ k[s, h] / np.sqrt(dh) for s in range(t + 1)])
        attn = np.exp(scores - scores.max())
        attn /= attn.sum()
        o = attn @ v[:t + 1, h]
        experts, gates = _top_k_sigmoid(xs[b, t] @ p["out"]["router"][h])
        for e, g in zip(experts, gates):
          expected[b, t] += g * o @ p["out"]["kernel"][h, e]
  np.testing.assert_allclose(np.asarray(y), expected, atol=1e-5)


def test_routed_projection_gradients_equal_a_dense_masked_reference():
  layer = RoutedProjection(HEADS, E, K, d_out=5, gmm_block_size=4)
  router_input = jax.random.normal(jax.random.key(2), (9, D))
  inputs = jax.random.normal(jax.random.key(3), (9, HEADS, 3))
  params = jax.jit(layer.init)(jax.random.key(4), router_input, inputs)["params"]
  probe = jax.random.normal(jax.random.key(5), (9, HEADS, 5))

  def reference(p, r, x):
    gates = jax.nn.sigmoid(jnp.einsum("sd,hde->she", r, p["router"]))
    top = jax.lax.top_k(gates, K)[0][..., -1:]
    mask = jnp.where(gates >= top, gates, 0.0)                      # [S, H, E]
    return jnp.einsum("she,shi,heio->sho", mask, x, p["kernel"])
  fast = lambda p, r, x: jnp.sum(layer.apply({"params": p}, r, x) * probe)
  slow = lambda p, r, x: jnp.sum(reference(p, r, x) * probe)
  got = jax.jit(jax.value_and_grad(fast, argnums=(0, 1, 2)))(params, router_input, inputs)
  want = jax.jit(jax.value_and_grad(slow, argnums=(0, 1, 2)))(params, router_input, inputs)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_lm_with_switchhead_is_causal_and_generates():
  model = TransformerLM(_config())
  tokens = jax.random.randint(jax.random.key(6), (2, 10), 0, 256)
  variables = jax.jit(model.init)(jax.random.key(7), tokens)
  assert_causal(jax.jit(lambda t: model.apply(variables, t)[0]), tokens, 6)
  assert_generates_like_recomputation(model, variables, np.asarray(tokens[:, :3], np.int32), 4)


@pytest.mark.parametrize("fields, message", [
    (dict(attention_top_k=5), "model.attention_top_k=5 is invalid: must be <= attention_experts=4"),
    (dict(num_kv_heads=1), "model.num_kv_heads=1 is invalid: with model.attention_experts > 0"),
    (dict(attention_bias=True), "model.attention_bias=True is invalid: with model.attention_exp"),
    (dict(attention="mla"), "model.attention='mla' is invalid: with model.attention_experts > 0"),
])
def test_impossible_combinations_are_refused_in_one_line(fields, message):
  with pytest.raises(ValueError, match=message):
    _config(**fields)


def test_active_parameters_count_top_k_of_each_heads_experts():
  from moejax.models.params import active_params
  config = _config()
  params = jax.jit(TransformerLM(config).init)(jax.random.key(8),
                                               jnp.zeros((1, 4), jnp.int32))["params"]
  total = sum(x.size for x in jax.tree.leaves(params))
  kernels = sum(params[f"block_{i}"]["attention"][name]["kernel"].size
                for i in range(2) for name in ("value", "out"))
  assert active_params(config, params) == total - kernels * (E - K) // E
