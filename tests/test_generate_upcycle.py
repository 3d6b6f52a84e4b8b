"""Generation with a key/value cache, sparse upcycling, the SparseMixer router
and the convert / generate binaries."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.config import MoEConfig, RouterConfig
from moejax.convert.upcycle import upcycle
from moejax.generate import _generate, cache_bytes_per_token, generate, init_cache, left_pad
from moejax.models import ModelConfig, TransformerLM
from moejax.models.config import LMConfig, MLAConfig
from moejax.routing.sparsemixer import sparsemixer_route
from moejax.routing.sparsemixer import SparseMixerOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 50
PROMPT = np.random.default_rng(1).integers(0, VOCAB, size=(2, 4)).astype(np.int32)


def _moe(**router):
  return MoEConfig(router=RouterConfig(num_experts=4, top_k=2, **router), d_model=32, d_ff=32,
                   activation="swiglu", dispatch="dropless")


def _model(**fields):
  base = dict(num_layers=2, d_model=32, num_heads=4, dense_d_ff=64, moe=_moe(),
              lm=LMConfig(vocab_size=VOCAB, tie_embeddings=False))
  return TransformerLM(ModelConfig(**{**base, **fields}))


def _greedy_without_cache(model, variables, prompt, steps):
  """Greedy decoding by running the whole sequence each step. The sequence is
  held at its final length (zeros after the tokens so far) so that one
  compiled forward serves every step: the LM is causal (test_models.py::
  test_lm_is_causal), so the zeros do not change the logits before them."""
  seq = np.zeros((prompt.shape[0], prompt.shape[1] + steps), np.int32)
  seq[:, :prompt.shape[1]] = prompt
  forward = jax.jit(lambda v, s: model.apply(v, s)[0])
  for t in range(prompt.shape[1], seq.shape[1]):
    seq[:, t] = np.argmax(np.asarray(forward(variables, seq))[:, t - 1], -1)
  return seq


GENERATION_CASES = [
    # gpt-oss's and DBRX's attention options too: a full layer after a windowed
    # one, sinks, clipped queries / keys / values.
    dict(num_kv_heads=2, qk_norm="full", attention_window=3, full_attention_layers=(1,),
         attention_sinks=True, clip_qkv=1.5),
    dict(attention="mla", mla=MLAConfig(q_rank=8, kv_rank=8, nope_dim=4, rope_dim=4, v_dim=6),
         first_dense_layers=1),
]


@pytest.mark.parametrize("fields", GENERATION_CASES, ids=["gqa_window", "mla"])
def test_cached_greedy_equals_recomputing_the_whole_sequence(fields):
  model = _model(**fields)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), PROMPT)
  out = generate(model, variables, PROMPT, max_new_tokens=6)
  np.testing.assert_array_equal(out, _greedy_without_cache(model, variables, PROMPT, 6))


@pytest.mark.parametrize("fields", GENERATION_CASES, ids=["gqa_window", "mla"])
def test_left_padded_batch_continues_each_prompt_as_alone(fields):
  """Prompts of lengths 5 and 2 in one left-padded batch: every row's greedy
  continuation equals that prompt's generated on its own, and the padded
  forward's logits at real tokens equal the unpadded ones."""
  model = _model(**fields)
  prompts = [[3, 9, 27, 1, 4], [8, 8]]
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), PROMPT)
  batch, lengths = left_pad(prompts, pad_id=7)
  out = np.asarray(generate(model, variables, batch, max_new_tokens=5, prompt_lengths=lengths))
  offsets = np.asarray(batch.shape[1] - lengths)
  forward = jax.jit(lambda tokens, offsets=None: model.apply(variables, tokens,
                                                             pad_offsets=offsets)[0])
  logits = np.asarray(forward(batch, jnp.asarray(offsets)))
  for row, prompt in enumerate(prompts):
    alone = np.asarray(generate(model, variables, np.asarray([prompt]), max_new_tokens=5))
    np.testing.assert_array_equal(out[row, offsets[row]:], alone[0])
    np.testing.assert_allclose(logits[row, offsets[row]:], np.asarray(forward(
        np.asarray([prompt], np.int32)))[0], atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match=r"prompt_lengths must be \[2\] integers in \[1, 5\]"):
    generate(model, variables, batch, max_new_tokens=2, prompt_lengths=jnp.asarray([5, 0]))


def test_mla_cache_holds_the_latent_and_the_rope_key():
  """MLA's cache per layer and token: kv_rank + rope_dim numbers, against
  N (nope + rope) + N v for full keys and values."""
  mla = MLAConfig(q_rank=8, kv_rank=8, nope_dim=4, rope_dim=4, v_dim=6)
  model = _model(attention="mla", mla=mla)
  cache = init_cache(model, batch=2, max_len=10)
  shapes = {name: value.shape for name, value in cache["block_0"]["attention"].items()}
  assert shapes == {"cached_latent": (2, 10, 8), "cached_key_rope": (2, 10, 4), "index": ()}
  assert cache_bytes_per_token(model) == 2 * 4 * (8 + 4)          # 2 layers, float32
  full = cache_bytes_per_token(_model())                           # MHA: 4 heads x 8 wide
  assert full == 2 * 4 * 2 * 4 * 8


def test_sampling_is_seeded_and_top_k_one_is_greedy():
  model = _model()
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), PROMPT)
  greedy = generate(model, variables, PROMPT, max_new_tokens=8)
  sample = lambda seed, **kw: np.asarray(generate(
      model, variables, PROMPT, max_new_tokens=8, temperature=1.0,
      rng=jax.random.PRNGKey(seed), **kw))
  np.testing.assert_array_equal(sample(3), sample(3))
  assert not np.array_equal(sample(3), sample(4))
  np.testing.assert_array_equal(sample(5, top_k=1), greedy)
  # top_k = 3 samples only among each step's 3 largest logits: over many
  # seeds, every token drawn is one of them (checked against a full forward)
  picks = np.stack([sample(seed, top_k=3) for seed in range(6)])
  for row in picks:
    logits = np.asarray(model.apply(variables, jnp.asarray(row))[0])[:, PROMPT.shape[1] - 1:-1]
    top3 = np.argsort(logits, axis=-1)[..., -3:]
    assert (top3 == row[:, PROMPT.shape[1]:, None]).any(-1).all()
  # Greedy and every sampling setting share one compiled decode loop.
  before = _generate._cache_size()
  for kw in ({}, {"temperature": 0.7, "rng": jax.random.PRNGKey(1)},
             {"temperature": 1.3, "top_k": 5, "rng": jax.random.PRNGKey(2)}):
    generate(model, variables, PROMPT, max_new_tokens=5, **kw)
  assert _generate._cache_size() == before + 1
  with pytest.raises(ValueError, match="temperature > 0 samples: pass rng"):
    generate(model, variables, PROMPT, max_new_tokens=2, temperature=0.5)
  with pytest.raises(ValueError, match=r"token ids outside \[0, 50\)"):
    generate(model, variables, PROMPT + VOCAB, max_new_tokens=2)
  ec = _model(moe=_moe(name="expert_choice", capacity_factor=2.0))
  with pytest.raises(ValueError, match="router.name='expert_choice' cannot generate"):
    generate(ec, jax.jit(ec.init)(jax.random.PRNGKey(0), PROMPT), PROMPT, max_new_tokens=2)


def test_imported_model_generates_like_transformers(tmp_path):
  torch = pytest.importorskip("torch")
  from hf_models import tiny_hf_model
  from moejax.convert import load_hf
  hf_model = tiny_hf_model("qwen3_moe")
  hf_model.save_pretrained(tmp_path)
  with torch.no_grad():
    ref = hf_model.generate(torch.as_tensor(PROMPT, dtype=torch.long), max_new_tokens=6,
                            do_sample=False, pad_token_id=0).numpy()
  model = load_hf(str(tmp_path))
  out = generate(TransformerLM(model.config), model.variables, PROMPT, max_new_tokens=6)
  np.testing.assert_array_equal(out, ref)


def _dense():
  config = ModelConfig(num_layers=2, d_model=32, num_heads=4, dense_d_ff=64,
                       activation="swiglu", moe_every=0,
                       lm=LMConfig(vocab_size=VOCAB, tie_embeddings=False))
  model = TransformerLM(config)
  return config, jax.jit(model.init)(jax.random.PRNGKey(0), PROMPT)


@pytest.mark.parametrize("granularity,num_experts,router_std", [(1, 4, 0.5), (2, 2, 0.0)])
def test_upcycled_model_equals_its_dense_model_at_step_zero(granularity, num_experts,
                                                            router_std):
  dense, variables = _dense()
  ref, _ = jax.jit(TransformerLM(dense).apply)(variables, PROMPT)
  moe = MoEConfig(router=RouterConfig(num_experts=num_experts, top_k=2, normalize_top_k=True),
                  d_model=32, d_ff=64 // granularity, activation="swiglu", dispatch="dropless")
  config, upcycled = upcycle(dense, variables, moe, rng=jax.random.PRNGKey(2),
                             granularity=granularity, router_init_std=router_std)
  assert config.moe_layers == (0, 1)
  out, aux = jax.jit(TransformerLM(config).apply)(upcycled, PROMPT)
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=0)
  if router_std:  # the router is live: tokens really spread over the copies
    load = aux["block_0"].metrics["tokens_per_expert"]
    assert int((load > 0).sum()) > 1


def test_upcycling_noise_breaks_symmetry_and_bad_requests_fail():
  dense, variables = _dense()
  moe = MoEConfig(router=RouterConfig(num_experts=4, top_k=2, normalize_top_k=True),
                  d_model=32, d_ff=64, activation="swiglu", dispatch="dropless")
  _, noisy = upcycle(dense, variables, moe, rng=jax.random.PRNGKey(2), noise_std=0.05)
  w = np.asarray(noisy["params"]["block_0"]["moe"]["experts"]["w_in"])
  dense_w = np.asarray(variables["params"]["block_0"]["ffn"]["ffn"]["w_in"]["kernel"])
  assert not np.allclose(w[0], w[1])
  assert 0 < np.abs(w[0] - dense_w).std() / dense_w.std() < 0.1
  with pytest.raises(ValueError, match=r"moe.d_ff=32 is invalid: must be dense d_ff / "
                                       r"granularity = 64 / 1"):
    upcycle(dense, variables, MoEConfig(router=moe.router, d_model=32, d_ff=32,
                                        activation="swiglu"), rng=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="moe.activation='gelu' is invalid"):
    upcycle(dense, variables, MoEConfig(router=moe.router, d_model=32, d_ff=64,
                                        activation="gelu"), rng=jax.random.PRNGKey(0))


def test_sparsemixer_weights_follow_the_near_tie_rule():
  """Top-2 SparseMixer against a numpy transcription of the rule."""
  config = RouterConfig(name="sparsemixer", num_experts=5, top_k=2, options=SparseMixerOptions(eps=0.05))
  logits = np.array([[2.0, 1.95, 0.1, -1.0, 1.0],      # near tie for the first pick
                     [3.0, -2.0, 0.5, 0.45, 0.0]], np.float32)
  out = sparsemixer_route(jnp.asarray(logits), config)

  def reference(row):
    picks, weights, remaining = [], [], row.copy()
    for _ in range(2):
      best, pick = remaining.max(), int(remaining.argmax())
      keep = (best - row) / np.maximum(np.abs(row), best) <= 2 * config.options.eps
      z = np.where(keep & np.isfinite(remaining), remaining, -np.inf)
      weights.append(np.exp(z[pick] - z.max()) / np.exp(z - z.max()).sum())
      picks.append(pick)
      remaining[pick] = -np.inf
    return picks, weights
  for t, row in enumerate(logits):
    picks, weights = reference(row)
    np.testing.assert_array_equal(out.routing.expert_index[t], picks)
    np.testing.assert_allclose(out.routing.weight[t], weights, rtol=1e-6)
  assert float(out.routing.weight[0, 0]) < 0.6 and float(out.routing.weight[1, 0]) == 1.0


def _run(binary, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", binary), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_convert_and_generate_binaries(tmp_path):
  pytest.importorskip("torch")
  from hf_models import tiny_hf_model
  tiny_hf_model("llama").save_pretrained(tmp_path / "llama")
  up = _run("convert.py", "--mode=upcycle", f"--src={tmp_path}/llama", f"--out={tmp_path}/moe",
            "--num_experts=4", "--top_k=2")
  assert up.returncode == 0, up.stderr
  assert "upcycled: 2 MoE blocks x 4 experts" in up.stdout
  gen = _run("generate.py", f"--model={tmp_path}/moe", "--prompt_ids=1,2,3",
             "--max_new_tokens=4")
  assert gen.returncode == 0, gen.stderr
  assert len(gen.stdout.split("sample 0: ")[1].split(",")) == 4
  bad = _run("convert.py", "--mode=export", f"--src={tmp_path}/moe", f"--out={tmp_path}/x")
  assert bad.returncode == 2 and bad.stderr.startswith("error: --model_type is required")
  bad = _run("generate.py", f"--model={tmp_path}/moe", "--prompt=hi")
  assert bad.returncode == 2 and "use --prompt_ids" in bad.stderr
  assert not os.path.exists(tmp_path / "x")
