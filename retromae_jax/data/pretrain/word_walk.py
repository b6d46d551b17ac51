"""The references' greedy whole-word walk, compiled (numba): many masks per document, written
straight into bit-packed rows.

The walk (spec section 1): shuffle the words, then take each word that still fits in what is
left of the budget, skip those that do not, stop once the budget is spent. The shuffle is drawn
lazily, Fisher-Yates style: step j swaps word j with a uniformly random word among j..W-1 and
walks it, so a mask shuffles only the words it walks (about 60% of them at ratio 0.5); step j
of a mask reads the j-th of its row of keys (one uint32 per word, from the document's stream).
Compiled, one mask of 120 words costs about a microsecond; the NumPy form it replaced (a sort
per mask, a running sum, a band walk) cost about 2.5x more per decoder pool, mostly in array
passes and their allocations, and the pool is most of the host pipeline's time. nogil: tf.data's
parallel map calls can run it on several cores at once.
"""

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def walk_masks(word_start, word_len, num_words, budget, keys, key_offsets, rows, out):
  """Whole-word masks, written into out as bits.

  word_start, word_len int [E, W]: each word's first token and its length (tokens);
  num_words [E]; budget [E]: tokens per mask; rows int [E, R]: the masks to make, each a row
  of out[e] (-1: no more masks for this document). Mask m of document e reads its random keys
  at keys[key_offsets[e] + m * num_words[e]:][:num_words[e]] (uint32): step j picks among the
  W_e - j words not yet walked with the top 32 bits of keys[j] * (W_e - j).
  out uint8 [E, P, ceil(L/8)], zero: bit 1 (np.packbits' big-endian order) = masked.
  Returns out.
  """
  num_docs, num_rows = rows.shape
  order = np.empty(word_len.shape[1], np.int64)
  for e in range(num_docs):
    count = num_words[e]
    for r in range(num_rows):
      row = rows[e, r]
      if row < 0:
        break
      base = key_offsets[e] + row * count
      for w in range(count):
        order[w] = w
      left = budget[e]
      for j in range(count):
        if left <= 0:
          break
        k = j + ((np.uint64(keys[base + j]) * np.uint64(count - j)) >> np.uint64(32))
        word = order[k]
        order[k] = order[j]
        order[j] = word
        length = word_len[e, word]
        if 0 < length <= left:
          left -= length
          start = word_start[e, word]
          for t in range(start, start + length):
            out[e, row, t >> 3] |= np.uint8(0x80 >> (t & 7))
  return out


def walk_order(keys: np.ndarray, count: int) -> np.ndarray:
  """The order in which one mask walks its `count` words (all of them: the walk itself stops
  at its budget), in plain Python: for tests, which hand it to a loop reference of the walk."""
  order = list(range(count))
  for j in range(count):
    k = j + ((int(keys[j]) * (count - j)) >> 32)
    order[j], order[k] = order[k], order[j]
  return np.array(order, np.int64)
