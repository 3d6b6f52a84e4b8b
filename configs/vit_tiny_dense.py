"""Dense baseline of configs/vit_tiny.py with equal active parameters: the MoE
blocks become dense FFNs of width top_k * expert d_ff = 256.

  python experiments/train.py --config=configs/vit_tiny_dense.py --workdir=/tmp/vit_tiny_dense
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vit_tiny  # noqa: E402

from moejax.train.defaults import dense_baseline  # noqa: E402


def get_config():
  return dense_baseline(vit_tiny.get_config())
