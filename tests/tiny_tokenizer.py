"""A byte-level BPE tokenizer trained in the test on stdlib source (the
`tokenizers` library), saved the way HuggingFace checkpoints hold one."""

import glob
import json
import os
import sysconfig

# Multi-turn, a system message, loop variables, namespace, tojson and a guard
# that calls raise_exception: the features real chat templates use.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(turns=0) %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{% set ns.turns = ns.turns + 1 %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] | trim }}"
    "{% if loop.last and message['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{{ {'turns': ns.turns} | tojson }}\n{% endif %}")


def train_tokenizer(folder, vocab_size: int = 300) -> int:
  """Writes tokenizer.json (+ tokenizer_config.json: <s> bos added by the
  post-processor, </s> eos, <pad>, the chat template); returns the vocab size."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "json", "*.py")))
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.train(files, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tokenizer.post_processor = processors.TemplateProcessing(
      single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
  os.makedirs(folder, exist_ok=True)
  tokenizer.save(os.path.join(folder, "tokenizer.json"))
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
               "eos_token": {"__type": "AddedToken", "content": "</s>", "special": True},
               "pad_token": "<pad>", "chat_template": CHAT_TEMPLATE}, f)
  return tokenizer.get_vocab_size()
