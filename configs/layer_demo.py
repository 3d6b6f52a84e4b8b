"""Default config of experiments/layer_demo.py: a student MoE layer learns a
teacher MoE function on CPU in well under a minute.

Override anything from the command line, e.g.
  --config.moe.router.name=expert_choice --config.moe.router.capacity_factor=2
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.steps = 600             # optimizer steps
  c.batch_tokens = 512      # tokens per step, routed as one group
  c.learning_rate = 3e-3    # Adam
  c.log_every = 100         # progress line every N steps
  c.load_balance_weight = 1e-2
  c.z_loss_weight = 1e-3
  c.teacher_experts = 8     # the target function is a top-1 MoE with this many experts
  c.moe = ml_collections.ConfigDict(dict(
      d_model=32, d_ff=64, activation="gelu", dispatch="dropless", gmm_backend="ragged_dot",
      num_shared_experts=0, shared_d_ff=config_dict.placeholder(int), shared_expert_gate=False, use_bias=False,
      dtype="float32",
      router=dict(name="top_k", num_experts=8, top_k=2, score_fn="softmax",
                  normalize_top_k=True, capacity_factor=config_dict.placeholder(float), drop_policy="position",
                  jitter_noise=0.0, use_expert_bias=False),
  ))
  return c
