"""DS-MoE (router.dense_training): a training call equals the per-token sum
over all experts weighted by the router's scores and gives every expert a
gradient; an inference call is exactly the sparse layer; the mutual-
information loss has its documented extremes and gradient."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.config import MoEConfig, RouterConfig
from moejax.moe import MoELayer
from moejax.routing.losses import mutual_information_loss

E, D, F = 8, 8, 12


def _config(dispatch="dropless", name="top_k", **router):
  router = RouterConfig(name=name, num_experts=E, top_k=1, dense_training=True, **router)
  return MoEConfig(router=router, d_model=D, d_ff=F, activation="swiglu", dispatch=dispatch,
                   gmm_block_size=4)


@pytest.mark.parametrize("dispatch", ["dropless", "einsum"])
@pytest.mark.parametrize("router", [dict(), dict(score_fn="sigmoid", normalize_top_k=True,
                                                 routed_scaling_factor=2.0)],
                         ids=["softmax", "sigmoid_normalized"])
def test_training_call_is_the_weighted_sum_over_all_experts(dispatch, router):
  cfg = _config(dispatch, **router)
  layer = MoELayer(cfg)
  x = jax.random.normal(jax.random.key(0), (3, D))
  variables = jax.jit(layer.init)(jax.random.key(1), x)
  y, _ = jax.jit(lambda v, x: layer.apply(v, x, deterministic=False))(variables, x)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  xs = np.asarray(x, np.float64)
  logits = xs @ p["router"]["kernel"]
  if cfg.router.score_fn == "sigmoid":
    w = 1 / (1 + np.exp(-logits))
    w = w / w.sum(-1, keepdims=True) * 2.0
  else:
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
  silu = lambda h: h / (1 + np.exp(-h))
  ex = p["experts"]
  expected = sum(w[:, e:e + 1] * ((silu(xs @ ex["w_gate"][e]) * (xs @ ex["w_in"][e]))
                                  @ ex["w_out"][e]) for e in range(E))
  np.testing.assert_allclose(np.asarray(y), expected, atol=1e-5)


def test_inference_is_the_sparse_layer_and_training_reaches_every_expert():
  cfg = _config()
  sparse = MoELayer(dataclasses.replace(
      cfg, router=dataclasses.replace(cfg.router, dense_training=False)))
  layer = MoELayer(cfg)
  x = jax.random.normal(jax.random.key(2), (3, D))
  variables = jax.jit(layer.init)(jax.random.key(3), x)
  np.testing.assert_array_equal(jax.jit(layer.apply)(variables, x)[0],
                                jax.jit(sparse.apply)(variables, x)[0])

  def expert_grads(model, deterministic):
    loss = lambda p: jnp.sum(model.apply({"params": p}, x, deterministic=deterministic)[0])
    return jax.jit(jax.grad(loss))(variables["params"])["experts"]["w_in"]
  touched = lambda g: int((jnp.abs(g).reshape(E, -1).max(-1) > 0).sum())
  assert touched(expert_grads(sparse, False)) <= 3  # top-1 of 3 tokens
  assert touched(expert_grads(layer, False)) == E
  # The load-balance loss and balance metrics describe the sparse (inference) choices.
  training = lambda model: jax.jit(lambda v, x: model.apply(v, x, deterministic=False))
  _, aux_dense = training(layer)(variables, x)
  _, aux_sparse = training(sparse)(variables, x)
  for a, b in zip(jax.tree.leaves(aux_dense), jax.tree.leaves(aux_sparse)):
    np.testing.assert_array_equal(a, b)
  assert float(aux_dense.metrics["tokens_per_expert"].sum()) == 3.0


def test_mutual_information_loss_extremes_and_gradient():
  n = 4
  uniform = jnp.full((6, n), 1.0 / n)
  np.testing.assert_allclose(mutual_information_loss(uniform), 0.0, atol=1e-6)
  sure_and_even = jnp.eye(n)[jnp.array([0, 1, 2, 3, 0, 1, 2, 3])]
  np.testing.assert_allclose(mutual_information_loss(sure_and_even), -np.log(n), rtol=1e-6)
  with jax.enable_x64(True):
    logits = jax.random.normal(jax.random.key(4), (5, n), jnp.float64)
    f = jax.jit(lambda l: mutual_information_loss(jax.nn.softmax(l, axis=-1)))
    direction = jax.random.normal(jax.random.key(5), logits.shape, jnp.float64)
    numeric = (f(logits + 1e-6 * direction) - f(logits - 1e-6 * direction)) / 2e-6
    analytic = jnp.vdot(jax.jit(jax.grad(f))(logits), direction)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda: _config(name="expert_choice", capacity_factor=2.0),
     "router.dense_training=True is invalid: only used by router.name in \\['top_k', 'threshold'\\]"),
    (lambda: _config("gather", capacity_factor=1.0),
     "dispatch='gather' is invalid: router.dense_training sends every token to every expert"),
])
def test_impossible_combinations_are_refused_in_one_line(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def _lm(**router):
  from moejax.models import ModelConfig, build_model
  moe = MoEConfig(router=RouterConfig(num_experts=4, top_k=2, dense_training=True, **router),
                  d_model=16, d_ff=16, dispatch="dropless", activation="swiglu")
  config = ModelConfig(num_layers=2, d_model=16, num_heads=2, dense_d_ff=32, moe_every=1,
                       moe=moe)
  tokens = jax.random.randint(jax.random.key(6), (4, 12), 0, 256)
  return config, jax.jit(build_model(config).init)(jax.random.key(7), tokens), tokens


def test_inference_routing_sweep_counts_experts_and_matches_the_routers():
  from moejax.compress.inference_routing import routing_variants, sweep
  from moejax.compress.measure import evaluate
  config, variables, tokens = _lm()
  batches = [{"inputs": np.asarray(tokens[:, :-1]), "targets": np.asarray(tokens[:, 1:]),
              "mask": np.ones((4, 11), np.float32)}]
  variants = routing_variants(config, top_ks=(1, 2, 4), thresholds=(0.3, 0.99))
  assert [name for name, _ in variants] == ["dense", "top-1", "top-2", "top-4", "threshold 0.3",
                                            "threshold 0.99"]
  rows = {r["routing"]: r for r in sweep(variants, variables, batches)}
  for k in (1, 2, 4):
    assert rows[f"top-{k}"]["experts_per_token"] == k
  assert rows["dense"]["experts_per_token"] == 4
  assert rows["dense"]["eval_loss"] == rows["top-4"]["eval_loss"]
  assert rows["top-2"]["eval_loss"] == evaluate(config, variables, batches)["eval_loss"]
  assert 1 <= rows["threshold 0.3"]["experts_per_token"] < rows["threshold 0.99"][
      "experts_per_token"] <= 4
  active = [rows[f"top-{k}"]["active_params"] for k in (1, 2, 4)]
  assert active[2] - active[1] == 2 * (active[1] - active[0]) > 0
  assert rows["dense"]["active_fraction"] == 1.0
  with pytest.raises(ValueError, match="top_k=5 is invalid: must be in \\[1, 4\\]"):
    routing_variants(config, top_ks=(5,))


def test_inference_routing_binary_prints_rows_and_refuses_in_one_line(tmp_path, data_dir):
  import json
  import os
  import subprocess
  import sys
  from moejax.convert.model_dir import save_model_dir
  config, variables, _ = _lm()
  save_model_dir(str(tmp_path / "model"), config, variables)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def binary(*args):
    return subprocess.run(
        [sys.executable, os.path.join(root, "experiments", "inference_routing.py"),
         f"--src={tmp_path}/model", f"--data_dir={data_dir}", "--data=pydoc_bytes",
         "--seq_len=16", "--batch_size=4", "--eval_batches=2", *args],
        capture_output=True, text=True, cwd=root, timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  out = binary("--top_k=1,3", "--thresholds=0.5", f"--json_out={tmp_path}/rows.json")
  assert out.returncode == 0, out.stderr
  rows = json.loads((tmp_path / "rows.json").read_text())
  assert [r["routing"] for r in rows] == ["dense", "top-1", "top-3", "threshold 0.5"]
  assert "| top-3 | 3.00 |" in out.stdout
  for args, code, message in ((["--top_k=x"], 2, "error: --top_k=x is invalid"),
                              (["--top_k=9"], 1, "error: top_k=9 is invalid")):
    bad = binary(*args)
    assert bad.returncode == code and bad.stderr.startswith(message), bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
