"""data.tokenizer: text tokenized with a checkpoint's tokenizer and packed into
windows whose loss skips document starts; fine-tuning an imported model on it
end to end (train, then generate text from the workdir)."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from moejax.data.tokenizer import load_tokenizer
from moejax.data import DataError, make_datasets
from moejax.data.builders import byte_corpus_split, pydoc_corpus
from moejax.data.config import DataConfig
from moejax.data.tokenized import TokenWindows
from moejax.models.config import LMConfig, ModelConfig
from tiny_configs import tiny_config
from tiny_tokenizer import train_tokenizer

DOCS = ["def f(x):\n    return x\n", "import json\njson.dumps({})", "é" * 40,
        "class A:\n    pass\n" * 5, "short"]


class TinyDocs(tfds.core.GeneratorBasedBuilder):
  """A TFDS text dataset of a few documents (registered as 'tiny_docs')."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(DOCS), "validation": self._generate_examples(DOCS)}

  def _generate_examples(self, docs):
    for i, doc in enumerate(docs):
      yield i, {"text": doc}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("tokenizer"))
  train_tokenizer(folder)
  return folder


def _model(vocab_size=300):
  return ModelConfig(kind="lm", num_layers=1, d_model=32, num_heads=2, dense_d_ff=64,
                     moe_every=0, lm=LMConfig(vocab_size=vocab_size))


def test_windows_make_every_token_a_target_once_and_mask_document_starts():
  tokens = np.arange(100, 123, dtype=np.int32)
  doc_start = np.zeros(23, bool)
  doc_start[[0, 5, 13]] = True
  windows = TokenWindows(tokens, doc_start, seq_len=4)
  assert len(windows) == 5                       # (23 - 1) // 4
  targets = np.concatenate([w["targets"] for w in windows])
  np.testing.assert_array_equal(targets, tokens[1:21])
  mask = np.concatenate([w["mask"] for w in windows])
  np.testing.assert_array_equal(mask == 0, np.isin(targets, tokens[[5, 13]]))
  np.testing.assert_array_equal(windows[1]["inputs"], tokens[4:8])


def test_documents_get_special_tokens_and_masked_boundaries(tokenizer_dir, tmp_path):
  builder = TinyDocs(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  source = builder.as_data_source("validation")   # TFDS stores examples in its own order
  docs = [source[i]["text"].decode() for i in range(len(source))]
  assert sorted(docs) == sorted(DOCS)
  tokenizer = load_tokenizer(tokenizer_dir)
  eos, bos = tokenizer.token_id("eos_token"), tokenizer.token_id("bos_token")
  config = DataConfig(name="tiny_docs", data_dir=str(tmp_path), batch_size=2, seq_len=8,
                      eval_batches=0, tokenizer=tokenizer_dir)
  datasets = make_datasets(config, _model(), process_index=0, process_count=1)
  stream = np.concatenate([tokenizer.encode(d) + [eos] for d in docs])
  batches = datasets.eval_batches()
  windows = np.stack([b["inputs"] for b in batches]).reshape(-1, 8)
  for i, window in enumerate(windows):           # eval windows in order
    np.testing.assert_array_equal(window, stream[i * 8:i * 8 + 8])
  masked_targets = np.concatenate([b["targets"][b["mask"] == 0] for b in batches])
  assert set(masked_targets.tolist()) == {bos} and len(masked_targets) >= 3
  assert datasets.bytes_per_token == pytest.approx(
      sum(len(d.encode()) for d in DOCS) / len(stream))
  # The cached stream is reused, and a different tokenizer gets its own.
  cache = os.listdir(os.path.join(tmp_path, "moejax_tokenized"))
  make_datasets(config, _model(), process_index=0, process_count=1)
  assert os.listdir(os.path.join(tmp_path, "moejax_tokenized")) == cache and len(cache) == 2


def test_byte_corpus_tokenizes_losslessly(tokenizer_dir, data_dir):
  config = DataConfig(name="pydoc_bytes", data_dir=data_dir, batch_size=4, seq_len=64,
                      eval_batches=0, tokenizer=tokenizer_dir)
  datasets = make_datasets(config, _model(), process_index=0, process_count=1)
  corpus = pydoc_corpus()
  records = len(corpus) // 1024
  held_out = corpus[int(round(0.95 * records)) * 1024:records * 1024]
  assert byte_corpus_split("pydoc_bytes", "validation") == held_out
  # The eval windows, in order, are the held-out text tokenized in one piece.
  tokenizer = load_tokenizer(tokenizer_dir)
  tokens = np.concatenate([b["inputs"][i] for b in datasets.eval_batches()
                           for i in range(len(b["inputs"]))])
  expected = tokenizer.encode(held_out.decode("utf-8", "replace"), add_special_tokens=False)
  np.testing.assert_array_equal(tokens, expected[:len(tokens)])
  assert all(b["mask"].all() for b in datasets.eval_batches())
  assert datasets.bytes_per_token == pytest.approx(len(held_out) / len(expected), rel=1e-3)
  assert datasets.bytes_per_token > 1.2


def test_bad_tokenizer_settings_are_one_line(tokenizer_dir, data_dir, tmp_path):
  for config, model, message in [
      (DataConfig(data_dir=data_dir, tokenizer=tokenizer_dir), _model(256),
       "it has 300 tokens but model.lm.vocab_size is 256"),
      (DataConfig(data_dir=data_dir, tokenizer=str(tmp_path)), _model(),
       "has no tokenizer.json"),
  ]:
    with pytest.raises(DataError, match=message) as info:
      make_datasets(config, model, process_index=0, process_count=1)
    assert len(str(info.value).splitlines()) == 1


def test_fine_tune_an_imported_model_on_its_tokens_then_generate(tokenizer_dir, data_dir,
                                                                   tmp_path):
  """HF Mixtral + tokenizer -> train.init_from (data.tokenizer follows, the
  weights are exactly the HF ones) -> checkpoints -> the workdir's tokenizer
  is found and generation decodes text."""
  pytest.importorskip("torch")
  import shutil
  from hf_models import tiny_hf_model
  from moejax.train import experiment_from_config, train_and_evaluate
  from moejax.train.init_from import resolve_model
  hf = tmp_path / "hf"
  tiny_hf_model("mixtral", vocab_size=300).save_pretrained(hf)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(tokenizer_dir, name), hf / name)
  # One step of a warmup from 0 updates nothing: the checkpoint must hold the
  # HF weights exactly (loaded, not re-initialised).
  config = tiny_config(data_dir=data_dir, train__init_from=str(hf), train__num_steps=1,
                       train__warmup_steps=2)
  config, origin = resolve_model(config, {})
  assert config.data.tokenizer == str(hf) and "data.tokenizer=" in origin
  summary = train_and_evaluate(experiment_from_config(config), str(tmp_path / "ft"),
                               log=lambda line: None)
  assert np.isfinite(summary.eval["loss"])
  from flax.traverse_util import flatten_dict
  from moejax.convert.hf_import import load_hf
  from moejax.train import Checkpointer
  checkpointer = Checkpointer(str(tmp_path / "ft"), keep=1, async_save=False)
  saved = flatten_dict(checkpointer.restore_as_saved()[1]["params"])
  checkpointer.close()
  expected = flatten_dict(load_hf(str(hf)).variables["params"])
  assert sorted(saved) == sorted(expected)
  for key in expected:
    np.testing.assert_array_equal(np.asarray(saved[key]), np.asarray(expected[key]))
  # bits per byte count the bytes a token covers
  assert summary.eval["bits_per_byte"] < summary.eval["loss"] / np.log(2) / 1.2
  # generate.py finds a workdir's tokenizer through its data.tokenizer.
  from moejax.train.sources import load_any, tokenizer_folder
  from moejax.data.tokenizer import tokenizer_for_model
  from moejax.generate import generate
  from moejax.models import TransformerLM
  assert tokenizer_folder(str(tmp_path / "ft")) == str(hf)
  model_config, variables, _ = load_any(str(tmp_path / "ft"))
  tokenizer = tokenizer_for_model(tokenizer_folder(str(tmp_path / "ft")), 300)
  out = generate(TransformerLM(model_config), variables,
                 np.asarray([tokenizer.encode("def ")]), max_new_tokens=5)
  assert tokenizer.decode(np.asarray(out)[0]).startswith("def ")
