"""Seeded studies: the paired statistics and the sweep's choice on known
numbers, every study's rows validate, the tuning and aggregation over seeds
on rows with known numbers, and studies end to end at a tiny budget (outputs
and verdict lines written; the numbers mean nothing there)."""

import json
import pathlib
import shutil

import numpy as np
import pytest

from moejax.studies import jobs as study_jobs
from moejax.train import experiment_from_config
from moejax.studies.comparison import apply_override
from moejax.studies.runner import STUDIES, Study, plan_study, rejudge, run_study
from moejax.studies.report import summary_markdown, write_scales
from moejax.studies.stats import (FAILS, HOLDS, INCONCLUSIVE, choose, edge_extension,
                                      paired_difference, trend)

TINY = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "data.seq_len=32",
        "data.batch_size=8", "data.eval_batches=1"]
TINY_VIT = ["model.num_layers=2", "model.d_model=32", "model.num_heads=2", "data.batch_size=16",
            "data.eval_batches=1"]


T_975_2 = 4.302652729911275   # Student-t 97.5% quantile, 2 degrees of freedom


def test_paired_difference_on_known_numbers():
  # Per-row intervals overlap (1.0 ± 0.1 vs 1.05 ± 0.11), but every seed is
  # 0.04-0.06 better: d = [-0.05, -0.06, -0.04], mean -0.05, std 0.01.
  p = paired_difference([1.0, 1.1, 0.9], [1.05, 1.16, 0.94])
  half = T_975_2 * 0.01 / np.sqrt(3)
  np.testing.assert_allclose([p["delta"], p["std"], p["low"], p["high"]],
                             [-0.05, 0.01, -0.05 - half, -0.05 + half], atol=1e-12)
  np.testing.assert_allclose(p["t"], -0.05 / (0.01 / np.sqrt(3)))
  assert p["n"] == 3 and p["verdict"] == HOLDS
  assert paired_difference([1.05, 1.16, 0.94], [1.0, 1.1, 0.9])["verdict"] == FAILS
  # Signs disagree across seeds: the interval straddles 0.
  assert paired_difference([1.0, 1.2, 0.9], [1.05, 1.1, 0.95])["verdict"] == INCONCLUSIVE
  one = paired_difference([1.0], [2.0])
  assert one["verdict"] == INCONCLUSIVE and one["low"] is None and one["delta"] == -1.0
  with pytest.raises(ValueError, match="one per seed"):
    paired_difference([1.0, 2.0], [1.0])


def test_sweep_choice_and_trend_on_known_numbers():
  assert choose([0.5, 1.0, 2.0], [1.2, 1.1, 1.15]) == 1.0
  assert choose([0.5, 1.0, 2.0], [1.2, 1.3, None]) == 0.5          # diverged: never chosen
  assert choose([0.5, 1.0, 2.0], [float("nan"), 1.3, 1.3]) == 1.0   # ties: the earlier
  with pytest.raises(ValueError, match="diverged"):
    choose([1.0, 2.0], [None, float("nan")])
  # Past an edge: the learning rate by a factor 2, the balance weight by a decade.
  assert edge_extension("train.learning_rate", [1e-3, 2e-3, 4e-3], 4e-3) == 8e-3
  assert edge_extension("train.learning_rate", [1e-3, 2e-3, 4e-3], 2e-3) is None
  assert edge_extension("train.load_balance_weight", [1e-3, 1e-2], 1e-2) == 0.1
  assert edge_extension("train.load_balance_weight", [1e-3, 1e-2], 1e-3) == 1e-4
  assert trend(-0.01, -0.03) == "grew" and trend(-0.03, -0.01) == "shrank"
  assert trend(0.02, -0.01) == "flipped" and trend(0.01, 0.02) == "grew"


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


# Claims whose rows read the batches in different orders, by design: the
# MoE from scratch reads the pretraining's order, the upcycle continues in
# another (docs/studies.md, upcycling). Their pairing shares the seed only.
OTHER_DATA_ORDER = {("upcycling", "upcycled", "scratch"),
                    ("upcycling", "upcycled", "scratch_1000_steps")}


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_paired_rows_share_seed_and_data_order(name):
  """A claim's two rows at one seed differ only by the design they compare:
  same initialisation seed and same data order (what the pairing assumes)."""
  study = STUDIES[name]
  for claim in study.claims:
    configs = []
    for row in (claim.better, claim.worse):
      config = study.base()
      for assignment in (*study.rows[row], "seed=3"):
        apply_override(config, assignment)
      configs.append(config)
    assert configs[0].seed == configs[1].seed == 3
    if (name, claim.better, claim.worse) not in OTHER_DATA_ORDER:
      assert configs[0].data.shuffle_seed == configs[1].data.shuffle_seed, claim
      assert configs[0].data.train_split == configs[1].data.train_split, claim


def _tiny(study: str, data_dir) -> list:
  shrink = TINY if STUDIES[study].base().model.kind == "lm" else TINY_VIT
  return shrink + [f"data.data_dir={data_dir}", "train.num_steps=2", "train.log_every=1",
                   "train.plots=False", "train.checkpoint_every=2"]


def _fake_train_row(name, config, workdir, verbose=True):
  """train_row's stand-in: a row whose numbers depend only on its name, its
  seed and (for the sweep) how far its learning rate is from 6e-3."""
  seed, moe = config.seed, config.model.moe_every > 0
  loss = 1.0 + 0.1 * len(name) + 0.01 * seed + 1e3 * (config.train.learning_rate - 6e-3) ** 2
  if config.data.eval_split != "validation":   # a tuning run: its held-out slice
    assert (config.data.train_split, config.data.eval_split, seed) == (
        "train[:90%]", "train[90%:]", 0)
  return {"params": 10, "active_params": 5, "steps": 2, "eval_loss": loss,
          "train_loss": loss + 0.5, "balance": 1.5 + seed if moe else None,
          "fraction_dropped": 0.25 if moe else None,
          "experts_per_token": 2.0 - 0.1 * seed if moe else None,
          "balance_curve": [[1, 3.0 + seed], [2, 2.0 + seed]] if moe else []}


def test_study_tunes_each_row_then_aggregates_seeds(tmp_path, monkeypatch):
  """The study's bookkeeping over 2 seeds, on rows with known numbers: the
  sweep picks each row's best learning rate on the held-out slice, every
  seed trains at it, claims are judged on the paired differences, and a
  second run reuses every finished row."""
  work = tmp_path / "moe_vs_dense"
  calls = []
  monkeypatch.setattr(study_jobs, "train_row",
                      lambda *a, **k: calls.append(a[2]) or _fake_train_row(*a, **k))
  plan = plan_study("moe_vs_dense", 2, str(work))
  assert [(phase, runs, todo) for phase, runs, todo, _ in plan] == [("tune lr", 9, 9),
                                                                     ("seeds", 6, 6)]
  results = run_study("moe_vs_dense", 2, str(work), verbose=False)
  assert len(calls) == 15
  assert set(results["rows"]) == set(STUDIES["moe_vs_dense"].rows)
  dense, moe = results["rows"]["dense"], results["rows"]["moe_8x_top2"]
  # lm_tiny's rate is 3e-3: the sweep 1.5e-3, 3e-3, 6e-3 picks 6e-3 for every row.
  assert dense["sweeps"]["train.learning_rate"]["candidates"] == [1.5e-3, 3e-3, 6e-3]
  assert dense["settings"] == {"train.learning_rate": 6e-3}
  assert (work / "dense" / "lr0.006" / "seed_1" / "study_row.json").exists()
  np.testing.assert_allclose(dense["eval_loss"]["values"], [1.5, 1.51])
  np.testing.assert_allclose(dense["eval_loss"]["mean"], 1.505)
  np.testing.assert_allclose(dense["eval_loss"]["std"], 0.01 / np.sqrt(2))   # sample std
  # MoE rows: balance over training averaged over the seeds; the dense row has none.
  assert moe["balance_curve"] == {"steps": [1, 2], "mean": [3.5, 2.5]}
  assert "balance_curve" not in dense and "balance" not in dense
  np.testing.assert_allclose(moe["experts_per_token"]["values"], [2.0, 1.9])
  assert "experts_per_token" not in dense
  # 'moe_8x_top2' (2.1) is worse than 'dense' (1.5) on both seeds by exactly 0.6:
  # std 0, the interval is the point +0.6, above 0.
  claim = results["claims"][0]
  assert claim["verdict"] == FAILS and claim["paired"]["n"] == 2
  np.testing.assert_allclose([claim["paired"]["low"], claim["paired"]["high"]], [0.6, 0.6])
  text = (work / "results.md").read_text()
  assert text.count("**Verdict: does not hold**") == 2 and "1.5050 ± 0.0071" in text
  assert "| dropped | experts/token |" in text and "| 25.0% ± 0.0% | 1.95 ± 0.07 |" in text
  assert ("| dense | lr | 0.0015: 1.5203, 0.003: 1.5090, 0.006: 1.5000 | 0.006 (at the sweep's "
          "edge) |" in text)
  assert json.loads((work / "results.json").read_text())["seeds"] == 2
  assert (work / "results.png").stat().st_size > 0
  # Everything finished: nothing retrains, nothing is left to plan.
  assert run_study("moe_vs_dense", 2, str(work), verbose=False) == results
  assert len(calls) == 15
  assert all(todo == 0 for _, _, todo, _ in plan_study("moe_vs_dense", 2, str(work)))
  # The large scale trains 4x the steps in workdir/large at the values tuned
  # at the base scale (no sweep again); scales.md compares.
  large = run_study("moe_vs_dense", 2, str(work), verbose=False, scale="large")
  assert len(calls) == 21 and (work / "large" / "dense" / "lr0.006" / "seed_0").is_dir()
  assert large["rows"]["dense"]["settings"] == {"train.learning_rate": 6e-3}
  assert large["rows"]["dense"]["tuned_at"] == "base" and large["overrides"] == [
      "train.num_steps=2000"]
  assert "Tuning, done at the base scale and reused here" in (
      work / "large" / "results.md").read_text()
  assert "| moe_8x_top2 < dense (eval_loss) | Δ +0.6000" in write_scales(str(work))
  summary = summary_markdown(str(tmp_path))
  # one row a claim: both scales side by side
  row = next(line for line in summary.splitlines() if "moe_8x_top2 < dense" in line)
  assert row.startswith("| `moe_vs_dense` | moe_8x_top2 < dense | lr | Δ +0.6000")
  assert row.count("Δ +0.6000") == 2 and row.count("**does not hold**") == 2
  # Judged again from the stored values, without training: the same claims.
  assert rejudge("moe_vs_dense", str(work))["claims"] == results["claims"]
  assert len(calls) == 21
  with pytest.raises(ValueError, match="--tune=lr,bogus is invalid"):
    run_study("moe_vs_dense", 1, str(work), tune=("lr", "bogus"))
  with pytest.raises(ValueError, match="--scale=large is not defined for the study 'molora'"):
    run_study("molora", 1, str(work), scale="large")


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
  # moe_vs_dense is also tuned (its sweep at the same tiny budget). It and
  # vit_routers train the rows of one claim (a subset of rows judges only the
  # claims between them); every row of every study validates above.
  tuned = name == "moe_vs_dense"
  subset = {"moe_vs_dense": ("dense", "moe_8x_top2"), "vit_routers": ("top2_bpr", "soft_moe")}
  rows = subset.get(name, tuple(STUDIES[name].rows))
  results = run_study(name, 1, str(tmp_path), _tiny(name, data_dir), verbose=False,
                      tune=None if tuned else (), rows=subset.get(name))
  assert set(results["rows"]) == set(rows)
  claims = [c for c in STUDIES[name].claims if {c.better, c.worse} <= set(rows)]
  text = (tmp_path / "results.md").read_text()
  assert text.count("**Verdict: ") == len(claims) and len(results["claims"]) == len(claims)
  assert (tmp_path / "results.png").stat().st_size > 0
  if name == "moe_vs_dense":
    assert all(len(s["sweeps"]["train.learning_rate"]["held_out_loss"]) == 3
               for s in results["rows"].values())
    # top-2 routing: each token runs through at most 2 FFN experts (fewer
    # only for a dropped choice); the dense row records none
    assert 0 < results["rows"]["moe_8x_top2"]["experts_per_token"]["mean"] <= 2
    assert "experts_per_token" not in results["rows"]["dense"]
  if name == "upcycling":
    # The upcycle equals its dense source at step 0, and both continuations read
    # the same batches: their first task losses agree, a fresh MoE's does not.
    first = {row: json.loads((tmp_path / row / "seed_0" / "metrics.jsonl").read_text()
                             .splitlines()[0])["loss"]
             for row in ("upcycled", "dense_continued", "scratch")}
    np.testing.assert_allclose(first["upcycled"], first["dense_continued"], rtol=1e-5)
    assert abs(first["scratch"] - first["upcycled"]) > 1e-3
    assert "| step | dense_continued | upcycled | scratch |" in text
    _resumes_in_a_fresh_clone(tmp_path, data_dir, results)


def _resumes_in_a_fresh_clone(workdir, data_dir, results):
  """A clone has each run's study_row.json only (no checkpoints, no
  upcycles). A row that starts from another must train again there: its
  source retrains first (it once failed: '.../seed_0 has no config.json'),
  to the same row, deterministically, and so does the row."""
  for path in sorted(workdir.rglob("*"), reverse=True):
    if path.is_file() and path.name != study_jobs.ROW_FILE:
      path.unlink()
    elif path.is_dir() and not any(path.iterdir()):
      path.rmdir()
  assert not list(workdir.rglob("checkpoints"))
  (workdir / "upcycled" / "seed_0" / study_jobs.ROW_FILE).unlink()
  again = run_study("upcycling", 1, str(workdir), _tiny("upcycling", data_dir), verbose=False,
                    tune=())
  assert (workdir / "dense_pretrained" / "seed_0" / "checkpoints").is_dir()
  assert not (workdir / "scratch" / "seed_0" / "checkpoints").exists()   # reused, not retrained
  for row in results["rows"]:
    assert again["rows"][row]["eval_loss"]["values"] == pytest.approx(
        results["rows"][row]["eval_loss"]["values"], rel=1e-6), row


def test_a_clone_without_checkpoints_trains_a_source_again_before_a_row_from_it(
    tmp_path, monkeypatch, capsys):
  """In a clone (study_row.json files only) a row that starts from another
  row's weights and has to train gets its source trained again first, and
  only that: finished rows stay. A source that comes out with another loss
  (another machine's floating point) is reported, not mixed in silently."""
  from moejax.studies import runner as study_runner
  trained = []

  def fake_train_row(name, config, workdir, verbose=True):
    trained.append(name)
    (pathlib.Path(workdir) / "checkpoints" / "2").mkdir(parents=True)
    return {**_fake_train_row(name, config, workdir, verbose), "loss_curve": [[2, 1.0]]}
  monkeypatch.setattr(study_jobs, "train_row", fake_train_row)
  monkeypatch.setattr(study_jobs, "_from_source", lambda config, own: config)
  monkeypatch.setattr(study_runner, "_upcycle",
                      lambda source, out, seed, **kw: (pathlib.Path(out) / "model").mkdir(
                          parents=True))
  run_study("upcycling", 1, str(tmp_path), tune=())
  assert sorted(trained) == sorted(STUDIES["upcycling"].rows)
  for folder in tmp_path.rglob("checkpoints"):   # what a clone has
    shutil.rmtree(folder)
  shutil.rmtree(tmp_path / "dense_pretrained_upcycled")
  row_file = tmp_path / "dense_pretrained" / "seed_0" / study_jobs.ROW_FILE
  saved = json.loads(row_file.read_text())
  saved["row"]["eval_loss"] += 0.01
  row_file.write_text(json.dumps(saved))
  def planned():
    return [(phase, runs, todo) for phase, runs, todo, _ in
            plan_study("upcycling", 1, str(tmp_path), tune=())]
  assert planned() == [("seeds", 3, 0), ("seeds", 2, 0)]   # nothing to train: no source
  (tmp_path / "upcycled" / "seed_0" / study_jobs.ROW_FILE).unlink()
  assert planned() == [("seeds", 3, 0), ("sources", 1, 1), ("seeds", 2, 1)]
  trained.clear()
  run_study("upcycling", 1, str(tmp_path), tune=())
  assert trained == ["dense_pretrained", "upcycled"]
  assert (tmp_path / "dense_pretrained_upcycled" / "seed_0" / "model").is_dir()
  out = capsys.readouterr().out
  assert "1 run(s) that later rows start from have no checkpoint here" in out
  assert "dense_pretrained/seed_0 trained again to eval loss" in out


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


def test_a_sweep_extends_past_the_edge_its_best_value_lies_on(tmp_path, monkeypatch):
  """With extend_edges, a learning rate chosen at the top (bottom) of the sweep
  is followed by twice (half) it until the choice is inside the swept range;
  without, the choice is marked as lying at the sweep's edge."""
  def best_at(optimum):
    def train(name, config, workdir, verbose=True):
      row = _fake_train_row(name, config, workdir, verbose)
      lr = config.train.learning_rate
      return {**row, "eval_loss": 1.0 + 0.01 * config.seed + 1e3 * (lr - optimum) ** 2}
    return train

  rows = ("dense", "moe_8x_top2")
  monkeypatch.setattr(study_jobs, "train_row", best_at(1.2e-2))
  plain = run_study("moe_vs_dense", 1, str(tmp_path / "plain"), verbose=False, rows=rows)
  assert plain["rows"]["dense"]["settings"] == {"train.learning_rate": 6e-3}
  assert "| 0.006 (at the sweep's edge) |" in (tmp_path / "plain" / "results.md").read_text()

  up = run_study("moe_vs_dense", 1, str(tmp_path / "up"), verbose=False, rows=rows,
                 extend_edges=3)
  sweep = up["rows"]["dense"]["sweeps"]["train.learning_rate"]
  # 6e-3 at the top -> 1.2e-2, the top again -> 2.4e-2, worse: 1.2e-2 is inside.
  np.testing.assert_allclose(sweep["candidates"], [1.5e-3, 3e-3, 6e-3, 1.2e-2, 2.4e-2])
  assert sweep["chosen"] == 1.2e-2 and len(sweep["held_out_loss"]) == 5
  assert (tmp_path / "up" / "dense" / "lr0.012" / "seed_0" / "study_row.json").exists()
  text = (tmp_path / "up" / "results.md").read_text()
  assert "at the sweep's edge" not in text and "0.024: " in text
  plan = plan_study("moe_vs_dense", 1, str(tmp_path / "up"), rows=rows, extend_edges=3)
  assert all(todo == 0 for _, _, todo, _ in plan)   # the extensions are reused too

  monkeypatch.setattr(study_jobs, "train_row", best_at(1e-4))
  down = run_study("moe_vs_dense", 1, str(tmp_path / "down"), verbose=False, rows=rows,
                   extend_edges=1)
  sweep = down["rows"]["dense"]["sweeps"]["train.learning_rate"]
  np.testing.assert_allclose(sweep["candidates"], [7.5e-4, 1.5e-3, 3e-3, 6e-3])
  assert sweep["chosen"] == 7.5e-4   # still the bottom after the one extension allowed
  assert "| 0.00075 (at the sweep's edge) |" in (tmp_path / "down" / "results.md").read_text()
  with pytest.raises(ValueError, match="--extend_edges=-1 is invalid"):
    run_study("moe_vs_dense", 1, str(tmp_path / "bad"), extend_edges=-1)


def test_a_diverged_sweep_candidate_is_never_chosen_and_a_diverged_seed_stops(tmp_path,
                                                                               monkeypatch):
  from moejax.train import TrainingError

  def diverges_at_6e3(name, config, workdir, verbose=True):
    if config.train.learning_rate == 6e-3:
      raise TrainingError(f"loss is NaN at step 3 ({workdir})")
    return _fake_train_row(name, config, workdir, verbose)

  monkeypatch.setattr(study_jobs, "train_row", diverges_at_6e3)
  results = run_study("moe_vs_dense", 1, str(tmp_path / "a"), verbose=False)
  sweep = results["rows"]["dense"]["sweeps"]["train.learning_rate"]
  assert sweep["held_out_loss"][2] is None and sweep["chosen"] == 3e-3
  assert "0.006: diverged" in (tmp_path / "a" / "results.md").read_text()
  with pytest.raises(TrainingError, match="NaN"):
    run_study("moe_vs_dense", 1, str(tmp_path / "b"), verbose=False, tune=(),
              overrides=["train.learning_rate=0.006"])


def test_a_subset_of_rows_trains_and_judges_only_its_claims(tmp_path, monkeypatch):
  monkeypatch.setattr(study_jobs, "train_row", _fake_train_row)
  results = run_study("moe_vs_dense", 2, str(tmp_path), verbose=False, tune=(),
                      rows=["dense", "moe_8x_top2"])
  assert list(results["rows"]) == ["dense", "moe_8x_top2"]
  assert [(c["better"], c["worse"]) for c in results["claims"]] == [("moe_8x_top2", "dense")]
  assert not (tmp_path / "moe_8x_top2_capacity_1.25").exists()
  with pytest.raises(ValueError, match="--rows=upcycled is invalid: its rows start from"):
    run_study("upcycling", 1, str(tmp_path), rows=["upcycled"])
  with pytest.raises(ValueError, match=r"\['bogus'\] are not rows of the study"):
    run_study("moe_vs_dense", 1, str(tmp_path), rows=["bogus"])


def test_a_finished_row_is_found_again_after_the_workdir_moves(tmp_path):
  """study_row.json records a source folder relative to the job, so the
  committed rows of a study that starts from another row's run are reused
  in a clone at another path."""
  def job(root):
    return study_jobs.Job(row="upcycled", own=(f"train.init_from={root}/dense/seed_0",),
                          extra=("seed=0",), out=str(root / "upcycled" / "seed_0"))
  first = job(tmp_path / "a")
  (tmp_path / "a" / "upcycled" / "seed_0").mkdir(parents=True)
  with open(tmp_path / "a" / "upcycled" / "seed_0" / study_jobs.ROW_FILE, "w") as f:
    json.dump({"assignments": study_jobs.recorded_assignments(first),
               "row": {"eval_loss": 1.0}}, f)
  assert study_jobs.recorded_assignments(first)[0] == "train.init_from=../../dense/seed_0"
  (tmp_path / "a").rename(tmp_path / "b")
  assert study_jobs.finished_row(job(tmp_path / "b")) == {"eval_loss": 1.0}
  other = study_jobs.Job(row="upcycled", own=(f"train.init_from={tmp_path}/b/other/seed_0",),
                         extra=("seed=0",), out=str(tmp_path / "b" / "upcycled" / "seed_0"))
  assert study_jobs.finished_row(other) is None


def test_a_run_another_study_trained_with_the_same_config_is_reused(tmp_path, monkeypatch):
  """num_experts' experts_8 is granularity's coarse_8x256_top2: at the same
  learning rate, balance weight and seed it takes that row, renamed, without
  training; another seed, a diverged candidate or an init_from run trains."""
  from moejax.studies.shared_runs import SharedRuns
  tuned = ("train.learning_rate=0.006", "train.load_balance_weight=0.01")

  def job(study, row, folder, *extra):
    return study_jobs.Job(row=row, own=tuple(STUDIES[study].rows[row]), extra=(*tuned, *extra),
                          out=str(tmp_path / study / row / folder))
  for seed, loss in ((0, 1.25), (1, None)):   # seed 1's run diverged: not a result to share
    done = job("granularity", "coarse_8x256_top2", f"seed_{seed}", f"seed={seed}")
    study_jobs._write_row(done, {"config": "coarse_8x256_top2", "eval_loss": loss})
  trained = []
  monkeypatch.setattr(study_jobs, "train_row",
                      lambda name, config, workdir, verbose: trained.append(name) or
                      {"config": name, "eval_loss": 2.0})
  base = STUDIES["num_experts"].base
  jobs = [job("num_experts", "experts_8", f"seed_{s}", f"seed={s}") for s in range(3)]
  rows = study_jobs.run_jobs("num_experts", base, jobs, verbose=False,
                             shared=SharedRuns(str(tmp_path)))
  assert rows[0] == {"config": "experts_8", "eval_loss": 1.25}
  assert [r["eval_loss"] for r in rows[1:]] == [2.0, 2.0] and trained == ["experts_8"] * 2
  with open(tmp_path / "num_experts" / "experts_8" / "seed_0" / study_jobs.ROW_FILE) as f:
    saved = json.load(f)
  assert saved["reused_from"] == "../../../granularity/coarse_8x256_top2/seed_0/study_row.json"
  assert study_jobs.finished_row(jobs[0]) == rows[0]   # and it resumes as its own row
  other = job("num_experts", "experts_16", "seed_0", "seed=0")   # another config
  assert study_jobs.run_jobs("num_experts", base, [other], verbose=False,
                             shared=SharedRuns(str(tmp_path)))[0]["eval_loss"] == 2.0
  from moejax.studies.shared_runs import config_digest
  from moejax.train.presets import lm_tiny
  config = lm_tiny()
  config.train.init_from = str(tmp_path)
  assert config_digest(config) is None


def test_a_large_run_another_study_trained_is_reused(tmp_path, monkeypatch):
  """At --scale=large the runs live in <study>/large: the studies beside it
  are those beside <study>, not beside large/ (once nothing was shared there,
  and balancing's aux_1e-1 retrained granularity's large coarse row)."""
  calls = []
  monkeypatch.setattr(study_jobs, "train_row",
                      lambda *a, **k: calls.append(a[0]) or _fake_train_row(*a, **k))
  coarse = run_study("granularity", 1, str(tmp_path / "granularity"), verbose=False, tune=(),
                     scale="large", rows=["coarse_8x256_top2"])["rows"]["coarse_8x256_top2"]
  assert calls == ["coarse_8x256_top2"]
  plan = plan_study("num_experts", 1, str(tmp_path / "num_experts"), tune=(), scale="large",
                    rows=["experts_8"])
  assert [(phase, runs, todo) for phase, runs, todo, _ in plan] == [("seeds", 1, 0)]
  results = run_study("num_experts", 1, str(tmp_path / "num_experts"), verbose=False, tune=(),
                      scale="large", rows=["experts_8"])
  assert calls == ["coarse_8x256_top2"]
  with open(tmp_path / "num_experts" / "large" / "experts_8" / "seed_0" /
            study_jobs.ROW_FILE) as f:
    assert json.load(f)["reused_from"].endswith(
        "granularity/large/coarse_8x256_top2/seed_0/study_row.json")
  assert results["rows"]["experts_8"]["eval_loss"] == coarse["eval_loss"]


def test_a_run_stopped_early_records_no_row_and_resumes(tmp_path, data_dir):
  """A study run stopped before its last step (SIGTERM at a session's end,
  train.stop_at_step) must not leave a study_row.json: the next study would
  take its early losses as the run's result. The rerun resumes it instead."""
  from moejax.studies.comparison import RunStopped
  overrides = _tiny("moe_vs_dense", data_dir) + ["train.num_steps=4"]
  with pytest.raises(RunStopped, match=r"dense: stopped at step 2 of 4 \(train.stop_at_step=2\)"):
    run_study("moe_vs_dense", 1, str(tmp_path), [*overrides, "train.stop_at_step=2"],
              verbose=False, tune=(), rows=("dense",))
  run_dir = tmp_path / "dense" / "seed_0"
  assert (run_dir / "checkpoints").is_dir() and not (run_dir / "study_row.json").exists()
  results = run_study("moe_vs_dense", 1, str(tmp_path), overrides, verbose=False, tune=(),
                      rows=("dense",))
  assert results["rows"]["dense"]["steps"] == 4 and (run_dir / "study_row.json").exists()


def test_plan_estimates_rows_that_continue_another_rows_adapters():
  """MoLoRA's adapter rows train only their LoRA experts, which the source's
  upcycle adds; --plan estimates them before that source exists (it once
  failed on them: 'train.trainable ... set model.moe.lora_rank')."""
  study = STUDIES["molora"]
  for row in ("lora_r8", "molora_8x_r8", "full_finetune"):
    own = tuple(a.replace("{", "").replace("}", "").replace(f"{row}:", "")
                for a in study.rows[row])   # a folder name where the source would be
    seconds = study_jobs.estimated_seconds(study.base, study_jobs.Job(row, own, (), "/x"))
    dense = study_jobs.estimated_seconds(study.base, study_jobs.Job(
        "dense_pretrained", study.rows["dense_pretrained"], (), "/x"))
    # 500 steps of a model with the dense source's active parameters
    assert seconds == pytest.approx(dense, rel=0.05), row


def test_plan_estimates_ds_moe_at_its_training_flops_and_peer_at_its_retrieval_speed():
  """DS-MoE trains every expert: --plan estimates it as the top-2 row with
  all 8 experts active (it once took its sparse inference's FLOPs and
  planned about half the time its runs took). PEER's estimate carries its
  measured retrieval slowdown (it once planned about a tenth of its time)."""
  def estimate(study, row, *more):
    own = (*STUDIES[study].rows[row], *more)
    return study_jobs.estimated_seconds(STUDIES[study].base, study_jobs.Job(row, own, (), "/x"))
  all_experts = estimate("ds_moe", "top2", "model.moe.router.top_k=8")
  assert estimate("ds_moe", "ds_moe_top2") == pytest.approx(all_experts, rel=1e-6)
  assert estimate("ds_moe", "ds_moe_top2") > 1.5 * estimate("ds_moe", "top2")
  assert estimate("peer", "peer_2304x1") > study_jobs.RETRIEVAL_SLOWDOWN / 2 * estimate(
      "peer", "top2_8x64")


def test_a_run_of_some_rows_keeps_the_finished_rows_and_their_claims(tmp_path, monkeypatch):
  """--rows trains only those rows, but results.json also reports the rows
  whose runs are all finished: running one more row once dropped the other
  rows' claims from the results (and from the README's table)."""
  calls = []
  monkeypatch.setattr(study_jobs, "train_row",
                      lambda *a, **k: calls.append(a[0]) or _fake_train_row(*a, **k))
  first = run_study("moe_vs_dense", 2, str(tmp_path), verbose=False, tune=(),
                    rows=["dense", "moe_8x_top2"])
  assert len(calls) == 4 and len(first["claims"]) == 1
  both = run_study("moe_vs_dense", 2, str(tmp_path), verbose=False, tune=(),
                   rows=["moe_8x_top2_capacity_1.25"])
  assert calls[4:] == ["moe_8x_top2_capacity_1.25"] * 2
  assert list(both["rows"]) == list(STUDIES["moe_vs_dense"].rows)
  assert [c["better"] for c in both["claims"]] == ["moe_8x_top2", "moe_8x_top2_capacity_1.25"]
  assert both["claims"][0] == first["claims"][0] and "rows_reported" not in both
  # A third seed: the rows not asked for are unfinished now, so not reported.
  third = run_study("moe_vs_dense", 3, str(tmp_path), verbose=False, tune=(), rows=["dense"])
  assert list(third["rows"]) == ["dense"] and third["rows_reported"] == ["dense"]
  assert third["claims"] == [] and len(calls) == 7
