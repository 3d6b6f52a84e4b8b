"""Trains a model from a config, resuming from the workdir's latest checkpoint.

  python experiments/train.py --config=configs/lm_tiny.py --workdir=/tmp/lm_tiny \
      [--config.train.num_steps=2000 ...]

Writes to the workdir: checkpoints/ (orbax, with the data-iterator state),
metrics.jsonl, tensorboard/, config.json, loss.png, expert_load.png.
SIGTERM saves a checkpoint and exits 0; run the same command to resume.
Exit codes: 0 done or stopped cleanly; 1 data/checkpoint/training error;
2 bad flag or config. Errors are one line on stderr.
"""

from __future__ import annotations

import sys

from absl import flags

from moejax.cli import config_value, define_config, run

_CONFIG = define_config("configs/lm_tiny.py", "ml_collections config file (see configs/).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots; "
                               "an existing one is resumed.")


def _fail(code: int, message: str):
  sys.stderr.write(f"error: {message}\n")
  sys.exit(code)


def main(argv):
  if len(argv) > 1:
    _fail(2, f"unexpected arguments {argv[1:]}; use --config.x=y to override config fields")
  config = config_value(_CONFIG)
  if not _WORKDIR.value:
    _fail(2, "--workdir is required (a directory for checkpoints, metrics and plots)")
  # Heavy imports after flag parsing, so --help and bad flags answer at once.
  from moejax.data import DataError
  from moejax.train import (CheckpointError, TrainingError, experiment_from_config,
                            train_and_evaluate)
  try:
    exp = experiment_from_config(config)
  except ValueError as err:
    _fail(2, f"config.{err}")
  try:
    summary = train_and_evaluate(exp, _WORKDIR.value)
  except (DataError, CheckpointError, TrainingError) as err:
    _fail(1, str(err))
  from moejax.train.report import print_summary
  print_summary(summary, _WORKDIR.value)


if __name__ == "__main__":
  run(main)
