"""Shared test helpers. Tests run on CPU; keep shapes small."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
