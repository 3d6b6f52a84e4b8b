"""A real-scale V-MoE: ViT-S/16 at 224px on ImageNet with 32 experts in every
second block (top-2, batch-prioritised routing, capacity factor 1.05): 29M active
of 242M parameters. Needs accelerators and ImageNet prepared as array_record:

  tfds build imagenet2012 --data_dir=$DATA --file_format=array_record  # manual download
  python experiments/train.py --config=configs/vit_s16_vmoe.py --workdir=$WORKDIR \
      --config.data.data_dir=$DATA
"""

from moejax.train.defaults import experiment_config


def get_config():
  c = experiment_config()
  c.model.update(kind="vit", num_layers=12, d_model=384, num_heads=6, moe_every=2,
                 dense_d_ff=1536, activation="gelu", dtype="bfloat16")
  c.model.vit.update(image_size=224, patch_size=16, num_channels=3, num_classes=1000, pool="cls")
  c.model.moe.update(d_ff=1536, activation="gelu", dispatch="gather", dtype="bfloat16")
  c.model.moe.router.update(name="top_k", num_experts=32, top_k=2, capacity_factor=1.05,
                            drop_policy="probability", noisy_top_k=True)
  c.data.update(name="imagenet2012", train_split="train[:99%]", eval_split="train[99%:]",
                batch_size=1024, eval_batches=0)
  c.train.update(num_steps=300_000, learning_rate=1e-3, warmup_steps=10_000,
                 weight_decay=0.1, lr_schedule="linear", min_lr_ratio=0.0,
                 importance_weight=5e-3, load_balance_weight=5e-3, log_every=100,
                 eval_every=5000, checkpoint_every=5000)
  return c
