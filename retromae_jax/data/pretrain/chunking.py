"""Documents -> sentence-aligned token chunks of at most max_seq_length - 2 ids (no [CLS]/[SEP]).

The spec's packing: the sentences of one document are appended while the block still fits in
max_seq_length - 2 tokens (the pipeline adds [CLS] and [SEP]); a chunk never mixes documents.

Sentences are found in the text (sentence-final punctuation followed by whitespace) and the
whitespace is kept at the START of the next sentence, so tokenising sentence by sentence gives
exactly the ids of tokenising the whole document (also for byte-level BPE, whose tokens carry
their leading space). Text is tokenised in bounded batches of sentences, so a 10 MB one-line
document costs a few MB of memory, never one 10 MB encoding.
"""

import dataclasses
import itertools
import re
from collections.abc import Iterable, Iterator

import numpy as np
import tokenizers

# End of a sentence: . ! ? (optionally closed by a quote or bracket) right before whitespace.
_SENTENCE_END = re.compile(r"""(?:(?<=[.!?])|(?<=[.!?]["')\]]))(?=\s)""")
_WHITESPACE = re.compile(r"\s")
MAX_PIECE_CHARS = 4096  # a "sentence" longer than this (no punctuation) is cut at whitespace
ENCODE_BATCH_CHARS = 1 << 18  # characters per tokenizer call: bounds memory, keeps batches big


@dataclasses.dataclass
class ChunkStats:
  documents: int = 0
  chunks: int = 0
  tokens: int = 0  # in the chunks kept
  dropped_chunks: int = 0  # shorter than min_chunk_tokens
  dropped_tokens: int = 0


def sentence_pieces(text: str, max_chars: int = MAX_PIECE_CHARS) -> Iterator[str]:
  """Sentences of `text`, each at most max_chars long; ''.join(pieces) == text."""
  start = 0
  for match in itertools.chain(_SENTENCE_END.finditer(text), [None]):
    end = len(text) if match is None else match.start()
    while end - start > max_chars:  # an overlong sentence: cut at the last whitespace that fits
      limit = start + max_chars
      cut = max((m.start() for m in _WHITESPACE.finditer(text, limit - max_chars // 2, limit)),
                default=limit)  # no whitespace at all: a hard cut (may split a word)
      yield text[start:cut]
      start = cut
    if end > start:
      yield text[start:end]
    start = end


def split_long(ids: np.ndarray, budget: int, is_continuation: np.ndarray) -> list[np.ndarray]:
  """Cuts ids into pieces of at most `budget` tokens, at word starts where a word fits."""
  starts = ~is_continuation[ids]
  pieces, pos = [], 0
  while len(ids) - pos > budget:
    end = pos + budget
    word_starts = np.flatnonzero(starts[pos + 1:end + 1])  # a cut at a start: no '##' opens
    cut = pos + 1 + word_starts[-1] if word_starts.size else end
    pieces.append(ids[pos:cut])
    pos = cut
  pieces.append(ids[pos:])
  return pieces


def pack_sentences(sentences: Iterable[np.ndarray], budget: int,
                   is_continuation: np.ndarray) -> Iterator[np.ndarray]:
  """Greedy packing of ONE document's sentences into chunks of at most `budget` ids."""
  parts, size = [], 0
  for ids in sentences:
    if size + len(ids) <= budget:
      parts.append(ids)
      size += len(ids)
      continue
    if size:
      yield np.concatenate(parts)
    *full, rest = split_long(ids, budget, is_continuation)
    yield from full
    parts, size = [rest], len(rest)
  if size:
    yield np.concatenate(parts)


def _sentence_ids(texts: Iterable[str], tokenizer: tokenizers.Tokenizer, stats: ChunkStats,
                  batch_chars: int) -> Iterator[tuple[int, np.ndarray]]:
  """(document index, ids of one sentence) in order, tokenising in batches of sentences."""
  pending, pending_chars = [], 0

  def encode():
    encodings = tokenizer.encode_batch_fast([p for _, p in pending], add_special_tokens=False)
    for (doc, _), enc in zip(pending, encodings):
      yield doc, np.asarray(enc.ids, dtype=np.int32)

  for doc, text in enumerate(texts):
    stats.documents += 1
    for piece in sentence_pieces(text):
      pending.append((doc, piece))
      pending_chars += len(piece)
      if pending_chars >= batch_chars:
        yield from encode()
        pending, pending_chars = [], 0
  if pending:
    yield from encode()


def chunk_documents(texts: Iterable[str], tokenizer: tokenizers.Tokenizer, *,
                    max_seq_length: int, min_chunk_tokens: int, is_continuation: np.ndarray,
                    stats: ChunkStats | None = None,
                    batch_chars: int = ENCODE_BATCH_CHARS) -> Iterator[np.ndarray]:
  """int32 chunks (no special tokens) of every document, in document order.

  Chunks shorter than min_chunk_tokens are dropped and counted in `stats`.
  """
  stats = stats if stats is not None else ChunkStats()
  budget = max_seq_length - 2
  if budget < 1:
    raise ValueError(f"data.max_seq_length {max_seq_length} leaves no room for text after "
                     "[CLS] and [SEP]")
  sentences = _sentence_ids(texts, tokenizer, stats, batch_chars)
  for _, group in itertools.groupby(sentences, key=lambda item: item[0]):
    for chunk in pack_sentences((ids for _, ids in group), budget, is_continuation):
      if len(chunk) < min_chunk_tokens:
        stats.dropped_chunks += 1
        stats.dropped_tokens += len(chunk)
        continue
      stats.chunks += 1
      stats.tokens += len(chunk)
      yield chunk
