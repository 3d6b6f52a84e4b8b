"""Tokenizers: a BPE tokenizer trained here on stdlib source must encode,
decode and render chat templates exactly as transformers does; imported
models generate text from a --prompt; bad tokenizer folders fail in one line."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from moejax.data.tokenizer import TokenizerError, load_tokenizer, tokenizer_for_model
from tiny_tokenizer import train_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["def loads(s):\n    return json.decode(s)  # é ü 漢字",
         "<s>already</s> special <pad> tokens\ttabs\n\n",
         "", "   leading spaces", "emoji 🙂 and \\u00e9 escapes"]
MESSAGES = [{"role": "system", "content": "  be brief "},
            {"role": "user", "content": "what is json?"},
            {"role": "assistant", "content": "A format."},
            {"role": "user", "content": "and <s>?"}]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("tokenizer"))
  train_tokenizer(folder)
  return folder


def test_encode_decode_and_chat_template_equal_transformers(tokenizer_dir):
  ours = load_tokenizer(tokenizer_dir)
  theirs = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
  assert ours.vocab_size == len(theirs) == 300
  assert ours.token_id("eos_token") == theirs.eos_token_id == 1
  assert ours.token_id("bos_token") == theirs.bos_token_id == 0
  for text in TEXTS:
    for special in (True, False):
      ids = ours.encode(text, add_special_tokens=special)
      assert ids == theirs(text, add_special_tokens=special)["input_ids"], (text, special)
      for skip in (True, False):
        assert ours.decode(ids, skip) == theirs.decode(ids, skip_special_tokens=skip)
  assert ours.encode(TEXTS[0])[0] == 0 and len(ours.encode(TEXTS[0])) < len(TEXTS[0])
  for messages in (MESSAGES, MESSAGES[:3], MESSAGES[1:2]):
    for prompt in (True, False):
      rendered = ours.render_chat(messages, add_generation_prompt=prompt)
      assert rendered == theirs.apply_chat_template(
          messages, tokenize=False, add_generation_prompt=prompt)
  assert '<|assistant|>{"turns": 4}\n' in ours.render_chat(MESSAGES)


def _run(binary, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", binary), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_imported_model_generates_the_same_text_as_transformers(tokenizer_dir, tmp_path):
  """import (tokenizer copied along) -> generate --prompt / --chat -> export
  (tokenizer copied again); greedy text equals transformers' own."""
  from hf_models import tiny_hf_model
  hf_dir, moejax_dir, export_dir = tmp_path / "hf", tmp_path / "moejax", tmp_path / "export"
  hf_model = tiny_hf_model("mixtral", vocab_size=300)
  hf_model.save_pretrained(hf_dir)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(tokenizer_dir, name), hf_dir / name)
  theirs = transformers.AutoTokenizer.from_pretrained(hf_dir)
  imported = _run("convert.py", "--mode=import", f"--src={hf_dir}", f"--out={moejax_dir}")
  assert imported.returncode == 0, imported.stderr
  assert "+ tokenizer (300 tokens)" in imported.stdout
  for chat in (False, True):
    prompt = "def dumps(obj"
    text = theirs.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                      add_generation_prompt=True) if chat else prompt
    ids = theirs(text, add_special_tokens=not chat, return_tensors="pt")["input_ids"]
    with torch.no_grad():
      ref = hf_model.generate(ids, max_new_tokens=12, do_sample=False,
                              eos_token_id=theirs.eos_token_id, pad_token_id=2)
    expected = theirs.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
    gen = _run("generate.py", f"--model={moejax_dir}", f"--prompt={prompt}",
               "--max_new_tokens=12", *(["--chat"] if chat else []))
    assert gen.returncode == 0, gen.stderr
    assert len(expected) > 12 and gen.stdout == f"--- sample 0 ---\n{prompt}{expected}\n", (
        chat, gen.stdout)
  from moejax.convert.hf_export import save_hf
  from moejax.convert.model_dir import load_model_dir
  config, variables, hf = load_model_dir(str(moejax_dir))
  save_hf(str(export_dir), config, variables, "mixtral", base=hf, tokenizer_from=str(moejax_dir))
  reloaded = transformers.AutoTokenizer.from_pretrained(export_dir)
  assert reloaded(TEXTS[0])["input_ids"] == theirs(TEXTS[0])["input_ids"]


def _folder(tmp_path, tokenizer_dir, name, **files):
  """A copy of the tokenizer folder with `files` replaced (None: removed)."""
  folder = tmp_path / name
  shutil.copytree(tokenizer_dir, folder)
  for file, content in files.items():
    path = folder / file.replace("__", ".")
    if content is None:
      path.unlink()
    else:
      path.write_text(content if isinstance(content, str) else json.dumps(content))
  return str(folder)


def test_bad_tokenizers_fail_with_one_clear_line(tokenizer_dir, tmp_path):
  config = json.loads((open(os.path.join(tokenizer_dir, "tokenizer_config.json")).read()))

  def error(folder, vocab_size=300, chat=None):
    with pytest.raises(TokenizerError) as info:
      tokenizer = tokenizer_for_model(folder, vocab_size)
      if chat is not None:
        tokenizer.render_chat(chat)
    assert len(str(info.value).splitlines()) == 1
    return str(info.value)

  sentencepiece = _folder(tmp_path, tokenizer_dir, "sp", tokenizer__json=None)
  open(os.path.join(sentencepiece, "tokenizer.model"), "wb").write(b"\x00")
  assert "SentencePiece tokenizer.model but no tokenizer.json" in error(sentencepiece)
  assert tokenizer_for_model(str(tmp_path), 300) is None       # no tokenizer at all
  assert "cannot be read by the tokenizers library" in error(
      _folder(tmp_path, tokenizer_dir, "corrupt", tokenizer__json='{"model": 1}'))
  assert "not valid JSON" in error(
      _folder(tmp_path, tokenizer_dir, "badcfg", tokenizer_config__json="{"))
  assert "eos_token='<end>' is not a token" in error(
      _folder(tmp_path, tokenizer_dir, "eos", tokenizer_config__json={**config, "eos_token": "<end>"}))
  assert "has 300 tokens but the model's vocab_size is 256" in error(tokenizer_dir, 256)
  assert "fails to render: TemplateError: unknown role tool" in error(
      tokenizer_dir, chat=[{"role": "tool", "content": "x"}])
  assert "fails to render: TemplateSyntaxError" in error(_folder(
      tmp_path, tokenizer_dir, "syntax", tokenizer_config__json={**config, "chat_template": "{% if %}"}),
      chat=MESSAGES)
  assert "has no chat template" in error(_folder(
      tmp_path, tokenizer_dir, "nochat",
      tokenizer_config__json={k: v for k, v in config.items() if k != "chat_template"}),
      chat=MESSAGES)


def test_convert_with_a_broken_tokenizer_writes_nothing(tokenizer_dir, tmp_path):
  from hf_models import tiny_hf_model
  hf_dir = tmp_path / "hf"
  tiny_hf_model("llama").save_pretrained(hf_dir)       # vocab 64 < the tokenizer's 300
  shutil.copy(os.path.join(tokenizer_dir, "tokenizer.json"), hf_dir / "tokenizer.json")
  out = _run("convert.py", "--mode=import", f"--src={hf_dir}", f"--out={tmp_path / 'out'}")
  assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert "has 300 tokens but the model's vocab_size is 64" in out.stderr
  assert not (tmp_path / "out").exists()
  assert np.all([not p.startswith(".partial") for p in os.listdir(tmp_path)])
