"""One process of the multi-host test (tests/test_multihost.py): joins a
jax.distributed job on 127.0.0.1 with gloo CPU collectives, trains the default
config (lm_tiny) on a data=2 x expert=4 mesh over both processes' devices, and
(process 0) writes the logged losses as JSON.

  python tests/multihost_worker.py PORT NUM_PROCESSES PROCESS_ID WORKDIR DATA_DIR OUT_JSON
"""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from multihost_config import multihost_experiment  # noqa: E402

from moejax.parallel import initialize  # noqa: E402


def main(port, num_processes, process_id, workdir, data_dir, out_json):
  initialize(f"127.0.0.1:{port}", int(num_processes), int(process_id))
  import jax
  from moejax.train import train_and_evaluate
  exp = multihost_experiment(data_dir, stop_at_step=4, mesh=dict(data=2, expert=4))
  summary = train_and_evaluate(exp, workdir, log=lambda line: None)
  if jax.process_index() == 0:
    with open(out_json, "w") as f:
      json.dump({"losses": [h["loss"] for h in summary.history], "step": summary.step,
                 "devices": jax.device_count(), "processes": jax.process_count()}, f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:])
