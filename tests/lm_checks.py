"""Checks shared by the tests of designs that change how an LM routes:
causality, and cached generation equal to recomputing the whole sequence."""

import jax
import jax.numpy as jnp
import numpy as np

from moejax.generate import generate


def assert_causal(forward, tokens, position: int) -> None:
  """Changing tokens[:, position] leaves every logit before it unchanged and
  changes some after it. forward: tokens [B, S] -> logits [B, S, V]."""
  forward = jax.jit(forward)
  logits = forward(tokens)
  changed = forward(tokens.at[:, position].set((tokens[:, position] + 1) % 256))
  np.testing.assert_allclose(logits[:, :position], changed[:, :position], atol=1e-6)
  assert float(jnp.abs(logits[:, position:] - changed[:, position:]).max()) > 1e-4


def assert_generates_like_recomputation(model, variables, prompt, new_tokens: int) -> None:
  """Cached greedy generation equals greedy decoding by running the whole
  sequence each step (held at its final length; the LM is causal)."""
  out = generate(model, variables, prompt, max_new_tokens=new_tokens)
  forward = jax.jit(lambda s: model.apply(variables, s)[0])
  seq = np.zeros((prompt.shape[0], prompt.shape[1] + new_tokens), np.int32)
  seq[:, :prompt.shape[1]] = prompt
  for t in range(prompt.shape[1], seq.shape[1]):
    seq[:, t] = np.argmax(np.asarray(forward(seq))[:, t - 1], -1)
  np.testing.assert_array_equal(out, seq)
