"""moejax: Mixture-of-Experts research code in JAX/Flax."""

import pathlib

from setuptools import find_packages, setup

here = pathlib.Path(__file__).parent
setup(
    name="moejax",
    version="0.1.0",
    description="Mixture-of-Experts in JAX/Flax: routers, dispatch, experts, expert parallelism.",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["moejax", "moejax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2",
        "ml-collections>=0.1",
        "absl-py>=1.0",
        "numpy>=1.26",
    ],
    extras_require={
        "test": ["pytest>=8"],
    },
)
