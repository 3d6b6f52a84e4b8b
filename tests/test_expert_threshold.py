"""Causal expert choice ('expert_threshold'): the layer equals a per-token
loop over its thresholds, one training call sets the thresholds to expert
choice's cutoffs (so each expert then takes exactly its C tokens of that
batch), the update is a running mean then an EMA, and an LM with it is causal
in training and at inference and generates with its cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.config import MoEConfig, RouterConfig
from moejax.models import ModelConfig, TransformerLM
from moejax.models.config import LMConfig
from moejax.moe import MoELayer
from moejax.routing.expert_threshold import batch_cutoff, update_expert_threshold
from moejax.routing.expert_threshold import ExpertThresholdOptions
from lm_checks import assert_causal, assert_generates_like_recomputation

E, D, F = 6, 8, 12


def _config(dispatch="dropless", **router):
  return MoEConfig(router=RouterConfig(name="expert_threshold", num_experts=E, top_k=2,
                                       **router),
                   d_model=D, d_ff=F, activation="gelu", dispatch=dispatch, gmm_block_size=4)


def _with_thresholds(variables, tau):
  state = {"router": {"expert_threshold": jnp.asarray(tau, jnp.float32),
                      "threshold_updates": jnp.asarray(7, jnp.int32)}}
  return {**variables, "router_state": state}


@pytest.mark.parametrize("dispatch", ["dropless", "einsum"])
def test_layer_equals_the_per_token_loop(dispatch):
  layer = MoELayer(_config(dispatch))
  x = jax.random.normal(jax.random.key(0), (40, D))
  tau = np.linspace(0.1, 0.25, E)
  variables = _with_thresholds(jax.jit(layer.init)(jax.random.key(1), x), tau)
  y, aux = jax.jit(layer.apply)(variables, x)
  p = variables["params"]
  xs = np.asarray(x, np.float64)
  logits = xs @ np.asarray(p["router"]["kernel"], np.float64)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  w_in, w_out = (np.asarray(p["experts"][k], np.float64) for k in ("w_in", "w_out"))
  gelu = lambda h: np.asarray(jax.nn.gelu(jnp.asarray(h)))
  expected = np.zeros_like(xs)
  for t in range(len(xs)):
    for e in range(E):
      if probs[t, e] >= tau[e]:
        expected[t] += probs[t, e] * (gelu(xs[t] @ w_in[e]) @ w_out[e])
  np.testing.assert_allclose(np.asarray(y), expected, atol=1e-5)
  load = (probs >= tau).sum(0)
  np.testing.assert_array_equal(np.asarray(aux.metrics["tokens_per_expert"]), load)
  assert 0 < load.sum() < len(xs) * E  # some taken, some not: the test has teeth


def test_one_training_call_sets_expert_choices_cutoffs():
  """After one update on a batch, every expert takes exactly expert
  choice's C = top_k * T / E tokens of that batch (no ties in float32)."""
  layer = MoELayer(_config())
  x = jax.random.normal(jax.random.key(2), (4, 30, D))
  variables = jax.jit(layer.init)(jax.random.key(3), x)
  y0, aux0 = jax.jit(layer.apply)(variables, x)
  np.testing.assert_array_equal(np.asarray(aux0.metrics["tokens_per_expert"]), 120)  # tau = 0
  _, updated = jax.jit(lambda v, x: layer.apply(v, x, deterministic=False,
                                                mutable=["router_state"]))(variables, x)
  state = updated["router_state"]["router"]
  assert int(state["threshold_updates"]) == 1
  _, aux = jax.jit(layer.apply)({**variables, **updated}, x)
  np.testing.assert_array_equal(np.asarray(aux.metrics["tokens_per_expert"]), 2 * 120 // E)
  # deterministic: no update
  eval_only = jax.jit(lambda v, x: layer.apply(v, x, mutable=["router_state"]))(variables, x)[1]
  assert int(eval_only["router_state"]["router"]["threshold_updates"]) == 0


def test_threshold_update_is_a_running_mean_then_an_ema():
  tau, n = jnp.zeros(2), jnp.asarray(0, jnp.int32)
  cutoffs = [jnp.array([0.2, 0.4]), jnp.array([0.4, 0.0]), jnp.array([0.6, 0.2])]
  for c in cutoffs:
    tau, n = update_expert_threshold(tau, n, c, rate=0.25)
  np.testing.assert_allclose(tau, np.mean(cutoffs, axis=0), rtol=1e-6)  # 1/(n+1) > 0.25
  tau2, _ = update_expert_threshold(tau, jnp.asarray(10, jnp.int32), jnp.ones(2), rate=0.25)
  np.testing.assert_allclose(tau2, tau + 0.25 * (1 - tau), rtol=1e-6)
  probs = jnp.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
  np.testing.assert_allclose(batch_cutoff(probs, top_k=1), [0.6, 0.7])


def _lm():
  moe = _config()
  return TransformerLM(ModelConfig(num_layers=2, d_model=D, num_heads=2, dense_d_ff=16,
                                   moe_every=1, moe=moe,
                                   lm=LMConfig(vocab_size=256, tie_embeddings=False)))


def test_lm_is_causal_in_training_and_inference_and_generates():
  model = _lm()
  tokens = jax.random.randint(jax.random.key(4), (2, 12), 0, 256)
  variables = jax.jit(model.init)(jax.random.key(5), tokens)
  # Thresholds from a training call, so that routing is sparse and data-dependent.
  _, updated = jax.jit(lambda v, t: model.apply(v, t, deterministic=False,
                                                mutable=["router_state"]))(variables, tokens)
  variables = {**variables, **updated}
  for deterministic in (True, False):
    assert_causal(lambda t: model.apply(variables, t, deterministic=deterministic,
                                        mutable=["router_state"])[0][0], tokens, 7)
  assert_generates_like_recomputation(model, variables, np.asarray(tokens[:, :4], np.int32), 5)


@pytest.mark.parametrize("make, message", [
    (lambda: _config(capacity_factor=1.0),
     "router.capacity_factor=1.0 is invalid: router.name='expert_threshold' never drops"),
    (lambda: _config("gather"), "dispatch='gather' is invalid: router.name='expert_threshold' "
                                "never drops; use 'dropless' or 'einsum'"),
    (lambda: _config(options=ExpertThresholdOptions(rate=2.0)),
     "router.expert_threshold.rate=2.0 is invalid: must be in \\[0, 1\\]"),
])
def test_impossible_combinations_are_refused_in_one_line(make, message):
  with pytest.raises(ValueError, match=message):
    make()
