"""The full benchmark table of one machine in one command: for a user with a
GPU or TPU, so that accelerator numbers are one command away.

  python experiments/accelerator_report.py --out_dir=/tmp/report

Sections, each a run of experiments/benchmark.py in its own process (so that
one that fails, e.g. out of memory, leaves the others standing):

  kernels          the grouped matmul alone per backend vs a dense matmul of
                   equal FLOPs (preset large)
  layer            the MoE layer per dispatch / backend vs a dense FFN of equal
                   active FLOPs, with the per-phase breakdown of the dropless
                   variant 'auto' picks (presets default, fine_grained, large,
                   large_fine_grained)
  expert_parallel  the layer on one device vs an expert-parallel mesh over the
                   machine's devices, padded and ragged exchange (needs >= 2)
  train_step       one optimizer step of --train_config: step time, model
                   TFLOP/s and MFU

It writes report.md (the tables, with the device, jax version, commit and
date), report.json (every row) and one log per run, and exits 1 if any run
failed (the report names it). --smoke runs the same sections at tiny shapes:
seconds on a CPU, to check the script itself.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECTIONS = ("kernels", "layer", "expert_parallel", "train_step")
LAYER_PRESETS = ("default", "fine_grained", "large", "large_fine_grained")

_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where report.md, report.json and the logs go.",
                               required=True)
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny shapes and one repeat: checks the script in "
                           "seconds (on CPU too); its numbers mean nothing.")
_SECTIONS = flags.DEFINE_list("sections", ",".join(SECTIONS),
                              f"Which sections to run; any of {', '.join(SECTIONS)}.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed repeats per measurement (median).",
                                lower_bound=1)
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"],
                           "Compute dtype of the kernel and layer sections.")
_TRAIN_CONFIG = flags.DEFINE_string(
    "train_config", os.path.join(ROOT, "configs", "lm_moe_124m_64e.py"),
    "Experiment config of the train_step section.")
_TRAIN_SET = flags.DEFINE_multi_string(
    "train_set", [], "'field=value' overrides of --train_config (e.g. data.batch_size=16 to "
    "fit one device's memory).")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", None, "Dense peak TFLOP/s of one device for "
                                  "MFU (default: looked up by device kind).")

_PROBE = ("import jax, json\n"
          "from moejax.grouped_matmul import tokamax_available\n"
          "d = jax.devices()[0]\n"
          "print(json.dumps(dict(platform=d.platform, device_kind=d.device_kind, "
          "devices=jax.device_count(), jax=jax.__version__, tokamax=tokamax_available())))")


def _probe() -> dict:
  """The machine as JAX sees it, asked in a child process: importing JAX here
  would claim the accelerator's memory before the runs that need it."""
  out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                       cwd=ROOT)
  if out.returncode:
    raise SystemExit(f"error: JAX does not start: {out.stderr.strip().splitlines()[-1]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def _commit() -> str:
  out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                       cwd=ROOT)
  return out.stdout.strip() or "unknown"


def _runs(machine: dict, smoke: bool, train_config: str, train_set):
  """[(section, run name, benchmark.py flags)] for the selected sections."""
  cpu = machine["platform"] == "cpu"
  kernel_backends = ["blocked", "ragged_dot"] + ([] if cpu else ["pallas"])
  layer_variants = ["gather", "dropless_blocked", "dropless_ragged_dot"]
  if machine["tokamax"]:
    kernel_backends.append("tokamax")
    layer_variants.append("dropless_tokamax")
  if not cpu:
    layer_variants.append("dropless_pallas")
  # The dropless variant gmm_backend='auto' runs on this platform.
  auto = "dropless_blocked" if cpu else (
      "dropless_tokamax" if machine["tokamax"] else "dropless_ragged_dot")
  shape = ["--preset=tiny", "--tokens=64"] if smoke else []
  runs = []
  if "kernels" in _SECTIONS.value:
    runs.append(("kernels", "kernels", ["--kernels", *(shape or ["--preset=large"]),
                                        "--kernel_backends=" + ",".join(kernel_backends)]))
  if "layer" in _SECTIONS.value:
    for preset in (["tiny"] if smoke else LAYER_PRESETS):
      runs.append(("layer", f"layer_{preset}",
                   [*(shape or [f"--preset={preset}"]),
                    "--variants=" + ",".join(layer_variants), f"--phases={auto}"]))
  devices = 2 if smoke and cpu else machine["devices"]
  if "expert_parallel" in _SECTIONS.value and devices > 1:
    n = max(p for p in (2, 4, 8) if p <= devices)  # the large presets' 8 experts
    runs.append(("expert_parallel", f"expert_parallel_{n}",
                 [*(shape or ["--preset=large"]), f"--expert_parallel={n}"]))
  if "train_step" in _SECTIONS.value:
    train = [f"--train_config={train_config}", *(f"--train_set={s}" for s in train_set)]
    if _PEAK_TFLOPS.value:
      train.append(f"--peak_tflops={_PEAK_TFLOPS.value}")
    runs.append(("train_step", "train_step", train))
  return runs


def _run(name: str, args, out_dir: str):
  """Runs benchmark.py; returns (rows, None) or ([], the error's last line)."""
  json_out = os.path.join(out_dir, f"{name}.json")
  cmd = [sys.executable, os.path.join(HERE, "benchmark.py"), *args,
         f"--repeats={1 if _SMOKE.value else _REPEATS.value}",
         f"--warmup={0 if _SMOKE.value else 2}", f"--json_out={json_out}"]
  if "--train_config" not in " ".join(args):
    cmd.append(f"--dtype={'float32' if _SMOKE.value else _DTYPE.value}")
  print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  with open(os.path.join(out_dir, f"{name}.log"), "w") as f:
    f.write(out.stdout + out.stderr)
  print(out.stdout, end="", flush=True)
  if out.returncode:
    lines = (out.stderr or out.stdout).strip().splitlines() or ["no output"]
    return [], f"exit {out.returncode}: {lines[-1]}"
  with open(json_out) as f:
    return json.load(f), None


def _table(columns, rows) -> str:
  """Markdown table; columns: [(header, row -> str)]."""
  lines = ["| " + " | ".join(h for h, _ in columns) + " |",
           "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fn(r) for _, fn in columns) + " |" for r in rows]
  return "\n".join(lines)


def _f(key, fmt="{:.2f}"):
  return lambda r: "-" if r.get(key) is None else fmt.format(r[key])


def _section_markdown(section: str, rows) -> str:
  if section == "kernels":
    r0 = rows[0]
    title = (f"Grouped matmul [{r0['gmm_rows']}, {r0['gmm_k']}] x [{r0['groups']}, "
             f"{r0['gmm_k']}, {r0['gmm_n']}]")
    return title + "\n\n" + _table(
        [("backend", lambda r: r["name"]), ("fwd ms", _f("fwd_ms")),
         ("fwd TFLOP/s", _f("fwd_tflops", "{:.1f}")), ("fwd+bwd ms", _f("fwd_bwd_ms")),
         ("fwd+bwd TFLOP/s", _f("fwd_bwd_tflops", "{:.1f}")),
         ("fwd+bwd x dense", _f("ratio_vs_dense"))], rows)
  if section == "layer":
    layer = [r for r in rows if "phase" not in r]
    phases = [r for r in rows if "phase" in r]
    r0 = layer[0]
    title = (f"MoE layer: {r0['tokens']} tokens, d_model {r0['d_model']}, {r0['experts']} "
             f"experts x d_ff {r0['d_ff']}, top-{r0['top_k']}")
    text = title + "\n\n" + _table(
        [("variant", lambda r: r["name"]), ("backend", lambda r: str(r["backend"])),
         ("fwd ms", _f("fwd_ms")), ("fwd+bwd ms", _f("fwd_bwd_ms")),
         ("fwd x dense", _f("fwd_ratio_vs_dense")), ("fwd+bwd x dense", _f("ratio_vs_dense"))],
        layer)
    if phases:
      total = sum(r["fwd_bwd_ms"] for r in phases)
      text += f"\n\nWhere {phases[0]['variant']}'s time goes:\n\n" + _table(
          [("phase", lambda r: r["phase"]), ("fwd ms", _f("fwd_ms")),
           ("fwd+bwd ms", _f("fwd_bwd_ms")),
           ("share", lambda r: f"{r['fwd_bwd_ms'] / total:.0%}")], phases)
    return text
  if section == "expert_parallel":
    return f"Expert parallel over {rows[0]['expert_parallel']} devices\n\n" + _table(
        [("variant", lambda r: r["name"]), ("exchange", lambda r: str(r.get("exchange"))),
         ("placement", lambda r: r["placement"]), ("fwd ms", _f("fwd_ms")),
         ("fwd+bwd ms", _f("fwd_bwd_ms")), ("x one device", _f("ratio_vs_one_device"))], rows)
  return "Train step (random batches)\n\n" + _table(
      [("config", lambda r: r["name"]), ("devices", lambda r: str(r["devices"])),
       ("batch", lambda r: str(r["batch_size"])), ("step ms", _f("step_ms", "{:.1f}")),
       ("items/s", _f("items_per_second", "{:.0f}")),
       ("model TFLOP/s", _f("model_tflops_per_second", "{:.2f}")),
       ("MFU", _f("mfu", "{:.1%}"))], rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  unknown = [s for s in _SECTIONS.value if s not in SECTIONS]
  if unknown:
    raise SystemExit(f"error: --sections={unknown[0]!r} is invalid: valid values are "
                     + ", ".join(SECTIONS))
  train_config, train_set = _TRAIN_CONFIG.value, list(_TRAIN_SET.value)
  if _SMOKE.value:
    train_config = os.path.join(ROOT, "configs", "lm_tiny.py")
    train_set = ["data.batch_size=4", "data.seq_len=32"] + train_set  # the user's win
  if "train_step" in _SECTIONS.value and not os.path.exists(train_config):
    raise SystemExit(f"error: --train_config={train_config} does not exist")
  machine = _probe()
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  date = datetime.date.today().isoformat()
  header = (f"# moejax accelerator report\n\n{machine['devices']} x {machine['platform']} "
            f"({machine['device_kind']}), jax {machine['jax']}, tokamax "
            f"{'installed' if machine['tokamax'] else 'not installed'}, commit {_commit()}, "
            f"{date}, {_DTYPE.value if not _SMOKE.value else 'float32 (smoke)'}.\n\n"
            f"Command: `python experiments/accelerator_report.py {' '.join(sys.argv[1:])}`")
  parts, every_row, failed = [header], {}, []
  for section, name, args in _runs(machine, _SMOKE.value, train_config, train_set):
    rows, error = _run(name, args, _OUT_DIR.value)
    every_row[name] = rows
    if error:
      failed.append(name)
      parts.append(f"## {name}\n\nfailed ({error}); see {name}.log")
    else:
      parts.append(f"## {name}\n\n" + _section_markdown(section, rows))
  report = os.path.join(_OUT_DIR.value, "report.md")
  with open(report, "w") as f:
    f.write("\n\n".join(parts) + "\n")
  with open(os.path.join(_OUT_DIR.value, "report.json"), "w") as f:
    json.dump({"machine": machine, "date": date, "runs": every_row}, f, indent=1)
  print(f"wrote {report}" + (f"; failed: {', '.join(failed)}" if failed else ""))
  if failed:
    raise SystemExit(1)


if __name__ == "__main__":
  app.run(main)
