"""RetroMAE's masks (spec sections 1-2), vectorised in NumPy over a whole batch.

Whole-word masking, exactly the references' greedy walk: words are a token plus its following
'##' tokens ([CLS], [SEP] and padding belong to no word); the words are shuffled; with budget
k = max(1, round(n * p)) (n counts [CLS] and [SEP]; round half to even, like Python's `round`)
the walk adds each word that still fits in what is left of the budget, skips those that do not,
and stops once the budget is reached.

Vectorised form of the walk (exactly equivalent, see `greedy_walk`): in shuffled order, every
word of the longest prefix whose total length fits is taken; after it, each further "round" takes
the next word that fits in the remainder. Each round lowers the remainder, which after the prefix
is shorter than the word that overflowed, so there are only a few rounds, each over the rows
still walking.

The encoder draws one mask per example and corrupts it 80/10/10 ([MASK] / random id / kept).
The decoder draws a pool of P = min(n, decoder_pool_size) independent masks per example, sent
bit-packed, and for each query row the pool row it uses (retromae_jax/models/decoder_mask.py expands
them on the device).
Other objectives (retromae_jax/objectives) change only their share of the batch: under
encoder.masking=drop the encoder's mask is not corrupted but dropped; the basic and
cross-attention decoders draw one whole-word mask at the decoder ratio instead of a pool; the
autoregressive decoder and the MLM baseline draw none (data/objective_fields.py).
"""

import dataclasses

import numpy as np

from retromae_jax.data import objective_fields
from retromae_jax.models.losses import IGNORE  # one label value for "no loss here", host and device

_GROUP_ELEMENTS = 1 << 17  # (example, mask, word) cells of the decoder pool computed at once


@dataclasses.dataclass(frozen=True, eq=False)
class MaskingSpec:
  max_seq_length: int
  encoder_mask_ratio: float
  decoder_mask_ratio: float
  decoder_pool_size: int
  mask_id: int
  vocab_size: int
  is_continuation: np.ndarray  # bool[vocab_size]: the token continues a word ('##')
  # bool[vocab_size]: special tokens ([UNK], a literal [MASK], ...) met inside the text. As in
  # the references' collator, a chosen word spends its budget but such tokens are never corrupted
  # nor predicted. None: no such tokens.
  is_special: np.ndarray | None = None
  # The objective's share of the batch (retromae_jax/models/objectives/config.py): 'corrupt' | 'drop';
  # the decoder's fields 'pool' | 'masked' | 'next_token' | 'none'; bag-of-words weights or not.
  encoder_masking: str = "corrupt"
  decoder_fields: str = "pool"
  bag_of_words: bool = False
  pad_id: int = 0

  @property
  def encoder_capacity(self) -> int:
    """Width of encoder_positions: the budget for n = L, which no example can exceed."""
    return encoder_capacity(self.max_seq_length, self.encoder_mask_ratio)

  @property
  def encoder_width(self) -> int:
    """Width of the encoder's input: L, or under drop only what a full example leaves visible."""
    if self.encoder_masking == "drop":
      return objective_fields.drop_width(self.max_seq_length, self.encoder_capacity)
    return self.max_seq_length


def encoder_capacity(max_seq_length: int, ratio: float) -> int:
  """Encoder-masked slots per example: the budget of a full-length example, never exceeded."""
  return int(mask_budget(np.array([max_seq_length]), ratio)[0])


def mask_budget(lengths: np.ndarray, ratio: float) -> np.ndarray:
  """k = max(1, round(n * ratio)), round half to even on the same float64 product as Python."""
  return np.maximum(1, np.rint(np.asarray(lengths, np.float64) * ratio)).astype(np.int64)


def word_spans(input_ids: np.ndarray, lengths: np.ndarray,
               is_continuation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Groups each row's tokens into words.

  Returns word_of_token [B, L] (the word index of each token, -1 for [CLS], [SEP] and padding)
  and word_len [B, W] (tokens per word, 0 past a row's last word; W = most words in a row).
  The first text token opens a word even if it is a '##' piece (a chunk cut inside a word).
  """
  batch, seq_len = input_ids.shape
  pos = np.arange(seq_len)
  inside = (pos >= 1) & (pos < np.asarray(lengths)[:, None] - 1)
  starts = inside & (~is_continuation[input_ids] | (pos == 1))
  word_of_token = np.where(inside, np.cumsum(starts, axis=1) - 1, -1)
  num_words = max(1, int(starts.sum(axis=1).max(initial=0)))
  flat = (np.arange(batch)[:, None] * num_words + word_of_token)[inside]
  word_len = np.bincount(flat, minlength=batch * num_words).reshape(batch, num_words)
  return word_of_token, word_len


def greedy_walk(sorted_len: np.ndarray, budget: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The references' walk over words in shuffled order, on all rows at once.

  sorted_len [R, W]: word lengths in walking order (0: no word there, never counts);
  budget [R]: tokens to mask per row.
  Returns (prefix [R], extra_rows, extra_cols): row r takes its first prefix[r] words, and the
  word at (extra_rows[i], extra_cols[i]) for every i.
  """
  sorted_len = np.asarray(sorted_len)
  num_rows, num_words = sorted_len.shape
  budget = np.asarray(budget, np.int32)
  cumulative = np.cumsum(sorted_len, axis=1, dtype=np.int32)
  prefix = np.count_nonzero(cumulative <= budget[:, None], axis=1)  # lengths >= 0: a prefix
  used = np.where(prefix > 0, cumulative[np.arange(num_rows), np.maximum(prefix - 1, 0)], 0)
  remaining = budget - used
  last = prefix - 1  # the last word walked past; the next one overflowed the budget
  rows = np.flatnonzero((remaining > 0) & (prefix < num_words))
  index = np.arange(num_words)
  extra_rows, extra_cols = [np.zeros(0, np.intp)], [np.zeros(0, np.intp)]
  while rows.size:  # each round takes one more word per row, and lowers its remainder
    lens = sorted_len[rows]
    fits = (index > last[rows, None]) & (lens > 0) & (lens <= remaining[rows, None])
    found = fits.any(axis=1)
    rows, fits = rows[found], fits[found]
    nxt = fits.argmax(axis=1)
    extra_rows.append(rows)
    extra_cols.append(nxt)
    remaining[rows] -= sorted_len[rows, nxt]
    last[rows] = nxt
    rows = rows[remaining[rows] > 0]
  return prefix, np.concatenate(extra_rows), np.concatenate(extra_cols)


def whole_word_masks(word_of_token: np.ndarray, word_len: np.ndarray, budget: np.ndarray,
                     num_masks: int, *, rng: np.random.Generator | None = None,
                     priority: np.ndarray | None = None) -> np.ndarray:
  """num_masks independent whole-word masks per example, token-major: bool [E, L, num_masks].

  word_of_token [E, L], word_len [E, W]: from word_spans; budget [E]: tokens per mask.
  Words are walked in a uniformly random order drawn from `rng`, or (tests) by increasing
  `priority` [E, num_masks, W] (small non-negative ints, e.g. each order's inverse permutation).
  """
  num_examples, num_words = word_len.shape
  seq_len = word_of_token.shape[1]
  num_rows = -(-num_masks // 8) * 8  # the gather below moves 8 masks per uint64
  # Sort keys: priority in the high bits; the word's length and index ride in the low bits, so
  # one in-place-sized np.sort yields both the order and the lengths in that order (no argsort).
  # Random priorities keep 64 - low_bits (>= 40) random bits: ties are vanishingly rare.
  index_bits = max(1, (num_words - 1).bit_length())
  len_bits = max(1, int(word_len.max(initial=0)).bit_length())
  low_bits = np.uint64(index_bits + len_bits)
  if priority is None:
    keys = rng.bit_generator.random_raw(num_examples * num_rows * num_words)
    keys = keys.reshape(num_examples, num_rows, num_words)
    keys >>= low_bits
  else:
    keys = np.zeros((num_examples, num_rows, num_words), np.uint64)
    keys[:, :num_masks] = priority
  keys <<= low_bits
  keys |= ((word_len.astype(np.uint64) << np.uint64(index_bits))
           | np.arange(num_words, dtype=np.uint64))[:, None, :]
  sorted_keys = np.sort(keys, axis=-1).reshape(-1, num_words)
  sorted_len = np.empty(sorted_keys.shape, np.int16)
  np.right_shift(sorted_keys, np.uint64(index_bits), out=sorted_len, casting="unsafe")
  sorted_len &= np.int16((1 << len_bits) - 1)
  prefix, extra_rows, extra_cols = greedy_walk(sorted_len, np.repeat(budget, num_rows))

  # Taken words: the prefix is every key up to the prefix's last, plus the few extra words.
  threshold = sorted_keys[np.arange(sorted_keys.shape[0]), np.maximum(prefix - 1, 0)]
  threshold[prefix == 0] = 0  # keys of real words are > 0 (their length bits)
  taken = np.empty((num_examples, num_words, num_rows), bool)  # word-major, masks contiguous
  np.less_equal(keys.transpose(0, 2, 1), threshold.reshape(num_examples, 1, num_rows),
                out=taken)
  extra_words = (sorted_keys[extra_rows, extra_cols] & np.uint64((1 << index_bits) - 1))
  taken[extra_rows // num_rows, extra_words.astype(np.intp), extra_rows % num_rows] = True

  # Token j copies the row of its word: num_rows / 8 uint64 per token, not num_rows bools.
  rows_u64 = taken.view(np.uint64)
  masks = rows_u64[np.arange(num_examples)[:, None], np.maximum(word_of_token, 0)]
  masks *= (word_of_token >= 0)[:, :, None]
  return masks.view(bool).reshape(num_examples, seq_len, num_rows)[:, :, :num_masks]


def pack_token_bits(masks: np.ndarray) -> np.ndarray:
  """np.packbits(masks.transpose(0, 2, 1), axis=-1) for token-major masks [E, L, G].

  Returns uint8 [E, G, ceil(L/8)]. When G % 8 == 0, the 8 tokens of one output byte are
  combined with shifts on uint64 lanes (8 masks per lane, no carries): ~10x faster.
  """
  num_examples, seq_len, num_masks = masks.shape
  if num_masks % 8 or not masks.flags.c_contiguous:
    return np.packbits(masks.transpose(0, 2, 1), axis=-1)
  pad = -seq_len % 8
  if pad:
    masks = np.concatenate([masks, np.zeros((num_examples, pad, num_masks), bool)], axis=1)
  lanes = masks.view(np.uint64).reshape(num_examples, -1, 8, num_masks // 8)
  packed = np.zeros((num_examples, lanes.shape[1], num_masks // 8), np.uint64)
  for bit in range(8):  # token 8b + bit -> bit (7 - bit) of byte b: np.packbits' big-endian order
    packed |= lanes[:, :, bit] << np.uint64(7 - bit)
  return np.ascontiguousarray(packed.view(np.uint8).transpose(0, 2, 1))


def make_batch(input_ids: np.ndarray, lengths: np.ndarray, spec: MaskingSpec,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
  """The batch contract (see retromae_jax/data/pipeline.py) from padded ids and true lengths.

  Draws, in this order: the encoder's mask, its corruption (corrupt only), then the decoder's
  masks (pool, or one [MASK]-ed copy): the default objective's stream is the same as ever.
  """
  input_ids = np.asarray(input_ids, np.int32)
  lengths = np.asarray(lengths, np.int64)
  batch, seq_len = input_ids.shape
  pos = np.arange(seq_len)
  real = pos < lengths[:, None]
  word_of_token, word_len = word_spans(input_ids, lengths, spec.is_continuation)
  out = {"input_ids": input_ids, "attention_mask": real.astype(np.int32)}

  # ---- Encoder: one whole-word mask per example, corrupted 80/10/10 or dropped ----
  enc_budget = mask_budget(lengths, spec.encoder_mask_ratio)
  enc_masked = whole_word_masks(word_of_token, word_len, enc_budget, 1, rng=rng)[:, :, 0]
  if spec.is_special is not None:
    enc_masked &= ~spec.is_special[input_ids]
  if spec.encoder_masking == "drop":
    fields, _ = objective_fields.dropped_encoder_input(input_ids, lengths, enc_masked,
                                                       spec.encoder_width, spec.pad_id)
    out.update(fields)
  else:
    out.update(_corrupted_encoder_input(input_ids, enc_masked, spec, rng))

  # ---- Decoder ----
  if spec.decoder_fields == "pool":
    out.update(_decoder_pool(input_ids, lengths, word_of_token, word_len, spec, rng))
  elif spec.decoder_fields == "masked":
    dec_budget = mask_budget(lengths, spec.decoder_mask_ratio)
    dec_masked = whole_word_masks(word_of_token, word_len, dec_budget, 1, rng=rng)[:, :, 0]
    if spec.is_special is not None:
      dec_masked &= ~spec.is_special[input_ids]
    out.update(objective_fields.masked_decoder_input(input_ids, dec_masked, spec.mask_id))
  elif spec.decoder_fields == "next_token":
    out["decoder_targets"] = objective_fields.next_token_targets(input_ids, lengths)
  if spec.bag_of_words:
    out["bow_weights"] = objective_fields.bag_of_words_weights(input_ids, lengths,
                                                               spec.is_special)
  return out


def _corrupted_encoder_input(input_ids, enc_masked, spec: MaskingSpec, rng):
  """80/10/10 corruption of the masked tokens, and their positions and targets."""
  batch, seq_len = input_ids.shape
  pos = np.arange(seq_len)
  draw = rng.random((batch, seq_len))
  random_ids = rng.integers(0, spec.vocab_size, (batch, seq_len), dtype=np.int32)
  corrupted = np.where(draw < 0.8, np.int32(spec.mask_id),
                       np.where(draw < 0.9, random_ids, input_ids))
  encoder_input_ids = np.where(enc_masked, corrupted, input_ids)
  # Masked positions in ascending order, padded to the fixed capacity (position 0, label IGNORE).
  capacity = spec.encoder_capacity
  sort_key = np.where(enc_masked, pos, seq_len)
  positions = np.sort(sort_key, axis=1)[:, :capacity]
  valid = positions < seq_len
  positions = np.where(valid, positions, 0)
  encoder_targets = np.where(valid, np.take_along_axis(input_ids, positions, axis=1), IGNORE)
  return {
      "encoder_input_ids": encoder_input_ids.astype(np.int32),
      "encoder_positions": positions.astype(np.int32),
      "encoder_targets": encoder_targets.astype(np.int32),
  }


def _decoder_pool(input_ids, lengths, word_of_token, word_len, spec: MaskingSpec, rng):
  """The enhanced decoder: pool of P = min(n, pool_size) masks, and a pool row per query row."""
  batch, seq_len = input_ids.shape
  real = np.arange(seq_len) < lengths[:, None]
  num_words = word_len.shape[1]
  pool_rows = np.minimum(lengths, spec.decoder_pool_size)
  # Only as many masks as the longest example needs, rounded up to a multiple of 8 (the fast
  # path of the gather and the bit packing); rows past an example's P are zeroed.
  num_masks = min(-(-int(pool_rows.max(initial=1)) // 8) * 8, spec.decoder_pool_size)
  dec_budget = mask_budget(lengths, spec.decoder_mask_ratio)
  packed = np.zeros((batch, spec.decoder_pool_size, (seq_len + 7) // 8), np.uint8)
  # A few examples at a time: arrays of ~1 MB are reused by malloc from one group to the next,
  # while whole-batch arrays are returned to the OS and page-faulted back in on every batch
  # (measured: 2x slower at batch 16, L=128).
  group = max(1, _GROUP_ELEMENTS // (num_masks * num_words))
  for start in range(0, batch, group):
    rows = slice(start, start + group)
    words = max(1, int(np.count_nonzero(word_len[rows], axis=1).max()))
    pool = whole_word_masks(word_of_token[rows], word_len[rows, :words], dec_budget[rows],
                            num_masks, rng=rng)
    pool &= (np.arange(num_masks) < pool_rows[rows, None])[:, None, :]
    packed[rows, :num_masks] = pack_token_bits(pool)
  choice = rng.integers(0, np.maximum(pool_rows, 1)[:, None], (batch, seq_len))
  return {
      "decoder_pool": packed,
      "decoder_choice": np.where(real, choice, 0).astype(np.int32),
      "decoder_targets": np.where(word_of_token >= 0, input_ids, IGNORE).astype(np.int32),
  }
