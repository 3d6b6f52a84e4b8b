"""Sparse upcycling (Komatsuzaki et al. 2023): an MoE LM initialised from a
dense LM. Attention, norms and embeddings are copied; each MoE block's
experts start as copies of the dense FFN it replaces; the router is new.

With granularity g > 1 (fine-grained upcycling) the dense FFN's hidden units
are cut into g slices of d_ff / g and expert e starts as slice e mod g, its
output projection scaled by g: a token whose k renormalised choices cover
each slice once then computes exactly the dense FFN. `noise_std` adds
N(0, (noise_std * std(w))^2) per expert to break the copies' symmetry.

Step-0 equality with the dense model holds when granularity = 1,
noise_std = 0 and the router renormalises its top-k weights to sum to one
(router.normalize_top_k with softmax scores, routed_scaling_factor = 1, no
null experts, no capacity drops).

With moe.lora_rank > 0 every expert gets LoRA adapters (A random, B zero, so
step-0 equality still holds); with moe.lora_shared_base the experts keep one
copy of the dense FFN and differ only by their adapters (MoLoRA): train
them with train.trainable='lora_and_router'.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from moejax.config import MoEConfig
from moejax.convert.hf_import import variable_shapes
from moejax.experts import LORA_A, LORA_B, init_lora_a
from moejax.models.config import ModelConfig
from moejax.validation import fail


def upcycled_config(dense: ModelConfig, moe: MoEConfig, moe_every: int = 1,
                    first_dense_layers: int = 0, granularity: int = 1) -> ModelConfig:
  """The MoE ModelConfig; checks that `dense` can seed it."""
  if dense.kind != "lm" or dense.moe_layers:
    fail("dense model", f"kind={dense.kind}, moe_every={dense.moe_every}",
         "upcycling starts from a dense LM (kind='lm', moe_every=0)")
  if moe.activation != dense.activation:
    fail("moe.activation", moe.activation, f"must equal the dense FFN's {dense.activation!r}")
  if isinstance(granularity, bool) or not isinstance(granularity, int) or granularity < 1:
    fail("granularity", granularity, "must be an integer >= 1")
  if dense.dense_d_ff % granularity or moe.d_ff != dense.dense_d_ff // granularity:
    fail("moe.d_ff", moe.d_ff, f"must be dense d_ff / granularity = {dense.dense_d_ff} / "
         f"{granularity}")
  if moe.lora_shared_base and granularity != 1:
    fail("granularity", granularity, "must be 1 with moe.lora_shared_base: the experts share "
         "the whole dense FFN")
  if moe.num_shared_experts:
    fail("moe.num_shared_experts", moe.num_shared_experts, "upcycling makes routed experts "
         "only; use 0")
  moe = dataclasses.replace(moe, d_model=dense.d_model)
  return dataclasses.replace(dense, moe=moe, moe_every=moe_every,
                             first_dense_layers=first_dense_layers)


def upcycle(dense: ModelConfig, variables: dict, moe: MoEConfig, *, rng: jax.Array,
            moe_every: int = 1, first_dense_layers: int = 0, granularity: int = 1,
            noise_std: float = 0.0, router_init_std: float = 0.02) -> Tuple[ModelConfig, dict]:
  """(MoE ModelConfig, its variables) seeded from a dense LM's variables."""
  config = upcycled_config(dense, moe, moe_every, first_dense_layers, granularity)
  if noise_std < 0 or router_init_std < 0:
    fail("noise_std" if noise_std < 0 else "router_init_std",
         min(noise_std, router_init_std), "must be >= 0")
  if noise_std and moe.lora_shared_base:
    fail("noise_std", noise_std, "must be 0 with moe.lora_shared_base (one copy of the FFN; "
         "the random adapters tell the experts apart)")
  source = {path: np.asarray(v) for path, v in flatten_dict(variables).items()}
  shapes = variable_shapes(config)
  out = {}
  num_experts = config.moe.router.num_experts
  for path, shape in shapes.items():
    if path in source:
      if source[path].shape != shape:
        fail("/".join(path), source[path].shape, f"the MoE model wants shape {shape}")
      out[path] = source[path]
  for i in config.moe_layers:
    ffn = lambda name, leaf: source[("params", f"block_{i}", "ffn", "ffn", name, leaf)]
    moe_at = ("params", f"block_{i}", "moe")
    for name in ("w_in", "w_gate", "w_out"):
      if ("params", f"block_{i}", "ffn", "ffn", name, "kernel") not in source:
        continue
      kernel = ffn(name, "kernel")
      if moe.lora_rank:
        rng, key = jax.random.split(rng)
        a_path = moe_at + ("experts", name + LORA_A)
        out[a_path] = np.asarray(init_lora_a(key, shapes[a_path]))
        b_path = moe_at + ("experts", name + LORA_B)
        out[b_path] = np.zeros(shapes[b_path], np.float32)
      if moe.lora_shared_base:
        out[moe_at + ("experts", name)] = kernel[None]
        continue
      experts = []
      for e in range(num_experts):
        part = e % granularity
        if name == "w_out":
          piece = kernel[part * moe.d_ff:(part + 1) * moe.d_ff] * granularity
        else:
          piece = kernel[:, part * moe.d_ff:(part + 1) * moe.d_ff]
        if noise_std:
          rng, key = jax.random.split(rng)
          piece = piece + noise_std * piece.std() * np.asarray(
              jax.random.normal(key, piece.shape, piece.dtype))
        experts.append(piece)
      out[moe_at + ("experts", name)] = np.stack(experts)
    rng, key = jax.random.split(rng)
    router_shape = shapes[moe_at + ("router", "kernel")]
    out[moe_at + ("router", "kernel")] = router_init_std * np.asarray(
        jax.random.normal(key, router_shape, jnp.float32))
  for path, shape in shapes.items():   # aux-loss-free bias and other router state start at 0
    if path not in out and path[0] == "router_state":
      out[path] = np.zeros(shape, np.float32)
  missing = sorted(set(shapes) - set(out))
  if missing:
    fail("dense model", "/".join(missing[0]), "has nothing to seed this MoE variable from "
         "(expert biases need a dense FFN with biases)")
  return config, jax.tree.map(jnp.asarray, unflatten_dict(out))
