"""Autoregressive generation for TransformerLM with a key/value cache.

    tokens = generate(model, variables, prompt, max_new_tokens=32)            # greedy
    tokens = generate(model, variables, prompt, max_new_tokens=32,
                      temperature=0.8, top_k=40, rng=jax.random.PRNGKey(0))   # sampling
    prompt, lengths = left_pad([[5, 6, 7], [8]])                              # a batch of
    tokens = generate(model, variables, prompt, prompt_lengths=lengths, ...)  # lengths

The prompt [B, P] is run once (prefill) to fill every layer's cache, then one
token per step is fed back through a jitted `lax.scan`. Prompts of different
lengths are left-padded: each row's tokens get positions from 0 and its
padding is never attended to, so a row continues exactly as it would alone.
The cache holds per-head keys and values, or for MLA the compressed latent and
the shared RoPE key (moejax.models.attention.Attention).

Routing at generation time sees only the tokens of the current call, so
routers that look across tokens (expert choice, Soft MoE, Sinkhorn) are
refused, and capacity limits would drop different tokens than in training:
`for_generation` turns a model config dropless.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from moejax.config import ROUTER_FAMILIES
from moejax.models import TransformerLM
from moejax.models.config import ModelConfig


def for_generation(config: ModelConfig) -> ModelConfig:
  """`config` with its MoE routing made per-token: no capacity (dropless
  dispatch), one routing group. Raises for routers that mix tokens."""
  if config.kind != "lm":
    raise ValueError(f"model.kind={config.kind!r} is invalid for generation: needs 'lm'")
  moe = config.moe
  if moe is None or not config.moe_layers:
    return config
  if not moe.router.family.causal:
    causal = [f.name for f in ROUTER_FAMILIES.values() if f.causal]
    raise ValueError(f"model.moe.router.name={moe.router.name!r} cannot generate: it routes "
                     "by looking at all tokens of a call, including later ones; causal "
                     f"routers are {', '.join(causal)}")
  router = dataclasses.replace(moe.router, capacity_factor=None, routing_groups=1)
  dispatch = "dropless" if moe.dispatch == "gather" else moe.dispatch
  return dataclasses.replace(config, moe=dataclasses.replace(moe, router=router,
                                                             dispatch=dispatch))


def init_cache(model: TransformerLM, batch: int, max_len: int) -> dict:
  """An empty cache for `batch` sequences of up to `max_len` tokens."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((batch, max_len), jnp.int32),
                                             decode=True))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def cache_bytes_per_token(model: TransformerLM) -> int:
  """Bytes the decode cache holds per token of one sequence, over all layers."""
  shapes = jax.eval_shape(lambda: init_cache(model, 1, 1))
  return sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(shapes) if s.ndim >= 2)


def _memory_budget() -> int:
  """Bytes the cache may take: the accelerator's memory limit, or half the
  host's physical memory on CPU."""
  stats = jax.devices()[0].memory_stats() or {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def check_cache_fits(model: TransformerLM, batch: int, max_len: int) -> None:
  """ValueError (one line) when a cache for `batch` x `max_len` tokens cannot fit."""
  if max_len >= 2**31:
    raise ValueError(f"prompt + max_new_tokens = {max_len} tokens; positions are int32, so "
                     f"at most {2**31 - 1}")
  shapes = jax.eval_shape(lambda: init_cache(model, batch, max_len))
  need = sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(shapes))
  budget = _memory_budget()
  if need > budget:
    raise ValueError(f"a key/value cache for {batch} x {max_len} tokens needs "
                     f"{need / 2**30:.1f} GiB, more than the {budget / 2**30:.1f} GiB available; "
                     "lower --max_new_tokens or --num_samples")


def _pick(logits: jax.Array, key: jax.Array, temperature: jax.Array,
          top_k: jax.Array) -> jax.Array:
  """Next tokens [B] from logits [B, V]: argmax at temperature 0, else a
  sample from softmax(logits / temperature), over the top_k largest only when
  top_k > 0. temperature and top_k are traced scalars, so that greedy
  decoding and every sampling setting share one compiled decode loop."""

  def sample(logits):
    scaled = logits / temperature
    vocab = logits.shape[-1]
    # the top_k-th largest logit of each row (ascending sort: index V - top_k)
    kth = jnp.sort(scaled, axis=-1)[:, jnp.clip(vocab - top_k, 0, vocab - 1)][:, None]
    scaled = jnp.where((top_k > 0) & (scaled < kth), -jnp.inf, scaled)
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)

  greedy = lambda logits: jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.lax.cond(temperature > 0, sample, greedy, logits)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> Tuple[jax.Array, jax.Array]:
  """Prompts of different lengths -> (prompt [B, P] left-padded with pad_id,
  lengths [B]), for generate(..., prompt_lengths=lengths)."""
  if not prompts or any(len(p) < 1 for p in prompts):
    raise ValueError("every prompt needs at least one token")
  width = max(len(p) for p in prompts)
  rows = [[pad_id] * (width - len(p)) + [int(t) for t in p] for p in prompts]
  return jnp.asarray(rows, jnp.int32), jnp.asarray([len(p) for p in prompts], jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def _generate(model, variables, prompt, pad_offsets, rng, max_new_tokens, temperature, top_k):
  batch, prompt_len = prompt.shape
  cache = init_cache(model, batch, prompt_len + max_new_tokens)
  (logits, _), state = model.apply({**variables, "cache": cache}, prompt, decode=True,
                                   pad_offsets=pad_offsets, mutable=["cache"])
  keys = jax.random.split(rng, max_new_tokens)
  first = _pick(logits[:, -1], keys[0], temperature, top_k)

  def step(carry, key):
    cache, token = carry
    (logits, _), state = model.apply({**variables, "cache": cache}, token[:, None],
                                     decode=True, pad_offsets=pad_offsets, mutable=["cache"])
    nxt = _pick(logits[:, -1], key, temperature, top_k)
    return (state["cache"], nxt), nxt

  _, rest = jax.lax.scan(step, (state["cache"], first), keys[1:])
  return jnp.concatenate([prompt, first[:, None], rest.T.astype(prompt.dtype)], axis=1)


def generate(model: TransformerLM, variables: dict, prompt: jax.Array, *,
             max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
             rng: Optional[jax.Array] = None,
             prompt_lengths: Optional[jax.Array] = None) -> jax.Array:
  """prompt [B, P] ints -> [B, P + max_new_tokens]: the prompt and its continuation.

  temperature 0 = greedy; > 0 samples (needs rng). top_k > 0 samples among
  the top_k logits only. variables: {'params', optional 'router_state'}.
  prompt_lengths [B]: row b's prompt is its last prompt_lengths[b] tokens
  (left padding before them; see left_pad). None = every row is P long.
  """
  prompt = jnp.asarray(prompt)
  if prompt.ndim != 2 or not jnp.issubdtype(prompt.dtype, jnp.integer) or prompt.shape[1] < 1:
    raise ValueError(f"prompt has shape {prompt.shape} and dtype {prompt.dtype}: needs [batch, "
                     "length >= 1] integer token ids")
  vocab = model.config.lm.vocab_size
  if int(prompt.min()) < 0 or int(prompt.max()) >= vocab:
    raise ValueError(f"prompt holds token ids outside [0, {vocab}) (model.lm.vocab_size)")
  if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or (
      max_new_tokens < 1):
    raise ValueError(f"max_new_tokens={max_new_tokens!r} is invalid: must be an integer >= 1")
  if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
          and temperature >= 0):
    raise ValueError(f"temperature={temperature!r} is invalid: must be a finite number >= 0 "
                     "(0 = greedy)")
  if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= vocab:
    raise ValueError(f"top_k={top_k!r} is invalid: must be an integer in [0, {vocab}]")
  if temperature > 0 and rng is None:
    raise ValueError("temperature > 0 samples: pass rng=jax.random.PRNGKey(...)")
  pad_offsets = None
  if prompt_lengths is not None:
    lengths = jnp.asarray(prompt_lengths)
    if lengths.shape != prompt.shape[:1] or not jnp.issubdtype(lengths.dtype, jnp.integer) or (
        int(lengths.min()) < 1 or int(lengths.max()) > prompt.shape[1]):
      raise ValueError(f"prompt_lengths must be [{prompt.shape[0]}] integers in [1, "
                       f"{prompt.shape[1]}] (the prompt's rows and width)")
    pad_offsets = (prompt.shape[1] - lengths).astype(jnp.int32)
  model = TransformerLM(for_generation(model.config))
  check_cache_fits(model, prompt.shape[0], prompt.shape[1] + max_new_tokens)
  variables = {k: v for k, v in variables.items() if k in ("params", "router_state")}
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return _generate(model, variables, prompt.astype(jnp.int32), pad_offsets, rng,
                   max_new_tokens, jnp.float32(temperature), jnp.int32(top_k))
