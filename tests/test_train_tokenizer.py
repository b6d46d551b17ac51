"""Tokenizer loading (retromae_jax/data/tokenizer.py) and training (retromae_jax/tools/train_tokenizer.py)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = "The Quick brown fox [MASK] jumps, unbelievably; Ünïcode text."


def test_default_is_bert_uncased_without_truncation_or_padding():
  tok = tokenizer_lib.load_tokenizer("default")
  assert tok.truncation is None and tok.padding is None
  assert len(tok.encode("word " * 300).ids) == 302  # not cut at the file's 128
  assert tokenizer_lib.special_ids(tok) == tokenizer_lib.SpecialIds(
      cls=101, sep=102, pad=0, mask=103, vocab_size=30522)
  table = tokenizer_lib.continuation_table(tok)
  assert table.shape == (30522,) and table.dtype == bool
  assert table[tok.token_to_id("##s")] and not table[tok.token_to_id("the")]
  assert not table[[101, 102, 0, 103]].any()
  assert table.sum() == sum(t.startswith("##") for t in tok.get_vocab())


def test_directory_json_path_and_vocab_only_directory(tmp_path):
  default = tokenizer_lib.load_tokenizer("default")
  assets = tokenizer_lib.DEFAULT_DIR
  by_dir = tokenizer_lib.load_tokenizer(str(assets))
  by_file = tokenizer_lib.load_tokenizer(str(assets / "tokenizer.json"))
  shutil.copy(assets / "vocab.txt", tmp_path)
  shutil.copy(assets / "tokenizer_config.json", tmp_path)
  from_vocab = tokenizer_lib.load_tokenizer(str(tmp_path))
  expected = default.encode(SAMPLE).ids
  for tok in (by_dir, by_file, from_vocab):
    assert tok.encode(SAMPLE).ids == expected
    assert tokenizer_lib.special_ids(tok) == tokenizer_lib.special_ids(default)
  # do_lower_case is honoured.
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
  cased = tokenizer_lib.load_tokenizer(str(tmp_path))
  assert cased.encode("The").ids != default.encode("The").ids


def test_unusable_paths_are_one_line_errors(tmp_path):
  cases = [
      (str(tmp_path / "missing"), "does not exist"),
      (str(tmp_path), "has neither tokenizer.json nor vocab.txt"),
  ]
  (tmp_path / "bad.json").write_text("{not a tokenizer")
  cases.append((str(tmp_path / "bad.json"), "is not a valid tokenizer.json"))
  for spec, message in cases:
    with pytest.raises(ValueError) as err:
      tokenizer_lib.load_tokenizer(spec)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert os.path.basename(spec) in str(err.value)


def test_roberta_style_specials_and_no_word_grouping():
  vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "hello": 5, "world": 6}
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  assert tokenizer_lib.special_ids(tok) == tokenizer_lib.SpecialIds(0, 2, 1, 4, 7)
  assert not tokenizer_lib.continuation_table(tok).any()  # each token is its own word
  del vocab["<mask>"]
  with pytest.raises(ValueError, match="no complete set of special tokens"):
    tokenizer_lib.special_ids(tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>")))


def test_train_tokenizer_cli(tmp_path):
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in sources.pydoc_texts()[:300])
                    + "not json\n")
  out = tmp_path / "tok"
  proc = subprocess.run(
      [sys.executable, "-m", "retromae_jax.tools.train_tokenizer", f"--input={corpus}",
       "--vocab_size=3000", f"--out={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert {p.name for p in out.iterdir()} >= {"tokenizer.json", "vocab.txt",
                                             "tokenizer_config.json"}
  tok = tokenizer_lib.load_tokenizer(str(out))
  assert tokenizer_lib.special_ids(tok) == tokenizer_lib.SpecialIds(
      cls=2, sep=3, pad=0, mask=4, vocab_size=tok.get_vocab_size())
  assert 2000 < tok.get_vocab_size() <= 3000
  assert tokenizer_lib.continuation_table(tok).sum() > 100
  enc = tok.encode("Return the Value of the attribute.")
  assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]" and "return" in enc.tokens
  assert (out / "vocab.txt").read_text().splitlines()[:5] == [
      "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

  transformers = pytest.importorskip("transformers")
  hf = transformers.AutoTokenizer.from_pretrained(str(out))
  assert hf(SAMPLE)["input_ids"] == tok.encode(SAMPLE).ids
  assert (hf.cls_token_id, hf.sep_token_id, hf.pad_token_id, hf.mask_token_id) == (2, 3, 0, 4)
  # The vocab.txt alone rebuilds the same tokenizer.
  (out / "tokenizer.json").unlink()
  again = tokenizer_lib.load_tokenizer(str(out))
  assert again.encode(SAMPLE).ids == tok.encode(SAMPLE).ids
  np.testing.assert_array_equal(tokenizer_lib.continuation_table(again),
                                tokenizer_lib.continuation_table(tok))


def test_bare_globs_become_source_specs():
  from retromae_jax.tools.train_tokenizer import source_spec
  assert source_spec("/d/*.jsonl") == "jsonl:/d/*.jsonl"
  assert source_spec("/d/*.jsonl.gz") == "jsonl:/d/*.jsonl.gz"
  assert source_spec("/d/*.txt") == "text:/d/*.txt"
  assert source_spec("pydoc") == "pydoc"
  assert source_spec("tfds:wikipedia") == "tfds:wikipedia"
