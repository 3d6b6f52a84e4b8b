"""tiny_config() as a config file, for experiments/train.py runs that must
match a workdir the tests wrote in-process."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tiny_configs import tiny_config  # noqa: E402


def get_config():
  return tiny_config(train__log_every=1)
