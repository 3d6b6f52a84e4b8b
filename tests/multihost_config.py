"""The experiment of the multi-host test: the default config (lm_tiny) cut to
1 block of width 64 on 64-byte sequences (the test is about processes, not
size), 6 logged steps, routing groups that whole devices hold on an
8-device mesh."""

from moejax.train import experiment_from_config
from moejax.train.presets import lm_tiny


def multihost_experiment(data_dir, stop_at_step=None, mesh=None):
  c = lm_tiny()
  c.data.update(data_dir=data_dir, seq_len=64)
  c.model.update(num_layers=1, d_model=64, dense_d_ff=128)
  c.model.moe.d_ff = 64
  c.model.moe.router.routing_groups = 8
  c.train.update(num_steps=6, log_every=1, eval_every=0, checkpoint_every=100,
                 stop_at_step=stop_at_step, plots=False)
  c.data.eval_batches = 2
  c.mesh.update(**(mesh or {"data": 1}))
  return experiment_from_config(c)
