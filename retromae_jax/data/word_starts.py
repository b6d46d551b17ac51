"""Which vocabulary ids continue a word, for whole-word masking with any tokenizer.

Tokenizers mark word boundaries in their vocabulary in one of two ways:
- WordPiece marks CONTINUATIONS: '##ing' continues the previous token's word (BERT; the rule the
  spec's references implement).
- Byte-level BPE ('Ġ', RoBERTa/GPT-2) and SentencePiece ('▁', XLM-R's Unigram, Metaspace) mark
  word STARTS: a token that starts a whitespace-delimited word carries the marker, everything
  else continues the word before it (so 'Hello' ',' is one word, as whitespace splits it).
The marker is read from the tokenizer's own pipeline (its model, pre-tokenizer, normalizer and
decoder in tokenizer.json), never guessed from the vocabulary. Added and special tokens always
stand alone. A tokenizer without either kind of marker (e.g. WordLevel) makes every token its
own word: plain token-level masking.

The result is one bool per id, so masking stays a table lookup over the whole batch; the first
token of a chunk opens a word whatever the table says (data/pretrain/masking.py).
"""

import json

import numpy as np
import tokenizers
from tokenizers import models

BYTE_LEVEL_SPACE = "\u0120"  # 'Ġ': byte-level BPE's visible form of a leading space
METASPACE = "\u2581"  # '▁': SentencePiece's, unless the Metaspace component names another


def _components(node):
  """Every {'type': ...} component of a tokenizer.json pipeline section, nested ones included."""
  if isinstance(node, dict):
    if "type" in node:
      yield node
    for value in node.values():
      yield from _components(value)
  elif isinstance(node, list):
    for value in node:
      yield from _components(value)


def marker(tokenizer: tokenizers.Tokenizer) -> tuple[str, str] | None:
  """('continuation', prefix) for WordPiece, ('start', marker) for byte-level BPE and
  SentencePiece, None for a tokenizer that marks neither."""
  if isinstance(tokenizer.model, models.WordPiece):
    return "continuation", tokenizer.model.continuing_subword_prefix
  spec = json.loads(tokenizer.to_str())
  parts = [c for key in ("pre_tokenizer", "normalizer", "decoder")
           for c in _components(spec.get(key))]
  for part in parts:
    if part["type"] == "Metaspace":
      return "start", part.get("replacement", METASPACE)
  if any(part["type"] == "ByteLevel" for part in parts):
    return "start", BYTE_LEVEL_SPACE
  # SentencePiece conversions without a Metaspace component (e.g. a normalizer that prepends and
  # replaces spaces by '▁') still write '▁' into the text the model sees.
  if any(part["type"] in ("Prepend", "Replace") and METASPACE in json.dumps(part)
         for part in parts):
    return "start", METASPACE
  return None


def continuation_table(tokenizer: tokenizers.Tokenizer) -> np.ndarray:
  """bool[vocab_size incl. added tokens]: True for ids that continue the previous token's word."""
  table = np.zeros(tokenizer.get_vocab_size(with_added_tokens=True), dtype=bool)
  found = marker(tokenizer)
  if found is None:
    return table
  kind, mark = found
  vocab = tokenizer.get_vocab(with_added_tokens=False)
  if kind == "continuation":
    # Plain startswith, as the references test it (a bare '##' token counts too).
    ids = [i for token, i in vocab.items() if token.startswith(mark)]
  else:
    ids = [i for token, i in vocab.items() if not token.startswith(mark)]
  table[ids] = True
  for token_id in tokenizer.get_added_tokens_decoder():  # <s>, <pad>, <mask>, ...: never joined
    table[token_id] = False
  return table
