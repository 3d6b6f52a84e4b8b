"""Random-access sources and per-example transforms on top of TFDS data sources.

Every training example is a dict of NumPy arrays:
  lm:  inputs [seq_len] int32, targets [seq_len] int32, mask [seq_len] float32
  vit: inputs [S, S, C] float32 in [0, 1], targets [] int32, mask [] float32
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class ByteWindows(Sequence):
  """Windows of seq_len + 1 bytes cut from fixed-length byte records.

  Window i is record i // w at offset (i % w) * seq_len, w = (record_len - 1)
  // seq_len windows per record; consecutive windows share one byte so every
  byte is a target exactly once. Indexable, so grain can shuffle it.
  """

  def __init__(self, records, seq_len: int, key: str = "bytes"):
    self._records, self._seq_len, self._key = records, seq_len, key
    record_len = len(records[0][key])
    self._per_record = (record_len - 1) // seq_len
    if self._per_record < 1:
      raise ValueError(f"data.seq_len={seq_len} is invalid: records hold {record_len} bytes, "
                       f"so seq_len must be <= {record_len - 1}")

  def __len__(self) -> int:
    return len(self._records) * self._per_record

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(index)
    record, window = divmod(int(index), self._per_record)
    start = window * self._seq_len
    tokens = np.asarray(self._records[record][self._key][start:start + self._seq_len + 1])
    return lm_example(tokens.astype(np.int32), self._seq_len)


def lm_example(tokens: np.ndarray, seq_len: int) -> dict:
  """Next-token example from up to seq_len + 1 tokens, right-padded with 0."""
  padded = np.zeros(seq_len + 1, np.int32)
  padded[: len(tokens)] = tokens[: seq_len + 1]
  mask = np.zeros(seq_len, np.float32)
  mask[: max(min(len(tokens), seq_len + 1) - 1, 0)] = 1.0
  return {"inputs": padded[:-1], "targets": padded[1:], "mask": mask}


class TextBytes:
  """Transform: a text feature -> byte-level LM example (truncated / padded)."""

  def __init__(self, key: str, seq_len: int):
    self.key, self.seq_len = key, seq_len

  def __call__(self, example: dict) -> dict:
    text = example[self.key]
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return lm_example(np.frombuffer(raw, np.uint8).astype(np.int32), self.seq_len)


class ImageLabel:
  """Transform: image + label features -> classification example.

  uint8 images are scaled by 1 / max_value; images of another size are
  resized (shorter side) and centre-cropped to image_size x image_size.
  """

  def __init__(self, image_key: str, label_key: str, image_size: int, channels: int,
               max_value: float):
    self.image_key, self.label_key = image_key, label_key
    self.image_size, self.channels, self.max_value = image_size, channels, max_value

  def __call__(self, example: dict) -> dict:
    image = np.asarray(example[self.image_key])
    if image.ndim == 2:
      image = image[..., None]
    if image.shape[:2] != (self.image_size, self.image_size):
      image = _resize_center_crop(image, self.image_size)
    if image.shape[-1] != self.channels:
      raise ValueError(f"data: images have {image.shape[-1]} channels; "
                       f"model.vit.num_channels={self.channels}")
    return {"inputs": image.astype(np.float32) / self.max_value,
            "targets": np.int32(example[self.label_key]), "mask": np.float32(1.0)}


def _resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  from PIL import Image  # installed with matplotlib
  h, w = image.shape[:2]
  scale = size / min(h, w)
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  pil = pil.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
  out = np.asarray(pil)
  top, left = (out.shape[0] - size) // 2, (out.shape[1] - size) // 2
  out = out[top:top + size, left:left + size]
  return out[..., None] if squeeze else out


class RandomShift:
  """Training augmentation for images: translate by a random whole number of
  pixels in [-max_shift, max_shift] along each axis, filling with zeros (the
  background of the digits). Used with grain's random_map, whose generator is
  seeded by the seed and the element's index, so the shifts are the same on
  every run and after a resume."""

  def __init__(self, max_shift: int):
    self.max_shift = max_shift

  def __call__(self, example: dict, rng: np.random.Generator) -> dict:
    dy, dx = rng.integers(-self.max_shift, self.max_shift + 1, size=2)
    image = example["inputs"]
    h, w = image.shape[:2]
    shifted = np.zeros_like(image)
    shifted[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return {**example, "inputs": shifted}
