"""Generates text (or token ids) from a trained, imported or upcycled LM.

  python experiments/generate.py --model=/tmp/moejax_lm_tiny --prompt="def " \
      [--max_new_tokens=200 --temperature=0.8 --top_k=40 --num_samples=2 --seed=0]
  python experiments/generate.py --model=/tmp/mixtral --prompt="Hello" [--chat]
  python experiments/generate.py --model=/tmp/mixtral --prompt="Hi" --prompt="Once upon a"
  python experiments/generate.py --model=/tmp/mixtral --prompt_ids=1,15,27

--model: a training workdir (latest checkpoint), a moejax model folder from
experiments/convert.py, or a HuggingFace folder. --prompt is text: a folder with a
tokenizer.json (moejax.data.tokenizer), or a workdir trained with data.tokenizer,
encodes it with that tokenizer; a byte-level model (vocab 256, the embedded corpus)
takes its UTF-8 bytes. --chat wraps each prompt as one user message in the
tokenizer's chat template. Repeated --prompt flags run as one left-padded batch.
Text output stops at the tokenizer's eos token. --prompt_ids takes and prints token
ids. Greedy at --temperature=0. MoE layers route without capacity limits while
generating (moejax.generate.for_generation).
Exit codes: 0 done; 1 the model cannot generate; 2 bad flags. Errors are one line.
"""

from __future__ import annotations


from absl import flags

from moejax.cli import fail, run

_MODEL = flags.DEFINE_string("model", None, "Training workdir, moejax model folder or HF folder.")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "Prompt text: encoded by the model "
                                    "folder's tokenizer.json, or as UTF-8 bytes for byte-level "
                                    "models. Repeat for a batch of prompts (left-padded).")
_CHAT = flags.DEFINE_bool("chat", False, "Wrap each --prompt as a user message in the "
                          "tokenizer's chat template (with the generation prompt).")
_PROMPT_IDS = flags.DEFINE_list("prompt_ids", None, "Prompt token ids, comma-separated.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 100, "Tokens to generate per sample.",
                                lower_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy; > 0 samples.",
                                  lower_bound=0.0)
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the top_k logits only (0 = all).",
                              lower_bound=0)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Continuations of each prompt.")
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
  if _CHAT.value and _PROMPT.value is None:
    fail(2, "--chat needs --prompt (text)")
  import jax
  import numpy as np
  from moejax.train.sources import load_any, tokenizer_folder
  from moejax.data.tokenizer import tokenizer_for_model
  from moejax.generate import generate, left_pad
  from moejax.models import TransformerLM
  try:
    config, variables, _ = load_any(_MODEL.value)
    tokenizer = tokenizer_for_model(tokenizer_folder(_MODEL.value), config.lm.vocab_size)
    byte_level = tokenizer is None and config.lm.vocab_size == 256
    if _PROMPT.value is not None:
      prompts = [_encode_prompt(text, tokenizer, byte_level, config.lm.vocab_size)
                 for text in _PROMPT.value]
    else:
      try:
        prompts = [[int(t) for t in _PROMPT_IDS.value]]
      except ValueError:
        fail(2, f"--prompt_ids={','.join(_PROMPT_IDS.value)} is invalid: integers please")
      bad = [i for i in prompts[0] if not 0 <= i < config.lm.vocab_size]
      if bad:
        fail(2, f"--prompt_ids holds {bad[0]}: token ids must be in [0, {config.lm.vocab_size}) "
                "(the model's model.lm.vocab_size)")
    if any(not ids for ids in prompts):
      fail(2, "a prompt is empty")
    rows = [ids for ids in prompts for _ in range(_NUM_SAMPLES.value)]
    batch, lengths = left_pad(rows)
    out = generate(TransformerLM(config), variables, batch, max_new_tokens=_MAX_NEW.value,
                   temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                   rng=jax.random.PRNGKey(_SEED.value), prompt_lengths=lengths)
  except (ValueError, FileNotFoundError) as err:
    fail(1, str(err).splitlines()[0])
  width = batch.shape[1]
  for r, row in enumerate(np.asarray(out)):
    p, i = divmod(r, _NUM_SAMPLES.value)
    new = row[width:].tolist()
    if _PROMPT.value is None:
      print(f"sample {i}: {','.join(map(str, new))}")
      continue
    title = f"sample {i}" if len(prompts) == 1 else f"prompt {p}, sample {i}"
    if byte_level:
      shown = bytes(new).decode("utf-8", "replace")
    else:
      eos = tokenizer.token_id("eos_token")
      shown = tokenizer.decode(new[:new.index(eos)] if eos in new else new)
    print(f"--- {title} ---\n{_PROMPT.value[p]}{shown}")


def _encode_prompt(text: str, tokenizer, byte_level: bool, vocab_size: int):
  """Token ids of one --prompt (with --chat: of the rendered chat template)."""
  if tokenizer is None:
    if not byte_level:
      fail(2, f"--prompt is text, but {_MODEL.value} has no tokenizer.json and its vocab_size "
              f"is {vocab_size} (not byte-level): use --prompt_ids")
    if _CHAT.value:
      fail(2, "--chat needs a tokenizer with a chat template; byte-level models have none")
    return list(text.encode("utf-8"))
  if _CHAT.value:
    rendered = tokenizer.render_chat([{"role": "user", "content": text}])
    return tokenizer.encode(rendered, add_special_tokens=False)
  return tokenizer.encode(text)


if __name__ == "__main__":
  run(main)
