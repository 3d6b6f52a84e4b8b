"""Runs tests/multidevice in separate processes with 8 fake CPU devices
(XLA fixes the device count when JAX starts, so it cannot be this process).
One process per file, so that xdist spreads them over the workers; they
share the run's compilation cache (tests/conftest.py)."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = sorted(f for f in os.listdir(os.path.join(HERE, "multidevice")) if f.startswith("test_"))


@pytest.mark.parametrize("name", FILES)
def test_multidevice_suite_on_eight_fake_devices(tmp_path, name):
  env = dict(os.environ, MOEJAX_MULTIDEVICE="1", JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
             + " --xla_force_host_platform_device_count=8")
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
       f"--basetemp={tmp_path}", os.path.join(HERE, "multidevice", name)],
      env=env, cwd=os.path.dirname(HERE), capture_output=True, text=True, timeout=1800)
  tail = (result.stdout + result.stderr)[-6000:]
  assert result.returncode == 0, tail
  assert " passed" in result.stdout and "skipped" not in result.stdout, tail
