"""Loading the tokenizer, and the few facts about it that masking needs.

Everything here is host-side and uses HF `tokenizers` only (fast, no `transformers` import).
"""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from retromae_jax.data import word_starts

DEFAULT_DIR = Path(__file__).parent / "assets" / "bert-base-uncased-wordpiece"
# The files of a HF tokenizer directory that are copied along with a model (checkpoints, export).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")

# (cls, sep, pad, mask) token strings, BERT first, then RoBERTa / XLM-R style.
_SPECIAL_NAMES = (("[CLS]", "[SEP]", "[PAD]", "[MASK]"), ("<s>", "</s>", "<pad>", "<mask>"))


def load_tokenizer(spec: str) -> tokenizers.Tokenizer:
  """Loads 'default', a directory (tokenizer.json or vocab.txt) or a tokenizer.json path.

  Truncation and padding are switched off: chunking decides lengths, the pipeline pads.
  """
  path = DEFAULT_DIR if spec == "default" else Path(spec)
  if path.is_dir():
    if (path / "tokenizer.json").is_file():
      tok = _from_json(path / "tokenizer.json")
    elif (path / "vocab.txt").is_file():
      tok = _wordpiece_from_vocab(path)
    else:
      raise ValueError(f"tokenizer {spec!r}: directory {path} has neither tokenizer.json nor "
                       "vocab.txt")
  elif path.is_file():
    tok = _from_json(path)
  else:
    raise ValueError(f"tokenizer {spec!r}: {path} does not exist; expected 'default', a "
                     "directory with tokenizer.json or vocab.txt, or a tokenizer.json file")
  tok.no_truncation()
  tok.no_padding()
  return tok


def _from_json(path: Path) -> tokenizers.Tokenizer:
  try:
    return tokenizers.Tokenizer.from_file(str(path))
  except Exception as e:  # tokenizers raises a bare Exception on malformed files
    first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"tokenizer: {path} is not a valid tokenizer.json ({first_line})") from None


def _wordpiece_from_vocab(directory: Path) -> tokenizers.Tokenizer:
  """A BERT WordPiece tokenizer from vocab.txt (+ tokenizer_config.json's do_lower_case)."""
  lowercase = True  # BertTokenizer's default when tokenizer_config.json does not say
  config_path = directory / "tokenizer_config.json"
  if config_path.is_file():
    lowercase = bool(json.loads(config_path.read_text()).get("do_lower_case", True))
  vocab = str(directory / "vocab.txt")
  tok = tokenizers.Tokenizer(models.WordPiece.from_file(vocab, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece()
  present = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
             if tok.token_to_id(t) is not None]
  tok.add_special_tokens(present)  # so that "[MASK]" in text is one token, never split
  cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
  if cls is not None and sep is not None:
    tok.post_processor = processors.BertProcessing(("[SEP]", sep), ("[CLS]", cls))
  return tok


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  cls: int
  sep: int
  pad: int
  mask: int
  vocab_size: int  # including added tokens: the size of the embedding table


def special_ids(tokenizer: tokenizers.Tokenizer) -> SpecialIds:
  """The ids of [CLS]/[SEP]/[PAD]/[MASK] (or <s>/</s>/<pad>/<mask>)."""
  vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
  for names in _SPECIAL_NAMES:
    ids = [tokenizer.token_to_id(name) for name in names]
    if all(i is not None for i in ids):
      return SpecialIds(*ids, vocab_size=vocab_size)
  raise ValueError("tokenizer: no complete set of special tokens; expected "
                   + " or ".join("/".join(names) for names in _SPECIAL_NAMES))


def continuation_table(tokenizer: tokenizers.Tokenizer) -> np.ndarray:
  """bool[vocab_size]: True for ids that continue the previous token's word (whole-word masking:
  '##' pieces for WordPiece, ids without the 'Ġ' / '▁' word-start marker for byte-level BPE and
  SentencePiece; see data/word_starts.py)."""
  return word_starts.continuation_table(tokenizer)


def special_table(tokenizer: tokenizers.Tokenizer) -> np.ndarray:
  """bool[vocab_size]: True for the tokenizer's special tokens ([CLS], [SEP], [PAD], [UNK], ...)."""
  table = np.zeros(tokenizer.get_vocab_size(), bool)
  for token in tokenizer.get_added_tokens_decoder().values():
    if token.special:
      table[tokenizer.token_to_id(token.content)] = True
  return table


def files_dir(spec: str) -> str:
  """The directory whose tokenizer files an export copies ('default', a directory, or a
  tokenizer.json path)."""
  if spec == "default":
    return str(DEFAULT_DIR)
  return spec if os.path.isdir(spec) else os.path.dirname(spec)
