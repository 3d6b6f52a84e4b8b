"""The default experiment: a 4-block byte-level MoE LM (8 experts, top-2,
dropless) on the embedded stdlib_bytes corpus. About 4 minutes on a 2-core
CPU. The values live in moejax/train/presets.py (notebooks use them).

  python experiments/train.py --config=configs/lm_tiny.py --workdir=/tmp/lm_tiny

Every field of moejax/train/defaults.py can be overridden, e.g.
  --config.model.moe.router.name=expert_choice --config.model.moe.router.capacity_factor=1.0
"""

from moejax.train.presets import lm_tiny


def get_config():
  return lm_tiny()
