"""Generates text (or token ids) from a trained, imported or upcycled LM.

  python experiments/generate.py --model=/tmp/moejax_lm_tiny --prompt="def " \
      [--max_new_tokens=200 --temperature=0.8 --top_k=40 --num_samples=2 --seed=0]
  python experiments/generate.py --model=/tmp/mixtral --prompt_ids=1,15,27

--model: a training workdir (latest checkpoint), a moejax model folder from
experiments/convert.py, or a HuggingFace folder. Byte-level models (vocab 256, the
embedded corpus) take --prompt as text and print text; others take --prompt_ids and
print ids (moejax ships no tokenizers). Greedy at --temperature=0. MoE layers route
without capacity limits while generating (moejax.generate.for_generation).
Exit codes: 0 done; 1 the model cannot generate; 2 bad flags. Errors are one line.
"""

from __future__ import annotations


from absl import flags

from moejax.cli import fail, run

_MODEL = flags.DEFINE_string("model", None, "Training workdir, moejax model folder or HF folder.")
_PROMPT = flags.DEFINE_string("prompt", None, "Prompt text (byte-level models, vocab 256).")
_PROMPT_IDS = flags.DEFINE_list("prompt_ids", None, "Prompt token ids, comma-separated.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 100, "Tokens to generate per sample.",
                                lower_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy; > 0 samples.",
                                  lower_bound=0.0)
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the top_k logits only (0 = all).",
                              lower_bound=0)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Continuations of the prompt.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")



def main(argv):
  if len(argv) > 1:
    fail(2, f"unexpected arguments {argv[1:]}")
  if not _MODEL.value:
    fail(2, "--model is required")
  if (_PROMPT.value is None) == (_PROMPT_IDS.value is None):
    fail(2, "give exactly one of --prompt (text) and --prompt_ids")
  if _NUM_SAMPLES.value < 1:
    fail(2, f"--num_samples={_NUM_SAMPLES.value} is invalid: must be >= 1")
  import jax
  import numpy as np
  from moejax.convert.sources import load_any
  from moejax.generate import generate
  from moejax.models import TransformerLM
  try:
    config, variables, _ = load_any(_MODEL.value)
    byte_level = config.lm.vocab_size == 256
    if _PROMPT.value is not None:
      if not byte_level:
        fail(2, f"--prompt is text for byte-level models; this one has vocab_size="
              f"{config.lm.vocab_size}: use --prompt_ids")
      ids = list(_PROMPT.value.encode("utf-8"))
    else:
      try:
        ids = [int(t) for t in _PROMPT_IDS.value]
      except ValueError:
        fail(2, f"--prompt_ids={','.join(_PROMPT_IDS.value)} is invalid: integers please")
      bad = [i for i in ids if not 0 <= i < config.lm.vocab_size]
      if bad:
        fail(2, f"--prompt_ids holds {bad[0]}: token ids must be in [0, {config.lm.vocab_size}) "
                "(the model's model.lm.vocab_size)")
    if not ids:
      fail(2, "the prompt is empty")
    prompt = np.tile(np.asarray(ids, np.int32), (_NUM_SAMPLES.value, 1))
    out = generate(TransformerLM(config), variables, prompt, max_new_tokens=_MAX_NEW.value,
                   temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                   rng=jax.random.PRNGKey(_SEED.value))
  except (ValueError, FileNotFoundError) as err:
    fail(1, str(err).splitlines()[0])
  for i, row in enumerate(np.asarray(out)):
    new = row[len(ids):]
    shown = bytes(new.astype(np.uint8).tolist()).decode("utf-8", "replace") if byte_level \
        else ",".join(map(str, new.tolist()))
    print(f"--- sample {i} ---\n{_PROMPT.value or ''}{shown}" if byte_level
          else f"sample {i}: {shown}")


if __name__ == "__main__":
  run(main)
