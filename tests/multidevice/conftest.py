"""Tests that need 8 (fake) CPU devices. XLA fixes the device count when JAX
starts, so tests/test_multidevice.py runs this directory in its own process
with XLA_FLAGS=--xla_force_host_platform_device_count=8."""

import jax
import pytest


@pytest.fixture(autouse=True)
def _need_eight_devices():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices: run through tests/test_multidevice.py")
