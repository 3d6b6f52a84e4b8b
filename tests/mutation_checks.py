"""Mutation checks of the designs whose study claims do not hold: each breaks
one equation of the paper in moejax's code, runs the test that compares the
layer with a per-token loop of the paper's equations, and restores the file.
A test that passes on the broken code would prove nothing; each must fail.

  python tests/mutation_checks.py     # from the repository root, ~2 minutes

Prints one 'caught' / 'NOT caught' line per mutation; exits 1 if any is not
caught. It edits the source files in place while a test runs: do not run it
beside other work on the same checkout.
"""

import pathlib
import subprocess
import sys

# (what breaks, file, original text, broken text, the test that must fail)
MUTATIONS = [
 ("moe_plus_plus: gating residual dropped", "moejax/moe.py",
  "logits = logits + at_least_f32(prev_logits) @ residual",
  "logits = logits + 0 * (at_least_f32(prev_logits) @ residual)",
  "tests/test_moe_plus_plus.py::test_layer_equals_the_per_token_loop_of_the_papers_equations"),
 ("moe_plus_plus: tau ignored in the balance loss", "moejax/routing/losses.py",
  "terms = terms * jnp.asarray(output_weights, terms.dtype)", "terms = terms",
  "tests/test_moe_plus_plus.py::test_layer_equals_the_per_token_loop_of_the_papers_equations"),
 ("mh_moe: merge projection skipped", "moejax/moe.py",
  'y = project("mh_merge")(y).astype(x.dtype)',
  'y = y.astype(x.dtype) + 0 * project("mh_merge")(y).astype(x.dtype)',
  "tests/test_mh_moe.py::test_mh_moe_equals_the_per_token_loop"),
 ("ds_moe: dense weights not renormalised", "moejax/routing/dense_training.py",
  "weight = weight / jnp.maximum(weight.sum(-1, keepdims=True), 1e-9)", "weight = weight",
  "tests/test_dense_training.py::test_training_call_is_the_weighted_sum_over_all_experts"),
 ("peer: second sub-key half ignored", "moejax/routing/product_keys.py",
  "candidates = top_scores[:, :, 0, first_rank] + top_scores[:, :, 1, second_rank]",
  "candidates = top_scores[:, :, 0, first_rank] + 0 * top_scores[:, :, 1, second_rank]",
  "tests/test_peer.py::test_layer_equals_the_per_token_loop_of_the_papers_equations"),
 ("expert_threshold: strict threshold", "moejax/routing/expert_threshold.py",
  "valid = probs >= tau[None, :]", "valid = probs > tau[None, :] + 1e-3",
  "tests/test_expert_threshold.py::test_layer_equals_the_per_token_loop"),
 ("aux-loss-free bias: update sign flipped", "moejax/routing/losses.py",
  "return bias + rate * jnp.sign(load.mean() - load)",
  "return bias + rate * jnp.sign(load - load.mean())",
  "tests/test_losses.py::test_aux_loss_free_bias_moves_load_toward_uniform"),
 ("aux-loss-free bias: also shifts the gate weights", "moejax/routing/token_choice.py",
  "weight = jnp.take_along_axis(scores, expert_index, axis=-1)",
  "weight = jnp.take_along_axis(selection, expert_index, axis=-1)",
  "tests/test_routing.py::test_expert_bias_changes_selection_not_weights"),
 ("switchhead: softmax gates instead of sigmoid", "moejax/models/switchhead.py",
  'score_fn="sigmoid"', 'score_fn="softmax"',
  "tests/test_switchhead.py::test_attention_equals_the_per_token_loop_of_the_papers_equations"),
]


def main() -> int:
  missed = 0
  for name, path, old, new, test in MUTATIONS:
    file = pathlib.Path(path)
    source = file.read_text()
    if source.count(old) != 1:
      print(f"{name}: the text to mutate is not in {path} once; update this script")
      return 2
    file.write_text(source.replace(old, new))
    try:
      run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", test],
                           capture_output=True, text=True)
    finally:
      file.write_text(source)
    missed += run.returncode == 0
    print(f"{name}: {'caught' if run.returncode else 'NOT caught'} by {test.split('::')[1]}",
          flush=True)
  return 1 if missed else 0


if __name__ == "__main__":
  sys.exit(main())
