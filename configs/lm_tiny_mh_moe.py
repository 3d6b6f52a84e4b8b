"""MH-MoE variant of configs/lm_tiny.py (Wu et al. 2024): every token is split
into 4 sub-tokens of width 32, each routed top-2 among 32 experts of width
32 x d_ff 256. Same expert parameters (32 x 2 x 32 x 256 = 8 x 2 x 128 x 256)
and the same active expert FLOPs per token as lm_tiny, plus the 2 x 128 x 128
split / merge projections per block.

  python experiments/train.py --config=configs/lm_tiny_mh_moe.py --workdir=/tmp/lm_tiny_mh
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lm_tiny  # noqa: E402


def get_config():
  c = lm_tiny.get_config()
  c.model.moe.mh_heads = 4
  c.model.moe.router.num_experts = 32
  return c
