"""Shared test helpers. Tests run on CPU; keep shapes small."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One TFDS data dir per test session; the embedded datasets build into it once."""
  return str(tmp_path_factory.mktemp("tfds"))
