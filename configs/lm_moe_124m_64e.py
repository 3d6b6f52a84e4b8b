"""A real-scale LM: 124M active of 669M parameters, 64 fine-grained experts (top-8)
plus one shared expert, DeepSeek-style sigmoid routing with aux-loss-free
balancing; byte-level C4. Needs accelerators (and C4 prepared as array_record):

  tfds build c4/en --data_dir=$DATA --file_format=array_record
  python experiments/train.py --config=configs/lm_moe_124m_64e.py --workdir=$WORKDIR \
      --config.data.data_dir=$DATA

Per token: 12 blocks x (attention 2.4M + 8 routed x 0.88M + shared 0.88M SwiGLU).
"""

from moejax.train.defaults import experiment_config


def get_config():
  c = experiment_config()
  c.model.update(kind="lm", num_layers=12, d_model=768, num_heads=12, moe_every=1,
                 first_dense_layers=1, dense_d_ff=3072, activation="swiglu", dtype="bfloat16")
  c.model.moe.update(d_ff=384, activation="swiglu", dispatch="dropless", dtype="bfloat16",
                     num_shared_experts=1)
  c.model.moe.router.update(name="top_k", num_experts=64, top_k=8, score_fn="sigmoid",
                            normalize_top_k=True, num_expert_groups=8, top_k_groups=4,
                            routed_scaling_factor=2.5, use_expert_bias=True)
  c.data.update(name="c4/en", train_split="train", eval_split="validation", text_key="text",
                seq_len=1024, batch_size=256, eval_batches=50)
  c.train.update(num_steps=100_000, learning_rate=6e-4, warmup_steps=2000, weight_decay=0.1,
                 load_balance_weight=1e-3, log_every=100, eval_every=2000,
                 checkpoint_every=2000, keep_checkpoints=3)
  return c
