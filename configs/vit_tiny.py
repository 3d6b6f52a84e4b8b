"""V-MoE on the embedded sklearn_digits images (8x8, 10 classes): a 4-block ViT
with MoE in every second block (8 experts, top-2, batch-prioritised routing).
Under a minute on a 2-core CPU.

  python experiments/train.py --config=configs/vit_tiny.py --workdir=/tmp/vit_tiny
"""

from moejax.train.presets import vit_tiny


def get_config():
  return vit_tiny()
