"""SwitchHead variant of configs/lm_tiny.py (Csordás et al. 2023): 2 attention
heads of width 32 instead of 4, each with 4 value and 4 output experts of
which a token uses 2 (sigmoid gates). The value / output projections cost a
token the same FLOPs as lm_tiny's dense 4-head ones; the attention matrices
(scores and mixing) half as much.

  python experiments/train.py --config=configs/lm_tiny_switchhead.py \
      --workdir=/tmp/lm_tiny_switchhead
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lm_tiny  # noqa: E402


def get_config():
  c = lm_tiny.get_config()
  c.model.update(num_heads=2, head_dim=32, attention_experts=4, attention_top_k=2)
  return c
