"""DS-MoE variant of configs/lm_tiny.py (Pan et al. 2024, "Dense Training,
Sparse Inference"): every token goes through all 8 experts during training,
weighted by the router's softmax (4x the expert FLOPs of top-2), with the
mutual-information loss that sharpens each token's routing and balances the
experts; evaluation and generation run top-2. Then compare inference routings:

  python experiments/train.py --config=configs/lm_tiny_ds_moe.py --workdir=/tmp/lm_tiny_ds
  python experiments/inference_routing.py --src=/tmp/lm_tiny_ds --top_k=1,2,4 \
      --thresholds=0.5,0.8
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lm_tiny  # noqa: E402


def get_config():
  c = lm_tiny.get_config()
  c.model.moe.router.dense_training = True
  c.model.moe.router.capacity_factor = None
  c.model.moe.dispatch = "dropless"
  c.train.mutual_information_weight = 1e-2
  return c
