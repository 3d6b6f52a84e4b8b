"""grain pipelines over TFDS array_record data: deterministic, checkpointable
training iterators and fixed evaluation batches.

Batches are dicts of NumPy arrays with a leading per-host batch dimension
(see moejax.data.sources for the fields). The training iterator's position is
`iterator.get_state()` (JSON-serialisable) and restores with `set_state`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
from typing import Callable, List, Optional

import grain.python as grain
import jax
import numpy as np

from moejax.data.builders import BYTE_CORPORA, EMBEDDED, IMAGE_DATASETS
from moejax.data.config import DataConfig
from moejax.data.sources import ByteWindows, ImageLabel, RandomShift, TextBytes


class DataError(ValueError):
  """A dataset that cannot be used as configured (one-line message)."""


@dataclasses.dataclass
class Datasets:
  """What the trainer needs from the data.

  make_train_iterator: () -> a fresh checkpointable iterator over training
    batches (endless; epochs reshuffled).
  eval_batches: () -> the fixed list of evaluation batches.
  num_train_examples: examples per training epoch (all hosts).
  """

  make_train_iterator: Callable
  eval_batches: Callable[[], List[dict]]
  num_train_examples: int
  content_sha256: Optional[str] = None  # embedded corpora whose content varies (stdlib_bytes)
  bytes_per_token: float = 1.0          # of the eval text (1 for byte-level data)


def default_data_dir(config: DataConfig) -> str:
  return os.path.expanduser(config.data_dir or os.environ.get("TFDS_DATA_DIR")
                            or "~/tensorflow_datasets")


@contextlib.contextmanager
def _quiet_absl():
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


@contextlib.contextmanager
def _prepare_lock(data_dir: str, name: str):
  """Holds an OS lock (fcntl.flock) on <data_dir>/.<name>.lock: processes
  that start on a fresh machine at once (a study's workers, a test run beside
  them) prepare an embedded dataset one after the other. Without it the
  second one's TFDS rename of its finished folder fails (FileExistsError)."""
  try:
    os.makedirs(data_dir, exist_ok=True)
    fd = os.open(os.path.join(data_dir, f".{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as err:
    raise DataError(f"data.data_dir={data_dir} is not writable: {err.strerror}") from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # closing the descriptor drops the lock


def _builder(config: DataConfig):
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  data_dir = default_data_dir(config)
  base = config.name.split("/")[0].split(":")[0]
  if base in EMBEDDED:
    # TFDS warns about the version folder it is about to fill (no dataset_info.json yet).
    with _quiet_absl(), _prepare_lock(data_dir, base):
      builder = EMBEDDED[base](data_dir=data_dir, file_format="array_record")
      if not builder.is_prepared():
        print(f"preparing embedded dataset {base!r} in {data_dir} (once)", flush=True)
        try:
          builder.download_and_prepare()
        except ValueError as err:  # a damaged shipped file (digits.npz)
          raise DataError(str(err)) from None
    return builder
  try:
    with _quiet_absl():  # TFDS warns about every version folder it looks at
      builder = tfds.builder(config.name, data_dir=data_dir)
      prepared = builder.is_prepared()
  except Exception as err:  # DatasetNotFoundError and friends
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    raise DataError(f"data.name={config.name!r} is invalid: not a TFDS dataset ({first}); "
                    f"embedded datasets: {', '.join(EMBEDDED)}") from None
  if not prepared:
    raise DataError(
        f"data.name={config.name!r} is not prepared in data_dir={data_dir} (looked for "
        f"{builder.data_dir}); prepare it with: tfds build {config.name} --data_dir={data_dir} "
        f"--file_format=array_record")
  file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
  if file_format != "array_record":
    raise DataError(
        f"data.name={config.name!r} in {builder.data_dir} is stored as {file_format}; grain needs "
        f"random access: rebuild with tfds build {config.name} --data_dir={data_dir} "
        f"--file_format=array_record")
  return builder


def _source(builder, split: str, field: str):
  try:
    return builder.as_data_source(split)
  except Exception as err:
    splits = ", ".join(sorted(builder.info.splits.keys()))
    raise DataError(f"data.{field}={split!r} is invalid for {builder.name}: "
                    f"{str(err).splitlines()[0] if str(err) else 'unknown split'} "
                    f"(splits: {splits})") from None


def _tokenizer(config: DataConfig, model_config):
  """data.tokenizer's Tokenizer, checked against the model (None: bytes)."""
  if config.tokenizer is None:
    return None
  if model_config.kind != "lm":
    raise DataError(f"data.tokenizer={config.tokenizer!r} is invalid for model.kind="
                    f"{model_config.kind!r}: it tokenizes text; use None")
  from moejax.data.tokenizer import TokenizerError, load_tokenizer
  try:
    tokenizer = load_tokenizer(config.tokenizer)
  except TokenizerError as err:
    raise DataError(f"data.tokenizer={config.tokenizer!r} is invalid: {err}") from None
  if tokenizer.vocab_size > model_config.lm.vocab_size:
    raise DataError(f"data.tokenizer={config.tokenizer!r} is invalid: it has "
                    f"{tokenizer.vocab_size} tokens but model.lm.vocab_size is "
                    f"{model_config.lm.vocab_size}")
  return tokenizer


def _token_windows(builder, source, split: str, config: DataConfig, tokenizer):
  """(MapDataset of packed token windows, bytes per token) of one split."""
  from moejax.data.builders import byte_corpus_split
  from moejax.data.tokenized import TokenWindows, tokenized_split
  byte_corpus = None
  if builder.name in BYTE_CORPORA:
    field = "train_split" if split == config.train_split else "eval_split"
    if split not in builder.info.splits:
      raise DataError(f"data.{field}={split!r} is invalid with data.tokenizer for "
                      f"{builder.name}: use one of {', '.join(sorted(builder.info.splits))}")
    byte_corpus = lambda: byte_corpus_split(builder.name, split)
  elif config.text_key not in builder.info.features:
    raise DataError(f"data.text_key={config.text_key!r} is invalid for {builder.name}: "
                    f"features are {', '.join(builder.info.features.keys())}")
  metadata = builder.info.metadata or {}
  tokens, doc_start, bytes_per_token = tokenized_split(
      source, dataset=f"{builder.name}-{builder.version}", split=split,
      text_key=config.text_key, byte_corpus=byte_corpus, tokenizer=tokenizer,
      data_dir=default_data_dir(config), content_id=metadata.get("content_sha256", ""))
  return grain.MapDataset.source(TokenWindows(tokens, doc_start, config.seq_len)), \
      bytes_per_token


def _examples(builder, source, config: DataConfig, model_config) -> grain.MapDataset:
  """A MapDataset of training examples for model_config.kind."""
  features = builder.info.features
  if model_config.kind == "lm" and builder.name in BYTE_CORPORA:
    return grain.MapDataset.source(ByteWindows(source, config.seq_len))
  ds = grain.MapDataset.source(source)
  if model_config.kind == "lm":
    if config.text_key not in features:
      raise DataError(f"data.text_key={config.text_key!r} is invalid for {builder.name}: "
                      f"features are {', '.join(features.keys())}")
    return ds.map(TextBytes(config.text_key, config.seq_len))
  for field, key in (("image_key", config.image_key), ("label_key", config.label_key)):
    if key not in features:
      raise DataError(f"data.{field}={key!r} is invalid for {builder.name} (model.kind='vit' "
                      f"needs images and labels): features are {', '.join(features.keys())}")
  num_classes = getattr(features[config.label_key], "num_classes", None)
  if num_classes is not None and num_classes > model_config.vit.num_classes:
    raise DataError(f"model.vit.num_classes={model_config.vit.num_classes} is invalid: "
                    f"{builder.name} has {num_classes} classes")
  max_value = float(getattr(EMBEDDED.get(builder.name), "PIXEL_MAX", 255))
  return ds.map(ImageLabel(config.image_key, config.label_key, model_config.vit.image_size,
                           model_config.vit.num_channels, max_value))


def make_datasets(config: DataConfig, model_config, *, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Datasets:
  """Builds (embedded) or opens the dataset and returns its pipelines.

  Each process reads only its batch_size / process_count rows of every
  global batch; hosts never overlap, and the global batches do not depend on
  process_count.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if config.batch_size % process_count:
    raise DataError(f"data.batch_size={config.batch_size} is invalid: must divide by the "
                    f"{process_count} processes")
  if model_config.kind == "lm" and config.augment_shift:
    raise DataError(f"data.augment_shift={config.augment_shift} is invalid for model.kind='lm': "
                    f"it shifts images; use 0")
  if model_config.kind == "lm" and config.name in IMAGE_DATASETS:
    raise DataError(f"data.name={config.name!r} is invalid for model.kind='lm': it holds "
                    f"images; use one of {', '.join(BYTE_CORPORA)} or a text dataset")
  if model_config.kind == "vit" and config.name in BYTE_CORPORA:
    raise DataError(f"data.name={config.name!r} is invalid for model.kind='vit': it holds text; "
                    f"use one of {', '.join(IMAGE_DATASETS)} or an image dataset")
  tokenizer = _tokenizer(config, model_config)
  builder = _builder(config)
  host_batch = config.batch_size // process_count
  train_source = _source(builder, config.train_split, "train_split")
  eval_source = _source(builder, config.eval_split, "eval_split")
  bytes_per_token = 1.0
  if tokenizer is None:
    train = _examples(builder, train_source, config, model_config)
    evals = _examples(builder, eval_source, config, model_config)
  else:
    train, _ = _token_windows(builder, train_source, config.train_split, config, tokenizer)
    evals, bytes_per_token = _token_windows(builder, eval_source, config.eval_split, config,
                                            tokenizer)
  for split, ds in (("train_split", train), ("eval_split", evals)):
    if len(ds) < config.batch_size:
      raise DataError(f"data.batch_size={config.batch_size} is invalid: "
                      f"{split} {getattr(config, split)!r} has only {len(ds)} examples")

  # Host p takes the p-th host_batch-sized slice of every global batch, so the
  # sequence of global batches (and the data-iterator state) is the same for
  # any number of processes: a checkpoint resumes on a different host count.
  def make_train_iterator():
    ds = train.shuffle(seed=config.shuffle_seed).repeat()
    if config.augment_shift:  # after repeat: each epoch draws new shifts
      ds = ds.random_map(RandomShift(config.augment_shift), seed=config.shuffle_seed)
    ds = ds.batch(host_batch, drop_remainder=True)[process_index::process_count]
    return iter(ds.to_iter_dataset())

  full_eval_batches = len(evals) // config.batch_size

  def eval_batches():
    batched = evals.batch(host_batch, drop_remainder=True)[process_index::process_count]
    count = min(config.eval_batches or full_eval_batches, full_eval_batches)
    return [batched[i] for i in range(count)]

  return Datasets(make_train_iterator, eval_batches, len(train),
                  builder.info.metadata.get("content_sha256") if builder.info.metadata else None,
                  bytes_per_token)


def unigram_cross_entropy(datasets: Datasets, vocab_size: int,
                          max_batches: int = 50) -> float:
  """Cross-entropy (nats/token) of the eval targets under the add-one-smoothed
  unigram distribution of (up to max_batches of) the training targets: the
  loss of a model that ignores context."""
  counts = np.ones(vocab_size, np.float64)
  iterator = datasets.make_train_iterator()
  for _ in range(max_batches):
    batch = next(iterator)
    counts += np.bincount(batch["targets"][batch["mask"] > 0].ravel(), minlength=vocab_size)
  log_p = np.log(counts / counts.sum())
  total, n = 0.0, 0.0
  for batch in datasets.eval_batches():
    total -= log_p[batch["targets"][batch["mask"] > 0]].sum()
    n += batch["mask"].sum()
  return float(total / max(n, 1.0))
