"""Shared test helpers. Tests run on CPU; keep shapes small."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

# tests/multidevice needs 8 fake devices, fixed when JAX starts: it runs in its
# own process (tests/test_multidevice.py sets MOEJAX_MULTIDEVICE=1 there).
if os.environ.get("MOEJAX_MULTIDEVICE") != "1":
  collect_ignore = ["multidevice"]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One TFDS data dir per test session; the embedded datasets build into it once."""
  return str(tmp_path_factory.mktemp("tfds"))
