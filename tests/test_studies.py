"""Seeded studies: the verdict rule, every study's rows validate, the
aggregation over seeds on known numbers, and studies end to end at a tiny
budget (outputs and verdict lines written; the numbers mean nothing there)."""

import json

import numpy as np
import pytest

from moejax.train import experiment_from_config, studies
from moejax.train.comparison import apply_override
from moejax.train.studies import (FAILS, HOLDS, INCONCLUSIVE, STUDIES, Study, run_study,
                                   verdict)

TINY = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "data.seq_len=32",
        "data.batch_size=8", "data.eval_batches=1"]
TINY_VIT = ["model.num_layers=2", "model.d_model=32", "model.num_heads=2", "data.batch_size=16",
            "data.eval_batches=1"]


def test_verdict_is_judged_on_disjoint_intervals():
  assert verdict([1.0, 1.1, 0.9], [2.0, 2.1, 1.9]) == HOLDS
  assert verdict([2.0, 2.1, 1.9], [1.0, 1.1, 0.9]) == FAILS
  assert verdict([1.0, 1.5, 0.5], [1.2, 1.3, 1.1]) == INCONCLUSIVE


def _upcycle_overrides(study: Study, row: str) -> list:
  """The model.* assignments that give `row`'s config the MoE of the upcycle
  it starts from (none for other rows): what train.init_from does to it."""
  out = []
  for kind, fields in study.upcycles.items():
    if any("{" + kind + ":" in assignment for assignment in study.rows[row]):
      for field, value in fields.items():
        section = "router." if field in ("num_experts", "top_k") else ""
        out.append(f"model.moe.{section}{field}={value}")
      out.append("model.moe_every=1")
  return out


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_every_study_row_is_a_valid_experiment(name):
  """Each row's overrides apply to its base and validate (nothing trains)."""
  study = STUDIES[name]
  for row, overrides in study.rows.items():
    config = study.base()
    for assignment in (*overrides, *_upcycle_overrides(study, row)):
      apply_override(config, assignment)
    experiment_from_config(config)
  assert {c.better for c in study.claims} | {c.worse for c in study.claims} <= set(study.rows)


def _tiny(study: str, data_dir) -> list:
  shrink = TINY if STUDIES[study].base().model.kind == "lm" else TINY_VIT
  return shrink + [f"data.data_dir={data_dir}", "train.num_steps=2", "train.log_every=1",
                   "train.plots=False", "train.checkpoint_every=2"]


def _fake_train_row(name, config, workdir, verbose=True):
  """train_row's stand-in: a row whose numbers depend only on its name and seed."""
  seed, moe = config.seed, config.model.moe_every > 0
  loss = 1.0 + 0.1 * len(name) + 0.01 * seed
  return {"params": 10, "active_params": 5, "steps": 2, "eval_loss": loss,
          "train_loss": loss + 0.5, "balance": 1.5 + seed if moe else None,
          "fraction_dropped": 0.25 if moe else None,
          "balance_curve": [[1, 3.0 + seed], [2, 2.0 + seed]] if moe else []}


def test_study_aggregates_seeds_into_mean_std_verdicts_and_curves(tmp_path, monkeypatch):
  """The study's bookkeeping over 2 seeds, on rows with known numbers."""
  monkeypatch.setattr(studies, "train_row", _fake_train_row)
  results = run_study("moe_vs_dense", 2, str(tmp_path), verbose=False)
  assert set(results["rows"]) == set(STUDIES["moe_vs_dense"].rows)
  dense, moe = results["rows"]["dense"], results["rows"]["moe_8x_top2"]
  np.testing.assert_allclose(dense["eval_loss"]["values"], [1.5, 1.51])
  np.testing.assert_allclose(dense["eval_loss"]["mean"], 1.505)
  np.testing.assert_allclose(dense["eval_loss"]["std"], 0.01 / np.sqrt(2))   # sample std
  # MoE rows: balance over training averaged over the seeds; the dense row has none.
  assert moe["balance_curve"] == {"steps": [1, 2], "mean": [3.5, 2.5]}
  assert "balance_curve" not in dense and "balance" not in dense
  # 'moe_8x_top2' (2.1) is worse than 'dense' (1.5) here: the claim does not hold.
  assert [c["verdict"] for c in results["claims"]] == [FAILS, FAILS]
  text = (tmp_path / "results.md").read_text()
  assert text.count("**Verdict: does not hold**") == 2 and "1.5050 ± 0.0071" in text
  assert json.loads((tmp_path / "results.json").read_text())["seeds"] == 2
  assert (tmp_path / "results.png").stat().st_size > 0


# The studies run end to end from one per base config (lm_tiny, lm_study,
# vit_tiny) and upcycling (rows that start from other rows); every other
# study's rows validate above, and the designs they compare each train in
# test_models.py's families.
SMOKE_STUDIES = ("moe_vs_dense", "ds_moe", "vit_routers", "upcycling")


def test_smoke_studies_cover_every_base_config():
  bases = {STUDIES[name].base for name in STUDIES}
  assert bases == {STUDIES[name].base for name in SMOKE_STUDIES}


@pytest.mark.parametrize("name", SMOKE_STUDIES)
def test_study_runs_at_a_tiny_budget(tmp_path, data_dir, name):
  """CI's smoke run of a study: every row trains (1 seed, 2 steps) and
  results.md has one verdict line per claim."""
  results = run_study(name, 1, str(tmp_path), _tiny(name, data_dir), verbose=False)
  assert set(results["rows"]) == set(STUDIES[name].rows)
  text = (tmp_path / "results.md").read_text()
  assert text.count("**Verdict: ") == len(STUDIES[name].claims)
  assert (tmp_path / "results.png").stat().st_size > 0
  if name == "upcycling":
    # The upcycle equals its dense source at step 0, and both continuations read
    # the same batches: their first task losses agree, a fresh MoE's does not.
    first = {row: json.loads((tmp_path / row / "seed_0" / "metrics.jsonl").read_text()
                             .splitlines()[0])["loss"]
             for row in ("upcycled", "dense_continued", "scratch")}
    np.testing.assert_allclose(first["upcycled"], first["dense_continued"], rtol=1e-5)
    assert abs(first["scratch"] - first["upcycled"]) > 1e-3
    assert "| step | dense_continued | upcycled | scratch |" in text


def test_set_overrides_parse_like_config_flags():
  from moejax.train.presets import lm_tiny
  config = lm_tiny()
  for assignment in ("train.profile_steps=(3, 5)", "train.stop_at_step=7",
                     "model.moe.router.capacity_factor=1.5", "model.moe.dispatch=gather",
                     "train.plots=false", "data.data_dir=/tmp/data"):
    apply_override(config, assignment)
  assert config.train.profile_steps == (3, 5) and config.train.stop_at_step == 7
  assert config.model.moe.router.capacity_factor == 1.5 and not config.train.plots
  assert config.model.moe.dispatch == "gather" and config.data.data_dir == "/tmp/data"
  apply_override(config, "model.moe.router.capacity_factor=None")
  assert config.model.moe.router.capacity_factor is None
  with pytest.raises(ValueError, match="unknown config field 'train.bogus'"):
    apply_override(config, "train.bogus=1")
