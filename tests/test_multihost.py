"""Two processes on 127.0.0.1 (jax.distributed, gloo CPU collectives, 4 fake
devices each) train the default config on one data=2 x expert=4 mesh: the
losses equal the one-process run's, and their checkpoint resumes in a single
process on one device to the same losses as the uninterrupted run."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from moejax.train import train_and_evaluate
from multihost_config import multihost_experiment

HERE = os.path.dirname(os.path.abspath(__file__))
RTOL = 2e-4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_and_their_checkpoint_resumes_in_one(tmp_path, data_dir):
  whole = train_and_evaluate(multihost_experiment(data_dir), str(tmp_path / "whole"),
                             log=lambda line: None, devices=jax.devices()[:1])
  expected = np.array([h["loss"] for h in whole.history])

  workdir, out = str(tmp_path / "multi"), str(tmp_path / "multi.json")
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multihost_worker.py"),
                             str(port), "2", str(i), workdir, data_dir, out],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=600)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]
  with open(out) as f:
    multi = json.load(f)
  assert (multi["processes"], multi["devices"], multi["step"]) == (2, 8, 4)
  np.testing.assert_allclose(multi["losses"], expected[:4], rtol=RTOL)

  resumed = train_and_evaluate(multihost_experiment(data_dir), workdir,
                               log=lambda line: None, devices=jax.devices()[:1])
  assert resumed.step == 6
  # the resumed run's history is the whole run's (steps 1-4 read back from metrics.jsonl)
  np.testing.assert_allclose([h["loss"] for h in resumed.history], expected, rtol=RTOL)
