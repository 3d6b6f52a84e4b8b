"""Causal expert choice on configs/lm_tiny.py: each expert takes the tokens
whose router probability reaches its threshold, a running estimate of the
cutoff expert choice would use for 2 experts per token on average
(moejax/routing/expert_threshold.py). Unlike router.name='expert_choice', a
token's experts depend on that token alone, so the LM's loss is honest and
the model generates token by token.

  python experiments/train.py --config=configs/lm_tiny_expert_threshold.py \
      --workdir=/tmp/lm_tiny_et
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lm_tiny  # noqa: E402


def get_config():
  c = lm_tiny.get_config()
  c.model.moe.router.name = "expert_threshold"
  c.model.moe.router.capacity_factor = None
  c.model.moe.dispatch = "dropless"
  return c
