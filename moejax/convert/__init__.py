"""Foreign checkpoints: HuggingFace safetensors import / export, and sparse
upcycling of dense models into MoE models."""

from moejax.convert.families import FAMILIES, UnsupportedModelError, model_config_from_hf
from moejax.convert.hf_import import CheckpointMismatchError, ImportedModel, load_hf
from moejax.convert.safetensors_io import (CheckpointFormatError, read_checkpoint_dir,
                                           read_safetensors, write_checkpoint_dir,
                                           write_safetensors)

__all__ = [
    "FAMILIES", "CheckpointFormatError", "CheckpointMismatchError", "ImportedModel",
    "UnsupportedModelError", "load_hf", "model_config_from_hf", "read_checkpoint_dir",
    "read_safetensors", "write_checkpoint_dir", "write_safetensors",
]
