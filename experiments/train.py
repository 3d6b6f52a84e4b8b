"""Trains a model from a config, resuming from the workdir's latest checkpoint.

  python experiments/train.py --config=configs/lm_tiny.py --workdir=/tmp/lm_tiny \
      [--config.train.num_steps=2000 ...]

Writes to the workdir: checkpoints/ (orbax, with the data-iterator state),
metrics.jsonl, tensorboard/, config.json, loss.png, expert_load.png.
SIGTERM or a first Ctrl-C saves a checkpoint and exits 0; run the same command to resume.

Fine-tuning: --config.train.init_from=<HF folder | moejax model folder | workdir>
starts from those weights with a fresh optimizer; the source defines the model, and
--config.model.x=y overrides apply where they keep every weight's shape
(moejax/train/init_from.py), e.g. an upcycled model:
  python experiments/train.py --workdir=/tmp/ft --config.train.init_from=/tmp/moe \
      --config.train.num_steps=200 --config.model.moe.router.name=sinkhorn

The mesh comes from the config (--config.mesh.data / fsdp / expert / tensor;
default: data parallel over every device). Multi-host: start one process per
host with the same flags plus either --multihost (TPU pod slices, SLURM, MPI:
JAX finds the coordinator itself) or --coordinator_address=host:port
--num_processes=N --process_id=i. All processes must see the same --workdir
(a shared filesystem) for checkpoints.
One run at a time per workdir (a second one refuses, naming the holder).
Checkpoints are verified on resume: a damaged step is renamed to
<step>.corrupt and the newest step that verifies is used.
Exit codes: 0 done or stopped cleanly; 1 data/checkpoint/training error;
2 bad flag or config. Errors are one line on stderr.
"""

from __future__ import annotations


from absl import flags

from moejax.cli import config_overrides, config_value, define_config, fail, run

_CONFIG = define_config("configs/lm_tiny.py", "ml_collections config file (see configs/).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots; "
                               "an existing one is resumed.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Join a multi-process job whose coordinator "
                               "JAX detects itself (TPU pod slice, SLURM, Open MPI).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for an "
                                   "explicitly started multi-process job.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (with "
                                      "--coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes) "
                                   "(with --coordinator_address).")



def main(argv):
  if len(argv) > 1:
    fail(2, f"unexpected arguments {argv[1:]}; use --config.x=y to override config fields")
  config = config_value(_CONFIG)
  if not _WORKDIR.value:
    fail(2, "--workdir is required (a directory for checkpoints, metrics and plots)")
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if _MULTIHOST.value or any(v is not None for v in explicit):
    from moejax.parallel import initialize
    try:
      initialize(*explicit)
    except ValueError as err:
      fail(2, f"--{err}")
  # Heavy imports after flag parsing, so --help and bad flags answer at once.
  from moejax.data import DataError
  from moejax.train import (CheckpointError, TrainingError, check_on_devices,
                            experiment_from_config, train_and_evaluate)
  from moejax.train.guarantees import WorkdirError
  from moejax.train.init_from import InitFromError, resolve_model
  try:
    if config.train.init_from:
      config, origin = resolve_model(config, config_overrides(), _WORKDIR.value)
      print(origin, flush=True)
    exp = experiment_from_config(config)
    check_on_devices(exp)
  except ValueError as err:
    fail(2, f"config.{err}")
  try:
    summary = train_and_evaluate(exp, _WORKDIR.value)
  except (DataError, CheckpointError, TrainingError, WorkdirError, InitFromError) as err:
    fail(1, str(err))
  import jax
  if jax.process_index() == 0:  # every process has the same summary
    from moejax.train.report import print_summary
    print_summary(summary, _WORKDIR.value)


if __name__ == "__main__":
  run(main)
