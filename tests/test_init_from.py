"""train.init_from: training starts from the weights of a workdir, a moejax
model folder (here an upcycled one) or a HuggingFace folder; the source
defines the model; overrides that change a weight are refused."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from moejax.config import MoEConfig, RouterConfig
from moejax.convert.model_dir import save_model_dir
from moejax.train.sources import load_any
from moejax.convert.upcycle import upcycle
from moejax.train import Checkpointer, experiment_from_config, train_and_evaluate
from moejax.train.init_from import InitFromError, resolve_model
from tiny_configs import tiny_config


def _train(workdir, data_dir, overrides=None, **fields):
  config = tiny_config(data_dir=data_dir, **fields)
  if config.train.init_from:
    config, _ = resolve_model(config, overrides or {}, str(workdir))
  exp = experiment_from_config(config)
  train_and_evaluate(exp, str(workdir), log=lambda line: None)
  return exp


def _saved_params(workdir):
  checkpointer = Checkpointer(str(workdir), keep=1, async_save=False)
  try:
    return checkpointer.restore_as_saved()[1]["params"]
  finally:
    checkpointer.close()


def _assert_same(a, b):
  a, b = flatten_dict(a), flatten_dict(b)
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=str(key))


# One step of a linear warmup from 0 updates nothing: the saved params must be
# exactly the source's, which shows they were loaded (not re-initialised).
ONE_IDLE_STEP = dict(train__num_steps=1, train__warmup_steps=2, train__log_every=1)


@pytest.fixture(scope="module")
def dense_workdir(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp("dense") / "run"
  _train(workdir, data_dir, model__moe_every=0, train__num_steps=4)
  return workdir


def test_upcycled_model_trains_from_its_weights_with_overrides(dense_workdir, data_dir, tmp_path):
  config, variables, _ = load_any(str(dense_workdir))
  moe = MoEConfig(router=RouterConfig(num_experts=4, top_k=2, normalize_top_k=True),
                  d_model=config.d_model, d_ff=config.dense_d_ff, activation=config.activation,
                  dispatch="dropless")
  moe_config, moe_variables = upcycle(config, variables, moe, rng=jax.random.PRNGKey(0))
  save_model_dir(str(tmp_path / "moe"), moe_config, moe_variables)
  overrides = {"model.moe.router.name": "sinkhorn", "model.moe.router.top_k": 1,
               "model.d_model": 32}   # equal to the source's: allowed
  exp = _train(tmp_path / "ft", data_dir, overrides, train__init_from=str(tmp_path / "moe"),
               **ONE_IDLE_STEP)
  assert exp.model.moe.router.name == "sinkhorn" and exp.model.moe.d_ff == config.dense_d_ff
  assert exp.model.moe.router.num_experts == 4 and exp.model.num_layers == 2
  _assert_same(_saved_params(tmp_path / "ft"), moe_variables["params"])
  # A resume continues from the checkpoint and the recorded model; the source
  # is not read again (here it is gone).
  shutil.rmtree(tmp_path / "moe")
  fields = {**ONE_IDLE_STEP, "train__num_steps": 2}
  _train(tmp_path / "ft", data_dir, overrides, train__init_from=str(tmp_path / "moe"), **fields)
  rows = [json.loads(l) for l in open(tmp_path / "ft" / "metrics.jsonl")]
  assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2]
  with pytest.raises(ValueError, match="train.init_from=.*no such folder"):
    _train(tmp_path / "new", data_dir, train__init_from=str(tmp_path / "moe"))


def test_workdir_source_and_refused_overrides(dense_workdir, data_dir, tmp_path):
  _train(tmp_path / "ft", data_dir, train__init_from=str(dense_workdir), **ONE_IDLE_STEP)
  _assert_same(_saved_params(tmp_path / "ft"), _saved_params(dense_workdir))
  config = tiny_config(data_dir=data_dir, train__init_from=str(dense_workdir))
  for overrides, message in [
      ({"model.dense_d_ff": 128}, r"model.dense_d_ff=128 is invalid: changes a weight of "
       r"train.init_from's model \(block_0/ffn/ffn/w_in/kernel \[32, 64\] -> \[32, 128\]\)"),
      ({"model.num_layers": 3}, r"model.num_layers=3 .* \(block_2/.* absent -> \["),
      ({"model.moe.router.top_k": 1}, "model is dense .* upcycle it first"),
      ({"model.no_such_field": 1}, "model.no_such_field=1 is invalid: is not a model field"),
  ]:
    with pytest.raises(ValueError, match=message):
      resolve_model(config, overrides)
  assert not (tmp_path / "refused").exists()


def test_a_source_tokenizer_becomes_the_data_tokenizer(data_dir, tmp_path):
  """A source with a tokenizer reads its ids, not bytes: data.tokenizer follows
  it unless the config names one. (Training from a HF folder with its exact
  weights: test_tokenized_data.py.)"""
  pytest.importorskip("torch")
  from hf_models import tiny_hf_model
  tiny_hf_model("mixtral", vocab_size=256).save_pretrained(tmp_path / "hf")
  (tmp_path / "hf" / "tokenizer.json").write_text("{}")
  config = tiny_config(data_dir=data_dir, train__init_from=str(tmp_path / "hf"))
  resolved, origin = resolve_model(config, {})
  assert resolved.data.tokenizer == str(tmp_path / "hf") and "data.tokenizer=" in origin
  assert resolved.model.moe.router.num_experts == 4 and resolved.model.d_model == 32
  config.data.tokenizer = str(tmp_path)
  assert resolve_model(config, {})[0].data.tokenizer == str(tmp_path)


def test_a_source_that_changed_under_a_run_is_one_line(dense_workdir, data_dir, tmp_path):
  """The model config was resolved from one folder, the weights come from
  another shape: InitFromError, not an XLA shape error."""
  config = tiny_config(data_dir=data_dir, train__init_from=str(dense_workdir))
  config, _ = resolve_model(config, {})
  config.train.init_from = str(tmp_path / "other")
  other = tiny_config(data_dir=data_dir, model__moe_every=0, model__dense_d_ff=48)
  from moejax.models import build_model
  exp_other = experiment_from_config(other)
  variables = jax.jit(build_model(exp_other.model).init)(
      {"params": jax.random.key(0), "router": jax.random.key(0)},
      np.zeros((1, 8), np.int32))
  save_model_dir(str(tmp_path / "other"), exp_other.model, variables)
  with pytest.raises(InitFromError, match=r"its params do not fit the model \(block_0/ffn/"):
    train_and_evaluate(experiment_from_config(config), str(tmp_path / "ft"), log=lambda l: None)
  assert not os.path.exists(tmp_path / "ft" / "checkpoints") or not os.listdir(
      tmp_path / "ft" / "checkpoints")
