"""The benchmark binary runs and writes the documented JSON (no timing asserts)."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIELDS = {"name", "dispatch", "backend", "tokens", "d_model", "d_ff", "experts", "top_k",
          "capacity_factor", "fwd_ms", "fwd_bwd_ms", "ratio_vs_dense"}


def _bench(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "experiments/benchmark.py", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600, env=env)


def test_benchmark_writes_rows(tmp_path):
  out_file = tmp_path / "bench.json"
  out = _bench("--preset=tiny", "--tokens=64", "--repeats=1", "--warmup=0",
               "--variants=gather,dropless_blocked,dropless_moe_plus_plus,dropless_int8",
               "--phases=", f"--json_out={out_file}")
  assert out.returncode == 0, out.stderr
  rows = json.loads(out_file.read_text())
  assert [r["name"] for r in rows] == ["dense", "dense_expert_shape", "gather",
                                       "dropless_blocked", "dropless_moe_plus_plus",
                                       "dropless_int8"]
  # FFN work: every top-2 choice reaches an FFN, except MoE++'s zero-computation ones.
  by_name = {r["name"]: r for r in rows}
  assert by_name["dropless_blocked"]["ffn_rows_per_token"] == 2.0
  plus = by_name.pop("dropless_moe_plus_plus")
  rows.remove(plus)
  assert 0 < plus["ffn_rows_per_token"] < 2.0
  ratio = plus["ffn_gflop"] / by_name["dropless_blocked"]["ffn_gflop"]
  assert abs(ratio - plus["ffn_rows_per_token"] / 2.0) < 1e-9
  assert by_name["dense"]["ffn_gflop"] == by_name["dropless_blocked"]["ffn_gflop"]
  # Quantized experts are for inference: forward only.
  int8 = rows.pop()
  assert int8["fwd_ms"] > 0 and int8["fwd_bwd_ms"] is None and int8["ratio_vs_dense"] is None
  assert int8["fwd_temp_bytes"] > 0 and int8["fwd_bwd_temp_bytes"] is None
  assert [r["backend"] for r in rows[2:]] == ["batched_einsum", "blocked"]  # 'auto' on CPU
  for r in rows:
    assert FIELDS <= set(r), FIELDS - set(r)
    assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0
    assert abs(r["ratio_vs_dense"] - r["fwd_bwd_ms"] / rows[0]["fwd_bwd_ms"]) < 1e-9
    # XLA's temporary bytes of each compiled pass, and their ratio to dense.
    assert r["fwd_temp_bytes"] > 0 and r["fwd_bwd_temp_bytes"] > 0
    assert abs(r["temp_ratio_vs_dense"]
               - r["fwd_bwd_temp_bytes"] / rows[0]["fwd_bwd_temp_bytes"]) < 1e-9
  assert rows[2]["capacity_factor"] == 1.25 and rows[3]["capacity_factor"] is None
  # The shape floor runs tokens * top_k rows through a d_ff-wide FFN.
  assert rows[1]["d_ff_dense"] == rows[1]["d_ff"] and rows[0]["d_ff_dense"] == 2 * rows[0]["d_ff"]


def test_benchmark_rejects_phases_of_a_variant_not_run():
  # By default only dropless_blocked is broken down, and only when it runs.
  out = _bench("--preset=tiny", "--tokens=64", "--repeats=1", "--warmup=0", "--variants=gather")
  assert out.returncode == 0 and "phase of" not in out.stdout, out.stderr
  out = _bench("--preset=tiny", "--variants=gather", "--phases=dropless_blocked")
  assert out.returncode != 0
  assert out.stderr.strip().splitlines() == [
      "error: --phases='dropless_blocked' is invalid: it must be one of --variants (gather) "
      "and not quantized"]


def test_accelerator_report_writes_every_section_and_names_the_failed_one(tmp_path):
  """The report on CPU at smoke shapes: the layer table with its phases, and a
  train step whose config cannot run (batch size 0), which must be named in
  the report and the exit code, not hide the other section."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run(
      [sys.executable, "experiments/accelerator_report.py", "--smoke", f"--out_dir={tmp_path}",
       "--sections=layer,train_step", "--train_set=data.batch_size=0"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert out.returncode == 1, out.stderr
  report = (tmp_path / "report.md").read_text()
  assert "| dropless_blocked | blocked |" in report and "Where dropless_blocked's time" in report
  assert "## train_step\n\nfailed (exit 2: error: --train_config=" in report
  assert "data.batch_size=0" in report
  runs = json.loads((tmp_path / "report.json").read_text())["runs"]
  assert runs["train_step"] == []
  names = [r["name"] for r in runs["layer_tiny"]]
  assert names[:5] == ["dense", "dense_expert_shape", "gather", "dropless_blocked",
                       "dropless_ragged_dot"]
  assert names[-4:] == [f"dropless_blocked:{p}" for p in ("routing", "dispatch", "experts",
                                                           "combine")]
  # Each phase is the difference of two timed prefixes: they add up to the last.
  phases = runs["layer_tiny"][-4:]
  for key in ("fwd", "fwd_bwd"):
    total = sum(r[f"{key}_ms"] for r in phases)
    assert abs(total - phases[-1][f"prefix_{key}_ms"]) < 1e-6


def test_train_step_mode_reports_mfu_against_the_given_peak(tmp_path):
  out_file = tmp_path / "step.json"
  out = _bench("--train_config=configs/lm_tiny.py", "--train_set=data.batch_size=2",
               "--train_set=data.seq_len=16", "--repeats=1", "--warmup=0", "--peak_tflops=0.5",
               f"--json_out={out_file}")
  assert out.returncode == 0, out.stderr
  [row] = json.loads(out_file.read_text())
  assert row["devices"] == 1 and row["batch_size"] == 2
  assert abs(row["items_per_second"] - 2 * 16 / row["step_ms"] * 1e3) < 1e-6
  assert abs(row["mfu"] - row["model_tflops_per_second"] / 0.5) < 1e-9
  # 6 x (active parameters - the embedding lookup) + attention, per token.
  assert row["model_tflops_per_step"] * 1e12 > 6 * 2 * 16 * 4 * 128 * 128


def test_benchmark_rejects_unknown_variant():
  out = _bench("--preset=tiny", "--variants=warp_drive")
  assert out.returncode != 0
  assert out.stderr.strip().splitlines() == [
      "error: --variants='warp_drive' is invalid: valid values are einsum, gather, "
      "dropless_blocked, dropless_gathered, dropless_ragged_dot, dropless_tokamax, dropless_einsum, "
      "dropless_pallas, "
      "dropless_int8, dropless_int4, dropless_moe_plus_plus"]


def test_kernel_mode_writes_rows(tmp_path):
  """--kernels: the grouped matmul alone per backend (pallas in interpret mode
  on CPU) against a dense matmul of equal FLOPs."""
  out_file = tmp_path / "kernels.json"
  out = _bench("--kernels", "--preset=tiny", "--tokens=64", "--repeats=1", "--warmup=0",
               "--kernel_backends=blocked,pallas", "--gmm_block_size=16",
               f"--json_out={out_file}")
  assert out.returncode == 0, out.stderr
  assert "interpret mode" in out.stdout
  rows = json.loads(out_file.read_text())
  assert [r["name"] for r in rows] == ["dense", "blocked", "pallas"]
  for r in rows:
    assert (r["gmm_rows"], r["gmm_k"], r["gmm_n"], r["groups"]) == (128, 64, 128, 8)
    flops = 2 * 128 * 64 * 128
    assert abs(r["fwd_tflops"] - flops / r["fwd_ms"] / 1e9) < 1e-9
    assert abs(r["ratio_vs_dense"] - r["fwd_bwd_ms"] / rows[0]["fwd_bwd_ms"]) < 1e-9


def test_kernel_mode_rejects_bad_block_for_pallas():
  out = _bench("--kernels", "--preset=tiny", "--kernel_backends=pallas", "--gmm_block_size=24")
  assert out.returncode != 0
  assert out.stderr.strip().splitlines() == [
      "error: gmm_block_size=24 is invalid: gmm_backend='pallas' needs a power of two >= 16"]
