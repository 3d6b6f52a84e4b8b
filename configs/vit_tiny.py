"""V-MoE on the embedded sklearn_digits images (8x8, 10 classes): a 4-block ViT
with MoE in every second block (8 experts, top-2, batch-prioritised routing).
Under a minute on a 2-core CPU.

  python experiments/train.py --config=configs/vit_tiny.py --workdir=/tmp/vit_tiny
"""

from moejax.train.defaults import experiment_config


def get_config():
  c = experiment_config()
  c.model.update(kind="vit", num_layers=4, d_model=64, num_heads=4, moe_every=2,
                 dense_d_ff=256, activation="gelu", image_size=8, patch_size=2,
                 num_channels=1, num_classes=10, pool="mean")
  c.model.moe.update(d_ff=128, activation="gelu", dispatch="gather")
  c.model.moe.router.update(name="top_k", num_experts=8, top_k=2, capacity_factor=1.25,
                            drop_policy="probability")
  c.data.update(name="sklearn_digits", eval_split="test", batch_size=64, eval_batches=0)
  c.train.update(num_steps=400, learning_rate=2e-3, warmup_steps=40, weight_decay=0.05,
                 log_every=50, eval_every=200, checkpoint_every=200)
  return c
