"""Embedded TFDS datasets through grain: coverage, determinism, resumable
iterator state, and one-line errors for datasets that cannot be used."""

import dataclasses
import pathlib

import numpy as np
import pytest

from moejax.data import DataConfig, DataError, make_datasets, unigram_cross_entropy
from moejax.data.builders import PYDOC_RECORD_BYTES, pydoc_corpus, stdlib_corpus
from moejax.data.sources import ByteWindows, lm_example
from moejax.models import ModelConfig

LM = ModelConfig(moe_every=0)
VIT = ModelConfig(kind="vit", moe_every=0)


def test_byte_windows_make_every_byte_a_target_once():
  records = [{"bytes": np.arange(i * 10, i * 10 + 10) % 256} for i in range(3)]
  windows = ByteWindows(records, seq_len=3)                       # 3 windows per record
  assert len(windows) == 9
  targets = np.concatenate([windows[i]["targets"] for i in range(9)])
  inputs = np.concatenate([windows[i]["inputs"] for i in range(9)])
  expected = np.concatenate([np.arange(i * 10 + 1, i * 10 + 10) for i in range(3)])
  np.testing.assert_array_equal(targets, expected)
  np.testing.assert_array_equal(inputs, expected - 1)
  with pytest.raises(ValueError, match="data.seq_len=10 is invalid"):
    ByteWindows(records, seq_len=10)


def test_lm_example_pads_and_masks():
  ex = lm_example(np.array([5, 6, 7]), seq_len=4)
  np.testing.assert_array_equal(ex["inputs"], [5, 6, 7, 0])
  np.testing.assert_array_equal(ex["targets"], [6, 7, 0, 0])
  np.testing.assert_array_equal(ex["mask"], [1, 1, 0, 0])


def test_pydoc_bytes_is_the_corpus_and_iterator_state_resumes(data_dir):
  data = make_datasets(DataConfig(data_dir=data_dir, seq_len=64, batch_size=4), LM)
  corpus = pydoc_corpus()
  assert data.num_train_examples == int(round(0.95 * (len(corpus) // PYDOC_RECORD_BYTES))) \
      * ((PYDOC_RECORD_BYTES - 1) // 64)
  it = data.make_train_iterator()
  first = next(it)
  window = bytes(first["inputs"][0].astype(np.uint8)) + bytes([first["targets"][0, -1]])
  assert window in corpus                                   # real text, in order
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it)["inputs"] for _ in range(3)]
  resumed = data.make_train_iterator()
  resumed.set_state(state)
  for batch in expected:
    np.testing.assert_array_equal(next(resumed)["inputs"], batch)
  again = next(data.make_train_iterator())               # deterministic order
  np.testing.assert_array_equal(again["inputs"], first["inputs"])
  evals = data.eval_batches()
  assert len(evals) == 8 and evals[0]["inputs"].shape == (4, 64)
  assert 2.5 < unigram_cross_entropy(data, 256, max_batches=20) < 4.0


def test_hosts_read_disjoint_examples(data_dir):
  config = DataConfig(name="sklearn_digits", eval_split="test", data_dir=data_dir, batch_size=8,
                      eval_batches=0)
  hosts = [make_datasets(config, VIT, process_index=i, process_count=2) for i in range(2)]
  evals = [np.concatenate([b["inputs"] for b in h.eval_batches()]) for h in hosts]
  assert evals[0].shape == evals[1].shape == (148, 8, 8, 1)   # 297 images, 2 hosts x 37 x 4
  flat = [{e.tobytes() for e in x} for x in evals]
  assert not flat[0] & flat[1]
  batch = next(hosts[0].make_train_iterator())
  assert batch["inputs"].shape == (4, 8, 8, 1) and batch["inputs"].max() <= 1.0
  assert set(np.unique(batch["targets"])) <= set(range(10))


@pytest.mark.parametrize("config,model,expected", [
    (dict(name="mnist"), VIT, "data.name='mnist' is not prepared in data_dir="),
    (dict(name="no_such_dataset_xyz"), LM, "data.name='no_such_dataset_xyz' is invalid: not a "
     "TFDS dataset"),
    (dict(name="sklearn_digits"), LM, "invalid for model.kind='lm'"),
    (dict(name="pydoc_bytes", eval_split="nope"), LM, "data.eval_split='nope' is invalid"),
    (dict(name="pydoc_bytes", seq_len=5000), LM, "data.seq_len=5000 is invalid"),
])
def test_unusable_dataset_is_one_clear_error(data_dir, config, model, expected):
  with pytest.raises((DataError, ValueError)) as err:
    make_datasets(DataConfig(data_dir=data_dir, **config), model)
  message = str(err.value)
  assert expected in message and "\n" not in message, message
  if "not prepared" in message:
    assert "tfds build mnist" in message and "--file_format=array_record" in message


def test_stdlib_corpus_is_split_by_file_with_enough_held_out_text(data_dir):
  import sysconfig
  splits, digest = stdlib_corpus()
  assert stdlib_corpus()[1] == digest                                    # deterministic
  assert len(splits["validation"]) >= 500_000 and len(splits["test"]) >= 500_000
  assert len(splits["train"]) > 8 * len(splits["validation"])
  # By file: a file's whole text lands in exactly one split.
  source = (pathlib.Path(sysconfig.get_paths()["stdlib"]) / "json" / "decoder.py").read_bytes()
  assert sum(source in data for data in splits.values()) == 1
  data = make_datasets(DataConfig(name="stdlib_bytes", data_dir=data_dir, seq_len=128,
                                  batch_size=4, eval_batches=0), LM)
  assert data.content_sha256 == digest
  held_out = sum(b["mask"].sum() for b in data.eval_batches())
  # eval_batches=0 evaluates the whole split: 7 windows of 128 targets per 1024-byte record
  assert held_out >= 0.85 * len(splits["validation"])


def test_shipped_digits_are_the_uci_set_and_a_damaged_copy_is_refused(tmp_path, monkeypatch):
  from moejax.data import builders
  images, labels = builders.digits_arrays()
  # The UCI test set's class counts, as scikit-learn's load_digits() reports them.
  assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
  assert images.dtype == np.uint8 and images.max() == 16
  damaged = images.copy()
  damaged[0, 0, 0] ^= 1
  np.savez_compressed(tmp_path / "digits.npz", images=damaged, labels=labels)
  monkeypatch.setattr(builders, "DIGITS_FILE", tmp_path / "digits.npz")
  config = DataConfig(name="sklearn_digits", eval_split="test", data_dir=str(tmp_path / "tfds"),
                      batch_size=8, eval_batches=0)
  with pytest.raises(DataError, match="digits.npz is damaged"):
    make_datasets(config, VIT)
  assert not list((tmp_path / "tfds").glob("sklearn_digits/*/*.array_record*"))


def test_shift_augmentation_moves_training_images_and_resumes(data_dir):
  config = DataConfig(name="sklearn_digits", eval_split="test", data_dir=data_dir, batch_size=8,
                      eval_batches=0)
  plain = make_datasets(config, VIT)
  shifted = make_datasets(dataclasses.replace(config, augment_shift=1), VIT)
  a, b = next(plain.make_train_iterator()), next(shifted.make_train_iterator())
  np.testing.assert_array_equal(a["targets"], b["targets"])      # same images, same order
  assert not np.array_equal(a["inputs"], b["inputs"])
  # Every augmented image is its original moved by at most one pixel per axis.
  for original, moved in zip(a["inputs"][..., 0], b["inputs"][..., 0]):
    padded = np.pad(original, 1)
    assert any(np.array_equal(padded[1 + dy:9 + dy, 1 + dx:9 + dx], moved)
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))
  # The draws are a function of the position in the stream: a restored iterator repeats them.
  it = shifted.make_train_iterator()
  next(it)
  state = it.get_state()
  expected = next(it)
  again = shifted.make_train_iterator()
  again.set_state(state)
  np.testing.assert_array_equal(next(again)["inputs"], expected["inputs"])
  np.testing.assert_array_equal(next(shifted.make_train_iterator())["inputs"], b["inputs"])
  with pytest.raises(DataError, match="data.augment_shift=1 is invalid for model.kind='lm'"):
    make_datasets(DataConfig(name="pydoc_bytes", data_dir=data_dir, augment_shift=1), LM)


def test_constructing_an_unprepared_builder_leaves_no_temp_folder(tmp_path, monkeypatch):
  """TFDS looks an unprepared dataset up in its public bucket, through an
  empty temp folder it never removes; the embedded datasets skip the lookup."""
  import tempfile
  from moejax.data import builders
  temp = tmp_path / "temp"
  temp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(temp))
  for builder_class in builders.EMBEDDED.values():
    builder = builder_class(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    assert not builder.is_prepared() and builder.info.splits == {}
  assert list(temp.iterdir()) == []


_PREPARE_AT_ONCE = """
import os, sys, time
from moejax.data import DataConfig, make_datasets
from moejax.models import ModelConfig
data_dir, go, ready = sys.argv[1:4]
open(ready, "w").close()
while not os.path.exists(go):
  time.sleep(0.01)
data = make_datasets(DataConfig(name="sklearn_digits", eval_split="test", data_dir=data_dir,
                                batch_size=8, eval_batches=1), ModelConfig(kind="vit", moe_every=0))
print(len(data.eval_batches()))
"""


def test_processes_that_prepare_one_dataset_at_once_both_get_it(tmp_path):
  # A study's workers on a fresh machine all prepare the embedded data at the
  # same moment: without a lock, TFDS's rename of the second one's folder fails.
  import subprocess
  import sys
  import time
  go = tmp_path / "go"
  ready = [tmp_path / f"ready_{i}" for i in range(2)]
  procs = [subprocess.Popen([sys.executable, "-c", _PREPARE_AT_ONCE, str(tmp_path / "tfds"),
                             str(go), str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for r in ready]
  deadline = time.time() + 120
  while not all(r.exists() for r in ready) and time.time() < deadline:
    time.sleep(0.05)  # every process has imported moejax
  go.touch()
  for proc in procs:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.strip().splitlines()[-1]
    assert out.split()[-1] == "1"
