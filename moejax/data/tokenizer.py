"""A checkpoint's tokenizer: `tokenizer.json` through the `tokenizers` library,
special tokens and chat template from `tokenizer_config.json`.

The `tokenizers` library does the encoding and decoding (it is what
transformers' fast tokenizers run); this module adds only what lives beside
tokenizer.json: which tokens are bos / eos / pad, and the Jinja chat template,
rendered in a sandbox the way transformers renders it (trim_blocks,
lstrip_blocks, loop controls, a non-escaping `tojson`, `raise_exception`).

Files it reads from a folder (HF checkpoint or moejax model folder):
    tokenizer.json            required (other formats are refused in one line)
    tokenizer_config.json     optional: bos/eos/pad/unk tokens, chat_template
    special_tokens_map.json   optional: the same tokens, where the config lacks them
    chat_template.jinja       optional: the chat template, newer transformers
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
from typing import Any, Dict, List, Optional, Sequence

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja")
# Files that mean "a tokenizer in a format moejax does not read".
_OTHER_FORMATS = {"tokenizer.model": "SentencePiece tokenizer.model",
                  "vocab.json": "vocab.json + merges.txt", "vocab.txt": "WordPiece vocab.txt",
                  "tiktoken.model": "tiktoken"}
SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")


class TokenizerError(ValueError):
  """A tokenizer folder that cannot be read, or a chat template that fails."""


def has_tokenizer(folder: str) -> bool:
  return os.path.isfile(os.path.join(folder, TOKENIZER_FILE))


def copy_tokenizer_files(src: Optional[str], dst: str) -> List[str]:
  """Copies the tokenizer files that exist in folder `src` (None: none) into
  `dst`; their names."""
  copied = []
  if src is None or not os.path.isdir(src):
    return copied
  for name in TOKENIZER_FILES:
    if os.path.isfile(os.path.join(src, name)):
      shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
      copied.append(name)
  return copied


def _token_text(value) -> Optional[str]:
  """tokenizer_config.json writes a special token as a string or as an
  AddedToken record {'content': ..., ...}."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) else None


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, ValueError) as err:
    raise TokenizerError(f"{path} is not valid JSON: {err}") from None
  if not isinstance(value, dict):
    raise TokenizerError(f"{path} holds a {type(value).__name__}, not a JSON object")
  return value


@dataclasses.dataclass
class Tokenizer:
  """Text <-> token ids for one checkpoint (see the module docstring)."""
  backend: Any                     # a tokenizers.Tokenizer
  special_tokens: Dict[str, str]   # 'bos_token' -> '<s>', ... (those the folder names)
  chat_template: Optional[str]
  folder: str

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  def token_id(self, name: str) -> Optional[int]:
    """Id of special token `name` ('eos_token', ...), None if the folder has none."""
    text = self.special_tokens.get(name)
    return None if text is None else self.backend.token_to_id(text)

  def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
    """Ids of `text`; `add_special_tokens` applies tokenizer.json's post-processor
    (e.g. a leading bos), as transformers' tokenizer(text) does."""
    return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def render_chat(self, messages: Sequence[Dict[str, str]],
                  add_generation_prompt: bool = True) -> str:
    """The chat template applied to [{'role': ..., 'content': ...}, ...]: the text
    to encode with add_special_tokens=False (the template writes its own)."""
    if self.chat_template is None:
      raise TokenizerError(f"{self.folder} has no chat template (tokenizer_config.json "
                           "'chat_template' or chat_template.jinja)")
    import jinja2
    try:
      template = _chat_environment().from_string(self.chat_template)
      return template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                             **self.special_tokens)
    except jinja2.TemplateError as err:
      raise TokenizerError(f"the chat template of {self.folder} fails to render: "
                           f"{type(err).__name__}: {err}") from None


def _chat_environment():
  """A sandboxed Jinja environment with the helpers HF chat templates use."""
  import jinja2
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  def raise_exception(message):
    raise jinja2.TemplateError(message)

  def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=["jinja2.ext.loopcontrols"])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env


def _chat_template(folder: str, config: dict) -> Optional[str]:
  jinja_file = os.path.join(folder, "chat_template.jinja")
  if os.path.isfile(jinja_file):
    with open(jinja_file, encoding="utf-8") as f:
      return f.read()
  template = config.get("chat_template")
  if isinstance(template, list):  # named templates: [{'name': 'default', 'template': ...}]
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    template = named.get("default")
  if template is not None and not isinstance(template, str):
    raise TokenizerError(f"{folder}/tokenizer_config.json: chat_template is a "
                         f"{type(template).__name__}; want a Jinja string")
  return template


def _other_formats(folder: str) -> List[str]:
  return [what for name, what in _OTHER_FORMATS.items()
          if os.path.isfile(os.path.join(folder, name))]


def load_tokenizer(folder: str) -> Tokenizer:
  """The tokenizer in `folder`; TokenizerError (one line) if there is none or
  it cannot be read."""
  path = os.path.join(folder, TOKENIZER_FILE)
  if not os.path.isfile(path):
    others = _other_formats(folder)
    if others:
      raise TokenizerError(
          f"{folder} has a {others[0]} but no {TOKENIZER_FILE}: moejax reads the `tokenizers` "
          "format only (write it with transformers: AutoTokenizer.from_pretrained(folder)"
          ".save_pretrained(folder))")
    raise TokenizerError(f"{folder} has no {TOKENIZER_FILE}")
  import tokenizers
  try:
    backend = tokenizers.Tokenizer.from_file(path)
  except Exception as err:  # tokenizers raises a bare Exception on a bad file
    first = (str(err).splitlines() or [""])[0]
    raise TokenizerError(f"{path} cannot be read by the tokenizers library: {first}") from None
  config = _read_json(os.path.join(folder, "tokenizer_config.json"))
  token_map = _read_json(os.path.join(folder, "special_tokens_map.json"))
  special = {}
  for name in SPECIAL_TOKENS:
    text = _token_text(config.get(name)) or _token_text(token_map.get(name))
    if text is None:
      continue
    if backend.token_to_id(text) is None:
      raise TokenizerError(f"{folder}: {name}={text!r} is not a token of {TOKENIZER_FILE}")
    special[name] = text
  return Tokenizer(backend, special, _chat_template(folder, config), folder)


def tokenizer_for_model(folder: str, vocab_size: int) -> Optional[Tokenizer]:
  """The tokenizer stored with a model (None if the folder has none); refuses
  one in another format, and one whose ids reach past the embedding table."""
  if not has_tokenizer(folder) and not _other_formats(folder):
    return None
  tokenizer = load_tokenizer(folder)
  if tokenizer.vocab_size > vocab_size:
    raise TokenizerError(f"{folder}/{TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but the "
                         f"model's vocab_size is {vocab_size}: it belongs to another model")
  return tokenizer
