"""MXFP4 expert weights, as gpt-oss's released checkpoints store them, to float.

A quantized tensor `<name>` is stored as two:

- `<name>_blocks`: uint8 [E, out, groups, 16], 32 FP4 (E2M1) values per
  group of input channels, two per byte, the low nibble first;
- `<name>_scales`: uint8 [E, out, groups], each group's power-of-two scale
  (E8M0: 2^(s - 127)).

The float tensor is gpt-oss's [E, in, out]. ml_dtypes decodes both number
formats; this module only unpacks the nibbles and transposes, so it has no
table of FP4 values of its own.
"""

from __future__ import annotations

from typing import Dict, Mapping

import ml_dtypes
import numpy as np

from moejax.convert.safetensors_io import CheckpointFormatError

BLOCKS, SCALES = "_blocks", "_scales"


class MXFP4FormatError(CheckpointFormatError):
  """A _blocks / _scales pair that is not MXFP4."""


def dequantize_mxfp4(blocks: np.ndarray, scales: np.ndarray, name: str = "") -> np.ndarray:
  """float32 [E, in, out] from blocks [E, out, groups, 16] and scales [E, out, groups]."""
  blocks, scales = np.asarray(blocks), np.asarray(scales)
  if (blocks.dtype != np.uint8 or scales.dtype != np.uint8 or blocks.ndim != 4
      or blocks.shape[-1] != 16 or blocks.shape[:-1] != scales.shape):
    raise MXFP4FormatError(
        f"{name}: MXFP4 needs uint8 {name}{BLOCKS} [E, out, groups, 16] and {name}{SCALES} "
        f"[E, out, groups]; got {blocks.dtype} {list(blocks.shape)} and {scales.dtype} "
        f"{list(scales.shape)}")
  nibbles = np.stack([blocks & 0x0F, blocks >> 4], axis=-1)     # [E, out, groups, 16, 2]
  values = nibbles.view(ml_dtypes.float4_e2m1fn).astype(np.float32)
  scale = scales.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
  weights = values.reshape(*scales.shape, 32) * scale[..., None]   # [E, out, groups, 32]
  return np.swapaxes(weights.reshape(*scales.shape[:2], -1), 1, 2)


def dequantize_checkpoint(tensors: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """The tensors with every <name>_blocks / <name>_scales pair replaced by
  the float <name>."""
  out = {}
  for name, tensor in tensors.items():
    if name.endswith(BLOCKS):
      base = name[:-len(BLOCKS)]
      if base + SCALES not in tensors:
        raise MXFP4FormatError(f"checkpoint has {name!r} but no {base + SCALES!r}")
      out[base] = dequantize_mxfp4(tensor, tensors[base + SCALES], base)
    elif not (name.endswith(SCALES) and name[:-len(SCALES)] + BLOCKS in tensors):
      out[name] = tensor
  return out
