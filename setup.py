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
    packages=find_packages(include=["moejax", "moejax.*", "pallas_kernels", "pallas_kernels.*"]),
    package_data={"moejax.data": ["digits.npz", "DIGITS_LICENSE.md"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2",
        "ml-collections>=0.1",
        "absl-py>=1.0",
        "numpy>=1.26",
        "scipy>=1.10",          # Student-t quantiles of the studies' paired verdicts
        "safetensors>=0.4.3",   # validated reading/writing of HF and moejax model folders
        "tokenizers>=0.15",     # a checkpoint's tokenizer.json (moejax/data/tokenizer.py)
        "jinja2>=3.1.6",        # its chat template, rendered in jinja2's sandbox
        "qwix>=0.1.8",          # int8 / int4 expert weights (moejax/compress/quantize.py)
        # data: TFDS builders written as array_record, read through grain (no TensorFlow)
        "tensorflow-datasets>=4.9.7",
        "importlib_resources",  # imported by TFDS when it builds a dataset
        "grain>=0.2.6",
        "array_record>=0.5",
        # training: checkpoints, TensorBoard scalars, plots
        "orbax-checkpoint>=0.11",
        "tensorboardX>=2.6",
        "matplotlib>=3.7",
    ],
    extras_require={
        # The jax wheels for accelerators (the default install runs on CPU), and
        # tokamax, whose grouped-matmul kernels gmm_backend='auto' uses there.
        "gpu": ["jax[cuda12]", "tokamax>=0.0.12"],
        "tpu": ["jax[tpu]", "tokamax>=0.0.12"],
        # nbclient + ipykernel execute colabs/ in the test suite; pytest-xdist runs it on
        # both cores. transformers + a CPU torch build the reference models of the
        # HuggingFace conversion tests (torch==2.13.0 is the CPU wheel here; an unpinned
        # torch pulls a multi-GB CUDA build).
        # tokamax: its backend is checked against the reference on CPU.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "nbclient>=0.10", "nbformat>=5.10",
                 "ipykernel>=6.29", "torch==2.13.0", "transformers==5.23.0",
                 "tokamax>=0.0.12"],
    },
)
