"""Validated data configuration."""

from __future__ import annotations

import dataclasses
from typing import Optional

from moejax.validation import check_int, fail, from_mapping


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which TFDS dataset to read and how to batch it.

  Attributes:
    name: a TFDS dataset name. Embedded (built on first use, no download;
      moejax/data/builders.py): 'stdlib_bytes' and 'pydoc_bytes' (byte-level
      text, for kind='lm') and 'sklearn_digits' (8x8 digit images, for
      kind='vit'). Any other TFDS name (e.g. 'lm1b',
      'c4/en', 'cifar10', 'imagenet2012') must already be prepared in data_dir
      as array_record files.
    data_dir: TFDS data directory; None = $TFDS_DATA_DIR or ~/tensorflow_datasets.
    train_split, eval_split: TFDS split names (TFDS slicing such as
      'train[:90%]' works).
    batch_size: global examples per training / eval step (split evenly over
      hosts; must divide by the number of processes).
    seq_len: (lm) tokens per example; text is UTF-8 bytes (vocab 256), pad 0,
      unless `tokenizer` is set.
    tokenizer: (lm) a folder with a tokenizer.json (a HuggingFace checkpoint or
      a moejax model folder): text is tokenized with it and packed into
      seq_len windows, loss masked where a document starts
      (moejax/data/tokenized.py). None = UTF-8 bytes.
    eval_batches: batches per evaluation; 0 = every full batch of the split.
    text_key: (lm, datasets other than pydoc_bytes) feature holding the text.
    image_key, label_key: (vit) features holding the image and the label.
    shuffle_seed: seed of the training order (reshuffled every epoch).
    augment_shift: (vit) translate each training image by a random number of
      pixels in [-augment_shift, augment_shift] along each axis, zero-filled;
      a new draw each time an image is read. 0 = no augmentation.
  """

  name: str = "pydoc_bytes"
  data_dir: Optional[str] = None
  train_split: str = "train"
  eval_split: str = "validation"
  batch_size: int = 32
  seq_len: int = 128
  eval_batches: int = 8
  text_key: str = "text"
  image_key: str = "image"
  label_key: str = "label"
  shuffle_seed: int = 0
  augment_shift: int = 0
  tokenizer: Optional[str] = None

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      fail("data.name", self.name, "must be a TFDS dataset name, e.g. 'pydoc_bytes'")
    if self.data_dir is not None and not isinstance(self.data_dir, str):
      fail("data.data_dir", self.data_dir, "must be a directory path or None")
    check_int("data.batch_size", self.batch_size, 1)
    check_int("data.seq_len", self.seq_len, 1)
    check_int("data.eval_batches", self.eval_batches, 0)
    check_int("data.shuffle_seed", self.shuffle_seed, 0)
    check_int("data.augment_shift", self.augment_shift, 0)
    if self.tokenizer is not None and (not isinstance(self.tokenizer, str) or not self.tokenizer):
      fail("data.tokenizer", self.tokenizer, "must be a folder with a tokenizer.json (or None)")


def data_config_from_mapping(values) -> DataConfig:
  """DataConfig from a mapping; unknown fields fail with one line."""
  return from_mapping(DataConfig, dict(values), "data.")
