"""Writes the notebooks in colabs/ from the cell sources below (outputs empty).

  python colabs/make_notebooks.py

Edit the cells here, not in the .ipynb files, so that the notebooks stay
reviewable as code and are committed without outputs.
"""

import os

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))

INSTALL = '''# Install (Colab, CPU runtime is enough). Locally, and in the test suite, moejax is already
# installed and this cell does nothing. Point MOEJAX_SOURCE at your clone or fork, e.g.
# "git+https://github.com/<you>/moejax" (pip's VCS syntax).
import importlib.util, os, subprocess, sys
MOEJAX_SOURCE = os.environ.get("MOEJAX_SOURCE", "")  # @param {type:"string"}
if importlib.util.find_spec("moejax") is None:
    if not MOEJAX_SOURCE:
        raise SystemExit("moejax is not installed: set MOEJAX_SOURCE to a pip-installable source")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", MOEJAX_SOURCE])'''

STEPS = '''# The test suite runs every notebook with MOEJAX_NOTEBOOK_STEPS set small.
STEPS = int(os.environ.get("MOEJAX_NOTEBOOK_STEPS", "{default}"))'''

NOTEBOOKS = {
    "01_quickstart.ipynb": [
        ("md", """# moejax quickstart: route a batch through an MoE layer

Build a top-2 MoE layer, route 64 tokens, and look at what routing decided: which expert and slot
each token got, the combine weights, the per-expert load, and the aux losses. Runs in seconds on CPU."""),
        ("code", INSTALL),
        ("code", '''import jax, jax.numpy as jnp, numpy as np
import matplotlib.pyplot as plt
from moejax import MoEConfig, MoELayer, RouterConfig
from moejax.routing import route

router = RouterConfig(num_experts=8, top_k=2, normalize_top_k=True, capacity_factor=1.0)
config = MoEConfig(router=router, d_model=32, d_ff=64, activation="swiglu", dispatch="gather")
layer = MoELayer(config)
x = jax.random.normal(jax.random.key(0), (64, 32))  # [tokens, d_model]
variables = layer.init(jax.random.key(1), x)
y, aux = layer.apply(variables, x)
print("output", y.shape, "| aux losses:", {k: round(float(v), 4) for k, v in aux.losses.items()})
print("metrics:", {k: np.round(np.asarray(v), 3).tolist() for k, v in aux.metrics.items()})'''),
        ("md", """## What the router decided
`route` is a pure function from router logits to a `Routing`: for each token `t` and choice `k`,
an `expert_index`, a combine `weight`, a `position` (its slot in the expert's buffer) and `valid`
(False when the expert was full: capacity factor 1.0 drops some second choices)."""),
        ("code", '''logits = x @ variables["params"]["router"]["kernel"]
out = route(router, logits)
r = out.routing
print("expert_index[:4] =", np.asarray(r.expert_index[:4]).tolist())
print("weight[:4]       =", np.round(np.asarray(r.weight[:4]), 3).tolist())
print("position[:4]     =", np.asarray(r.position[:4]).tolist())
print("dropped choices  =", int((~r.valid).sum()), "of", r.valid.size)
dense = r.to_dense()  # [tokens, experts, slots] dispatch and combine tensors
fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
axes[0].imshow(np.asarray(dense.combine.sum(-1)).T, aspect="auto", cmap="viridis")
axes[0].set(title="combine weight per (expert, token)", xlabel="token", ylabel="expert")
axes[1].imshow(np.asarray(dense.dispatch.sum(0)), aspect="auto", cmap="Greys")
axes[1].set(title="occupied slots per expert", xlabel="slot", ylabel="expert")
axes[2].bar(range(router.num_experts), np.asarray(r.tokens_per_expert()))
axes[2].axhline(r.valid.sum() / router.num_experts, color="red", ls="--", label="uniform")
axes[2].set(title="tokens per expert", xlabel="expert"); axes[2].legend()
plt.tight_layout(); plt.show()'''),
        ("md", """## Same numbers from every dispatch
Dispatch only moves tokens; the one-hot einsum (reference), capacity gather and dropless sort give
the same output on the same routing. We give the capacity strategies room for every choice
(capacity factor = number of experts, so nothing drops) and compare with dropless."""),
        ("code", '''import dataclasses
outs = {}
for dispatch in ("einsum", "gather", "dropless"):
    capacity = None if dispatch == "dropless" else float(router.num_experts)
    cfg = dataclasses.replace(config, dispatch=dispatch,
                              router=dataclasses.replace(router, capacity_factor=capacity))
    outs[dispatch] = MoELayer(cfg).apply(variables, x)[0]
for name in ("gather", "dropless"):
    print(f"max |{name} - einsum| = {float(jnp.abs(outs[name] - outs['einsum']).max()):.2e}")
    assert jnp.allclose(outs[name], outs["einsum"], atol=1e-5)'''),
    ],
    "02_train_tiny_lm.ipynb": [
        ("md", """# Train the tiny MoE LM

The default experiment (`configs/lm_tiny.py`): a 4-block byte-level LM with 8 experts (top-2) in every
block, trained on the embedded `stdlib_bytes` corpus (the Python standard library's source). A few
hundred steps take a couple of minutes on a CPU; then we plot the loss and the per-block expert load over training."""),
        ("code", INSTALL),
        ("code", STEPS.format(default=300)),
        ("code", '''import json, os, tempfile
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display
from moejax.train import experiment_from_config, train_and_evaluate
from moejax.train.presets import lm_tiny

config = lm_tiny()
config.train.update(num_steps=STEPS, log_every=max(1, STEPS // 10), eval_every=STEPS,
                    checkpoint_every=STEPS, warmup_steps=min(50, STEPS // 5))
config.data.eval_batches = 4
workdir = tempfile.mkdtemp(prefix="moejax_lm_tiny_")
summary = train_and_evaluate(experiment_from_config(config), workdir)
print(f"eval loss {summary.eval['loss']:.3f} nats/byte vs unigram baseline {summary.baseline_loss:.3f}")'''),
        ("code", '''rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
train = [r for r in rows if r["split"] == "train"]
steps = [r["step"] for r in train]
fig, (a, b) = plt.subplots(1, 2, figsize=(13, 3.5))
a.plot(steps, [r["loss"] for r in train], label="train")
a.axhline(summary.baseline_loss, color="grey", ls="--", label="unigram baseline")
a.set(xlabel="step", ylabel="loss (nats/byte)"); a.legend()
share = np.array([r["expert_load"][0] for r in train])  # block 0: [logs, experts], rows sum to 1
b.imshow(share.T, aspect="auto", cmap="magma", extent=[steps[0], steps[-1], share.shape[1] - 0.5, -0.5])
b.set(xlabel="step", ylabel="expert", title="block 0: share of assignments per expert")
plt.tight_layout(); plt.show()
for path in summary.plots:  # the trainer's own plots, also in the workdir
    display(Image(path))'''),
    ],
    "03_compare_routers.ipynb": [
        ("md", """# Compare routers on the same budget

Every entry of the router zoo (`moejax/studies/router_zoo.py`) changes only the routing of the tiny LM,
keeping the parameters a token uses equal, and trains for the same steps. Routers marked † choose
experts from the whole batch (future tokens included), so their LM loss is optimistic. The full run
is `python experiments/router_zoo.py --workdir=/tmp/router_zoo` (the README shows its table)."""),
        ("code", INSTALL),
        ("code", STEPS.format(default=150)),
        ("code", '''import tempfile
from IPython.display import Image, Markdown, display
from moejax.studies.comparison import train_row, markdown_table
from moejax.train.presets import lm_tiny
from moejax.studies.router_zoo import ZOO, plot_zoo, zoo_configs

routers = ["top2_capacity", "expert_choice", "aux_loss_free", "null_experts", "soft_moe"]
# The test suite runs the first MOEJAX_NOTEBOOK_ROUTERS of them (each compiles its own model).
routers = routers[:int(os.environ.get("MOEJAX_NOTEBOOK_ROUTERS", len(routers)))]
extra = [f"train.num_steps={STEPS}", f"train.log_every={max(1, STEPS // 3)}",
         f"train.eval_every={STEPS}", f"train.checkpoint_every={STEPS}",
         f"train.warmup_steps={min(50, STEPS // 5)}", "data.eval_batches=4"]
root = tempfile.mkdtemp(prefix="moejax_zoo_")
rows = []
for name, config in zoo_configs(lm_tiny(), routers, extra):
    print(f"== {name}: {ZOO[name][0]}")
    rows.append(train_row(name, config, f"{root}/{name}", verbose=False))
display(Markdown(markdown_table(rows)))'''),
        ("code", '''plot_zoo(rows, f"{root}/routers.png")
display(Image(f"{root}/routers.png"))'''),
    ],
    "04_expert_parallelism.ipynb": [
        ("md", """# Expert parallelism on 8 (fake) devices

On a CPU runtime, XLA can pretend to have 8 devices. We build moejax's mesh with an 8-way `expert`
axis, place the layer's parameters by the sharding rules (stacked expert weights `[E, d, f]` split
along `E`, the router replicated), then run the layer expert-parallel: tokens split 8 ways, each
device routes its own, and `all_to_all` carries them to the devices that hold their experts and
back. The result equals the single-device layer. The device count must be set before JAX starts,
so restart the runtime if JAX was already imported."""),
        ("code", INSTALL),
        ("code", '''os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax, jax.numpy as jnp, numpy as np
import matplotlib.pyplot as plt
from moejax import MoEConfig, MoELayer, RouterConfig
from moejax.parallel import MeshConfig, batch_sharding, make_mesh, tree_shardings
print(jax.device_count(), "devices:", jax.devices())'''),
        ("code", '''mesh = make_mesh(MeshConfig(data=1, expert=8))   # axes data, fsdp, expert, tensor
config = MoEConfig(router=RouterConfig(num_experts=16, top_k=2, normalize_top_k=True),
                   d_model=64, d_ff=128, activation="swiglu", dispatch="dropless")
layer = MoELayer(config)
x = jax.random.normal(jax.random.key(0), (256, 64))
variables = layer.init(jax.random.key(1), x)
sharded = jax.device_put(variables, tree_shardings(variables, mesh))
w_in = sharded["params"]["experts"]["w_in"]
print("w_in", w_in.shape, w_in.sharding.spec)
for shard in w_in.addressable_shards:
    experts = range(*shard.index[0].indices(config.router.num_experts))
    print(f"  {shard.device}: experts {list(experts)}  ({shard.data.nbytes / 1024:.0f} KiB)")'''),
        ("code", '''holder = np.zeros((config.router.num_experts, jax.device_count()))
for shard in w_in.addressable_shards:
    holder[shard.index[0], shard.device.id] = 1
plt.figure(figsize=(5, 4)); plt.imshow(holder, cmap="Blues", aspect="auto")
plt.xlabel("device"); plt.ylabel("expert"); plt.title("which device holds each expert's weights")
plt.show()'''),
        ("code", '''# Under jax.set_mesh the layer runs dropless dispatch expert-parallel inside shard_map.
apply = jax.jit(lambda v, x: layer.apply(v, x)[0])
with jax.set_mesh(mesh):
    x_split = jax.device_put(x, batch_sharding(mesh))
    print("tokens per device:", x_split.addressable_shards[0].data.shape)
    hlo = apply.lower(sharded, x_split).compile().as_text()
    y_parallel = apply(sharded, x_split)
print("all-to-all ops in the compiled step:", hlo.count("all-to-all-start") or hlo.count(" all-to-all("))
y_single = apply(variables, x)
print("max |expert parallel - single device| =", float(jnp.abs(y_parallel - y_single).max()))
assert jnp.allclose(y_parallel, y_single, atol=1e-5)'''),
    ],
}


def build(cells):
  nb = nbformat.v4.new_notebook()
  nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                 "language_info": {"name": "python"}, "colab": {"provenance": []}}
  nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
              for kind, src in cells]
  return nb


def main():
  for name, cells in NOTEBOOKS.items():
    path = os.path.join(HERE, name)
    nbformat.write(build(cells), path)
    print("wrote", path)


if __name__ == "__main__":
  main()
