"""Dense baseline of configs/lm_tiny.py with equal active parameters: every
block's FFN has d_ff = top_k * expert d_ff = 512 (the MoE model holds 4x the
FFN parameters, of which each token uses the same 512-wide share).

  python experiments/train.py --config=configs/lm_tiny_dense.py --workdir=/tmp/lm_tiny_dense
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lm_tiny  # noqa: E402

from moejax.train.defaults import dense_baseline  # noqa: E402


def get_config():
  return dense_baseline(lm_tiny.get_config())
