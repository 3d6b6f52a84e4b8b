"""The MoE layer: router -> dispatch -> experts -> combine (+ shared experts).

Flax linen shells over the pure routing / dispatch / expert functions.

Variables:
  params/router/kernel        [d_model, router outputs]
  params/router/noise_kernel  [d_model, router outputs]  (noisy_top_k)
  params/router/scale         []  (router.soft_moe.normalize)
  params/router/bias          [router outputs]  (logit_bias)
  params/router/sub_keys      [heads, 2, sqrt(E), key_dim / 2]  (product_key;
      the kernel is then the query projection [d_model, heads * key_dim])
  router_state/router/expert_bias [E]  (use_expert_bias; not trained by
      gradients: on a training call (deterministic=False) with 'router_state'
      mutable, the layer applies moejax.routing.update_expert_bias with the
      batch's load and router.expert_bias_update_rate)
  router_state/router/expert_threshold [E], threshold_updates []
      (router.name='expert_threshold'; likewise updated on training calls by
      moejax.routing.expert_threshold.update_expert_threshold)
  router_state/router/l1_weight []  (router.name='remoe': the adaptive
      coefficient of its L1 penalty, updated on training calls)
  The router's variables beyond the kernel are made by its family's
  `prepare` (moejax/routing/<family>.py).
  params/experts/{w_in, w_gate, w_out, b_in, b_gate, b_out}  stacked over experts
  params/router/gating_residual [outputs, outputs]  (gating_residual, in MoE
      layers after the first)
  params/shared/...  and params/shared_gate/kernel  (shared experts)
  params/zero_computation/{constant_vectors, constant_gates}  (MoE++
      constant experts)

RNG streams: 'router' (jitter, logit noise, second-expert sampling), only when
deterministic=False.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from moejax.config import MoEConfig, RouterConfig
from moejax.dispatch import get_strategy
from moejax.dispatch.expert_parallel import (EXPERT_AXIS, expert_parallel,
                                             token_shards)
from moejax.experts import ExpertBank, FeedForward, ZeroComputationExperts
from moejax.parallel.mesh import axis_size, current_mesh
from moejax.routing import RouterOutput, aux_losses, route_in_groups, routing_metrics, zero_losses
from moejax.routing.dense_training import dense_training_routing
from moejax.routing.types import Routing, at_least_f32


def _l2_normalize(x: jax.Array, axis: int) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + 1e-6)


@struct.dataclass
class MoEAux:
  """Aux losses (unweighted scalars) and routing metrics of one layer call;
  router_logits [tokens, outputs] only with router.gating_residual (for the
  next MoE layer)."""

  losses: Dict[str, jax.Array]
  metrics: Dict[str, jax.Array]
  router_logits: Optional[jax.Array] = None


class Router(nn.Module):
  """Router projection + the pure router of `config.name`'s family, whose
  `prepare` makes the parameters and state that family needs."""

  config: RouterConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, token_ids: Optional[jax.Array] = None,
               deterministic: bool = True, groups: Optional[int] = None,
               prev_logits: Optional[jax.Array] = None) -> RouterOutput:
    """x: [T, d_model]; token_ids: [T] (hash routing only); groups: routed
    groups of consecutive tokens (default config.routing_groups);
    prev_logits: [T, outputs] the previous MoE layer's logits (gating
    residual)."""
    cfg = self.config
    x = at_least_f32(x)
    stochastic = cfg.jitter_noise > 0 or cfg.noisy_top_k or cfg.second_expert_sampling
    rng = self.make_rng("router") if stochastic and not deterministic else None
    if rng is not None:
      jitter_rng, rng = jax.random.split(rng)
      if cfg.jitter_noise > 0:
        x = x * jax.random.uniform(jitter_rng, x.shape, minval=1.0 - cfg.jitter_noise,
                                   maxval=1.0 + cfg.jitter_noise)

    def project(inputs: jax.Array, normalize: bool = False) -> jax.Array:
      """The router kernel's logits [T, outputs]; normalize: vmoe's normalised
      Soft MoE (L2-normalised tokens and kernel columns, a learned scale)."""
      init = nn.initializers.variance_scaling(0.1, "fan_in", "truncated_normal")
      kernel = self.param("kernel", init, (inputs.shape[-1], cfg.num_router_outputs))
      if normalize:
        scale = self.param("scale", nn.initializers.ones, ())
        logits = scale * (_l2_normalize(inputs, axis=-1) @ _l2_normalize(kernel, axis=0))
      else:
        logits = inputs @ kernel
      if cfg.logit_bias:
        logits = logits + self.param("bias", nn.initializers.zeros, (cfg.num_router_outputs,))
      if cfg.gating_residual and prev_logits is not None:
        residual = self.param("gating_residual", nn.initializers.zeros,
                              (cfg.num_router_outputs, cfg.num_router_outputs))
        logits = logits + at_least_f32(prev_logits) @ residual
      return logits

    prepared = cfg.family.prepare(self, cfg, x, project, rng, token_ids)
    out = route_in_groups(cfg, prepared.logits, groups=groups, **prepared.inputs)
    updating = (not deterministic and self.is_mutable_collection("router_state")
                and not self.is_initializing())
    if updating and prepared.update is not None:
      prepared.update(out)
    return out


class MoELayer(nn.Module):
  """Mixture-of-Experts FFN. Call: x [..., d_model] -> (y [..., d_model], MoEAux).

  The tokens of the call are routed in config.router.routing_groups groups.

  Under `jax.set_mesh(mesh)` with more than one device, 'gather' and
  'dropless' dispatch run expert-parallel inside shard_map (tokens split over
  data x fsdp x expert, experts over `expert`; moejax.dispatch.
  expert_parallel); 'einsum' dispatch, Soft MoE and the router itself are
  left to XLA's partitioner. The numbers do not depend on the mesh.
  """

  config: MoEConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, token_ids: Optional[jax.Array] = None,
               deterministic: bool = True,
               prev_router_logits: Optional[jax.Array] = None) -> Tuple[jax.Array, MoEAux]:
    """prev_router_logits: the previous MoE layer's MoEAux.router_logits
    (router.gating_residual; None for the first MoE layer)."""
    cfg = self.config
    if x.shape[-1] != cfg.d_model:
      raise ValueError(f"input last dim {x.shape[-1]} != d_model={cfg.d_model}")
    dtype = jnp.dtype(cfg.dtype)
    tokens = x.reshape(-1, cfg.d_model)
    ids = None if token_ids is None else token_ids.reshape(-1)
    out = Router(cfg.router, name="router")(tokens, token_ids=ids, deterministic=deterministic,
                                            groups=self._routing_groups(x),
                                            prev_logits=prev_router_logits)
    # DS-MoE trains with every expert; losses and metrics stay the sparse rule's.
    routing = out.routing
    if cfg.router.dense_training and not deterministic:
      routing = dense_training_routing(out.logits, cfg.router)
    experts = ExpertBank.from_config(cfg, name="experts")
    compute_tokens = tokens.astype(dtype)
    layout = experts.row_layout()
    mesh = None if self.is_initializing() else current_mesh()
    strategy = get_strategy(cfg.dispatch, layout)
    if mesh is not None and self._expert_parallel_ok(mesh, routing, strategy):
      y = expert_parallel(compute_tokens, routing, experts.weights(), experts.pure_fn(),
                          dispatch=cfg.dispatch, layout=layout, mesh=mesh,
                          exchange=cfg.ep_exchange)
    else:
      y = strategy(compute_tokens, routing, experts)
    if cfg.num_shared_experts:
      shared_ff = cfg.num_shared_experts * (cfg.shared_d_ff or cfg.d_ff)
      shared = FeedForward(cfg.d_model, shared_ff, cfg.activation, cfg.use_bias, dtype,
                           name="shared")(compute_tokens)
      if cfg.shared_expert_gate:
        gate = nn.Dense(1, use_bias=False, name="shared_gate")(at_least_f32(tokens))
        shared = shared * jax.nn.sigmoid(gate).astype(dtype)
      y = y + shared
    if out.zero_computation_weight is not None:  # MoE++ copy / constant experts
      r = cfg.router
      y = y + ZeroComputationExperts(r.num_copy_experts, r.num_constant_experts, dtype,
                                     name="zero_computation")(compute_tokens,
                                                              out.zero_computation_weight)
    aux = MoEAux(losses=aux_losses(out, cfg.router.balance_weights),
                 metrics=routing_metrics(out),
                 router_logits=out.logits if cfg.router.gating_residual else None)
    return y.reshape(x.shape).astype(x.dtype), aux

  def _routing_groups(self, x: jax.Array) -> int:
    """The family's groups for this input (Soft MoE: one per example)."""
    return self.config.router.family.routing_groups(self.config.router, x.shape)

  def _expert_parallel_ok(self, mesh, routing, strategy) -> bool:
    """Whether this call can run expert-parallel on `mesh` (warns where the
    mesh changes how it runs, never what it computes)."""
    cfg = self.config
    if not strategy.expert_parallel or not isinstance(routing, Routing):
      return False
    shards = token_shards(mesh)
    if getattr(strategy, "pallas", False) and axis_size(mesh, EXPERT_AXIS) > 1:
      warnings.warn(
          "MoE gmm_backend='pallas' on an expert mesh axis of size "
          f"{axis_size(mesh, EXPERT_AXIS)}: the grouped matmul runs on the Pallas kernels, but "
          "rows are moved by the expert-parallel exchange (XLA gathers), not the fused Pallas "
          "permute", stacklevel=2)
    if cfg.dispatch == "gather" and cfg.router.routing_groups % shards:
      warnings.warn(
          f"MoE dispatch='gather' with router.routing_groups={cfg.router.routing_groups} on "
          f"{shards} token shards runs through XLA's partitioner, not expert-parallel "
          f"all_to_all: set router.routing_groups to a multiple of {shards} (or use "
          "dispatch='dropless') for expert parallelism", stacklevel=2)
      return False
    return True


class MultiHeadMoELayer(nn.Module):
  """MH-MoE (Wu et al. 2024): each token becomes config.mh_heads sub-tokens
  that a plain MoELayer routes and computes one by one. Same call as
  MoELayer: x [..., S, d_model] -> (y [..., S, d_model], MoEAux).

    u = x W_split                               [..., S, d]
    sub-tokens: u as [..., S * h, d / h]        (a token's h sub-tokens adjacent)
    y_sub = MoELayer with d_model = d / h       (any router, dispatch, EP)
    y = concat of a token's sub-outputs W_merge [..., S, d]

  Aux losses and routing metrics are those of the sub-token MoE layer.
  Without projections (config.mh_projections False) the sub-tokens are plain
  slices of the token.
  """

  config: MoEConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, token_ids: Optional[jax.Array] = None,
               deterministic: bool = True,
               prev_router_logits: Optional[jax.Array] = None) -> Tuple[jax.Array, MoEAux]:
    cfg = self.config
    heads, width = cfg.mh_heads, cfg.d_model // cfg.mh_heads
    if x.ndim < 2 or x.shape[-1] != cfg.d_model:
      raise ValueError(f"MH-MoE input has shape {x.shape}: needs [..., tokens, "
                       f"d_model={cfg.d_model}]")
    dtype = jnp.dtype(cfg.dtype)
    project = lambda name: nn.Dense(cfg.d_model, use_bias=False, dtype=dtype, name=name)
    u = project("mh_split")(x) if cfg.mh_projections else x
    subs = u.reshape(*x.shape[:-2], x.shape[-2] * heads, width)
    ids = None if token_ids is None else jnp.repeat(token_ids, heads, axis=-1)
    inner = dataclasses.replace(cfg, d_model=width, mh_heads=1)
    y, aux = MoELayer(inner, name="sub_moe")(subs, token_ids=ids, deterministic=deterministic,
                                             prev_router_logits=prev_router_logits)
    y = y.reshape(x.shape)
    if cfg.mh_projections:
      y = project("mh_merge")(y).astype(x.dtype)
    return y, aux


def moe_layer(config: MoEConfig, name: str) -> nn.Module:
  """The MoE layer a block uses: MultiHeadMoELayer when config.mh_heads > 1."""
  if config.mh_heads > 1:
    return MultiHeadMoELayer(config, name=name)
  return MoELayer(config, name=name)


class DenseFFNLayer(nn.Module):
  """Dense FFN baseline with MoELayer's call signature and zero aux losses."""

  d_model: int
  d_ff: int
  activation: str = "gelu"
  use_bias: bool = False
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, *, token_ids: Optional[jax.Array] = None,
               deterministic: bool = True, prev_router_logits=None) -> Tuple[jax.Array, MoEAux]:
    del token_ids, deterministic, prev_router_logits
    y = FeedForward(self.d_model, self.d_ff, self.activation, self.use_bias,
                    jnp.dtype(self.dtype), name="ffn")(x.astype(jnp.dtype(self.dtype)))
    return y.astype(x.dtype), MoEAux(losses=zero_losses(), metrics={})
