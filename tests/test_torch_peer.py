"""bench/torch_peer.py's collator feeds what FlagEmbedding's does: one text per example, each
batch padded to its longest example (not glued into full rows)."""

import importlib.util
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _peer():
  spec = importlib.util.spec_from_file_location("torch_peer",
                                                os.path.join(ROOT, "bench", "torch_peer.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_batches_are_padded_to_their_longest_text():
  peer = _peer()
  import tokenizers
  tok = tokenizers.Tokenizer.from_file(peer.DEFAULT_TOKENIZER)
  tok.no_padding()
  tok.no_truncation()  # as the peer's main
  texts = ["a short text.", "a somewhat longer text than the first one, with more words in it."]
  examples = peer.document_examples(tok, texts, 126, 2, seed=0)
  lengths = sorted(len(tok.encode(t, add_special_tokens=False).ids) for t in texts)
  assert sorted(map(len, examples)) == lengths  # one text per example, never glued
  batch = peer.RetroMAECollator(tok, 128)(examples)
  width = lengths[-1] + 2  # [CLS] text [SEP] of the longest
  assert batch["encoder_input_ids"].shape == (2, width)
  assert batch["decoder_attention_mask"].shape == (2, width, width)
  assert sorted(batch["encoder_attention_mask"].sum(1).tolist()) == [n + 2 for n in lengths]
  # Truncated to seq_len - 2 ids, as FlagEmbedding truncates to max_seq_length.
  assert max(map(len, peer.document_examples(tok, texts, 5, 2, seed=0))) == 5
