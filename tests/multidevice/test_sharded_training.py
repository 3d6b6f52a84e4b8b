"""Training on a mesh of 8 fake devices: the same losses as on one device,
and a checkpoint written on one mesh shape resumes on another."""

import jax
import numpy as np
import pytest

from moejax.train import experiment_from_config, train_and_evaluate
from tiny_configs import tiny_config

# Eight steps of f32 training on different reduction orders.
RTOL = 2e-4


def _exp(data_dir, dispatch, **overrides):
  capacity = 1.25 if dispatch == "gather" else None
  # One block and one eval batch: the mesh is what is under test.
  config = tiny_config(data_dir=data_dir, model__num_layers=1, data__eval_batches=1,
                       model__moe__dispatch=dispatch,
                       model__moe__gmm_block_size=16,
                       model__moe__router__num_experts=8,
                       model__moe__router__capacity_factor=capacity,
                       model__moe__router__routing_groups=8,
                       train__log_every=1, **overrides)
  return experiment_from_config(config)


def _losses(summary):
  return np.array([h["loss"] for h in summary.history])


def _run(exp, workdir, devices=None):
  return train_and_evaluate(exp, str(workdir), log=lambda line: None, devices=devices)


_ONE_DEVICE = {}


def _one_device(tmp_path_factory, data_dir, dispatch):
  """The one-device run of a dispatch (shared by the tests: same config)."""
  if dispatch not in _ONE_DEVICE:
    _ONE_DEVICE[dispatch] = _run(_exp(data_dir, dispatch, mesh__data=1),
                                 tmp_path_factory.mktemp("one"), jax.devices()[:1])
  return _ONE_DEVICE[dispatch]


@pytest.mark.parametrize("dispatch, axes", [
    ("gather", dict(mesh__data=2, mesh__expert=4)),
    ("dropless", dict(mesh__data=2, mesh__expert=4)),
    ("dropless", dict(mesh__fsdp=2, mesh__expert=2, mesh__tensor=2, mesh__data=1)),
])
def test_mesh_training_matches_one_device(tmp_path, tmp_path_factory, data_dir, dispatch, axes):
  one = _one_device(tmp_path_factory, data_dir, dispatch)
  mesh = _run(_exp(data_dir, dispatch, **axes), tmp_path / "mesh")
  np.testing.assert_allclose(_losses(mesh), _losses(one), rtol=RTOL)
  assert one.eval["loss"] == pytest.approx(mesh.eval["loss"], rel=RTOL)


def test_checkpoint_resumes_on_another_mesh_shape(tmp_path, tmp_path_factory, data_dir):
  whole = _one_device(tmp_path_factory, data_dir, "dropless")
  first = _run(_exp(data_dir, "dropless", mesh__data=1, mesh__expert=8,
                    train__stop_at_step=3), tmp_path / "split")
  assert first.stopped and first.step == 3
  second = _run(_exp(data_dir, "dropless", mesh__data=2, mesh__expert=4), tmp_path / "split")
  assert second.step == 6
  np.testing.assert_allclose(_losses(first), _losses(whole)[:3], rtol=RTOL)
  # the resumed run's history is the whole run's: steps 1-3 read back from metrics.jsonl
  np.testing.assert_allclose(_losses(second), _losses(whole), rtol=RTOL)
