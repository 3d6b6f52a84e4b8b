"""PEER variant of configs/lm_tiny.py (He 2024, "Mixture of A Million
Experts"): each MoE block holds 48^2 = 2304 single-neuron experts (d_ff 1, as
many expert parameters as lm_tiny's 8 x 256 plus 12%), found by product-key
retrieval: 8 heads, each picks 16 experts, so a token uses 128 expert
neurons (lm_tiny: 2 x 256 = 512). Experts come to the tokens
(dispatch='retrieval'); no [tokens, experts] score matrix is ever built.

  python experiments/train.py --config=configs/lm_tiny_peer.py --workdir=/tmp/lm_tiny_peer
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lm_tiny  # noqa: E402


def get_config():
  c = lm_tiny.get_config()
  c.model.moe.router.update(name="product_key", num_experts=48 ** 2, top_k=16,
                            capacity_factor=None)
  c.model.moe.router.product_key.update(heads=8, key_dim=32)
  c.model.moe.update(d_ff=1, dispatch="retrieval", activation="gelu")
  c.train.load_balance_weight = 0.0  # PEER uses no balance loss (none applies: no [T, N] probs)
  return c
